//! One module per subcommand.

pub mod backup;
pub mod backup_dir;
pub mod bench;
pub mod dev;
pub mod exit;
pub mod kv;
pub mod leader;
pub mod reset;
pub mod restore;
pub mod status;
pub mod table;
pub mod version;
