//! `armada version`: the package version and the git revision of the build
//! (`armada_server::build_info`), the same figures a node reports in `Cluster.Status` and in
//! `armada_build_info`, so a binary can be matched to the nodes running it.

use clap::Args;
use serde_json::json;

use super::kv::Output;
use armada_server::build_info;

/// `armada version`.
#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Print one JSON document: `{"version", "revision"}`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &VersionArgs) -> anyhow::Result<()> {
    let output = Output::new(args.json);
    if output.json {
        return output.print_json(&json!({
            "version": build_info::VERSION,
            "revision": build_info::GIT_REVISION,
        }));
    }
    println!("{}", build_info::description());
    Ok(())
}
