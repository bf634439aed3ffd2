//! `armada restore`: replaces tables of a leader cluster with the contents of a backup
//! directory (`backup_dir`; Regatta's layout works too). Destructive.
//!
//! Nothing is touched until everything selected has been checked: the manifest (valid table
//! names listed once, plain file names, `--tables` all present), then every file: its MD5
//! (always) and SHA-256 (when the manifest has one), and the dump itself (framing, CRCs, every
//! record). Then the tables are restored one by one, in name order. While a file is sent it
//! is hashed again, and the stream is cancelled instead of ended if it no longer matches, so
//! a file changed after the check can never be restored.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use armada_client::Bytes;
use clap::Args;
use serde_json::json;

use super::backup::{TransferArgs, explain, megabytes_per_second};
use super::backup_dir::{
    ChecksumReader, Checksums, Manifest, ManifestTable, check_table_name, table_file,
};
use super::kv::Output;

/// Bytes per Restore message.
const RESTORE_CHUNK_BYTES: usize = 1024 * 1024;

/// What was restored of one table.
struct Restored {
    name: String,
    bytes: u64,
    elapsed: Duration,
    revision: Option<u64>,
}

/// `armada restore`.
#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// A table to restore and its checked file.
#[derive(Clone)]
struct Selected {
    entry: ManifestTable,
    path: PathBuf,
    bytes: u64,
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let args = args.transfer;
    tokio::time::timeout(args.timeout, restore(&args))
        .await
        .map_err(|_| anyhow::anyhow!("restore failed: not finished within {:?}", args.timeout))?
        .context("restore failed")
}

async fn restore(args: &TransferArgs) -> anyhow::Result<()> {
    let manifest = Manifest::read(&args.dir)?;
    let selected = select(&manifest, args)?;
    for table in &selected {
        let table = table.clone();
        let progress = args.progress_bar(Some(table.bytes), &format!("check {}", table.entry.name));
        tokio::task::spawn_blocking(move || verify(&table, &progress))
            .await?
            .context("nothing was restored")?;
    }
    let client = args.connect().await?;
    let mut restored: Vec<Restored> = Vec::new();
    for table in &selected {
        let started = Instant::now();
        let revision = restore_table(&client, args, table)
            .await
            .map_err(|error| error.context(failed_at(table, &restored)))?;
        let done = Restored {
            name: table.entry.name.clone(),
            bytes: table.bytes,
            elapsed: started.elapsed(),
            revision,
        };
        if !args.json {
            eprintln!(
                "{}: {} bytes, revision {}, {:.1} MB/s",
                done.name,
                done.bytes,
                done.revision
                    .map_or_else(|| "-".to_string(), |revision| revision.to_string()),
                megabytes_per_second(done.bytes, done.elapsed)
            );
        }
        restored.push(done);
    }
    print_summary(args, &restored)
}

/// Which table failed, and which were restored before it.
fn failed_at(table: &Selected, restored: &[Restored]) -> String {
    let done: Vec<&str> = restored.iter().map(|done| done.name.as_str()).collect();
    format!(
        "table {} (already restored: {})",
        table.entry.name,
        if done.is_empty() {
            "none".to_string()
        } else {
            done.join(", ")
        }
    )
}

fn print_summary(args: &TransferArgs, restored: &[Restored]) -> anyhow::Result<()> {
    let output = Output::new(args.json);
    if output.json {
        let tables: Vec<_> = restored
            .iter()
            .map(|done| {
                json!({
                    "name": done.name,
                    "bytes": done.bytes,
                    "revision": done.revision,
                    "seconds": done.elapsed.as_secs_f64(),
                })
            })
            .collect();
        return output.print_json(&json!({
            "dir": args.dir.display().to_string(),
            "tables": tables,
        }));
    }
    println!(
        "restored {} table(s) from {}",
        restored.len(),
        args.dir.display()
    );
    Ok(())
}

