//! The inventory service's settings: the shared ones plus its own.

use shared::config::{ConfigError, ServiceConfig, env_parse};
use std::time::Duration;

/// Default HTTP port (api.md).
pub const DEFAULT_PORT: u16 = 8081;

/// How long an order's reservation holds by default: 14 days.
pub const DEFAULT_ORDER_HOLD_SECONDS: i64 = 14 * 24 * 3600;

/// Everything the inventory service reads at start.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// Database, broker, HTTP, auth.
    pub base: ServiceConfig,
    /// How often the expiry sweeper looks for due reservations.
    pub sweep_interval: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_retention: Duration,
    /// How long an order's reservation holds its stock (`ORDER_HOLD_SECONDS`, 1 s to 14
    /// days); the orders service commits or releases it well before.
    pub order_hold_seconds: i64,
}

impl InventoryConfig {
    /// Reads the environment (`RESERVATION_SWEEP_INTERVAL_MS`, `IDEMPOTENCY_RETENTION_SECS`
    /// and `ORDER_HOLD_SECONDS` besides the shared variables).
    pub fn from_env() -> Result<Self, ConfigError> {
        let order_hold_seconds: i64 = env_parse("ORDER_HOLD_SECONDS", DEFAULT_ORDER_HOLD_SECONDS)?;
        if !(1..=crate::domain::MAX_TTL_SECONDS).contains(&order_hold_seconds) {
            return Err(ConfigError {
                name: "ORDER_HOLD_SECONDS".into(),
                reason: format!("must be 1..={}", crate::domain::MAX_TTL_SECONDS),
            });
        }
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
            order_hold_seconds,
        })
    }
}
