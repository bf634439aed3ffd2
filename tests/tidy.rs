//! The layering DESIGN.md asks for, checked on the real dependency graph: the synchronous core
//! crates (`armada-storage`, `armada-table`) know nothing of async runtimes, gRPC, HTTP, TLS,
//! QUIC or Raft. A dependency that brings one of those into either crate's normal closure (as
//! `armada-proto`'s tonic services once did, now behind its `grpc` feature) fails this test.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates the core must not depend on, directly or through anything else.
const FORBIDDEN: [&str; 7] = [
    "tokio", "tonic", "hyper", "h2", "rustls", "quinn", "openraft",
];

/// Names of every crate in `package`'s normal (non-dev, non-build) dependency closure, with the
/// features that building `package` alone would enable.
fn normal_closure(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "-p", package])
        .args(["-e", "normal", "--prefix", "none", "-f", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn forbidden_in(package: &str) -> Vec<&'static str> {
    let closure = normal_closure(package);
    assert!(
        closure.contains(package),
        "{package} missing from its own tree"
    );
    FORBIDDEN
        .into_iter()
        .filter(|name| closure.contains(*name))
        .collect()
}

#[test]
fn the_core_crates_depend_on_no_runtime_network_or_raft_crate() {
    for package in ["armada-storage", "armada-table"] {
        assert_eq!(
            forbidden_in(package),
            Vec::<&str>::new(),
            "{package} must stay synchronous and IO-free (DESIGN.md §2); see `cargo tree -p \
             {package} -e normal -i <crate>` for the path that brings it in"
        );
    }
}

#[test]
fn the_check_sees_what_the_server_crate_depends_on() {
    // The same method must find the forbidden crates where they belong.
    assert_eq!(forbidden_in("armada-server"), FORBIDDEN.to_vec());
}
