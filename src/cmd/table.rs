//! `armada table` (being written).

#[derive(clap::Args)]
pub struct TableArgs {}

pub async fn run(_args: TableArgs) -> anyhow::Result<()> {
    anyhow::bail!("armada table is not built yet")
}