/// The manifest entries chosen by `--tables` (all when empty), with their file sizes.
fn select(manifest: &Manifest, args: &TransferArgs) -> anyhow::Result<Vec<Selected>> {
    for name in &args.tables {
        check_table_name(name).context("--tables")?;
    }
    let wanted: BTreeSet<&str> = args.tables.iter().map(String::as_str).collect();
    let listed: BTreeSet<&str> = manifest.tables.iter().map(|t| t.name.as_str()).collect();
    let missing: Vec<&str> = wanted.difference(&listed).copied().collect();
    if !missing.is_empty() {
        bail!(
            "--tables names table(s) the manifest does not list: {} (it lists: {})",
            missing.join(", "),
            listed.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    let mut selected = Vec::new();
    for entry in &manifest.tables {
        if !wanted.is_empty() && !wanted.contains(entry.name.as_str()) {
            continue;
        }
        let path = table_file(&args.dir, &entry.file_name)?;
        let metadata = std::fs::metadata(&path).with_context(|| {
            format!(
                "table {}: file {} is missing; nothing was restored",
                entry.name,
                path.display()
            )
        })?;
        if !metadata.is_file() {
            bail!("table {}: {} is not a file", entry.name, path.display());
        }
        selected.push(Selected {
            entry: entry.clone(),
            path,
            bytes: metadata.len(),
        });
    }
    selected.sort_by(|left, right| left.entry.name.cmp(&right.entry.name));
    Ok(selected)
}

/// Checks one file against its manifest entry and as a dump, in one read.
fn verify(table: &Selected, progress: &indicatif::ProgressBar) -> anyhow::Result<()> {
    let (path, table) = (&table.path, &table.entry);
    let file = std::fs::File::open(path)
        .with_context(|| format!("table {}: cannot open {}", table.name, path.display()))?;
    let mut reader = ChecksumReader {
        inner: std::io::BufReader::with_capacity(RESTORE_CHUNK_BYTES, file),
        checksums: Checksums::default(),
        on_read: |read: usize| progress.inc(read as u64),
    };
    let dump = armada_table::check_dump(&mut reader);
    // The dump check stops at the first problem: hash the rest so a checksum mismatch is
    // reported as such.
    std::io::copy(&mut reader, &mut std::io::sink())
        .with_context(|| format!("table {}: reading {}", table.name, path.display()))?;
    progress.finish_and_clear();
    let (md5, sha256) = reader.checksums.finish();
    let corrupted = |which: &str| {
        anyhow::anyhow!(
            "table {} file {} corrupted ({which} checksum mismatch)",
            table.name,
            table.file_name
        )
    };
    if !md5.eq_ignore_ascii_case(&table.md5) {
        return Err(corrupted("md5"));
    }
    if let Some(expected) = &table.sha256
        && !sha256.eq_ignore_ascii_case(expected)
    {
        return Err(corrupted("sha256"));
    }
    dump.map(|_| ()).map_err(|problem| {
        anyhow::anyhow!(
            "table {} file {} is not a valid dump: {problem}",
            table.name,
            table.file_name
        )
    })
}

/// Sends one file; a read error or a changed file cancels the call.
/// Returns the table's revision after the restore, when the server reports it.
async fn restore_table(
    client: &armada_client::Client,
    args: &TransferArgs,
    table: &Selected,
) -> anyhow::Result<Option<u64>> {
    let progress = args.progress_bar(Some(table.bytes), &table.entry.name);
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let path = table.path.clone();
    let expected_md5 = table.entry.md5.clone();
    let reader_progress = progress.clone();
    let reader = tokio::task::spawn_blocking(move || {
        if let Err(error) = send_file(&path, &expected_md5, &sender, &reader_progress) {
            let _ = sender.blocking_send(Err(error));
        }
    });
    let chunks = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let result = client.restore(table.entry.name.clone(), chunks).await;
    let _ = reader.await;
    progress.finish_and_clear();
    result.map_err(explain)
}

fn send_file(
    path: &std::path::Path,
    expected_md5: &str,
    sender: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    progress: &indicatif::ProgressBar,
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut checksums = Checksums::default();
    loop {
        let mut buffer = vec![0u8; RESTORE_CHUNK_BYTES];
        let mut filled = 0;
        while filled < buffer.len() {
            let read = file.read(&mut buffer[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            break;
        }
        buffer.truncate(filled);
        checksums.update(&buffer);
        progress.inc(filled as u64);
        if sender.blocking_send(Ok(Bytes::from(buffer))).is_err() {
            // The call ended (the server answered early): nothing more to send.
            return Ok(());
        }
    }
    let (md5, _) = checksums.finish();
    if !md5.eq_ignore_ascii_case(expected_md5) {
        return Err(std::io::Error::other(format!(
            "{} changed after it was checked",
            path.display()
        )));
    }
    Ok(())
}
