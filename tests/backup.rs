//! Backups and restores (`maintenance.v1`, `armada backup`, `armada restore`) against the real
//! binary: round trips on a 3-node cluster, consistency under concurrent writes, every way a
//! backup directory can be wrong (each leaves every table untouched), tokens, and Regatta's
//! format in both directions — checked with the independent encoder/decoder in
//! [`regatta_dump`], written from the format description, not with Armada's own code.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use armada_client::{Client, ConnectOptions};
use armada_proto::maintenance::v1::{
    BackupRequest, ResetRequest, RestoreInfo, RestoreMessage, restore_message,
};
use armada_proto::mvcc::v1 as mvcc;
use armada_proto::regatta::v1::{RangeRequest, TxnRequest};
use armada_proto::replication::v1::SnapshotChunk;
use common::{Armada, Cluster};
use md5::Digest as _;
use tonic::Code;

const TOKEN: &str = "backup-s3cret";

type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

/// An independent implementation of the dump format (docs/format.md, Regatta's `.bak`): the
/// Snappy framing format written and read by hand (chunk headers, masked CRC-32C) around
/// `snap`'s raw block codec, and `[u64 LE length][mvcc.v1.Command]` records.
mod regatta_dump {
    use super::mvcc;
    use prost::Message;
    use std::io::{Read, Write};

    const STREAM_IDENTIFIER: &[u8] = b"\xff\x06\x00\x00sNaPpY";
    const CHUNK_COMPRESSED: u8 = 0x00;
    const CHUNK_UNCOMPRESSED: u8 = 0x01;
    /// The framing format's limit of uncompressed data per chunk.
    const BLOCK_BYTES: usize = 65_536;

    fn crc32c_table() -> [u32; 256] {
        let mut table = [0u32; 256];
        for (index, entry) in table.iter_mut().enumerate() {
            let mut crc = index as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
            *entry = crc;
        }
        table
    }

