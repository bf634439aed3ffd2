//! `armada kv` (being written).

#[derive(clap::Args)]
pub struct KvArgs {}

pub async fn run(_args: KvArgs) -> anyhow::Result<()> {
    anyhow::bail!("armada kv is not built yet")
}
