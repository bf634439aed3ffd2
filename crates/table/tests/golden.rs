//! Data-driven tests: every `testscripts/*.txt` is a sequence of blocks
//!
//! ```text
//! command args…          (one or more input lines; multi-line commands: txn, sequence, batch)
//! ----
//! expected output…
//!                        (blank line ends the block; `#` lines between blocks are comments)
//! ```
//!
//! Run with `UPDATE_GOLDEN=1` to rewrite the expectations from the actual output (then review
//! the diff). Keys and values are tokens with `\xNN` escapes; `""` is the empty string.
//! Each applied entry consumes the next log index (starting at 2, as with openraft) and, unless
//! `rev=N` is given, uses it as its revision.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

use armada_storage::{LeaderIndex, Revision, Storage, TableId};
use armada_table::pb::command::CommandType;
use armada_table::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use armada_table::pb::request_op::Request;
use armada_table::pb::response_op::Response;
use armada_table::{
    AppliedPosition, ApplyOutcome, CommandOutcome, DumpReader, RangeEnd, RangeQuery, Table,
    TableRole, Txn, pb,
};

mod common;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

const FLAGS: &[&str] = &["prev_kv", "keys_only", "count_only", "flip_byte", "keep"];

fn unescape(token: &str) -> Bytes {
    if token == "\"\"" {
        return Bytes::new();
    }
    let mut out = Vec::new();
    let bytes = token.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') && i + 4 <= bytes.len() {
            out.push(u8::from_str_radix(&token[i + 2..i + 4], 16).expect("bad \\x escape"));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Bytes::from(out)
}

fn escape(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "\"\"".into();
    }
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() && b != b'\\' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// Positional arguments and `key=value` / flag options of one line.
struct Args {
    positional: Vec<String>,
    options: BTreeMap<String, String>,
}

impl Args {
    fn parse(words: &[&str]) -> Args {
        let mut args = Args {
            positional: Vec::new(),
            options: BTreeMap::new(),
        };
        for word in words {
            match word.split_once('=') {
                Some((name, value))
                    if !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
                {
                    args.options.insert(name.into(), value.into());
                }
                _ if FLAGS.contains(word) => {
                    args.options.insert((*word).into(), String::new());
                }
                _ => args.positional.push((*word).into()),
            }
        }
        args
    }
    fn bytes(&self, index: usize) -> Bytes {
        unescape(self.positional.get(index).expect("missing argument"))
    }
    fn opt_bytes(&self, index: usize) -> Option<Bytes> {
        self.positional.get(index).map(|t| unescape(t))
    }
    fn flag(&self, name: &str) -> bool {
        self.options.contains_key(name)
    }
    fn number(&self, name: &str) -> Option<u64> {
        self.options
            .get(name)
            .map(|v| v.parse().expect("bad number"))
    }
}

fn kv_text(kv: &pb::KeyValue) -> String {
    format!(
        "{}={} (c={} m={})",
        escape(&kv.key),
        escape(&kv.value),
        kv.create_revision,
        kv.mod_revision
    )
}

fn response_text(response: &pb::ResponseOp, out: &mut String) {
    match response.response.as_ref().expect("response set") {
        Response::ResponsePut(put) => {
            let prev = put.prev_kv.as_ref().map_or("none".into(), kv_text);
            writeln!(out, "  put prev={prev}").unwrap();
        }
        Response::ResponseDeleteRange(delete) => {
            writeln!(out, "  delete deleted={}", delete.deleted).unwrap();
            for kv in &delete.prev_kvs {
                writeln!(out, "    prev {}", kv_text(kv)).unwrap();
            }
        }
        Response::ResponseRange(range) => {
            writeln!(out, "  range count={} more={}", range.count, range.more).unwrap();
            for kv in &range.kvs {
                writeln!(out, "    {}", kv_text(kv)).unwrap();
            }
        }
    }
}

fn outcome_text(outcome: &ApplyOutcome, out: &mut String) {
    match outcome {
        ApplyOutcome::Rejected(message) => writeln!(out, "rejected: {message}").unwrap(),
        ApplyOutcome::Applied {
            revision, outcome, ..
        } => {
            let succeeded = outcome.succeeded();
            writeln!(out, "applied rev={revision} succeeded={succeeded}").unwrap();
            for response in common::wire_responses(outcome) {
                response_text(&response, out);
            }
        }
    }
}

fn kv(key: Bytes, value: Bytes) -> pb::KeyValue {
    pb::KeyValue {
        key,
        value,
        ..Default::default()
    }
}

