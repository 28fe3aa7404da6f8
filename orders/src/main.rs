//! The orders binary: config → telemetry → build → run.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use orders::{build, config::OrdersConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = OrdersConfig::from_env()?;
    tracing::info!(?config, "starting orders");
    let shutdown = shared::shutdown::on_signal();
    let app = build(config, shutdown).await?;
    app.run_until_stopped().await
}
