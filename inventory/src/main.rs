//! The inventory binary: config → telemetry → build → run.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use inventory::{build, config::InventoryConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = InventoryConfig::from_env()?;
    tracing::info!(?config, "starting inventory");
    let shutdown = shared::shutdown::on_signal();
    let app = build(config, shutdown).await?;
    app.run_until_stopped().await
}
