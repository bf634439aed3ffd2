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
//!
//! A panic is the same case, found by an assertion instead of an error value. Tokio catches a
//! panic in a spawned task and only ends that task, which would leave exactly the half-alive
//! node this module exists to prevent; so a node installs [`install_panic_hook`] first thing,
//! and any panic, in any thread, logs one `ERROR` line and aborts the process (release builds
//! are also built with `panic = "abort"`; see ADR 0009).

use std::fmt::Display;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The exit code of a fail-stop: `EX_SOFTWARE` ("internal software error").
pub const EXIT_CODE: i32 = 70;

/// Logs `what` failed with `error`, then ends the process with [`EXIT_CODE`].
pub fn stop(what: &str, error: &dyn Display) -> ! {
    tracing::error!(%error, "{what} failed; stopping the node");
    std::process::exit(EXIT_CODE);
}

/// Makes every panic of this process stop it: the default report (message, location,
/// backtrace when asked for) goes to stderr, one `ERROR` line to the log, then the process
/// aborts, whichever thread or task panicked.
pub fn install_panic_hook() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let location = info
            .location()
            .map_or_else(String::new, |at| format!(" at {at}"));
        tracing::error!(
            "a panic{location}: {}; stopping the node",
            panic_message(info)
        );
        std::process::abort();
    }));
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Locks `mutex`; a lock poisoned by a panic in another thread stops the node, because the data
/// behind it may be half-updated.
pub fn lock<'a, T>(mutex: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(_) => stop(what, &"the lock was poisoned by a panic"),
    }
}

/// Read-locks `lock`, stopping the node if it was poisoned (see [`lock`]).
pub fn read<'a, T>(lock: &'a RwLock<T>, what: &str) -> RwLockReadGuard<'a, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(_) => stop(what, &"the lock was poisoned by a panic"),
    }
}

/// Write-locks `lock`, stopping the node if it was poisoned (see [`lock`]).
pub fn write<'a, T>(lock: &'a RwLock<T>, what: &str) -> RwLockWriteGuard<'a, T> {
    match lock.write() {
        Ok(guard) => guard,
        Err(_) => stop(what, &"the lock was poisoned by a panic"),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Set in the child process the test below starts.
    const CHILD: &str = "ARMADA_FAIL_STOP_TEST_CHILD";

    #[test]
    fn a_panic_in_a_tokio_task_aborts_the_whole_process() {
        if std::env::var_os(CHILD).is_some() {
            super::install_panic_hook();
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let task = tokio::spawn(async { panic!("an invariant broke") });
                // Without the hook tokio would catch the panic and this would return.
                let _ = task.await;
            });
            std::process::exit(0);
        }
        let test = "fail_stop::tests::a_panic_in_a_tokio_task_aborts_the_whole_process";
        let output = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", test, "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(6),
            "the child must die by SIGABRT, not exit ({:?}); stderr: {stderr}",
            output.status
        );
        assert!(stderr.contains("an invariant broke"), "stderr: {stderr}");
    }
}
