//! Web Push (RFC 8030): one encrypted POST to the subscription's endpoint, signed with
//! VAPID (RFC 8292), the payload encrypted with RFC 8291 `aes128gcm`.

use super::http::{is_transient, retry_after, transport_failure};
use super::vapid::VapidKey;
use super::{Notification, Outcome, Urgency, ece};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2_next::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a VAPID JWT is valid (RFC 8292 allows at most 24 h).
const JWT_LIFETIME_SECS: i64 = 12 * 3600;
/// A cached JWT is replaced when less than this is left of it.
const JWT_RENEW_WITHIN_SECS: i64 = 3600;
/// RFC 8030 §5.4: a topic is at most 32 characters of the URL-safe base64 alphabet.
const TOPIC_MAX: usize = 32;

/// The Web Push sender.
pub struct WebPush {
    /// HTTP client (no redirects: a push service answers, it does not send us elsewhere).
    client: reqwest::Client,
    /// Our VAPID key.
    key: VapidKey,
    /// The JWT `sub`.
    subject: String,
    /// One `Authorization` value per push-service origin, with its JWT's expiry.
    authorizations: Mutex<HashMap<String, (String, i64)>>,
    /// Whether plain http and non-public addresses may be dialled (local runs only).
    allow_local: bool,
}

/// Origins whose JWT is kept (there are a handful of push services; the bound only stops
/// made-up endpoints from growing the cache).
const MAX_CACHED_ORIGINS: usize = 256;

impl WebPush {
    /// A sender signing with `key` on behalf of `subject`.
    pub fn new(client: reqwest::Client, key: VapidKey, subject: String, allow_local: bool) -> Self {
        Self {
            client,
            key,
            subject,
            authorizations: Mutex::new(HashMap::new()),
            allow_local,
        }
    }

    /// Our VAPID public key (base64url).
    pub fn public_key(&self) -> &str {
        self.key.public_base64url()
    }

    /// One attempt to push `notification` to the subscription.
    pub async fn send(
        &self,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        notification: &Notification,
    ) -> Outcome {
        let origin = match url::Url::parse(endpoint) {
            Ok(url)
                if self.allow_local
                    && matches!(url.scheme(), "https" | "http")
                    && url.host().is_some() =>
            {
                url.origin().ascii_serialization()
            }
            Ok(url)
                if url.scheme() == "https"
                    && url.host().is_some_and(|h| super::guard::host_allowed(&h)) =>
            {
                url.origin().ascii_serialization()
            }
            _ => return rejected("the subscription endpoint is not an https URL of a public host"),
        };
        let (Some(ua_public), Some(auth_secret)) = (decode_b64url(p256dh), decode_b64url(auth))
        else {
            return rejected("the subscription keys are not base64url");
        };
        let payload = serde_json::json!({
            "title": notification.title,
            "body": notification.body,
            "data": notification.data,
        });
        let body = match ece::encrypt(payload.to_string().as_bytes(), &ua_public, &auth_secret) {
            Ok(body) => body,
            Err(err) => return rejected(&err.to_string()),
        };
        let authorization = match self.authorization(&origin) {
            Ok(value) => value,
            // Signing with a key that parsed cannot fail in practice; do not drop the push.
            Err(err) => {
                return Outcome::Retry {
                    reason: format!("cannot sign the VAPID JWT: {err}"),
                    retry_after: None,
                };
            }
        };

        let mut request = self
            .client
            .post(endpoint)
            .header("authorization", authorization)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", notification.ttl.as_secs().to_string())
            .header("urgency", urgency_name(notification.urgency));
        if let Some(key) = &notification.collapse_key {
            request = request.header("topic", topic(key));
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) => return transport_failure("push service", err),
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        if response.status().is_success() {
            return Outcome::Sent;
        }
        // The status only: the endpoint is the customer's choice, so what it answers is
        // never read back into the delivery log (nor read at all: no unbounded body).
        let reason = format!("push service answered {status}");
        match status {
            // Not 401/403: a JWT of ours the service refuses (a clock off, a key rotated)
            // would otherwise remove every device at once; those end `dead`, visibly.
            404 | 410 => Outcome::Gone { reason },
            s if is_transient(s) => Outcome::Retry {
                reason,
                retry_after: after,
            },
            _ => Outcome::Rejected { reason },
        }
    }

    /// `vapid t=<jwt>, k=<public key>` for `origin`, reusing the cached JWT until it is
    /// within an hour of expiry.
    fn authorization(&self, origin: &str) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let mut cache = self
            .authorizations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((value, exp)) = cache.get(origin)
            && *exp - now > JWT_RENEW_WITHIN_SECS
        {
            return Ok(value.clone());
        }
        let exp = now + JWT_LIFETIME_SECS;
        let jwt = self.key.sign(origin, &self.subject, exp)?;
        let value = format!("vapid t={jwt}, k={}", self.key.public_base64url());
        if cache.len() >= MAX_CACHED_ORIGINS {
            cache.clear();
        }
        cache.insert(origin.to_owned(), (value.clone(), exp));
        Ok(value)
    }
}

/// RFC 8030 `Urgency` values.
pub fn urgency_name(urgency: Urgency) -> &'static str {
    match urgency {
        Urgency::VeryLow => "very-low",
        Urgency::Low => "low",
        Urgency::Normal => "normal",
        Urgency::High => "high",
    }
}

/// A valid RFC 8030 `Topic` for `collapse_key`: the key itself when it already is one,
/// else the first 32 characters of its SHA-256 in base64url (stable, so pushes with the
/// same key still replace each other).
pub fn topic(collapse_key: &str) -> String {
    let valid = !collapse_key.is_empty()
        && collapse_key.len() <= TOPIC_MAX
        && collapse_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        return collapse_key.to_owned();
    }
    let mut hashed = URL_SAFE_NO_PAD.encode(Sha256::digest(collapse_key.as_bytes()));
    hashed.truncate(TOPIC_MAX);
    hashed
}

/// base64url with or without padding (browsers send it unpadded, some libraries pad).
pub fn decode_b64url(value: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(value.trim().trim_end_matches('='))
        .ok()
}

fn rejected(reason: &str) -> Outcome {
    Outcome::Rejected {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_url_safe_collapse_keys_are_used_as_topics_and_others_are_hashed() {
        assert_eq!(topic("order-42_ready"), "order-42_ready");
        let long = topic("order:0191d5a4-7e3c-7b1a-9f0e-5b7f2c1d9e8a:ready");
        assert_eq!(long.len(), 32);
        assert!(
            long.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            long,
            topic("order:0191d5a4-7e3c-7b1a-9f0e-5b7f2c1d9e8a:ready")
        );
        assert_ne!(topic("a b"), topic("a c"));
    }

    #[test]
    fn the_vapid_jwt_is_reused_per_origin() -> Result<(), Box<dyn std::error::Error>> {
        let sender = WebPush::new(
            reqwest::Client::new(),
            VapidKey::generate()?,
            "mailto:ops@example.com".into(),
            false,
        );
        let first = sender.authorization("https://a.example")?;
        assert_eq!(first, sender.authorization("https://a.example")?);
        assert_ne!(first, sender.authorization("https://b.example")?);
        assert!(first.starts_with("vapid t="));
        assert!(first.ends_with(&format!(", k={}", sender.public_key())));
        Ok(())
    }
}
