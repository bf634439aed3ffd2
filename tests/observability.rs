//! What operators observe from outside, against the real binary: table sizes in Status and
//! metrics, Raft and storage counters, the build's version and revision (CLI, Status, metric),
//! and the gRPC health and reflection services.

mod common;

use armada_proto::regatta::v1::StatusRequest;
use common::{Armada, http_get, put};

/// The value of the first sample of `name` whose labels contain every `labels` pair.
fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(label, value)| series_labels.contains(&format!("{label}=\"{value}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

fn metrics(armada: &Armada) -> String {
    let (status, body) = http_get(&armada.rest, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Values that do not compress, so that a flushed table is not smaller than what was written.
fn incompressible(seed: u64, bytes: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A table holding a few MB (less than a memtable, so nothing is flushed yet) reported a
/// db size of 0 in Status and `armada_table_disk_bytes`; both now count what it holds.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_metrics_report_the_tables_real_size() {
    let armada = Armada::start();
    armada.create_table("sized").await;
    armada.create_table("empty").await;
    let mut kv = armada.kv().await;
    let (values, value_bytes) = (40u64, 100_000usize);
    for index in 0..values {
        kv.put(put(
            "sized",
            format!("key{index:03}"),
            incompressible(index, value_bytes),
        ))
        .await
        .expect("put");
    }
    let written = values as f64 * value_bytes as f64;

    let status = armada
        .cluster()
        .await
        .status(StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    let db_size = |table: &str| status.tables[table].db_size as f64;
    assert!(db_size("sized") >= written, "db_size {}", db_size("sized"));
    assert!(
        db_size("sized") < 4.0 * written,
        "db_size {}",
        db_size("sized")
    );
    assert!(
        db_size("empty") < written / 100.0,
        "db_size {}",
        db_size("empty")
    );

    let body = metrics(&armada);
    let disk = metric(&body, "armada_table_disk_bytes", &[("table", "sized")]).expect("metric");
    assert!(disk >= written, "armada_table_disk_bytes {disk}");
    let journal = metric(&body, "armada_storage_journal_bytes", &[]).expect("journal metric");
    assert!(journal >= written, "armada_storage_journal_bytes {journal}");
    assert!(metric(&body, "armada_storage_compactions_total", &[]).is_some());
}

/// `armada version` (text and JSON), Status and `armada_build_info` name the same version and
/// git revision: the one the build was made from.
#[tokio::test(flavor = "multi_thread")]
async fn version_and_revision_are_the_same_everywhere() {
    let version = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_armada"))
            .arg("version")
            .args(args)
            .output()
            .expect("run armada version");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let json: serde_json::Value = serde_json::from_str(&version(&["--json"])).expect("json");
    let (package, revision) = (
        json["version"].as_str().expect("version").to_string(),
        json["revision"].as_str().expect("revision").to_string(),
    );
    assert_eq!(package, env!("CARGO_PKG_VERSION"));
    assert!(!revision.is_empty());
    // Built from this checkout (unless the build was told its revision): git's revision.
    if std::env::var_os("ARMADA_GIT_REVISION").is_none()
        && let Ok(git) = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
        && git.status.success()
    {
        assert_eq!(revision, String::from_utf8_lossy(&git.stdout).trim());
    }
    let description = format!("armada {package} (revision {revision})");
    assert_eq!(version(&[]).trim_end(), description);

    let armada = Armada::start();
    let status = armada
        .cluster()
        .await
        .status(StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.version, package);
    assert_eq!(status.info, description);
    let body = metrics(&armada);
    assert_eq!(
        metric(
            &body,
            "armada_build_info",
            &[("version", &package), ("revision", &revision)]
        ),
        Some(1.0),
        "{body}"
    );
}

/// Every write proposed to a table's Raft group counts in `armada_raft_proposals_total`, and
/// the group's first election (this process started it) in `armada_raft_elections_total`.
#[tokio::test(flavor = "multi_thread")]
async fn raft_proposals_and_elections_are_counted_per_table() {
    let armada = Armada::start();
    armada.create_table("counted").await;
    armada.create_table("idle").await;
    let mut kv = armada.kv().await;
    let writes = 25;
    for index in 0..writes {
        kv.put(put("counted", format!("k{index}"), "v"))
            .await
            .expect("put");
    }
    let body = metrics(&armada);
    let proposals = |table| metric(&body, "armada_raft_proposals_total", &[("table", table)]);
    assert_eq!(proposals("counted"), Some(f64::from(writes)), "{body}");
    assert_eq!(proposals("idle"), None, "no write was proposed to idle");
    for table in ["counted", "idle"] {
        let elections = metric(&body, "armada_raft_elections_total", &[("table", table)]);
        assert_eq!(elections, Some(1.0), "{table}: {body}");
    }
}
