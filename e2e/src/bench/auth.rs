//! HS256 bearer tokens for each role, signed with the run's `AUTH_JWT_SECRET`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The claims of api.md: `sub`, `role`, `stores`, `exp`.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    /// User or service id.
    sub: &'a str,
    /// `customer|staff|admin|service`.
    role: &'a str,
    /// Store ids a staff token may act on.
    stores: &'a [String],
    /// Issued at (seconds since the epoch).
    iat: i64,
    /// Expiry (seconds since the epoch).
    exp: i64,
}

/// Mints tokens for the benchmark's actors.
#[derive(Clone)]
pub struct Tokens {
    /// The HS256 key.
    key: EncodingKey,
}

impl Tokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &str) -> anyhow::Result<Tokens> {
        Ok(Tokens {
            key: EncodingKey::from_secret(secret.as_bytes())?,
        })
    }

    /// A token for `sub` with `role` on `stores`, valid for a day.
    pub fn mint(&self, sub: &str, role: &str, stores: &[String]) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub,
            role,
            stores,
            iat: now,
            exp: now + 24 * 3600,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }

    /// The admin who sets up stores and stock.
    pub fn admin(&self) -> anyhow::Result<String> {
        self.mint("bench-admin", "admin", &[])
    }

    /// Customer number `n` (`bench-customer-<n>`).
    pub fn customer(&self, n: usize) -> anyhow::Result<String> {
        self.mint(&format!("bench-customer-{n}"), "customer", &[])
    }
}
