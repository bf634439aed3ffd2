//! The table state machine: applies typed table commands to a table's MVCC keyspaces and
//! serves point-in-time reads.
//!
//! # Concept
//!
//! A [`Table`] is the deterministic state machine of one table's Raft group. The log carries
//! `mvcc.v1.Command` bytes (the replication and backup format, never re-encoded); the Raft glue
//! decodes each entry once with [`Command::decode`], which validates everything checkable from
//! the command alone and yields the table's own [`Command`] enum (or a [`Rejection`]). It then
//! hands the table committed entries as [`ApplyEntry`]s — the entry's [`LogIndex`] and its
//! command — through [`Table::apply`]. The table stamps revisions itself from its
//! [`TableRole`] (`revision.rs`, the one owner of "what a revision is"), executes the
//! commands, and answers each entry with an [`ApplyOutcome`]: a typed [`CommandOutcome`]
//! (converted to protobuf only at the API edge) plus the [`Change`]s it made, which the
//! future Watch consumes. Every call is applied in ONE fjall write batch together with the
//! [`AppliedPosition`] it returns, so data and position are always consistent on disk and
//! replaying the log after a crash from the persisted position yields the same state.
//! Reads go through a [`ReadView`]: a fjall cross-keyspace snapshot plus the position it observed,
//! so a view (a unary Range, a whole IterateRange stream, a snapshot transfer) never sees a
//! partially applied batch.
//!
//! # Layout (ADR 0002, `docs/format.md`)
//!
//! Per table: `t<id>.meta` (format, generation pointer, applied position, compact revision) and,
//! per generation `g`, `t<id>.g<g>.latest` (one lookup per point read) and `t<id>.g<g>.history`
//! (every version, for reads at a past revision). [`Table::install_snapshot`] loads a new
//! generation and switches the pointer in one batch; stale generations are removed on open.
//! Record encodings live in [`armada_storage::mvcc`].
//!
//! # Invariants
//!
//! * Applies are serialised (one applier at a time); a command is validated completely before
//!   it changes anything (decoding, then the table-dependent checks of apply), so a rejected
//!   command (deterministic) changes no data.
//! * An empty user key is never written.
//! * Every write of one apply call is stamped with its entry's revision (or, inside a SEQUENCE,
//!   the nested command's leader index); within one batch a key is written at most once per
//!   keyspace (pending writes are merged in an overlay first).
//!
//! This crate is synchronous: no tokio, no Raft, no clocks.

mod apply;
mod command;
mod create_cache;
mod dump;
mod dump_check;
mod error;
mod generation;
mod load;
mod outcome;
mod position;
mod read;
mod response_budget;
mod revision;
mod snapshot;
mod table;
mod view;

pub use armada_proto::mvcc::v1 as pb;
pub use command::{
    Command, Compare, CompareOperand, CompareResult, DeleteRange, Put, Rejection, Replicated, Txn,
    TxnOp,
};
pub use dump::{DUMP_STREAM_IDENTIFIER, DumpReader};
pub use dump_check::{DumpProblem, DumpSummary, check_dump};
pub use error::TableError;
pub use outcome::{
    ApplyOutcome, Change, CommandOutcome, DeleteOutcome, OpOutcome, Previous, PutOutcome,
    TxnOutcome,
};
pub use position::AppliedPosition;
pub use response_budget::FIXED_OP_RESPONSE_BYTES;
pub use revision::TableRole;
pub use table::Table;
pub use view::ReadView;

use armada_storage::{LogIndex, Revision};
use bytes::Bytes;

/// Size cap of one response (unary Range, each IterateRange message, a whole txn response and
/// prev_kvs of deletes), as in Regatta: 4 MiB − 1 KiB, so a default gRPC client (4 MiB) always
/// accepts it. A txn shares it between its ops, see `response_budget.rs`.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024 - 1024;

/// Longest user key a command may write (SPEC §2).
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value a command may write (SPEC §2).
pub const MAX_VALUE_BYTES: usize = 2 * 1024 * 1024;

/// Deepest nesting of SEQUENCE commands accepted by apply.
pub const MAX_SEQUENCE_DEPTH: usize = 4;

/// One committed log entry to apply.
#[derive(Clone, Copy, Debug)]
pub struct ApplyEntry<'a> {
    /// The entry's index in this cluster's log; the table derives revisions from it.
    pub log_index: LogIndex,
    /// `None` for Raft blank and membership entries and for entries whose command was
    /// rejected when decoded: no data change, the position still advances.
    pub command: Option<&'a Command>,
}

/// What one [`Table::apply`] call did: an outcome per entry, and the position it stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedBatch {
    pub outcomes: Vec<ApplyOutcome>,
    pub position: AppliedPosition,
}

/// The upper bound of a range query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// Exactly `key`.
    Single,
    /// `[key, end)`; empty when `end <= key`.
    To(Bytes),
    /// Every key `>= key` (wire: `range_end == "\0"`).
    Unbounded,
}

impl RangeEnd {
    /// Maps a wire `range_end`: empty → single key, `"\0"` → unbounded, else exclusive end.
    pub fn from_wire(range_end: &Bytes) -> RangeEnd {
        match range_end.as_ref() {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            _ => RangeEnd::To(range_end.clone()),
        }
    }
}

/// A range read (Range, IterateRange, txn range op). Revision filters are off when zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeQuery {
    pub key: Bytes,
    pub range_end: RangeEnd,
    /// Maximum number of kvs (0 = none). Ignored for a single key.
    pub limit: u64,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: u64,
    pub max_mod_revision: u64,
    pub min_create_revision: u64,
    pub max_create_revision: u64,
    /// Read the table as of this revision (from history); `None` = latest.
    pub at_revision: Option<Revision>,
    /// Response size cap, see [`MAX_RESPONSE_BYTES`]. At least one kv is always returned.
    pub max_response_bytes: usize,
}

impl RangeQuery {
    /// A query for `key` up to `range_end` with every option off and the default size cap.
    pub fn new(key: Bytes, range_end: RangeEnd) -> RangeQuery {
        RangeQuery {
            key,
            range_end,
            limit: 0,
            keys_only: false,
            count_only: false,
            min_mod_revision: 0,
            max_mod_revision: 0,
            min_create_revision: 0,
            max_create_revision: 0,
            at_revision: None,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

/// The result of a range read.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RangeOutcome {
    #[serde(with = "outcome::wire_kvs")]
    pub kvs: Vec<pb::KeyValue>,
    /// Further matching keys exist after the limit or the size cap.
    pub more: bool,
    /// Number of kvs returned, or the number counted with `count_only` (bounded by limit).
    pub count: i64,
}
