//! Stamps the build with its git revision: `ARMADA_GIT_REVISION` (read by `build_info.rs`) is
//! the environment variable of that name when set (a build from a source archive or a
//! container that knows its revision), else `git rev-parse --short HEAD`, else `unknown` — a
//! build without git, or outside a repository, must still work.
//!
//! Cargo re-runs this script when HEAD moves: the files `HEAD`, the branch it points to and
//! `packed-refs` are watched (found through git, so worktrees work too). Only files that exist
//! are watched: a missing watched file would make cargo re-run the script on every build.

use std::path::PathBuf;
use std::process::Command;

const REVISION_VARIABLE: &str = "ARMADA_GIT_REVISION";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={REVISION_VARIABLE}");
    let revision = match std::env::var(REVISION_VARIABLE) {
        Ok(revision) if !revision.trim().is_empty() => revision.trim().to_string(),
        _ => {
            watch_head();
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env={REVISION_VARIABLE}={revision}");
}

/// The trimmed output of a successful git command; `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn watch_head() {
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]).map(PathBuf::from)
            && path.exists()
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
