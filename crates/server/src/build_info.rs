//! What this build is: the package version and the git revision it was built from (stamped by
//! `build.rs`; `unknown` when built without git). Shown by `armada version`, in
//! `Cluster.Status` (`version`, `info`) and as the metric `armada_build_info`.

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git revision of the build, or `unknown`.
pub const GIT_REVISION: &str = env!("ARMADA_GIT_REVISION");

/// The version with its revision, `0.1.0 (revision 1a2b3c4)`: what `armada --version` prints.
pub const VERSION_AND_REVISION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("ARMADA_GIT_REVISION"),
    ")"
);

/// One line for humans and `Status.info`: `armada 0.1.0 (revision 1a2b3c4)`.
pub fn description() -> String {
    format!("armada {VERSION_AND_REVISION}")
}

/// Publishes `armada_build_info{version, revision} 1`, the Prometheus convention for
/// labelling a build (join on it to see which version a node runs).
pub fn record_metric() {
    metrics::gauge!(
        "armada_build_info",
        "version" => VERSION,
        "revision" => GIT_REVISION
    )
    .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_stamped_with_a_version_and_a_revision() {
        assert!(!VERSION.is_empty());
        assert!(
            GIT_REVISION == "unknown"
                || (!GIT_REVISION.is_empty()
                    && GIT_REVISION.bytes().all(|byte| byte.is_ascii_graphic())),
            "{GIT_REVISION:?}"
        );
        assert_eq!(
            description(),
            format!("armada {VERSION} (revision {GIT_REVISION})")
        );
    }
}
