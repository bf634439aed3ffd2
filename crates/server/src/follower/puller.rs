//! The decisions of one replication session, without any IO (sans-IO): the worker's session
//! opens the `Log.Replicate` stream, reads, proposes and sleeps; the [`Puller`] says what to
//! do with each message.
//!
//! The session feeds [`Input`]s (a message, "nothing more queued", the stream's end or
//! failure) together with a look at the local replica ([`Replica`]: its applied leader index
//! and whether this node still leads the table's Raft group), and takes [`Step`]s out with
//! [`Puller::next_step`] until one ends the session.
//!
//! What it decides:
//! * **Merging**: everything already received while a batch was being proposed goes into the
//!   next proposal, up to a byte limit: with a long poll each message holds only the few
//!   entries applied since the last one, and one Raft round per message would fall behind a
//!   busy leader. A message that is not a batch (a heartbeat, an error, the stream's end) first
//!   flushes the batch, then counts, in the order the leader cluster sent them.
//! * **Gaps**: the leader cluster's indices are contiguous; a batch that skips the next
//!   expected index ends the session (the table would refuse it; the next session restarts
//!   from the applied position). Indices already applied pass through: the table skips them.
//! * **Lag accounting**: every index the leader cluster reports is handed out for the lag.
//! * **Endings**: a Reset while streaming (applied index back to 0) or a lost Raft leadership
//!   ends the session; `USE_SNAPSHOT` bootstraps; `LEADER_BEHIND` waits before the next try;
//!   a stream that ended without news pauses briefly (a leader that does not long-poll).

use std::collections::VecDeque;
use std::time::Duration;

use armada_proto::replication::v1::{
    ReplicateCommand, ReplicateError, ReplicateResponse, replicate_response,
};
use armada_storage::LeaderIndex;
use armada_table::pb;
use prost::Message;

use super::error::ReplicationError;

/// Up to this many bytes of already-received commands go into one round of proposals.
pub const MERGE_BYTES: usize = 4 * 1024 * 1024;
/// Target size of one replicated SEQUENCE entry.
pub const SEQUENCE_BYTES: usize = 1024 * 1024;

/// The local replica as the session sees it before each decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The leader index this replica has applied (0: no data, bootstrap first).
    pub applied: LeaderIndex,
    /// Whether this node leads the table's Raft group (only that node replicates).
    pub leads: bool,
}

/// How a session starts.
#[derive(Debug)]
pub enum Opening {
    /// The table holds no data yet: bootstrap from a snapshot of the leader cluster's.
    Bootstrap,
    /// Tail the leader cluster's log from `from` on.
    Stream { from: LeaderIndex, puller: Puller },
}

/// What the stream delivered.
#[derive(Debug)]
pub enum Input {
    Message(ReplicateResponse),
    /// Nothing more is queued right now (the answer to [`Step::ReceiveQueued`]).
    Drained,
    /// The leader cluster ended the stream.
    End,
    Failed(ReplicationError),
}

/// Why a session pauses before it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The stream ended without news (a leader that does not long-poll).
    Idle,
    /// The leader cluster's log is behind this replica.
    LeaderBehind,
}

impl Pause {
    pub fn duration(self) -> Duration {
        match self {
            Pause::Idle => Duration::from_millis(50),
            Pause::LeaderBehind => Duration::from_secs(1),
        }
    }
}

/// What the session does next.
#[derive(Debug)]
pub enum Step {
    /// Wait for the next input.
    Receive,
    /// Take the next message if one is already queued, else feed [`Input::Drained`].
    ReceiveQueued,
    /// The leader cluster reported its index of the table (for the lag).
    ObserveLeader(LeaderIndex),
    /// Propose these commands, then call [`Puller::on_proposed`].
    Propose(Vec<ReplicateCommand>),
    /// Replace the table with a snapshot of the leader cluster's; the session ends.
    Bootstrap,
    /// Wait, then end the session.
    Wait(Pause),
    /// End the session; the next one starts from the applied position.
    Done,
    Fail(ReplicationError),
}

/// The state of one session's pull.
#[derive(Debug)]
pub struct Puller {
    /// The next leader index the stream must deliver.
    next: LeaderIndex,
    /// Whether a batch is being gathered (a batch message was taken, nothing proposed yet).
    merging: bool,
    /// Commands received and not proposed yet, and their encoded size.
    batch: Vec<ReplicateCommand>,
    bytes: usize,
    merge_bytes: usize,
    /// An input that arrived while a batch was pending: it counts once the batch is proposed.
    held: Option<Input>,
    steps: VecDeque<Step>,
    /// Whether this session proposed anything.
    news: bool,
    /// A step that ended the session has been handed out.
    ended: bool,
}

impl Puller {
    /// Starts a session of a replica that has applied `applied`.
    pub fn open(applied: LeaderIndex) -> Opening {
        Puller::open_merging(applied, MERGE_BYTES)
    }

