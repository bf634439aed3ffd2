//! Golden scripts of the replication pull core ([`super::puller`]): every
//! `crates/server/testscripts/puller*.txt` is a sequence of blocks
//!
//! ```text
//! input line             (one input to the puller)
//! ----
//! steps…                 (what the puller asks for until it needs the next input)
//!                        (blank line ends the block; `#` lines between blocks are comments)
//! ```
//!
//! The same block layout as the table crate's golden scripts (`crates/table/tests/golden.rs`);
//! `UPDATE_GOLDEN=1` rewrites the expectations from the actual output (then review the diff).
//!
//! Inputs: `open` (a new session), `batch FIRST..LAST [size=N]` (a batch of PUTs with values
//! of N bytes), `heartbeat`, `error use-snapshot|leader-behind|CODE`, `drained`, `end`,
//! `fail`, `proposed`. Options on any line: `leader_index=N` (the index the message reports),
//! and, kept for the lines after it, `applied=N` and `leads=true|false` (the local replica),
//! `merge_bytes=N` (on `open`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use armada_proto::replication::v1::{
    ReplicateCommand, ReplicateCommandsResponse, ReplicateErrResponse, ReplicateError,
    ReplicateResponse, replicate_response,
};
use armada_storage::LeaderIndex;
use armada_table::pb;
use bytes::Bytes;
use prost::Message;

use super::error::ReplicationError;
use super::puller::{Input, Opening, Pause, Puller, Replica, Step};

struct Runner {
    replica: Replica,
    puller: Option<Puller>,
}

