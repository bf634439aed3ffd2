//! `armada backup`: every table (or `--tables a,b`) of a leader cluster into a directory, in
//! Regatta's layout (`backup_dir`): one dump file per table, then `manifest.json`.
//!
//! Each table is one `Maintenance.Backup` stream (a point-in-time dump; writes continue
//! meanwhile) written into the staging directory (`backup_dir::STAGING_DIR`, short file names
//! there, so any table name fits) while its MD5 and SHA-256 are computed, then fsynced. Only
//! when every table is complete is the old manifest removed, each file renamed to its name
//! (`backup_dir::table_file_name`) and the new manifest written. So a run that fails leaves the
//! previous backup of the directory intact and no half-written files, and a crash while the
//! files are moved leaves no manifest: the directory never looks complete when it is not. Any
//! failure stops the run with a non-zero exit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use armada_client::{Client, ClientError, ConnectOptions};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::backup_dir::{
    Checksums, MANIFEST_FILE, Manifest, ManifestTable, STAGING_DIR, check_table_name, now_rfc3339,
    sync_dir, table_file_name,
};
use super::kv::{Output, client_identity, parse_duration};

/// Flags of `armada backup` and `armada restore`.
#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    /// Server address: http://host:port, host:port, https://host:port, unix:///path or
    /// unixs:///path.
    #[arg(long, env = "ARMADA_ADDRESS", default_value = "http://127.0.0.1:8443")]
    pub address: String,
    /// Bearer token for the Maintenance API (the server's --maintenance.token).
    #[arg(long, env = "ARMADA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https://, unixs:// only).
    #[arg(long, env = "ARMADA_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one (mutual TLS); needs --key.
    #[arg(long = "cert", env = "ARMADA_CERT", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long = "key", env = "ARMADA_KEY", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Name the server's certificate must be valid for, instead of the address's host
    /// (`localhost` for unixs://).
    #[arg(long, env = "ARMADA_SERVER_NAME")]
    pub server_name: Option<String>,
    /// The backup directory.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Only these tables (comma separated); default: every table.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Deadline of the whole run, e.g. 30m, 2h.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one JSON document (and no progress bars).
    #[arg(long)]
    pub json: bool,
}

impl TransferArgs {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let options = ConnectOptions {
            ca_file: self.ca.clone(),
            identity: client_identity(&self.cert_file, &self.key_file),
            server_name: self.server_name.clone(),
            token: self.token.clone(),
            timeout: Some(self.timeout),
            connect_timeout: Some(self.timeout.min(armada_client::DEFAULT_CONNECT_TIMEOUT)),
        };
        Ok(Client::connect_with(&self.address, &options).await?)
    }

    /// A progress bar on stderr when it is a terminal and output is for humans.
    pub fn progress_bar(&self, length: Option<u64>, table: &str) -> ProgressBar {
        let target = if self.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let (bar, template) = match length {
            Some(length) => (
                ProgressBar::with_draw_target(Some(length), target),
                "{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ),
            None => (
                ProgressBar::with_draw_target(None, target),
                "{prefix:>16} {spinner} {bytes} {bytes_per_sec} {elapsed}",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(table.to_string());
        bar
    }
}

/// `armada backup`.
#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// What was written for one table.
struct TableBackup {
    entry: ManifestTable,
    /// The complete file in the staging directory.
    staged: PathBuf,
    bytes: u64,
    elapsed: Duration,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let args = args.transfer;
    tokio::time::timeout(args.timeout, backup(&args))
        .await
        .map_err(|_| anyhow::anyhow!("backup failed: not finished within {:?}", args.timeout))?
        .context("backup failed")
}

async fn backup(args: &TransferArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let client = args.connect().await?;
    let started = now_rfc3339();
    let tables = tables_to_back_up(&client, &args.tables).await?;
    let staging = Staging::create(dir)?;
    let written = match back_up_tables(&client, args, &tables, &staging).await {
        Ok(written) => written,
        Err(error) => {
            staging.remove();
            return Err(error);
        }
    };
    publish(dir, &written)?;
    let manifest = Manifest {
        started,
        finished: now_rfc3339(),
        tables: written.iter().map(|table| table.entry.clone()).collect(),
    };
    manifest.write(dir)?;
    staging.remove();
    print_summary(args, &manifest, &written)
}

/// Streams every table into the staging directory, in name order.
async fn back_up_tables(
    client: &Client,
    args: &TransferArgs,
    tables: &[String],
    staging: &Staging,
) -> anyhow::Result<Vec<TableBackup>> {
    let mut written = Vec::with_capacity(tables.len());
    for (index, name) in tables.iter().enumerate() {
        let table = backup_table(client, args, name, staging.file(index))
            .await
            .with_context(|| format!("table {name}"))?;
        if !args.json {
            eprintln!(
                "{name}: {} bytes, revision {}, {:.1} MB/s",
                table.bytes,
                table
                    .entry
                    .revision
                    .map_or_else(|| "-".to_string(), |revision| revision.to_string()),
                megabytes_per_second(table.bytes, table.elapsed)
            );
        }
        written.push(table);
    }
    Ok(written)
}

/// Replaces the directory's previous backup by the staged files: the old manifest goes first
/// (from then on the directory does not look complete until the new one is written).
fn publish(dir: &Path, written: &[TableBackup]) -> anyhow::Result<()> {
    remove_old_manifest(dir)?;
    for table in written {
        let target = dir.join(&table.entry.file_name);
        std::fs::rename(&table.staged, &target).with_context(|| {
            format!("cannot move the backup of {} into place", target.display())
        })?;
    }
    sync_dir(dir)
}

/// The staging directory of one run ([`STAGING_DIR`]); its files are named by the table's
/// position in the run, so their names stay short whatever the table names.
struct Staging {
    path: PathBuf,
}

impl Staging {
    /// A fresh, empty staging directory: one left by a run that crashed is removed first.
    fn create(dir: &Path) -> anyhow::Result<Staging> {
        let path = dir.join(STAGING_DIR);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot remove the stale {}", path.display()));
            }
        }
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Staging { path })
    }

    fn file(&self, index: usize) -> PathBuf {
        self.path.join(format!("{index}.bak.partial"))
    }

    /// Removes the staging directory and whatever is left in it. Best effort: a leftover is
    /// harmless (it is not listed by any manifest) and the next run removes it.
    fn remove(self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {error}", self.path.display());
        }
    }
}

