//! Typed settings from the environment (api.md, "Running a service"), with local defaults.

use std::net::SocketAddr;

/// The development secret used when `AUTH_JWT_SECRET` is unset; never for production.
pub const DEV_JWT_SECRET: &str = "clickcollect-dev-secret-do-not-use-in-production";

/// What every service reads at start.
#[derive(Clone)]
pub struct ServiceConfig {
    /// The service's name (`inventory`, `orders`, `notifications`).
    pub service: String,
    /// Its own PostgreSQL database.
    pub database_url: String,
    /// Connections in its pool.
    pub database_pool_size: u32,
    /// RabbitMQ, including the vhost.
    pub amqp_url: String,
    /// Prefix of exchange and queue names (tests and benches isolate themselves with it).
    pub amqp_prefix: String,
    /// Where HTTP listens.
    pub bind_addr: SocketAddr,
    /// HS256 secret for bearer tokens.
    pub jwt_secret: String,
    /// Whether `jwt_secret` is the development default.
    pub jwt_secret_is_default: bool,
    /// Request body limit in bytes.
    pub body_limit_bytes: usize,
    /// HTTP worker threads (0 = one per core).
    pub http_workers: usize,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the URLs' passwords stay out of logs.
        f.debug_struct("ServiceConfig")
            .field("service", &self.service)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_pool_size", &self.database_pool_size)
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("amqp_prefix", &self.amqp_prefix)
            .field("bind_addr", &self.bind_addr)
            .field("jwt_secret_is_default", &self.jwt_secret_is_default)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .finish_non_exhaustive()
    }
}

/// `scheme://user:***@host/...`: the password replaced.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// A configuration error at start.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads `name`, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, or `default` when unset.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            name: name.to_owned(),
            reason: e.to_string(),
        }),
        _ => Ok(default),
    }
}

impl ServiceConfig {
    /// Reads the fixed variables for `service`, defaulting to the local stack on `default_port`.
    pub fn from_env(service: &str, default_port: u16) -> Result<Self, ConfigError> {
        let secret = std::env::var("AUTH_JWT_SECRET")
            .ok()
            .filter(|s| !s.is_empty());
        Ok(Self {
            service: service.to_owned(),
            database_url: env_or(
                "DATABASE_URL",
                &format!("postgres://postgres@127.0.0.1:5432/{service}"),
            ),
            database_pool_size: env_parse("DATABASE_POOL_SIZE", 16)?,
            amqp_url: env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_prefix: env_or("AMQP_PREFIX", ""),
            bind_addr: env_parse(
                "BIND_ADDR",
                SocketAddr::from(([127, 0, 0, 1], default_port)),
            )?,
            jwt_secret_is_default: secret.is_none(),
            jwt_secret: secret.unwrap_or_else(|| DEV_JWT_SECRET.to_owned()),
            body_limit_bytes: env_parse("BODY_LIMIT_BYTES", 2 * 1024 * 1024)?,
            http_workers: env_parse("HTTP_WORKERS", 0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
    }
}