    /// CRC-32C (Castagnoli), masked as the framing format requires.
    pub fn masked_crc32c(data: &[u8]) -> u32 {
        thread_local!(static TABLE: [u32; 256] = crc32c_table());
        let crc = TABLE.with(|table| {
            !data.iter().fold(!0u32, |crc, byte| {
                table[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8)
            })
        });
        (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
    }

    /// Writes records as a framing stream; nothing at all for no records (Regatta's empty
    /// backup is zero bytes).
    pub struct Writer<W: Write> {
        out: W,
        block: Vec<u8>,
        started: bool,
    }

    impl<W: Write> Writer<W> {
        pub fn new(out: W) -> Self {
            Writer {
                out,
                block: Vec::with_capacity(BLOCK_BYTES),
                started: false,
            }
        }

        pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) {
            // Regatta's dump: table, type PUT and kv{key, value} only.
            let command = mvcc::Command {
                table: table.as_bytes().to_vec().into(),
                r#type: mvcc::command::CommandType::Put as i32,
                kv: Some(mvcc::KeyValue {
                    key: key.to_vec().into(),
                    value: value.to_vec().into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.command(&command);
        }

        pub fn command(&mut self, command: &mvcc::Command) {
            let bytes = command.encode_to_vec();
            self.append(&(bytes.len() as u64).to_le_bytes());
            self.append(&bytes);
        }

        fn append(&mut self, mut data: &[u8]) {
            while !data.is_empty() {
                let room = BLOCK_BYTES - self.block.len();
                let taken = room.min(data.len());
                self.block.extend_from_slice(&data[..taken]);
                data = &data[taken..];
                if self.block.len() == BLOCK_BYTES {
                    self.flush_block();
                }
            }
        }

        fn flush_block(&mut self) {
            if self.block.is_empty() {
                return;
            }
            if !self.started {
                self.out.write_all(STREAM_IDENTIFIER).expect("write");
                self.started = true;
            }
            let compressed = snap::raw::Encoder::new()
                .compress_vec(&self.block)
                .expect("compress");
            // Incompressible blocks go as uncompressed chunks, as real encoders do.
            let (kind, body) = if compressed.len() < self.block.len() {
                (CHUNK_COMPRESSED, compressed.as_slice())
            } else {
                (CHUNK_UNCOMPRESSED, self.block.as_slice())
            };
            let length = (body.len() + 4) as u32;
            let header = [
                kind,
                length as u8,
                (length >> 8) as u8,
                (length >> 16) as u8,
            ];
            self.out.write_all(&header).expect("write");
            self.out
                .write_all(&masked_crc32c(&self.block).to_le_bytes())
                .expect("write");
            self.out.write_all(body).expect("write");
            self.block.clear();
        }

        pub fn finish(mut self) -> W {
            self.flush_block();
            self.out.flush().expect("flush");
            self.out
        }
    }

    /// Reads every record of a framing stream, checking identifier, chunk types and CRCs.
    pub fn read_commands(mut input: impl Read, mut each: impl FnMut(mvcc::Command)) {
        let mut content = Vec::new();
        let mut header = [0u8; 4];
        let mut first = true;
        loop {
            match input.read_exact(&mut header) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(error) => panic!("read: {error}"),
            }
            let length =
                usize::from(header[1]) | usize::from(header[2]) << 8 | usize::from(header[3]) << 16;
            let mut body = vec![0u8; length];
            input.read_exact(&mut body).expect("chunk body");
            if first {
                assert_eq!(header[0], 0xff, "a stream starts with its identifier");
                first = false;
            }
            match header[0] {
                0xff => assert_eq!(body, b"sNaPpY"),
                CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED => {
                    let crc = u32::from_le_bytes(body[..4].try_into().expect("crc"));
                    let data = if header[0] == CHUNK_COMPRESSED {
                        snap::raw::Decoder::new()
                            .decompress_vec(&body[4..])
                            .expect("decompress")
                    } else {
                        body[4..].to_vec()
                    };
                    assert!(data.len() <= BLOCK_BYTES);
                    assert_eq!(masked_crc32c(&data), crc, "chunk CRC");
                    content.extend_from_slice(&data);
                }
                0x80..=0xfe => {}
                other => panic!("reserved chunk type {other:#x}"),
            }
            // Records whole in `content` are handed out; the rest waits for the next chunk.
            let mut at = 0;
            while content.len() - at >= 8 {
                let length =
                    u64::from_le_bytes(content[at..at + 8].try_into().expect("len")) as usize;
                if content.len() - at - 8 < length {
                    break;
                }
                let command =
                    mvcc::Command::decode(&content[at + 8..at + 8 + length]).expect("command");
                each(command);
                at += 8 + length;
            }
            content.drain(..at);
        }
        assert!(
            content.is_empty(),
            "{} bytes of a cut record",
            content.len()
        );
    }

    pub fn encode(table: &str, contents: &super::Contents) -> Vec<u8> {
        let mut writer = Writer::new(Vec::new());
        for (key, value) in contents {
            writer.put(table, key, value);
        }
        writer.finish()
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    hex(&md5::Md5::digest(bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Runs the CLI; `token` goes through the environment, as an operator's script would.
fn armada_cli(address: &str, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_armada"));
    command.args(args).args(["--address", address]);
    command
        .env_remove("ARMADA_TOKEN")
        .env_remove("ARMADA_ADDRESS");
    if let Some(token) = token {
        command.env("ARMADA_TOKEN", token);
    }
    command.output().expect("run armada")
}

fn assert_success(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "armada failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_failure(output: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected a failure: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in the error: {stderr}"
    );
}

async fn client(node: &Armada, token: Option<&str>) -> Client {
    Client::connect_with(
        &node.api,
        &ConnectOptions {
            token: token.map(str::to_string),
            timeout: Some(Duration::from_secs(60)),
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("connect")
}

/// Every key and value of `table` as this node serves it (serializable: its own replica).
async fn read_table(client: &Client, table: &str) -> Contents {
    let mut stream = client
        .iterate_range(RangeRequest {
            table: table.as_bytes().to_vec().into(),
            key: vec![0].into(),
            range_end: vec![0].into(),
            ..RangeRequest::default()
        })
        .await
        .expect("iterate");
    let mut contents = Contents::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        for kv in chunk.expect("chunk").kvs {
            contents.insert(kv.key.to_vec(), kv.value.to_vec());
        }
    }
    contents
}

async fn put_all(client: &Client, table: &str, contents: &Contents) {
    let ops: Vec<mvcc::RequestOp> = contents
        .iter()
        .map(|(key, value)| put_op(key, value))
        .collect();
    for batch in ops.chunks(100) {
        client
            .txn(TxnRequest {
                table: table.as_bytes().to_vec().into(),
                success: batch.to_vec(),
                ..TxnRequest::default()
            })
            .await
            .expect("txn");
    }
}

fn put_op(key: &[u8], value: &[u8]) -> mvcc::RequestOp {
    mvcc::RequestOp {
        request: Some(mvcc::request_op::Request::RequestPut(
            mvcc::request_op::Put {
                key: key.to_vec().into(),
                value: value.to_vec().into(),
                prev_kv: false,
            },
        )),
    }
}

/// (content hash, revision) of every table a node reports.
async fn table_states(client: &Client) -> BTreeMap<String, (String, u64)> {
    client
        .status(false)
        .await
        .expect("status")
        .tables
        .into_iter()
        .map(|(name, table)| (name, (table.content_hash, table.revision)))
        .collect()
}

/// Waits until every node reports the same content hash for `table`.
async fn converged(clients: &[Client], table: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut hashes = Vec::new();
        for client in clients {
            hashes.push(
                table_states(client)
                    .await
                    .get(table)
                    .map(|(hash, _)| hash.clone()),
            );
        }
        if let Some(Some(first)) = hashes.first()
            && hashes.iter().all(|hash| hash.as_ref() == Some(first))
        {
            return first.clone();
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge on {table}: {hashes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keys(prefix: &str, count: usize, value: &str) -> Contents {
    (0..count)
        .map(|i| {
            (
                format!("{prefix}{i:06}").into_bytes(),
                format!("{value}-{i}").into_bytes(),
            )
        })
        .collect()
}

fn read_manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    assert!(text.ends_with('\n') && text.trim_end().lines().count() == 1);
    serde_json::from_str(&text).expect("manifest json")
}

fn decode_file(path: &Path) -> (Contents, Vec<mvcc::Command>) {
    let bytes = std::fs::read(path).expect("bak file");
    let mut contents = Contents::new();
    let mut commands = Vec::new();
    regatta_dump::read_commands(bytes.as_slice(), |command| {
        let kv = command.kv.clone().expect("kv");
        contents.insert(kv.key.to_vec(), kv.value.to_vec());
        commands.push(command);
    });
    (contents, commands)
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_then_restore_on_three_nodes_brings_back_exactly_the_backup() {
    let token_flag = ["--maintenance.token", TOKEN];
    let cluster = Cluster::start(3, &token_flag);
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        clients.push(client(node, Some(TOKEN)).await);
    }
    let leader = &clients[0];
    for table in ["alpha", "beta", "empty"] {
        leader.create_table(table).await.expect("create");
    }
    let alpha = keys("a/", 300, "v1");
    let beta = keys("b/", 40, "v1");
    put_all(leader, "alpha", &alpha).await;
    put_all(leader, "beta", &beta).await;
    // A deleted key is not part of the backup.
    leader.put("beta", "gone", "x", false).await.expect("put");
    leader
        .delete_range(armada_proto::regatta::v1::DeleteRangeRequest {
            table: "beta".into(),
            key: "gone".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    for table in ["alpha", "beta", "empty"] {
        converged(&clients, table).await;
    }
    let revision_before = table_states(leader).await["alpha"].1;

    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("utf-8");
    let node2 = &cluster.node(2).api;
    assert_failure(
        &armada_cli(node2, None, &["backup", "--dir", dir_arg]),
        "Unauthenticated",
    );
    assert!(!dir.path().join("manifest.json").exists());
    let output = assert_success(&armada_cli(
        node2,
        Some(TOKEN),
        &["backup", "--dir", dir_arg, "--json"],
    ));
    let summary: serde_json::Value = serde_json::from_str(&output).expect("json summary");
    assert_eq!(summary["tables"].as_array().expect("tables").len(), 3);

    let manifest = read_manifest(dir.path());
    let tables = manifest["tables"].as_array().expect("tables");
    let names: Vec<&str> = tables.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta", "empty"], "sorted by name");
    for table in tables {
        let bytes =
            std::fs::read(dir.path().join(table["file_name"].as_str().unwrap())).expect("file");
        assert_eq!(table["md5"], md5_hex(&bytes));
        assert_eq!(table["sha256"], sha256_hex(&bytes));
        assert!(
            table["revision"].as_u64().is_some_and(|r| r >= 1),
            "{table}"
        );
    }
    assert!(manifest["started"].as_str().unwrap() <= manifest["finished"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(dir.path().join("empty.bak"))
            .unwrap()
            .len(),
        0,
        "an empty table is an empty file, as in Regatta"
    );
    assert_eq!(decode_file(&dir.path().join("alpha.bak")).0, alpha);
    let (beta_file, beta_commands) = decode_file(&dir.path().join("beta.bak"));
    assert_eq!(beta_file, beta);
    assert!(beta_commands.iter().all(|c| c.table.as_ref() == b"beta"));
    assert!(
        tables[0]["revision"]
            .as_u64()
            .is_some_and(|revision| revision >= revision_before),
        "the revision the dump observed: {}",
        tables[0]
    );

    // Diverge: new keys, overwritten keys, deleted keys, keys in the empty table.
    let mut extra = keys("a/", 350, "v2");
    extra.retain(|key, _| key.as_slice() >= b"a/000250".as_slice());
    put_all(leader, "alpha", &extra).await;
    put_all(leader, "empty", &keys("e/", 5, "x")).await;
    leader
        .delete_range(armada_proto::regatta::v1::DeleteRangeRequest {
            table: "beta".into(),
            key: "b/".into(),
            range_end: "b/000010".into(),
            ..Default::default()
        })
        .await
        .expect("delete");

    assert_failure(
        &armada_cli(node2, Some("wrong"), &["restore", "--dir", dir_arg]),
        "Unauthenticated",
    );
    assert_success(&armada_cli(
        &cluster.node(3).api,
        Some(TOKEN),
        &["restore", "--dir", dir_arg],
    ));
    let expected = [
        ("alpha", alpha.clone()),
        ("beta", beta.clone()),
        ("empty", Contents::new()),
    ];
    for (table, contents) in &expected {
        converged(&clients, table).await;
        for (index, client) in clients.iter().enumerate() {
            assert_eq!(
                &read_table(client, table).await,
                contents,
                "table {table} on node {}",
                index + 1
            );
        }
    }
    // Fresh revisions: the restored keys are newer than anything before the restore.
    let restored = leader.get("alpha", "a/000000").await.expect("get");
    assert!(restored.kvs[0].mod_revision as u64 > revision_before);

    // --tables restores only what it names.
    put_all(leader, "alpha", &keys("z/", 3, "later")).await;
    put_all(leader, "beta", &keys("z/", 3, "later")).await;
    assert_success(&armada_cli(
        node2,
        Some(TOKEN),
        &["restore", "--dir", dir_arg, "--tables", "beta"],
    ));
    converged(&clients, "beta").await;
    assert_eq!(read_table(leader, "beta").await, beta);
    assert_eq!(read_table(leader, "alpha").await.len(), alpha.len() + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_needs_the_token_and_names_unknown_tables() {
    let temp = tempfile::tempdir().expect("tempdir");
    let armada = Armada::start_in(temp.path(), &["--maintenance.token", TOKEN]);
    armada.create_table("t").await;
    for token in [None, Some("wrong")] {
        let client = client(&armada, token).await;
        let backup = client.backup("t").await.err().expect("refused");
        assert_eq!(backup.code(), Some(Code::Unauthenticated), "{backup}");
        let restore = client
            .restore(
                "t",
                futures::stream::empty::<std::io::Result<armada_client::Bytes>>(),
            )
            .await
            .expect_err("refused");
        assert_eq!(restore.code(), Some(Code::Unauthenticated), "{restore}");
        let reset = client
            .maintenance()
            .reset(ResetRequest {
                table: "t".into(),
                reset_all: false,
            })
            .await
            .expect_err("refused");
        assert_eq!(reset.code(), Code::Unauthenticated);
    }
    let client = client(&armada, Some(TOKEN)).await;
    let unknown = client.backup("nope").await.err().expect("unknown table");
    assert_eq!(unknown.code(), Some(Code::NotFound), "{unknown}");
    let reset = client
        .maintenance()
        .reset(ResetRequest {
            table: "t".into(),
            reset_all: false,
        })
        .await
        .expect_err("leader cluster");
    assert_eq!(reset.code(), Code::Unimplemented);
    assert!(reset.message().contains("follower"), "{}", reset.message());
    // An empty table backs up as zero bytes.
    let backup = client.backup("t").await.expect("backup");
    let chunks: Vec<_> = futures::StreamExt::collect(backup.chunks).await;
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk.as_ref().expect("chunk").is_empty())
    );
    // The CLI's other ways to give the token: --token.
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = path_str(dir.path());
    assert_success(&armada_cli(
        &armada.api,
        None,
        &["backup", "--token", TOKEN, "--dir", dir_arg],
    ));
    assert!(dir.path().join("manifest.json").exists());
    // A run that fails at its first table leaves the previous backup as it was...
    let previous = std::fs::read(dir.path().join("manifest.json")).expect("manifest");
    assert_failure(
        &armada_cli(
            &armada.api,
            Some(TOKEN),
            &["backup", "--dir", dir_arg, "--tables", "a-missing,t"],
        ),
        "table a-missing: NotFound",
    );
    assert_eq!(
        std::fs::read(dir.path().join("manifest.json")).expect("manifest"),
        previous
    );
    // ...and so does one that fails half-way (the second table does not exist): nothing is
    // moved into place before every table is complete, and no partial file is left.
    assert_failure(
        &armada_cli(
            &armada.api,
            Some(TOKEN),
            &["backup", "--dir", dir_arg, "--tables", "t,zz-missing"],
        ),
        "table zz-missing: NotFound",
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|entry| entry.expect("entry").file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "t.bak"]);
    assert_eq!(
        std::fs::read(dir.path().join("manifest.json")).expect("manifest"),
        previous
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_a_writer_runs_is_one_point_in_time() {
    let armada = Armada::start();
    armada.create_table("counters").await;
    let client = client(&armada, None).await;
    // Filler makes the dump span many chunks, so the writer has time to commit meanwhile.
    let filler: Contents = (0..400)
        .map(|i| (format!("filler/{i:04}").into_bytes(), vec![b'f'; 8 * 1024]))
        .collect();
    put_all(&client, "counters", &filler).await;
    const COUNTERS: usize = 64;
    let writer_client = client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (writer_stop, writer_committed) = (stop.clone(), committed.clone());
    let writer = tokio::spawn(async move {
        let mut round = 0u64;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            round += 1;
            let ops = (0..COUNTERS)
                .map(|i| put_op(format!("counter/{i:02}").as_bytes(), &round.to_be_bytes()))
                .collect();
            writer_client
                .txn(TxnRequest {
                    table: "counters".into(),
                    success: ops,
                    ..TxnRequest::default()
                })
                .await
                .expect("txn");
            writer_committed.store(round, std::sync::atomic::Ordering::Relaxed);
        }
        round
    });
    let mut seen_rounds: Vec<u64> = Vec::new();
    for _ in 0..5 {
        // Each backup starts after a round newer than the previous backup's was committed.
        let newer_than = seen_rounds.last().copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while committed.load(std::sync::atomic::Ordering::Relaxed) <= newer_than {
            assert!(Instant::now() < deadline, "the writer stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let backup = client.backup("counters").await.expect("backup");
        let revision = backup.revision;
        let bytes: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(backup.chunks)
            .await
            .into_iter()
            .flat_map(|chunk| chunk.expect("chunk").to_vec())
            .collect();
        let mut counters = Vec::new();
        regatta_dump::read_commands(bytes.as_slice(), |command| {
            let kv = command.kv.expect("kv");
            if kv.key.starts_with(b"counter/") {
                counters.push((kv.value.to_vec(), kv.mod_revision));
            }
        });
        assert_eq!(counters.len(), COUNTERS, "every counter is in the backup");
        assert!(
            counters.windows(2).all(|pair| pair[0] == pair[1]),
            "one txn's writes, all or none: {counters:?}"
        );
        let mod_revision = counters[0].1 as u64;
        assert!(
            revision.is_some_and(|revision| revision >= mod_revision),
            "{revision:?} < {mod_revision}"
        );
        seen_rounds.push(u64::from_be_bytes(
            counters[0].0.clone().try_into().unwrap(),
        ));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.await.expect("writer");
    assert!(
        seen_rounds.windows(2).all(|pair| pair[0] < pair[1]),
        "writes continued during the backups: {seen_rounds:?} of {rounds}"
    );
}

/// A directory copy to damage.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
    }
    to
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut manifest = read_manifest(dir);
    edit(&mut manifest);
    std::fs::write(
        dir.join("manifest.json"),
        format!("{}\n", serde_json::to_string(&manifest).unwrap()),
    )
    .expect("write manifest");
}

/// Something done to a copy of a good backup directory.
type Damage = Box<dyn Fn(&Path)>;

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_backup_is_refused_before_any_table_is_touched() {
    let armada = Armada::start();
    let client = client(&armada, None).await;
    for table in ["a", "b"] {
        client.create_table(table).await.expect("create");
        put_all(&client, table, &keys("k", 200, table)).await;
    }
    let good = tempfile::tempdir().expect("tempdir");
    assert_success(&armada_cli(
        &armada.api,
        None,
        &["backup", "--dir", path_str(good.path())],
    ));
    // Diverge from the backup, so that a restore would be visible.
    for table in ["a", "b"] {
        put_all(&client, table, &keys("new", 3, table)).await;
    }
    let before = table_states(&client).await;

    let damaged: Vec<(&str, Damage, &str, Vec<&str>)> = vec![
        (
            "flipped byte",
            Box::new(|dir: &Path| {
                let path = dir.join("b.bak");
                let mut bytes = std::fs::read(&path).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                std::fs::write(&path, bytes).unwrap();
            }),
            "table b file b.bak corrupted (md5 checksum mismatch)",
            vec![],
        ),
        (
            "truncated file",
            Box::new(|dir: &Path| {
                let path = dir.join("b.bak");
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
            }),
            "checksum mismatch",
            vec![],
        ),
        (
            "wrong md5",
            Box::new(|dir: &Path| {
                edit_manifest(dir, |m| {
                    m["tables"][1]["md5"] = "0123456789abcdef0123456789abcdef".into()
                })
            }),
            "md5 checksum mismatch",
            vec![],
        ),
        (
            "wrong sha256",
            Box::new(|dir: &Path| {
                edit_manifest(dir, |m| m["tables"][1]["sha256"] = "ab".repeat(32).into())
            }),
            "sha256 checksum mismatch",
            vec![],
        ),
        (
            "missing file",
            Box::new(|dir: &Path| std::fs::remove_file(dir.join("b.bak")).unwrap()),
            "is missing",
            vec![],
        ),
        (
            "missing manifest",
            Box::new(|dir: &Path| std::fs::remove_file(dir.join("manifest.json")).unwrap()),
            "manifest.json",
            vec![],
        ),
        (
            "invalid table name",
            Box::new(|dir: &Path| {
                edit_manifest(dir, |m| m["tables"][1]["name"] = "no/such table".into())
            }),
            "invalid table name",
            vec![],
        ),
        (
            "file outside the directory",
            Box::new(|dir: &Path| {
                edit_manifest(dir, |m| m["tables"][1]["file_name"] = "../b.bak".into())
            }),
            "not a plain file name",
            vec![],
        ),
        (
            "table listed twice",
            Box::new(|dir: &Path| edit_manifest(dir, |m| m["tables"][1]["name"] = "a".into())),
            "listed twice",
            vec![],
        ),
        (
            "--tables names a table the manifest lacks",
            Box::new(|_: &Path| {}),
            "does not list: nope",
            vec!["--tables", "a,nope"],
        ),
        (
            "--tables names an invalid table",
            Box::new(|_: &Path| {}),
            "invalid table name \"../a\"",
            vec!["--tables", "../a"],
        ),
        (
            "checksums right, dump wrong",
            Box::new(|dir: &Path| {
                // A hand-made file that is not a dump, with a manifest that matches it.
                let bytes = b"\xff\x06\x00\x00sNaPpYnot a chunk".to_vec();
                std::fs::write(dir.join("b.bak"), &bytes).unwrap();
                edit_manifest(dir, |m| {
                    m["tables"][1]["md5"] = md5_hex(&bytes).into();
                    m["tables"][1]["sha256"] = sha256_hex(&bytes).into();
                });
            }),
            "table b file b.bak is not a valid dump: record 1",
            vec![],
        ),
    ];
    for (case, damage, message, extra_args) in damaged {
        let dir = copy_dir(good.path());
        damage(dir.path());
        let mut args = vec!["restore", "--dir", path_str(dir.path())];
        args.extend(extra_args);
        let output = armada_cli(&armada.api, None, &args);
        assert!(!output.status.success(), "{case}: restore succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{case}: {stderr}");
        assert_eq!(
            table_states(&client).await,
            before,
            "{case}: a table changed"
        );
    }
}

fn chunk_message(data: Vec<u8>) -> RestoreMessage {
    RestoreMessage {
        data: Some(restore_message::Data::Chunk(SnapshotChunk {
            len: data.len() as u64,
            data: data.into(),
            index: 0,
        })),
    }
}

fn info_message(table: &str) -> RestoreMessage {
    RestoreMessage {
        data: Some(restore_message::Data::Info(RestoreInfo {
            table: table.as_bytes().to_vec().into(),
        })),
    }
}

/// The server checks the whole stream itself (clients other than ours exist).
#[tokio::test(flavor = "multi_thread")]
async fn the_server_refuses_an_invalid_restore_stream_and_changes_nothing() {
    let armada = Armada::start();
    let client = client(&armada, None).await;
    client.create_table("t").await.expect("create");
    put_all(&client, "t", &keys("k", 20, "v")).await;
    let before = table_states(&client).await;

    let valid = regatta_dump::encode("t", &keys("r", 50, "restored"));
    let mut flipped = valid.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x10;
    let out_of_order = {
        let mut writer = regatta_dump::Writer::new(Vec::new());
        writer.put("t", b"b", b"1");
        writer.put("t", b"a", b"2");
        writer.finish()
    };
    let delete_record = {
        let mut writer = regatta_dump::Writer::new(Vec::new());
        writer.put("t", b"a", b"1");
        writer.command(&mvcc::Command {
            table: "t".into(),
            r#type: mvcc::command::CommandType::Delete as i32,
            kv: Some(mvcc::KeyValue {
                key: "a".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        writer.finish()
    };
    let empty_key = {
        let mut writer = regatta_dump::Writer::new(Vec::new());
        writer.put("t", b"", b"hidden");
        writer.finish()
    };
    let cases: Vec<(&str, Vec<RestoreMessage>, &str)> = vec![
        (
            "flipped byte",
            vec![info_message("t"), chunk_message(flipped)],
            "record 1",
        ),
        (
            "truncated",
            vec![
                info_message("t"),
                chunk_message(valid[..valid.len() - 7].to_vec()),
            ],
            "record 1",
        ),
        (
            "keys out of order",
            vec![info_message("t"), chunk_message(out_of_order)],
            "record 2: keys out of order",
        ),
        (
            "a DELETE record",
            vec![info_message("t"), chunk_message(delete_record)],
            "record 2: DELETE record",
        ),
        (
            "an empty key",
            vec![info_message("t"), chunk_message(empty_key)],
            "record 1: empty key",
        ),
        (
            "no info first",
            vec![chunk_message(valid.clone())],
            "first message",
        ),
        (
            "a second info",
            vec![info_message("t"), info_message("t")],
            "a chunk was expected",
        ),
        (
            "an invalid table name",
            vec![info_message("bad name"), chunk_message(valid.clone())],
            "info.table",
        ),
        (
            "len disagrees with the data",
            vec![
                info_message("t"),
                RestoreMessage {
                    data: Some(restore_message::Data::Chunk(SnapshotChunk {
                        len: 3,
                        data: valid.clone().into(),
                        index: 0,
                    })),
                },
            ],
            "len is 3",
        ),
    ];
    for (case, messages, expected) in cases {
        let status = client
            .maintenance()
            .restore(futures::stream::iter(messages))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{case}: {}",
            status.message()
        );
        assert_eq!(table_states(&client).await, before, "{case}: t changed");
    }

    // The same stream, valid, with the final DUMMY a Snapshot.Stream dump carries: restored,
    // and the DUMMY writes nothing (no hidden empty key).
    let restored_contents = keys("r", 50, "restored");
    let with_dummy = {
        let mut writer = regatta_dump::Writer::new(Vec::new());
        for (key, value) in &restored_contents {
            writer.put("t", key, value);
        }
        writer.command(&mvcc::Command {
            table: "t".into(),
            r#type: mvcc::command::CommandType::Dummy as i32,
            leader_index: Some(12345),
            ..Default::default()
        });
        writer.finish()
    };
    let pieces: Vec<RestoreMessage> = std::iter::once(info_message("t"))
        .chain(
            with_dummy
                .chunks(100)
                .map(|piece| chunk_message(piece.to_vec())),
        )
        .collect();
    let response = client
        .maintenance()
        .restore(futures::stream::iter(pieces))
        .await
        .expect("restore");
    let revision: u64 = response
        .metadata()
        .get("armada-revision")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("armada-revision header");
    assert!(revision > before["t"].1);
    assert_eq!(read_table(&client, "t").await, restored_contents);
    let count = client
        .range(RangeRequest {
            table: "t".into(),
            key: vec![0].into(),
            range_end: vec![0].into(),
            count_only: true,
            ..RangeRequest::default()
        })
        .await
        .expect("count");
    assert_eq!(count.count, 50);
    // Unknown table: the backup API says NotFound, a restore creates it.
    let backup = client
        .maintenance()
        .backup(BackupRequest {
            table: "created".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(backup.code(), Code::NotFound);
    client
        .restore(
            "created",
            futures::stream::iter([Ok::<_, std::io::Error>(bytes_of(&valid))]),
        )
        .await
        .expect("restore into a new table");
    assert_eq!(
        read_table(&client, "created").await,
        keys("r", 50, "restored")
    );
}

fn bytes_of(data: &[u8]) -> armada_client::Bytes {
    armada_client::Bytes::copy_from_slice(data)
}

/// A backup directory written by hand in Regatta's layout restores into Armada; Armada's
/// backup of the same tables reads back with the independent decoder.
#[tokio::test(flavor = "multi_thread")]
async fn regatta_backups_restore_and_armada_backups_read_as_regatta() {
    let armada = Armada::start();
    let client = client(&armada, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // "config": small values; "blobs": incompressible values spanning many framing chunks
    // (uncompressed chunks); "void": an empty table (a zero-byte file).
    let config = keys("cfg/", 500, "value");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let blobs: Contents = (0..40)
        .map(|i| {
            let value: Vec<u8> = (0..20_000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            (format!("blob{i:03}").into_bytes(), value)
        })
        .collect();
    let mut entries = Vec::new();
    for (name, contents) in [
        ("blobs", &blobs),
        ("config", &config),
        ("void", &Contents::new()),
    ] {
        let bytes = regatta_dump::encode(name, contents);
        std::fs::write(dir.path().join(format!("{name}.bak")), &bytes).expect("write");
        entries.push(format!(
            r#"{{"name":"{name}","file_name":"{name}.bak","md5":"{}","type":"REPLICATED"}}"#,
            md5_hex(&bytes)
        ));
    }
    std::fs::write(
        dir.path().join("manifest.json"),
        format!(
            "{{\"started\":\"2024-05-06T07:08:09.123456789Z\",\"finished\":\"2024-05-06T07:08:10.5Z\",\"tables\":[{}]}}\n",
            entries.join(",")
        ),
    )
    .expect("manifest");
    // "config" exists and differs; "blobs" and "void" do not exist yet.
    client.create_table("config").await.expect("create");
    put_all(&client, "config", &keys("old/", 10, "old")).await;

    assert_success(&armada_cli(
        &armada.api,
        None,
        &["restore", "--dir", path_str(dir.path())],
    ));
    assert_eq!(read_table(&client, "config").await, config);
    assert_eq!(read_table(&client, "blobs").await, blobs);
    assert_eq!(read_table(&client, "void").await, Contents::new());

    let backup = tempfile::tempdir().expect("tempdir");
    assert_success(&armada_cli(
        &armada.api,
        None,
        &[
            "backup",
            "--dir",
            path_str(backup.path()),
            "--tables",
            "blobs,config,void",
        ],
    ));
    // What a Regatta reader needs: name, file_name and md5 of every file; records in key
    // order with table, PUT and key/value.
    let manifest = read_manifest(backup.path());
    for (table, contents) in [
        ("blobs", &blobs),
        ("config", &config),
        ("void", &Contents::new()),
    ] {
        let entry = manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["name"] == table)
            .expect("listed");
        let path = backup.path().join(entry["file_name"].as_str().unwrap());
        assert_eq!(entry["md5"], md5_hex(&std::fs::read(&path).unwrap()));
        let (decoded, commands) = decode_file(&path);
        assert_eq!(&decoded, contents, "{table}");
        let keys: Vec<_> = commands.iter().map(|c| c.kv.clone().unwrap().key).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "key order");
        assert!(commands.iter().all(|command| {
            command.table.as_ref() == table.as_bytes()
                && command.r#type == mvcc::command::CommandType::Put as i32
        }));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_keys_round_trip() {
    let armada = Armada::start();
    let client = client(&armada, None).await;
    client.create_table("big").await.expect("create");
    let contents: Contents = (0..100_000u32)
        .map(|i| {
            (
                format!("key/{:08}", i.wrapping_mul(2_654_435_761)).into_bytes(),
                format!("value-{i}").into_bytes(),
            )
        })
        .collect();
    // Concurrent txns of 100 puts: the load takes seconds, not minutes.
    let batches: Vec<Contents> = contents
        .iter()
        .collect::<Vec<_>>()
        .chunks(10_000)
        .map(|chunk| {
            chunk
                .iter()
                .map(|(key, value)| ((*key).clone(), (*value).clone()))
                .collect()
        })
        .collect();
    let mut writers = Vec::new();
    for batch in batches {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            put_all(&client, "big", &batch).await
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert_success(&armada_cli(
        &armada.api,
        None,
        &["backup", "--dir", path_str(dir.path())],
    ));
    assert_eq!(decode_file(&dir.path().join("big.bak")).0, contents);
    put_all(&client, "big", &keys("later/", 100, "x")).await;
    assert_success(&armada_cli(
        &armada.api,
        None,
        &["restore", "--dir", path_str(dir.path())],
    ));
    assert_eq!(read_table(&client, "big").await, contents);
}

/// Waits until the follower holds exactly the leader's `table`: same content hash (keys,
/// values and revisions) and revision.
async fn follower_converged(leader: &Client, follower: &Client, table: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let expected = table_states(leader).await.get(table).cloned();
        let actual = table_states(follower).await.get(table).cloned();
        if expected.is_some() && expected == actual {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not converge on {table}: leader {expected:?}, follower {actual:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A restore on the leader cluster reaches follower clusters (fresh revisions included);
/// followers serve Reset and refuse Backup and Restore.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_reaches_follower_clusters_which_serve_reset_only() {
    let token = ["--maintenance.token", TOKEN];
    let leader_cluster = Cluster::start(1, &token);
    let follower_cluster = Cluster::start_follower(1, &leader_cluster.node(1).replication, &token);
    let leader = client(leader_cluster.node(1), Some(TOKEN)).await;
    let follower = client(follower_cluster.node(1), Some(TOKEN)).await;
    leader.create_table("t").await.expect("create");
    let backed_up = keys("k", 50, "v1");
    put_all(&leader, "t", &backed_up).await;
    follower_converged(&leader, &follower, "t").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = path_str(dir.path());
    let leader_api = &leader_cluster.node(1).api;
    assert_success(&armada_cli(
        leader_api,
        Some(TOKEN),
        &["backup", "--dir", dir_arg],
    ));
    put_all(&leader, "t", &keys("k", 80, "v2")).await;
    follower_converged(&leader, &follower, "t").await;
    assert_success(&armada_cli(
        leader_api,
        Some(TOKEN),
        &["restore", "--dir", dir_arg],
    ));
    follower_converged(&leader, &follower, "t").await;
    assert_eq!(read_table(&follower, "t").await, backed_up);

    // Backup and Restore belong to the leader cluster.
    let follower_api = &follower_cluster.node(1).api;
    assert_failure(
        &armada_cli(follower_api, Some(TOKEN), &["backup", "--dir", dir_arg]),
        "Unimplemented",
    );
    assert_failure(
        &armada_cli(follower_api, Some(TOKEN), &["restore", "--dir", dir_arg]),
        "Unimplemented",
    );
    // Reset: token checked, table named, the table rebuilt from the leader.
    let reset = |table: &str, reset_all: bool| ResetRequest {
        table: table.as_bytes().to_vec().into(),
        reset_all,
    };
    let anonymous = client(follower_cluster.node(1), None).await;
    let refused = anonymous.maintenance().reset(reset("t", false)).await;
    assert_eq!(refused.expect_err("no token").code(), Code::Unauthenticated);
    let unnamed = follower.maintenance().reset(reset("", false)).await;
    assert_eq!(unnamed.expect_err("no table").code(), Code::InvalidArgument);
    let unknown = follower.maintenance().reset(reset("nope", false)).await;
    assert_eq!(unknown.expect_err("unknown").code(), Code::NotFound);
    follower
        .maintenance()
        .reset(reset("t", false))
        .await
        .expect("reset");
    follower_converged(&leader, &follower, "t").await;
    follower
        .maintenance()
        .reset(reset("", true))
        .await
        .expect("reset all");
    follower_converged(&leader, &follower, "t").await;
    assert_eq!(read_table(&follower, "t").await, backed_up);
}

/// A memory figure of a process from `/proc/<pid>/status` (`VmHWM` peak, `VmRSS` now), bytes.
fn memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One measured CLI run.
struct Measured {
    output: std::process::Output,
    seconds: f64,
    /// Peak RSS of the CLI process.
    cli_peak: u64,
    /// The server's RSS when the run started and the most it reached during the run.
    server_before: u64,
    server_peak: u64,
}

/// Runs the CLI, sampling its peak RSS and the server's RSS every 20 ms until it exits.
fn measured_cli(address: &str, args: &[&str], server: u32) -> Measured {
    let server_before = memory(server, "VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(args)
        .args(["--address", address])
        .env_remove("ARMADA_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler_done = done.clone();
    let sampler = std::thread::spawn(move || {
        let (mut cli, mut server_peak) = (0, 0);
        while !sampler_done.load(std::sync::atomic::Ordering::Relaxed) {
            cli = cli.max(memory(pid, "VmHWM:").unwrap_or(0));
            server_peak = server_peak.max(memory(server, "VmRSS:").unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        (cli, server_peak)
    });
    let output = child.wait_with_output().expect("wait");
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (cli_peak, server_peak) = sampler.join().expect("sampler");
    Measured {
        output,
        seconds,
        cli_peak,
        server_before,
        server_peak,
    }
}

/// A table of `ARMADA_BACKUP_BENCH_MB` (default 500) MiB: restore (from a hand-written
/// Regatta-layout directory) then backup, with throughput and peak RSS of server and CLI.
/// Not in CI: run `bench/backup-restore.sh`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "large: run bench/backup-restore.sh"]
async fn large_table_round_trip_with_flat_memory() {
    let megabytes: u64 = std::env::var("ARMADA_BACKUP_BENCH_MB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(500);
    const VALUE_BYTES: usize = 16 * 1024;
    let keys = megabytes * 1024 * 1024 / VALUE_BYTES as u64;
    let work = tempfile::tempdir_in(
        std::env::var_os("ARMADA_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
    )
    .expect("tempdir");
    let data_dir = work.path().join("node");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let armada = Armada::start_in(&data_dir, &[]);
    let server_at_start = memory(armada.pid(), "VmHWM:").unwrap_or(0);

    let source = work.path().join("source");
    std::fs::create_dir_all(&source).expect("dir");
    let file = std::fs::File::create(source.join("large.bak")).expect("create");
    let mut writer = regatta_dump::Writer::new(std::io::BufWriter::new(file));
    for index in 0..keys {
        writer.put(
            "large",
            format!("key/{index:010}").as_bytes(),
            &common::incompressible(index, VALUE_BYTES),
        );
    }
    drop(writer.finish());
    let bytes = std::fs::read(source.join("large.bak")).expect("read");
    let file_bytes = bytes.len() as u64;
    std::fs::write(
        source.join("manifest.json"),
        format!(
            "{{\"started\":\"\",\"finished\":\"\",\"tables\":[{{\"name\":\"large\",\"file_name\":\"large.bak\",\"md5\":\"{}\"}}]}}\n",
            md5_hex(&bytes)
        ),
    )
    .expect("manifest");
    drop(bytes);

    let restore = measured_cli(
        &armada.api,
        &["restore", "--dir", path_str(&source)],
        armada.pid(),
    );
    assert_success(&restore.output);
    let backup_dir = work.path().join("backup");
    let backup = measured_cli(
        &armada.api,
        &["backup", "--dir", path_str(&backup_dir)],
        armada.pid(),
    );
    assert_success(&backup.output);
    let server_peak = memory(armada.pid(), "VmHWM:").unwrap_or(0);

    // Everything came back, in order.
    let file = std::fs::File::open(backup_dir.join("large.bak")).expect("backup file");
    let mut next = 0u64;
    regatta_dump::read_commands(std::io::BufReader::new(file), |command| {
        let kv = command.kv.expect("kv");
        assert_eq!(kv.key.as_ref(), format!("key/{next:010}").as_bytes());
        assert!(kv.value.as_ref() == common::incompressible(next, VALUE_BYTES).as_slice());
        next += 1;
    });
    assert_eq!(next, keys);
    let backup_bytes = std::fs::metadata(backup_dir.join("large.bak"))
        .expect("size")
        .len();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "large table: {keys} keys of {VALUE_BYTES} B, restore file {:.0} MiB, backup file {:.0} MiB",
        mib(file_bytes),
        mib(backup_bytes)
    );
    for (what, run, bytes) in [
        ("restore", &restore, file_bytes),
        ("backup", &backup, backup_bytes),
    ] {
        println!(
            "{what}: {:.1} s, {:.1} MB/s, CLI peak RSS {:.0} MiB, server RSS {:.0} MiB before, {:.0} MiB at most during",
            run.seconds,
            bytes as f64 / 1e6 / run.seconds,
            mib(run.cli_peak),
            mib(run.server_before),
            mib(run.server_peak)
        );
    }
    println!(
        "server peak RSS (VmHWM): {:.0} MiB after start, {:.0} MiB at the end",
        mib(server_at_start),
        mib(server_peak)
    );
    // Flat memory: neither CLI holds anything near the table's size, and a backup does not
    // grow the server by more than its buffers and the storage engine's caches.
    assert!(restore.cli_peak < 100 * 1024 * 1024, "CLI restore RSS");
    assert!(backup.cli_peak < 100 * 1024 * 1024, "CLI backup RSS");
    assert!(
        backup.server_peak < backup.server_before + 100 * 1024 * 1024,
        "the server grew during the backup"
    );
}

/// The files of a directory, hidden ones included, sorted.
fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Table names up to the limit (255 bytes) back up under a file name that fits (a hashed one
/// past 251 bytes, recorded in the manifest; `<table>.bak` up to 251, even though the old
/// temporary `.<table>.bak.partial` did not fit from 246 on) and restore from it; a run that
/// fails halfway leaves the previous backup as it was, with no partial file beside it.
#[tokio::test(flavor = "multi_thread")]
async fn long_table_names_round_trip_and_a_failed_backup_keeps_the_previous_one() {
    let armada = Armada::start();
    let client = client(&armada, None).await;
    let longest = "l".repeat(255);
    let long = format!("{}-246", "m".repeat(242));
    let fitting = "f".repeat(251);
    let mut tables = BTreeMap::new();
    for (name, prefix) in [(&longest, "a/"), (&long, "b/"), (&fitting, "c/")] {
        client.create_table(name).await.expect("create");
        let contents = keys(prefix, 50, "v1");
        put_all(&client, name, &contents).await;
        tables.insert(name.clone(), contents);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = |tables: &str| {
        armada_cli(
            &armada.api,
            None,
            &["backup", "--dir", path_str(dir.path()), "--tables", tables],
        )
    };
    assert_success(&backup(&format!("{longest},{long},{fitting}")));
    let manifest = read_manifest(dir.path());
    let mut listed = Vec::new();
    for entry in manifest["tables"].as_array().expect("tables") {
        let name = entry["name"].as_str().expect("name");
        let file_name = entry["file_name"].as_str().expect("file_name");
        assert!(file_name.len() <= 255, "{file_name}");
        if name.len() + ".bak".len() <= 255 {
            assert_eq!(
                file_name,
                format!("{name}.bak"),
                "Regatta's name when it fits"
            );
        } else {
            assert!(
                file_name.contains('~') && file_name.ends_with(".bak"),
                "{file_name}"
            );
        }
        let (decoded, _) = decode_file(&dir.path().join(file_name));
        assert_eq!(decoded, tables[name], "{name}");
        listed.push(file_name.to_string());
    }
    listed.push("manifest.json".into());
    listed.sort();
    assert_eq!(
        dir_entries(dir.path()),
        listed,
        "only the files and the manifest"
    );

    // The restore finds every file through the manifest's file_name.
    for name in tables.keys() {
        put_all(&client, name, &keys("z/", 5, "later")).await;
    }
    assert_success(&armada_cli(
        &armada.api,
        None,
        &["restore", "--dir", path_str(dir.path())],
    ));
    for (name, contents) in &tables {
        assert_eq!(&read_table(&client, name).await, contents, "{name}");
    }

    // A run that fails on its second table ("zz-missing" sorts last) changes
    // nothing in the directory: the previous manifest and files stay, no staging is left.
    let before: Vec<(String, Vec<u8>)> = dir_entries(dir.path())
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.path().join(&name)).expect("read");
            (name, bytes)
        })
        .collect();
    assert_failure(&backup(&format!("{long},zz-missing")), "zz-missing");
    let after: Vec<(String, Vec<u8>)> = dir_entries(dir.path())
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.path().join(&name)).expect("read");
            (name, bytes)
        })
        .collect();
    assert_eq!(after, before, "a failed backup touched the previous one");
}
