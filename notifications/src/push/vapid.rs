//! RFC 8292 VAPID: the application server's P-256 key pair, where it comes from (the
//! environment, or generated once and kept in table `vapid_key`), and the ES256 JWT that
//! identifies us to a push service.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::SecretKey;
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePrivateKey;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;

use super::ece::public_key_bytes;

/// The VAPID signing key and its public half.
pub struct VapidKey {
    /// The P-256 private scalar.
    secret: SecretKey,
    /// The same key, as jsonwebtoken wants it (PKCS#8 DER).
    signing: EncodingKey,
    /// base64url, uncompressed point: the `k=` parameter and what browsers subscribe with.
    public_b64: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the public half is ever shown.
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_b64)
            .finish_non_exhaustive()
    }
}

/// The claims of a VAPID JWT (RFC 8292 §2).
#[derive(Serialize)]
struct VapidClaims<'a> {
    /// The push service's origin.
    aud: &'a str,
    /// Expiry, unix seconds (at most 24 h ahead).
    exp: i64,
    /// Who to contact about our pushes (`mailto:` or `https:`).
    sub: &'a str,
}

impl VapidKey {
    /// A key from its base64url 32-byte private scalar (padding tolerated). The error
    /// never contains the key.
    pub fn from_base64url(encoded: &str) -> anyhow::Result<Self> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded.trim().trim_end_matches('='))
            .map_err(|_| anyhow::anyhow!("not base64url"))?;
        if bytes.len() != 32 {
            anyhow::bail!(
                "a P-256 private key is 32 bytes, this one is {}",
                bytes.len()
            );
        }
        let secret = SecretKey::from_slice(&bytes)
            .map_err(|_| anyhow::anyhow!("not a valid P-256 private scalar"))?;
        Self::from_secret(secret)
    }

    /// A fresh random key.
    pub fn generate() -> anyhow::Result<Self> {
        Self::from_secret(SecretKey::generate())
    }

    fn from_secret(secret: SecretKey) -> anyhow::Result<Self> {
        let der = secret
            .to_pkcs8_der()
            .map_err(|_| anyhow::anyhow!("cannot encode the P-256 key as PKCS#8"))?;
        let signing = EncodingKey::from_ec_der(der.as_bytes());
        let public_b64 = URL_SAFE_NO_PAD.encode(public_key_bytes(&secret.public_key()));
        Ok(Self {
            secret,
            signing,
            public_b64,
        })
    }

    /// The private scalar, base64url (what `WEBPUSH_VAPID_PRIVATE_KEY` holds).
    pub fn private_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.to_bytes())
    }

    /// The public key, base64url uncompressed point (65 bytes).
    pub fn public_base64url(&self) -> &str {
        &self.public_b64
    }

    /// A signed VAPID JWT for push service `origin`, valid until `exp` (unix seconds).
    pub fn sign(&self, origin: &str, subject: &str, exp: i64) -> anyhow::Result<String> {
        let claims = VapidClaims {
            aud: origin,
            exp,
            sub: subject,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.signing)
            .context("signing the VAPID JWT")
    }
}

/// The key kept in table `vapid_key`, generating and storing one on first start. Two
/// replicas starting at once both end with the row that won the insert.
pub async fn load_or_create(db: &DatabaseConnection) -> anyhow::Result<VapidKey> {
    if let Some(stored) = stored_key(db).await? {
        return VapidKey::from_base64url(&stored)
            .context("the VAPID key stored in table vapid_key is invalid");
    }
    let fresh = VapidKey::generate()?;
    // The single-row table (id = 1) makes the first insert win; a replica that lost the
    // race does nothing here and reads the winner's key below.
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO vapid_key (id, private_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        [fresh.private_base64url().into()],
    ))
    .await
    .context("storing the generated VAPID key in table vapid_key")?;
    let stored = stored_key(db)
        .await?
        .context("table vapid_key is empty right after inserting the key")?;
    let key = VapidKey::from_base64url(&stored)
        .context("the VAPID key stored in table vapid_key is invalid")?;
    if key.public_base64url() == fresh.public_base64url() {
        tracing::info!(public_key = %key.public_base64url(), "generated and stored a new VAPID key");
    }
    Ok(key)
}

/// The stored private key, if any.
async fn stored_key(db: &DatabaseConnection) -> anyhow::Result<Option<String>> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT private_key FROM vapid_key WHERE id = 1",
        ))
        .await
        .context("reading table vapid_key")?;
    row.map(|r| r.try_get::<String>("", "private_key"))
        .transpose()
        .context("reading table vapid_key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_a_round_trip_through_its_base64url_form()
    -> Result<(), Box<dyn std::error::Error>> {
        let key = VapidKey::generate()?;
        let again = VapidKey::from_base64url(&key.private_base64url())?;
        assert_eq!(key.public_base64url(), again.public_base64url());
        assert_eq!(URL_SAFE_NO_PAD.decode(key.public_base64url())?.len(), 65);
        Ok(())
    }

    #[test]
    fn broken_keys_are_refused_without_echoing_them() {
        for bad in [
            "",
            "!!!not-base64!!!",
            "AAAA",
            &URL_SAFE_NO_PAD.encode([0u8; 32]),
        ] {
            let err = VapidKey::from_base64url(bad).err().map(|e| e.to_string());
            assert!(err.is_some(), "{bad:?} was taken for a key");
            let err = err.unwrap_or_default();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_jwt_has_an_es256_header_and_the_claims_asked_for()
    -> Result<(), Box<dyn std::error::Error>> {
        let key = VapidKey::generate()?;
        let jwt = key.sign(
            "https://push.example.net",
            "mailto:ops@example.com",
            1_900_000_000,
        )?;
        let header = jsonwebtoken::decode_header(&jwt)?;
        assert_eq!(header.alg, Algorithm::ES256);
        let claims = jwt.split('.').nth(1).ok_or("a JWT with claims")?;
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims)?)?;
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        assert_eq!(claims["exp"], 1_900_000_000);
        Ok(())
    }
}