fn print_summary(
    args: &TransferArgs,
    manifest: &Manifest,
    written: &[TableBackup],
) -> anyhow::Result<()> {
    let output = Output::new(args.json);
    if output.json {
        let tables: Vec<_> = written
            .iter()
            .map(|table| {
                json!({
                    "name": table.entry.name,
                    "file_name": table.entry.file_name,
                    "md5": table.entry.md5,
                    "sha256": table.entry.sha256,
                    "revision": table.entry.revision,
                    "bytes": table.bytes,
                    "seconds": table.elapsed.as_secs_f64(),
                })
            })
            .collect();
        return output.print_json(&json!({
            "dir": args.dir.display().to_string(),
            "started": manifest.started,
            "finished": manifest.finished,
            "tables": tables,
        }));
    }
    println!(
        "backed up {} table(s) to {}",
        manifest.tables.len(),
        args.dir.display()
    );
    Ok(())
}

pub fn megabytes_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1_000_000.0 / elapsed.as_secs_f64().max(1e-6)
}

/// `--tables` (checked and deduplicated), else every table the server lists, sorted by name.
async fn tables_to_back_up(client: &Client, selected: &[String]) -> anyhow::Result<Vec<String>> {
    let mut tables: Vec<String> = if selected.is_empty() {
        list_tables(client).await?
    } else {
        for name in selected {
            check_table_name(name)?;
        }
        selected.to_vec()
    };
    tables.sort();
    tables.dedup();
    Ok(tables)
}

/// Table names from `Tables.List`; when that needs a token we do not have (the Tables token
/// may differ from the Maintenance one), from `Cluster.Status`, which needs none (Regatta's
/// way).
async fn list_tables(client: &Client) -> anyhow::Result<Vec<String>> {
    match client.list_tables().await {
        Ok(list) => Ok(list.tables.into_iter().map(|table| table.name).collect()),
        Err(error) if error.code() == Some(tonic::Code::Unauthenticated) => {
            let status = client.status(false).await.context("list tables")?;
            Ok(status.tables.into_keys().collect())
        }
        Err(error) => Err(error).context("list tables"),
    }
}

fn remove_old_manifest(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(dir.join(MANIFEST_FILE)) {
        Ok(()) => sync_dir(dir),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove the old {MANIFEST_FILE}")),
    }
}

/// Streams one table into `staged` (removed on failure).
async fn backup_table(
    client: &Client,
    args: &TransferArgs,
    name: &str,
    staged: PathBuf,
) -> anyhow::Result<TableBackup> {
    let started = Instant::now();
    let result = write_table_file(client, args, name, &staged).await;
    let (checksums, bytes, revision) = match result {
        Ok(done) => done,
        Err(error) => {
            let _ = std::fs::remove_file(&staged);
            return Err(error);
        }
    };
    let (md5, sha256) = checksums.finish();
    Ok(TableBackup {
        entry: ManifestTable {
            name: name.to_string(),
            file_name: table_file_name(name),
            md5,
            sha256: Some(sha256),
            revision,
        },
        staged,
        bytes,
        elapsed: started.elapsed(),
    })
}

async fn write_table_file(
    client: &Client,
    args: &TransferArgs,
    name: &str,
    path: &Path,
) -> anyhow::Result<(Checksums, u64, Option<u64>)> {
    let backup = client.backup(name.to_string()).await.map_err(explain)?;
    let mut file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("cannot create {}", path.display()))?;
    let progress = args.progress_bar(None, name);
    let mut checksums = Checksums::default();
    let mut bytes = 0u64;
    let mut chunks = backup.chunks;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(explain)?;
        checksums.update(&chunk);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
        bytes += chunk.len() as u64;
        progress.set_position(bytes);
    }
    file.sync_all().await?;
    progress.finish_and_clear();
    if bytes > 0 && !chunks_start_like_a_dump(path)? {
        bail!("the server sent data that is not a Snappy framing stream");
    }
    Ok((checksums, bytes, backup.revision))
}

/// A non-empty dump starts with the Snappy stream identifier: a cheap sanity check that the
/// server speaks the format.
fn chunks_start_like_a_dump(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 10];
    std::fs::File::open(path)?.read_exact(&mut head)?;
    Ok(head == armada_table::DUMP_STREAM_IDENTIFIER)
}

/// Adds what the operator can do to the errors that need it.
pub fn explain(error: ClientError) -> anyhow::Error {
    let hint = match error.code() {
        Some(tonic::Code::Unauthenticated) => {
            " (pass the server's maintenance token with --token or ARMADA_TOKEN)"
        }
        Some(tonic::Code::NotFound) => " (no such table on the server)",
        _ => "",
    };
    anyhow::anyhow!("{error}{hint}")
}