/// A simple command from one line: put, delete, put-batch, delete-batch, dummy.
fn simple_command(words: &[&str]) -> Option<pb::Command> {
    let args = Args::parse(&words[1..]);
    let mut command = pb::Command {
        leader_index: args.number("leader_index"),
        prev_kvs: args.flag("prev_kv"),
        count: args.flag("count"),
        ..Default::default()
    };
    match words[0] {
        "put" => {
            command.r#type = CommandType::Put as i32;
            command.kv = Some(kv(args.bytes(0), args.opt_bytes(1).unwrap_or_default()));
        }
        "delete" => {
            command.r#type = CommandType::Delete as i32;
            command.kv = Some(kv(args.bytes(0), Bytes::new()));
            command.range_end = args.opt_bytes(1);
        }
        "put-batch" => {
            command.r#type = CommandType::PutBatch as i32;
            for pair in &args.positional {
                let (k, v) = pair.split_once(':').expect("put-batch k:v");
                command.batch.push(kv(unescape(k), unescape(v)));
            }
        }
        "delete-batch" => {
            command.r#type = CommandType::DeleteBatch as i32;
            command.batch = (0..args.positional.len())
                .map(|i| kv(args.bytes(i), Bytes::new()))
                .collect();
        }
        "dummy" => command.r#type = CommandType::Dummy as i32,
        "unknown-type" => command.r#type = 42,
        "blank" => return None,
        other => panic!("unknown command {other}"),
    }
    Some(command)
}

fn range_query(args: &Args) -> RangeQuery {
    let range_end = match args.opt_bytes(1) {
        None => RangeEnd::Single,
        Some(end) => RangeEnd::from_wire(&end),
    };
    let mut query = RangeQuery::new(args.bytes(0), range_end);
    query.limit = args.number("limit").unwrap_or(0);
    query.keys_only = args.flag("keys_only");
    query.count_only = args.flag("count_only");
    query.min_mod_revision = args.number("min_mod").unwrap_or(0);
    query.max_mod_revision = args.number("max_mod").unwrap_or(0);
    query.min_create_revision = args.number("min_create").unwrap_or(0);
    query.max_create_revision = args.number("max_create").unwrap_or(0);
    query.at_revision = args.number("rev").map(Revision);
    if let Some(bytes) = args.number("max_bytes") {
        query.max_response_bytes = bytes as usize;
    }
    query
}

/// `cmp TARGET KEY [OP OPERAND] [end=END]` and `then|else OP …` lines.
fn txn(lines: &[&str]) -> pb::Txn {
    let mut txn = pb::Txn::default();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let args = Args::parse(&words[2..]);
        match words[0] {
            "cmp" => {
                let result = match args.positional.get(1).map(String::as_str) {
                    None | Some("=") => CompareResult::Equal,
                    Some("!=") => CompareResult::NotEqual,
                    Some(">") => CompareResult::Greater,
                    Some("<") => CompareResult::Less,
                    Some(other) => panic!("bad operator {other}"),
                };
                let operand = args.positional.get(2);
                let (target, union) = match words[1] {
                    "exists" => (CompareTarget::Value, None),
                    "value" => (
                        CompareTarget::Value,
                        operand.map(|v| TargetUnion::Value(unescape(v))),
                    ),
                    "mod" => (
                        CompareTarget::Mod,
                        operand.map(|v| TargetUnion::ModRevision(v.parse().unwrap())),
                    ),
                    "create" => (
                        CompareTarget::Create,
                        operand.map(|v| TargetUnion::CreateRevision(v.parse().unwrap())),
                    ),
                    other => panic!("bad target {other}"),
                };
                txn.compare.push(pb::Compare {
                    result: result as i32,
                    target: target as i32,
                    key: unescape(words[2]),
                    target_union: union,
                    range_end: args
                        .options
                        .get("end")
                        .map(|e| unescape(e))
                        .unwrap_or_default(),
                });
            }
            branch @ ("then" | "else") => {
                let args = Args::parse(&words[2..]);
                let request = match words[1] {
                    "put" => Request::RequestPut(pb::request_op::Put {
                        key: args.bytes(0),
                        value: args.opt_bytes(1).unwrap_or_default(),
                        prev_kv: args.flag("prev_kv"),
                    }),
                    "delete" => Request::RequestDeleteRange(pb::request_op::DeleteRange {
                        key: args.bytes(0),
                        range_end: args.opt_bytes(1).unwrap_or_default(),
                        prev_kv: args.flag("prev_kv"),
                        count: false,
                    }),
                    "range" => Request::RequestRange(pb::request_op::Range {
                        key: args.bytes(0),
                        range_end: args.opt_bytes(1).unwrap_or_default(),
                        limit: args.number("limit").unwrap_or(0) as i64,
                        keys_only: args.flag("keys_only"),
                        count_only: args.flag("count_only"),
                    }),
                    other => panic!("bad op {other}"),
                };
                let op = pb::RequestOp {
                    request: Some(request),
                };
                if branch == "then" {
                    txn.success.push(op)
                } else {
                    txn.failure.push(op)
                }
            }
            other => panic!("bad txn line {other}"),
        }
    }
    txn
}

