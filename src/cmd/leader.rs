//! `armada leader` (being written).

#[derive(clap::Args)]
pub struct LeaderArgs {}

pub async fn run(_args: LeaderArgs) -> anyhow::Result<()> {
    anyhow::bail!("armada leader is not built yet")
}
