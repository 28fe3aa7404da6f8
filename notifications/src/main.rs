//! The notifications binary: config → telemetry → Application::build → run.

use notifications::{Application, config::NotificationsConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = NotificationsConfig::from_env()?;
    tracing::info!(?config, "starting notifications");
    let shutdown = shared::shutdown::on_signal();
    let app = Application::build(config, shutdown).await?;
    app.run_until_stopped().await
}
