//! The node's one fail-stop policy: when the node can no longer trust its own state, it stops.
//!
//! A failed log write or fsync, a non-deterministic apply error, a storage error while
//! reconciling the table groups, or a lock poisoned by a panic elsewhere all mean the same thing:
//! what this node would serve next may not be what it acknowledged before. A half-alive node
//! (a dead task, a silently empty table map, a default membership) is worse than a stopped one,
//! because Raft already copes with a stopped node and a supervisor restarts it from disk.
//!
//! Every such place calls [`stop`], which logs one `ERROR` line naming what failed and exits with
//! [`EXIT_CODE`] (70, `EX_SOFTWARE` of sysexits.h). It never returns.

use std::fmt::Display;
use std::sync::{Mutex, MutexGuard};

/// The exit code of a fail-stop: `EX_SOFTWARE` ("internal software error").
pub const EXIT_CODE: i32 = 70;

/// Logs `what` failed with `error`, then ends the process with [`EXIT_CODE`].
pub fn stop(what: &str, error: &dyn Display) -> ! {
    tracing::error!(%error, "{what} failed; stopping the node");
    std::process::exit(EXIT_CODE);
}

/// Locks `mutex`; a lock poisoned by a panic in another thread stops the node, because the data
/// behind it may be half-updated.
pub fn lock<'a, T>(mutex: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(_) => stop(what, &"the lock was poisoned by a panic"),
    }
}