struct Runner {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    storage: Option<Storage>,
    table: Option<Table>,
    role: TableRole,
    next_index: u64,
    saved: BTreeMap<String, Vec<u8>>,
}

impl Runner {
    fn new() -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let storage = Storage::open(&path).unwrap();
        let table = Table::open(&storage, TableId(10001)).unwrap();
        Runner {
            _dir: dir,
            path,
            storage: Some(storage),
            table: Some(table),
            role: TableRole::Leader,
            next_index: 2,
            saved: BTreeMap::new(),
        }
    }

    fn table(&self) -> &Table {
        self.table.as_ref().unwrap()
    }

    /// Applies commands as consecutive entries in one call.
    fn apply(&mut self, commands: &[Option<pb::Command>], out: &mut String) {
        let first = self.next_index;
        self.next_index += commands.len() as u64;
        let raft_state = Bytes::from(format!("raft@{}", self.next_index - 1));
        match common::apply_wire(self.table(), first, commands, raft_state) {
            Err(error) => writeln!(out, "error: {error}").unwrap(),
            Ok((outcomes, _)) => {
                for outcome in outcomes {
                    outcome_text(&outcome, out);
                }
            }
        }
    }

    fn position_text(position: &AppliedPosition) -> String {
        format!(
            "position log_index={} revision={} leader_index={} raft_state={}",
            position.log_index,
            position.revision,
            position
                .leader_index
                .map_or("none".into(), |l: LeaderIndex| l.to_string()),
            escape(&position.raft_state)
        )
    }

    fn run(&mut self, input: &[&str]) -> String {
        let mut out = String::new();
        let words: Vec<&str> = input[0].split_whitespace().collect();
        let args = Args::parse(&words[1..]);
        match words[0] {
            "put" | "delete" | "put-batch" | "delete-batch" | "dummy" | "blank"
            | "unknown-type" => {
                let command = simple_command(&words);
                self.apply(&[command], &mut out);
            }
            "batch" => {
                let commands: Vec<_> = input[1..]
                    .iter()
                    .map(|line| {
                        let words: Vec<&str> = line.split_whitespace().collect();
                        simple_command(&words)
                    })
                    .collect();
                self.apply(&commands, &mut out);
            }
            "sequence" => {
                let command = pb::Command {
                    r#type: CommandType::Sequence as i32,
                    leader_index: args.number("leader_index"),
                    sequence: input[1..]
                        .iter()
                        .map(|line| {
                            let words: Vec<&str> = line.split_whitespace().collect();
                            simple_command(&words).expect("no blank in sequence")
                        })
                        .collect(),
                    ..Default::default()
                };
                self.apply(&[Some(command)], &mut out);
            }
            "txn" => {
                let command = pb::Command {
                    r#type: CommandType::Txn as i32,
                    txn: Some(txn(&input[1..])),
                    ..Default::default()
                };
                self.apply(&[Some(command)], &mut out);
            }
            "txn-read" => {
                let txn = Txn::from_wire(txn(&input[1..])).expect("a valid read-only txn");
                match self.table().read_view().txn_read_only(&txn) {
                    Err(error) => writeln!(out, "error: {error}").unwrap(),
                    Ok(outcome) => {
                        writeln!(out, "succeeded={}", outcome.succeeded).unwrap();
                        for response in common::wire_responses(&CommandOutcome::Txn(outcome)) {
                            response_text(&response, &mut out);
                        }
                    }
                }
            }
            "range" => {
                let view = self.table().read_view();
                let query = range_query(&args);
                let after = args.options.get("after").map(|a| unescape(a));
                match view.range_after(&query, after.as_deref()) {
                    Err(error) => writeln!(out, "error: {error}").unwrap(),
                    Ok(outcome) => {
                        writeln!(out, "count={} more={}", outcome.count, outcome.more).unwrap();
                        for kv in &outcome.kvs {
                            writeln!(out, "{}", kv_text(kv)).unwrap();
                        }
                    }
                }
            }
            "position" => {
                let position = self.table().applied_position().unwrap();
                writeln!(out, "{}", Self::position_text(&position)).unwrap();
                let view = self.table().read_view();
                assert_eq!(
                    view.position(),
                    &position,
                    "view and table positions differ"
                );
            }
            "hash" => {
                writeln!(out, "{}", self.table().read_view().content_hash().unwrap()).unwrap()
            }
            "dump" => {
                let name = args
                    .options
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| "t".into());
                let mut dump = Vec::new();
                self.table()
                    .read_view()
                    .write_dump(name.as_bytes(), args.number("leader_index"), &mut dump)
                    .unwrap();
                writeln!(out, "bytes={}", dump.len()).unwrap();
                let head: Vec<String> = dump.iter().take(10).map(|b| format!("{b:02x}")).collect();
                writeln!(out, "head={}", head.join(" ")).unwrap();
                for command in DumpReader::new(dump.as_slice()) {
                    let command = command.unwrap();
                    let kind = CommandType::try_from(command.r#type).unwrap().as_str_name();
                    let kv = command.kv.as_ref().map_or(String::new(), kv_text);
                    let leader = command
                        .leader_index
                        .map_or(String::new(), |l| format!(" leader_index={l}"));
                    writeln!(out, "{kind} table={} {kv}{leader}", escape(&command.table)).unwrap();
                }
            }
            "snapshot-save" => {
                let mut stream = Vec::new();
                self.table()
                    .read_view()
                    .write_snapshot(&mut stream)
                    .unwrap();
                self.saved.insert(args.positional[0].clone(), stream);
                writeln!(out, "saved").unwrap();
            }
            "snapshot-install" => {
                let mut stream = self.saved[&args.positional[0]].clone();
                if let Some(length) = args.number("truncate") {
                    stream.truncate(length as usize);
                }
                if args.flag("flip_byte") {
                    let middle = stream.len() / 2;
                    stream[middle] ^= 0x55;
                }
                match self.table().install_snapshot(&mut stream.as_slice()) {
                    Err(error) => writeln!(out, "error: {error}").unwrap(),
                    Ok(position) => {
                        writeln!(out, "installed {}", Self::position_text(&position)).unwrap()
                    }
                }
            }
            "reopen" => {
                self.table = None;
                self.storage = None;
                let storage = Storage::open(&self.path).unwrap();
                self.table = Some(Table::open_as(&storage, TableId(10001), self.role).unwrap());
                self.storage = Some(storage);
                writeln!(out, "reopened").unwrap();
            }
            "role" => {
                self.role = match args.positional[0].as_str() {
                    "follower" => TableRole::Follower,
                    "leader" => TableRole::Leader,
                    other => panic!("unknown role {other}"),
                };
                let storage = self.storage.as_ref().unwrap();
                self.table = Some(Table::open_as(storage, TableId(10001), self.role).unwrap());
                writeln!(out, "role {:?}", self.table().role()).unwrap();
            }
            "load-begin" | "load-chunk" | "load-commit" => {
                let mut command = pb::Command {
                    load_id: args.number("id").unwrap_or(0),
                    load_count: args.number("count").unwrap_or(0),
                    load_keep_revisions: args.flag("keep"),
                    leader_index: args.number("leader_index"),
                    ..Default::default()
                };
                command.r#type = match words[0] {
                    "load-begin" => CommandType::LoadBegin,
                    "load-chunk" => CommandType::LoadChunk,
                    _ => CommandType::LoadCommit,
                } as i32;
                // Records: `key:value` or `key:value@create/mod`.
                for record in &args.positional {
                    let (pair, revisions) = record.split_once('@').unwrap_or((record, "0/0"));
                    let (key, value) = pair.split_once(':').expect("load record k:v");
                    let (create, modified) = revisions.split_once('/').expect("c/m");
                    command.batch.push(pb::KeyValue {
                        key: unescape(key),
                        value: unescape(value),
                        create_revision: create.parse().unwrap(),
                        mod_revision: modified.parse().unwrap(),
                    });
                }
                self.apply(&[Some(command)], &mut out);
            }
            "staged" => match self.table().staged_load() {
                None => writeln!(out, "none").unwrap(),
                Some((id, count)) => writeln!(out, "load={id} records={count}").unwrap(),
            },
            other => panic!("unknown command {other}"),
        }
        out
    }
}

fn run_script(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut runner = Runner::new();
    let mut rewritten = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            continue;
        }
        let mut input = vec![line];
        for line in lines.by_ref() {
            if line == "----" {
                break;
            }
            input.push(line);
        }
        while lines.peek().is_some_and(|line| !line.trim().is_empty()) {
            lines.next();
        }
        let output = runner.run(&input);
        for line in &input {
            rewritten.push_str(line);
            rewritten.push('\n');
        }
        rewritten.push_str("----\n");
        rewritten.push_str(&output);
    }
    (text, rewritten)
}

#[test]
fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testscripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no test scripts");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
    {
        let (expected, actual) = run_script(path);
        if expected != actual {
            if update {
                std::fs::write(path, &actual).unwrap();
            } else {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
                    path.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 rewrites):\n{}",
        failures.join("\n")
    );
}
