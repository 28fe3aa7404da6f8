//! The notifications service's settings: the shared ones, the push providers, retries.

use crate::push::PushConfig;
use crate::worker::RetryPolicy;
use shared::config::{ConfigError, ServiceConfig, env_parse};
use std::time::Duration;

/// Default HTTP port (api.md).
pub const DEFAULT_PORT: u16 = 8083;

/// Everything the notifications service reads at start.
#[derive(Debug, Clone)]
pub struct NotificationsConfig {
    /// Database, broker, HTTP, auth.
    pub base: ServiceConfig,
    /// Provider addresses and credentials.
    pub push: PushConfig,
    /// Retries: `PUSH_RETRY_BASE_MS` (1 s), `PUSH_RETRY_MAX_MS` (5 min),
    /// `PUSH_MAX_ATTEMPTS` (8).
    pub retry: RetryPolicy,
    /// Pushes in flight at once per replica (`PUSH_CONCURRENCY`, 32).
    pub concurrency: usize,
    /// How often the worker looks for due retries and other replicas' deliveries
    /// (`PUSH_POLL_INTERVAL_MS`, 500 ms).
    pub poll_interval: Duration,
    /// How long an attempt may run before another worker may retry it
    /// (`PUSH_LEASE_SECS`, 60 s; longer than the provider timeout).
    pub lease: Duration,
}

impl NotificationsConfig {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            base: ServiceConfig::from_env("notifications", DEFAULT_PORT)?,
            push: PushConfig::from_env()?,
            retry: RetryPolicy {
                base: Duration::from_millis(env_parse("PUSH_RETRY_BASE_MS", 1000)?),
                max: Duration::from_millis(env_parse("PUSH_RETRY_MAX_MS", 300_000)?),
                max_attempts: env_parse("PUSH_MAX_ATTEMPTS", 8)?,
            },
            concurrency: env_parse("PUSH_CONCURRENCY", 32)?,
            poll_interval: Duration::from_millis(env_parse("PUSH_POLL_INTERVAL_MS", 500)?),
            lease: Duration::from_secs(env_parse("PUSH_LEASE_SECS", 60)?),
        })
    }
}
