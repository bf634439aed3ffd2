//! `armada`: one binary for servers (`leader`, `follower`, `dev`), the client (`kv`, `table`,
//! `status`, `members`), backups (`backup`, `restore`), the load generator (`bench`) and
//! `version`.

mod cmd;

/// The allocator: the put path allocates and frees small buffers at a high rate (requests,
/// commands, memtable entries), where glibc's malloc cost ~13 % of a put profile; see ADR 0006.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: its position in `mi_option_t` of the bundled mimalloc 3
/// (`c_src/mimalloc/v3/include/mimalloc.h`; a test checks it against the option's default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory freed by the process stays mapped before mimalloc returns it to the OS.
/// mimalloc's default (1 s) is shorter than the life of a memtable under load (16 MiB fill in
/// ~5 s at 10k puts/s): every flush freed memory that was purged and then faulted back in, and
/// zeroing those pages (huge pages, where THP is on) cost ~5 % of a 3-node cluster's CPU per put.
/// 30 s keeps that memory through the cycle yet still returns it once a node goes idle.
const PURGE_DELAY_MS: std::ffi::c_long = 30_000;

/// Sets the allocator's options, unless the operator set them with mimalloc's own environment
/// variables (`MIMALLOC_PURGE_DELAY`).
fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` only stores the value in mimalloc's option table (a plain
        // write of a `long`, valid from any thread at any time); the index names an existing
        // option (see `MI_OPTION_PURGE_DELAY`).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "armada",
    version = armada_server::build_info::VERSION_AND_REVISION,
    about = "Geo-distributed key-value store (Regatta API)",
    after_help = cmd::exit::EXIT_CODES_HELP
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
    /// Follower cluster: wipe a table's replica (or every table's) and re-bootstrap it from
    /// the leader cluster.
    Reset(cmd::reset::ResetArgs),
    /// Back up every table (or --tables) into a directory: <table>.bak files and manifest.json.
    Backup(cmd::backup::BackupArgs),
    /// Restore tables from a backup directory (checks every file first). Destructive.
    Restore(cmd::restore::RestoreArgs),
    /// Load generator for Armada and etcd.
    Bench(cmd::bench::BenchArgs),
    /// Print the version and the git revision of this build.
    Version(cmd::version::VersionArgs),
}

impl Command {
    /// Whether the command was asked for JSON output (then its errors are JSON too).
    fn json(&self) -> bool {
        match self {
            Command::Kv(args) => args.client.json,
            Command::Table(args) => args.client.json,
            Command::Status(args) => args.client.json,
            Command::Members(args) => args.client.json,
            Command::Reset(args) => args.client.json,
            Command::Backup(args) => args.transfer.json,
            Command::Restore(args) => args.transfer.json,
            _ => false,
        }
    }
}

fn main() -> std::process::ExitCode {
    configure_allocator();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Leader(_) | Command::Follower(_) | Command::Dev(_)
    ) {
        // A node stops on a panic in any thread or task instead of running on half-alive.
        armada_server::fail_stop::install_panic_hook();
    }
    let json = cli.command.json();
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
            Command::Reset(args) => cmd::reset::run(args).await,
            Command::Backup(args) => cmd::backup::run(args).await,
            Command::Restore(args) => cmd::restore::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Version(args) => cmd::version::run(&args),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if json {
                println!("{}", cmd::exit::error_json(&error));
            }
            std::process::ExitCode::from(cmd::exit::classify(&error).code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        // Unset, the option reads as mimalloc 3's documented default of 1000 ms: the index
        // is right (its neighbours default to 1 and 0). Set, it reads back.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads mimalloc's option table.
            let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(default, 1000);
        }
        configure_allocator();
        // SAFETY: as above.
        let configured = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        let expected = match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(value) => value.parse().unwrap_or(configured),
            Err(_) => PURGE_DELAY_MS,
        };
        assert_eq!(configured, expected);
    }
}
