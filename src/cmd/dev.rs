//! `armada dev` (being written).

#[derive(clap::Args)]
pub struct DevArgs {}

pub async fn run(_args: DevArgs) -> anyhow::Result<()> {
    anyhow::bail!("armada dev is not built yet")
}
