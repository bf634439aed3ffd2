//! `armada status` and `armada members` (being written).

#[derive(clap::Args)]
pub struct StatusArgs {}

#[derive(clap::Args)]
pub struct MembersArgs {}

pub async fn run(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("armada status is not built yet")
}

pub async fn run_members(_args: MembersArgs) -> anyhow::Result<()> {
    anyhow::bail!("armada members is not built yet")
}
