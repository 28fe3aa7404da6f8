//! The notifications binary: config → telemetry → build → run.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use notifications::{build, config::NotificationsConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = NotificationsConfig::from_env()?;
    tracing::info!(?config, "starting notifications");
    let shutdown = shared::shutdown::on_signal();
    let app = build(config, shutdown).await?;
    app.run_until_stopped().await
}
