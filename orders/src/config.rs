//! The orders service's settings: the shared ones plus its own.

use shared::config::{ConfigError, ServiceConfig, env_parse};
use std::time::Duration;

/// Default HTTP port (api.md).
pub const DEFAULT_PORT: u16 = 8082;

/// Everything the orders service reads at start.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// Database, broker, HTTP, auth.
    pub base: ServiceConfig,
    /// How often the deadline sweeper looks for no-shows and reminders due
    /// (`ORDER_SWEEP_INTERVAL_MS`, default 1 s).
    pub sweep_interval: Duration,
    /// How long before the pickup deadline the reminder goes out
    /// (`PICKUP_REMINDER_BEFORE_SECS`, default 24 h).
    pub reminder_before: Duration,
    /// How long an `Idempotency-Key` is remembered (`IDEMPOTENCY_RETENTION_SECS`, 24 h).
    pub idempotency_retention: Duration,
}

impl OrdersConfig {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            base: ServiceConfig::from_env("orders", DEFAULT_PORT)?,
            sweep_interval: Duration::from_millis(env_parse("ORDER_SWEEP_INTERVAL_MS", 1000)?),
            reminder_before: Duration::from_secs(env_parse(
                "PICKUP_REMINDER_BEFORE_SECS",
                24 * 3600,
            )?),
            idempotency_retention: Duration::from_secs(env_parse(
                "IDEMPOTENCY_RETENTION_SECS",
                24 * 3600,
            )?),
        })
    }
}
