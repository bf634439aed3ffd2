//! `armada`: one binary for servers (`leader`, `follower`, `dev`), the client (`kv`, `table`,
//! `status`, `members`), backups (`backup`, `restore`), the load generator (`bench`) and
//! `version`.

mod cmd;

/// The allocator: the put path allocates and frees small buffers at a high rate (requests,
/// commands, memtable entries), where glibc's malloc cost ~13 % of a put profile; see ADR 0006.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "armada",
    version,
    about = "Geo-distributed key-value store (Regatta API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node of the leader cluster.
    Leader(Box<cmd::leader::LeaderArgs>),
    /// Run a node of a follower cluster (replicates every table of the leader cluster).
    Follower(Box<cmd::leader::LeaderArgs>),
    /// Run a complete local topology with no set-up (data in ./armada-data).
    Dev(Box<cmd::dev::DevArgs>),
    /// Read and write keys (get, put, del, txn).
    Kv(cmd::kv::KvArgs),
    /// Create, list and delete tables.
    Table(cmd::table::TableArgs),
    /// Show a node's status: tables, Raft leaders, indices, sizes.
    Status(cmd::status::StatusArgs),
    /// List the members of a cluster.
    Members(cmd::status::MembersArgs),
    /// Back up every table (or --tables) into a directory: <table>.bak files and manifest.json.
    Backup(cmd::backup::BackupArgs),
    /// Restore tables from a backup directory (checks every file first). Destructive.
    Restore(cmd::restore::RestoreArgs),
    /// Load generator for Armada and etcd.
    Bench(cmd::bench::BenchArgs),
    /// Print the version.
    Version,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Leader(args) => cmd::leader::run(*args).await,
            Command::Follower(args) => cmd::leader::run_follower(*args).await,
            Command::Dev(args) => cmd::dev::run(*args).await,
            Command::Kv(args) => cmd::kv::run(args).await,
            Command::Table(args) => cmd::table::run(args).await,
            Command::Status(args) => cmd::status::run(args).await,
            Command::Members(args) => cmd::status::run_members(args).await,
            Command::Backup(args) => cmd::backup::run(args).await,
            Command::Restore(args) => cmd::restore::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Version => {
                println!("armada {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
