//! One module per subcommand.

pub mod bench;
pub mod dev;
pub mod kv;
pub mod leader;
pub mod status;
pub mod table;