fn options(words: &[&str]) -> BTreeMap<String, String> {
    words
        .iter()
        .filter_map(|word| word.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn number(options: &BTreeMap<String, String>, name: &str) -> Option<u64> {
    options
        .get(name)
        .map(|value| value.parse().expect("a number"))
}

fn batch(range: &str, size: usize) -> Vec<ReplicateCommand> {
    let (first, last) = range.split_once("..").expect("FIRST..LAST");
    let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
    (first..=last)
        .map(|index| ReplicateCommand {
            leader_index: index,
            command: Some(pb::Command {
                r#type: pb::command::CommandType::Put as i32,
                kv: Some(pb::KeyValue {
                    key: Bytes::from(format!("k{index}")),
                    value: Bytes::from(vec![b'v'; size]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .collect()
}

fn message(response: Option<replicate_response::Response>, leader_index: u64) -> Input {
    Input::Message(ReplicateResponse {
        response,
        leader_index,
    })
}

fn step_text(step: &Step) -> String {
    match step {
        Step::Receive => "receive".into(),
        Step::ReceiveQueued => "receive-queued".into(),
        Step::ObserveLeader(index) => format!("observe-leader {index}"),
        Step::Propose(commands) => match (commands.first(), commands.last()) {
            (Some(first), Some(last)) => format!(
                "propose {}..{} ({} commands, {} bytes)",
                first.leader_index,
                last.leader_index,
                commands.len(),
                commands.iter().map(Message::encoded_len).sum::<usize>()
            ),
            _ => "propose (empty)".into(),
        },
        Step::Bootstrap => "bootstrap".into(),
        Step::Wait(pause) => {
            let why = match pause {
                Pause::Idle => "idle",
                Pause::LeaderBehind => "leader-behind",
            };
            format!("wait {why} {:?}", pause.duration())
        }
        Step::Done => "done".into(),
        Step::Fail(error) => format!("fail: {error}"),
    }
}

impl Runner {
    fn new() -> Runner {
        Runner {
            replica: Replica {
                applied: LeaderIndex(0),
                leads: true,
            },
            puller: None,
        }
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let options = options(&words[1..]);
        if let Some(applied) = number(&options, "applied") {
            self.replica.applied = LeaderIndex(applied);
        }
        if let Some(leads) = options.get("leads") {
            self.replica.leads = leads == "true";
        }
        let leader_index = number(&options, "leader_index").unwrap_or(0);
        let input = match words[0] {
            "open" => return self.open(number(&options, "merge_bytes")),
            "proposed" => {
                let Some(puller) = self.puller.as_mut() else {
                    return "no session\n".into();
                };
                puller.on_proposed(self.replica);
                return self.steps();
            }
            "batch" => {
                let size = number(&options, "size").unwrap_or(10) as usize;
                let commands = batch(words[1], size);
                let response =
                    replicate_response::Response::CommandsResponse(ReplicateCommandsResponse {
                        commands,
                    });
                message(Some(response), leader_index)
            }
            "heartbeat" => message(None, leader_index),
            "error" => {
                let error = match words[1] {
                    "use-snapshot" => ReplicateError::UseSnapshot as i32,
                    "leader-behind" => ReplicateError::LeaderBehind as i32,
                    code => code.parse().expect("an error code"),
                };
                let response =
                    replicate_response::Response::ErrorResponse(ReplicateErrResponse { error });
                message(Some(response), leader_index)
            }
            "drained" => Input::Drained,
            "end" => Input::End,
            "fail" => Input::Failed(ReplicationError::Silent("Log.Replicate stream")),
            other => panic!("unknown input {other:?}"),
        };
        let Some(puller) = self.puller.as_mut() else {
            return "no session\n".into();
        };
        puller.on_input(input, self.replica);
        self.steps()
    }

    fn open(&mut self, merge_bytes: Option<u64>) -> String {
        let merge_bytes = merge_bytes.map_or(super::puller::MERGE_BYTES, |bytes| bytes as usize);
        match Puller::open_merging(self.replica.applied, merge_bytes) {
            Opening::Bootstrap => {
                self.puller = None;
                "bootstrap\n".into()
            }
            Opening::Stream { from, puller } => {
                self.puller = Some(puller);
                format!("stream from={from}\n{}", self.steps())
            }
        }
    }

    /// The steps up to the next one that waits for an input (or ends the session).
    fn steps(&mut self) -> String {
        let mut out = String::new();
        let Some(puller) = self.puller.as_mut() else {
            return out;
        };
        loop {
            let step = puller.next_step();
            let _ = writeln!(out, "{}", step_text(&step));
            match step {
                Step::ObserveLeader(_) => {}
                Step::Receive | Step::ReceiveQueued | Step::Propose(_) => return out,
                _ => {
                    self.puller = None;
                    return out;
                }
            }
        }
    }
}

fn run_script(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).expect("the script");
    let mut runner = Runner::new();
    let mut rewritten = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            continue;
        }
        for line in lines.by_ref() {
            if line == "----" {
                break;
            }
        }
        while lines.peek().is_some_and(|line| !line.trim().is_empty()) {
            lines.next();
        }
        let output = runner.run(line);
        rewritten.push_str(line);
        rewritten.push_str("\n----\n");
        rewritten.push_str(&output);
    }
    (text, rewritten)
}

#[test]
fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testscripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("crates/server/testscripts")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "txt")
                && path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("puller"))
        })
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no puller scripts");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for path in &paths {
        let (expected, actual) = run_script(path);
        if expected != actual {
            if update {
                std::fs::write(path, &actual).expect("rewrite the script");
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

#[test]
fn sequences_split_at_the_target_size_and_stamp_leader_indices() {
    let commands = batch("3..7", 100);
    let each = {
        let mut command = commands[0].command.clone().expect("a command");
        command.leader_index = Some(3);
        command.encoded_len()
    };
    let sequences = super::puller::sequences(commands, 2 * each);
    let indices: Vec<Vec<u64>> = sequences
        .iter()
        .map(|sequence| {
            sequence
                .iter()
                .map(|command| command.leader_index.expect("stamped"))
                .collect()
        })
        .collect();
    assert_eq!(indices, vec![vec![3, 4], vec![5, 6], vec![7]]);
    // A missing command travels as DUMMY with its index.
    let missing = vec![ReplicateCommand {
        leader_index: 9,
        command: None,
    }];
    let sequences = super::puller::sequences(missing, 1024);
    assert_eq!(
        sequences[0][0].r#type,
        pb::command::CommandType::Dummy as i32
    );
    assert_eq!(sequences[0][0].leader_index, Some(9));
}
