//! One module per subcommand.

pub mod backup;
pub mod backup_dir;
pub mod bench;
pub mod dev;
pub mod kv;
pub mod leader;
pub mod restore;
pub mod status;
pub mod table;
pub mod version;