    /// [`Puller::open`] with another merge limit (scripts use small ones).
    pub fn open_merging(applied: LeaderIndex, merge_bytes: usize) -> Opening {
        if applied.get() == 0 {
            return Opening::Bootstrap;
        }
        let from = LeaderIndex(applied.get() + 1);
        let puller = Puller {
            next: from,
            merging: false,
            batch: Vec::new(),
            bytes: 0,
            merge_bytes,
            held: None,
            steps: VecDeque::new(),
            news: false,
            ended: false,
        };
        Opening::Stream { from, puller }
    }

    /// The next step: a queued decision, else the input the pull waits for.
    pub fn next_step(&mut self) -> Step {
        if let Some(step) = self.steps.pop_front() {
            return step;
        }
        if self.ended {
            return Step::Done;
        }
        if self.merging {
            Step::ReceiveQueued
        } else {
            Step::Receive
        }
    }

    /// Takes in what the stream delivered.
    pub fn on_input(&mut self, input: Input, replica: Replica) {
        match input {
            Input::Message(message) => self.on_message(message, replica),
            Input::Drained if self.merging => self.flush(),
            Input::Drained => {}
            ending if self.merging => {
                self.held = Some(ending);
                self.flush();
            }
            Input::End => {
                let pause = (!self.news).then_some(Pause::Idle);
                self.end(pause.map_or(Step::Done, Step::Wait));
            }
            Input::Failed(error) => self.end(Step::Fail(error)),
        }
    }

    /// The batch handed out by [`Step::Propose`] has been applied; takes in what arrived
    /// meanwhile.
    pub fn on_proposed(&mut self, replica: Replica) {
        self.news = true;
        if let Some(held) = self.held.take() {
            self.on_input(held, replica);
        }
    }

    fn on_message(&mut self, message: ReplicateResponse, replica: Replica) {
        if self.merging && !is_batch(&message) {
            self.held = Some(Input::Message(message));
            self.flush();
            return;
        }
        if replica.applied.get() == 0 {
            // Reset while streaming: the next session bootstraps.
            return self.end(Step::Done);
        }
        if message.leader_index > 0 {
            self.steps
                .push_back(Step::ObserveLeader(LeaderIndex(message.leader_index)));
        }
        match message.response {
            Some(replicate_response::Response::CommandsResponse(batch)) => {
                self.on_commands(batch.commands, replica);
            }
            Some(replicate_response::Response::ErrorResponse(error)) => {
                self.end(match ReplicateError::try_from(error.error) {
                    Ok(ReplicateError::UseSnapshot) => Step::Bootstrap,
                    Ok(ReplicateError::LeaderBehind) => Step::Wait(Pause::LeaderBehind),
                    Err(_) => Step::Fail(ReplicationError::UnknownError(error.error)),
                });
            }
            None => {}
        }
    }

    fn on_commands(&mut self, commands: Vec<ReplicateCommand>, replica: Replica) {
        if !self.merging && !replica.leads {
            return self.end(Step::Done);
        }
        self.merging = true;
        let mut commands = commands.into_iter();
        for command in commands.by_ref() {
            let index = LeaderIndex(command.leader_index);
            if index > self.next {
                let gap = ReplicationError::Gap {
                    expected: self.next,
                    received: index,
                };
                return self.fail_after_batch(gap);
            }
            self.next = self.next.max(LeaderIndex(index.get() + 1));
            self.bytes += command.encoded_len();
            self.batch.push(command);
        }
        if self.bytes >= self.merge_bytes {
            self.flush();
        }
    }

    /// Ends the session with `error`, once what was gathered before it is proposed.
    fn fail_after_batch(&mut self, error: ReplicationError) {
        if self.batch.is_empty() {
            self.merging = false;
            return self.end(Step::Fail(error));
        }
        self.held = Some(Input::Failed(error));
        self.flush();
    }

    /// Hands out the gathered batch for proposal (an empty one still counts as news).
    fn flush(&mut self) {
        self.merging = false;
        self.bytes = 0;
        self.steps
            .push_back(Step::Propose(std::mem::take(&mut self.batch)));
    }

    fn end(&mut self, step: Step) {
        self.steps.push_back(step);
        self.ended = true;
    }
}

fn is_batch(message: &ReplicateResponse) -> bool {
    matches!(
        message.response,
        Some(replicate_response::Response::CommandsResponse(_))
    )
}

/// The leader cluster's commands as SEQUENCE bodies of about `target_bytes` each, every
/// command stamped with its leader index (a missing command travels as DUMMY).
pub fn sequences(commands: Vec<ReplicateCommand>, target_bytes: usize) -> Vec<Vec<pb::Command>> {
    let mut out = Vec::new();
    let mut sequence = Vec::new();
    let mut bytes = 0;
    for replicated in commands {
        let mut command = replicated.command.unwrap_or(pb::Command {
            r#type: pb::command::CommandType::Dummy as i32,
            ..Default::default()
        });
        command.leader_index = Some(replicated.leader_index);
        bytes += command.encoded_len();
        sequence.push(command);
        if bytes >= target_bytes {
            out.push(std::mem::take(&mut sequence));
            bytes = 0;
        }
    }
    if !sequence.is_empty() {
        out.push(sequence);
    }
    out
}
