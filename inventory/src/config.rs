//! The inventory service's settings: the shared ones plus its own.

use shared::config::{ConfigError, ServiceConfig, env_parse};
use std::time::Duration;

/// Default HTTP port (api.md).
pub const DEFAULT_PORT: u16 = 8081;

/// Everything the inventory service reads at start.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// Database, broker, HTTP, auth.
    pub base: ServiceConfig,
    /// How often the expiry sweeper looks for due reservations.
    pub sweep_interval: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_retention: Duration,
}

impl InventoryConfig {
    /// Reads the environment (`RESERVATION_SWEEP_INTERVAL_MS` besides the shared variables).
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            base: ServiceConfig::from_env("inventory", DEFAULT_PORT)?,
            sweep_interval: Duration::from_millis(env_parse(
                "RESERVATION_SWEEP_INTERVAL_MS",
                1000,
            )?),
            idempotency_retention: Duration::from_secs(env_parse(
                "IDEMPOTENCY_RETENTION_SECS",
                24 * 3600,
            )?),
        })
    }
}
