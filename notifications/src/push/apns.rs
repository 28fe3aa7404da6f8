//! APNs: `POST /3/device/{token}` over HTTP/2, authorized by an ES256 provider token
//! (`kid` = key id, `iss` = team id, `iat`) that is reused for 50 minutes (Apple refuses
//! tokens older than an hour and regenerating more than every 20 minutes).

use super::http::{excerpt, is_transient, retry_after, transport_failure};
use super::{Notification, Outcome, Urgency};
use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::SecretKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A provider token is regenerated after this long.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// The provider token's claims.
#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: i64,
}

/// The APNs sender.
pub struct Apns {
    /// An HTTP/2-only client (`http2_prior_knowledge`).
    client: reqwest::Client,
    /// Base URL, without a trailing slash.
    endpoint: String,
    /// The `.p8` key.
    signing: EncodingKey,
    /// JWT `kid`.
    key_id: String,
    /// JWT `iss`.
    team_id: String,
    /// `apns-topic`.
    topic: String,
    /// The current provider token and when it was made.
    token: Mutex<Option<(String, Instant)>>,
}

/// Reads `APNS_KEY`: inline PEM when it starts with `-----BEGIN`, else a file path.
pub fn read_key(setting: &str) -> anyhow::Result<String> {
    let setting = setting.trim();
    if setting.starts_with("-----BEGIN") {
        return Ok(setting.to_owned());
    }
    std::fs::read_to_string(setting)
        .with_context(|| format!("APNS_KEY: cannot read the file {setting}"))
}

impl Apns {
    /// A sender with the PKCS#8 PEM `key_pem`.
    pub fn new(
        client: reqwest::Client,
        endpoint: &str,
        key_pem: &str,
        key_id: &str,
        team_id: &str,
        topic: &str,
    ) -> anyhow::Result<Self> {
        let key = SecretKey::from_pkcs8_pem(key_pem.trim())
            .map_err(|_| anyhow::anyhow!("APNS_KEY is not a PKCS#8 PEM P-256 private key (.p8)"))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|_| anyhow::anyhow!("APNS_KEY cannot be re-encoded"))?;
        let endpoint = endpoint.trim_end_matches('/');
        if url::Url::parse(endpoint).is_err() {
            anyhow::bail!("APNS_ENDPOINT is not a URL");
        }
        Ok(Self {
            client,
            endpoint: endpoint.to_owned(),
            signing: EncodingKey::from_ec_der(der.as_bytes()),
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            topic: topic.to_owned(),
            token: Mutex::new(None),
        })
    }

    /// The app's bundle id.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// One attempt to push `notification` to device `token`.
    pub async fn send(&self, token: &str, notification: &Notification) -> Outcome {
        // Device tokens are hex; anything else would not even make a valid path.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Outcome::Rejected {
                reason: "the APNs device token is not hex".to_owned(),
            };
        }
        let provider_token = match self.provider_token() {
            Ok(value) => value,
            Err(err) => {
                return Outcome::Retry {
                    reason: format!("cannot sign the APNs provider token: {err}"),
                    retry_after: None,
                };
            }
        };
        let expiration = if notification.ttl.is_zero() {
            // 0: deliver now or never.
            0
        } else {
            chrono::Utc::now().timestamp() + notification.ttl.as_secs() as i64
        };
        let mut request = self
            .client
            .post(format!("{}/3/device/{token}", self.endpoint))
            .header("authorization", format!("bearer {provider_token}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header(
                "apns-priority",
                if notification.urgency == Urgency::High {
                    "10"
                } else {
                    "5"
                },
            )
            .header("apns-expiration", expiration.to_string());
        if let Some(key) = &notification.collapse_key {
            request = request.header("apns-collapse-id", key);
        }
        let response = match request.json(&payload(notification)).send().await {
            Ok(response) => response,
            Err(err) => return transport_failure("APNs", err),
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Outcome::Sent;
        }
        let after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let apns_reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_else(|| excerpt(&body));
        let reason = format!("APNs answered {status}: {apns_reason}");
        match (status, apns_reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") => Outcome::Gone { reason },
            (403, "ExpiredProviderToken") => {
                self.forget(&provider_token);
                Outcome::Retry {
                    reason,
                    retry_after: None,
                }
            }
            (s, _) if is_transient(s) => Outcome::Retry {
                reason,
                retry_after: after,
            },
            _ => Outcome::Rejected { reason },
        }
    }

    /// The cached provider token, or a new one when it is 50 minutes old.
    fn provider_token(&self) -> anyhow::Result<String> {
        let mut cached = self
            .token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((value, made)) = cached.as_ref()
            && made.elapsed() < TOKEN_LIFETIME
        {
            return Ok(value.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        // APNs wants only alg and kid.
        header.typ = None;
        let claims = ProviderClaims {
            iss: &self.team_id,
            iat: chrono::Utc::now().timestamp(),
        };
        let value = jsonwebtoken::encode(&header, &claims, &self.signing)?;
        *cached = Some((value.clone(), Instant::now()));
        Ok(value)
    }

    /// Drops the cached token if it still is `value`.
    fn forget(&self, value: &str) {
        let mut cached = self
            .token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.as_ref().is_some_and(|(v, _)| v == value) {
            *cached = None;
        }
    }
}

/// `{"aps":{"alert":{"title","body"},"sound":"default"}, <data at top level>}`; a data
/// field named `aps` is dropped (it would replace the alert).
fn payload(notification: &Notification) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    for (key, value) in &notification.data {
        if key != "aps" {
            body.insert(key.clone(), value.clone().into());
        }
    }
    body.insert(
        "aps".to_owned(),
        serde_json::json!({
            "alert": {"title": notification.title, "body": notification.body},
            "sound": "default",
        }),
    );
    serde_json::Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_payload_puts_the_alert_in_aps_and_data_at_the_top_level() {
        let notification = Notification {
            title: "Prête".into(),
            body: "Votre commande est prête".into(),
            data: BTreeMap::from([
                ("order_id".to_owned(), "42".to_owned()),
                ("aps".to_owned(), "sneaky".to_owned()),
            ]),
            urgency: Urgency::High,
            ttl: Duration::from_secs(60),
            collapse_key: None,
        };
        let body = payload(&notification);
        assert_eq!(body["aps"]["alert"]["title"], "Prête");
        assert_eq!(body["aps"]["alert"]["body"], "Votre commande est prête");
        assert_eq!(body["aps"]["sound"], "default");
        assert_eq!(body["order_id"], "42");
    }

    #[test]
    fn a_key_that_is_not_a_p8_key_is_refused_without_echoing_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let err = Apns::new(
            reqwest::Client::new(),
            "https://api.push.apple.com",
            "-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n",
            "KEY",
            "TEAM",
            "app",
        )
        .err()
        .ok_or("expected an error")?
        .to_string();
        assert!(
            err.contains("APNS_KEY") && !err.contains("secretstuff"),
            "{err}"
        );
        Ok(())
    }
}
