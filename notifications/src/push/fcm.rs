//! FCM HTTP v1: a service account's RS256 JWT is exchanged for an OAuth2 access token
//! (RFC 7523 JWT bearer grant), which authorizes `POST /v1/projects/{id}/messages:send`.

use super::http::{excerpt, is_transient, retry_after, transport_failure};
use super::{Notification, Outcome, Urgency};
use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The OAuth2 scope for sending messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The JWT bearer grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// An access token is replaced this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The service-account fields we use (the JSON has more).
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    /// The Firebase project.
    pub project_id: String,
    /// The account's e-mail (JWT `iss`).
    pub client_email: String,
    /// Where the JWT is exchanged for an access token (JWT `aud`).
    pub token_uri: String,
}

/// The assertion's claims.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// A cached access token.
struct AccessToken {
    /// The bearer value.
    value: String,
    /// When to fetch a new one (60 s before it expires).
    refresh_at: Instant,
}

/// The FCM sender.
pub struct Fcm {
    /// HTTP client.
    client: reqwest::Client,
    /// `{endpoint}/v1/projects/{project}/messages:send`.
    send_url: String,
    /// The service account.
    account: ServiceAccount,
    /// Its RSA key.
    signing: EncodingKey,
    /// The current access token; the lock is held during a refresh so that concurrent
    /// sends wait for one exchange instead of each making their own.
    token: Mutex<Option<AccessToken>>,
}

/// Reads `FCM_CREDENTIALS`: inline JSON when it starts with `{`, else a file path.
pub fn read_credentials(setting: &str) -> anyhow::Result<String> {
    let setting = setting.trim();
    if setting.starts_with('{') {
        return Ok(setting.to_owned());
    }
    std::fs::read_to_string(setting)
        .with_context(|| format!("FCM_CREDENTIALS: cannot read the file {setting}"))
}

/// The service account and its signing key from the JSON. Errors name the field, never
/// its value.
pub fn parse_credentials(json: &str) -> anyhow::Result<(ServiceAccount, EncodingKey)> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        anyhow::anyhow!(
            "FCM_CREDENTIALS is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let field = |name: &str| -> anyhow::Result<String> {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|v| !v.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("FCM_CREDENTIALS has no string field `{name}`"))
    };
    let account = ServiceAccount {
        project_id: field("project_id")?,
        client_email: field("client_email")?,
        token_uri: field("token_uri")?,
    };
    if url::Url::parse(&account.token_uri).is_err() {
        anyhow::bail!("FCM_CREDENTIALS: `token_uri` is not a URL");
    }
    let key = rsa::PrivateKey::from_pkcs8_pem(&field("private_key")?).map_err(|_| {
        anyhow::anyhow!("FCM_CREDENTIALS: `private_key` is not a PKCS#8 PEM RSA private key")
    })?;
    let der = key
        .to_pkcs1_der()
        .map_err(|_| anyhow::anyhow!("FCM_CREDENTIALS: `private_key` cannot be re-encoded"))?;
    Ok((account, EncodingKey::from_rsa_der(der.as_bytes())))
}

impl Fcm {
    /// A sender for the service account in `credentials_json`, talking to `endpoint`.
    pub fn new(
        client: reqwest::Client,
        credentials_json: &str,
        endpoint: &str,
    ) -> anyhow::Result<Self> {
        let (account, signing) = parse_credentials(credentials_json)?;
        let endpoint = endpoint.trim_end_matches('/');
        if url::Url::parse(endpoint).is_err() {
            anyhow::bail!("FCM_ENDPOINT is not a URL");
        }
        Ok(Self {
            client,
            send_url: format!(
                "{endpoint}/v1/projects/{}/messages:send",
                account.project_id
            ),
            account,
            signing,
            token: Mutex::new(None),
        })
    }

    /// The service account's project.
    pub fn project_id(&self) -> &str {
        &self.account.project_id
    }

    /// One attempt to push `notification` to registration `token`.
    pub async fn send(&self, token: &str, notification: &Notification) -> Outcome {
        let bearer = match self.access_token().await {
            Ok(bearer) => bearer,
            Err(outcome) => return outcome,
        };
        let mut android = serde_json::json!({
            "priority": if notification.urgency == Urgency::High { "high" } else { "normal" },
            "ttl": format!("{}s", notification.ttl.as_secs()),
        });
        if let Some(key) = &notification.collapse_key {
            android["collapse_key"] = key.clone().into();
        }
        let message = serde_json::json!({
            "message": {
                "token": token,
                "notification": {"title": notification.title, "body": notification.body},
                "data": notification.data,
                "android": android,
            }
        });
        let response = match self
            .client
            .post(&self.send_url)
            .bearer_auth(&bearer)
            .json(&message)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => return transport_failure("FCM", err),
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Outcome::Sent;
        }
        let after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let error = FcmError::parse(&body);
        let reason = format!("FCM answered {status} {}: {}", error.code(), error.message);
        if status == 404 || error.error_code.as_deref() == Some("UNREGISTERED") {
            return Outcome::Gone { reason };
        }
        if status == 401 {
            // The token was revoked or expired early: the next attempt fetches a new one.
            self.forget(&bearer).await;
            return Outcome::Retry {
                reason,
                retry_after: None,
            };
        }
        if is_transient(status) {
            return Outcome::Retry {
                reason,
                retry_after: after,
            };
        }
        Outcome::Rejected { reason }
    }

    /// The cached access token, or a fresh one; a failed exchange is a `Retry`.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let fresh = self.exchange().await.map_err(|reason| Outcome::Retry {
            reason,
            retry_after: None,
        })?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Drops the cached token if it still is `bearer` (another task may have replaced it).
    async fn forget(&self, bearer: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == bearer) {
            *cached = None;
        }
    }

    /// The JWT bearer grant: a signed assertion for an access token.
    async fn exchange(&self) -> Result<AccessToken, String> {
        let iat = chrono::Utc::now().timestamp();
        let claims = AssertionClaims {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let assertion =
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.signing)
                .map_err(|e| format!("cannot sign the FCM assertion: {e}"))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT_TYPE)
            .append_pair("assertion", &assertion)
            .finish();
        let started = Instant::now();
        let response = self
            .client
            .post(&self.account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|err| match transport_failure("FCM token endpoint", err) {
                Outcome::Retry { reason, .. } => reason,
                _ => "FCM token endpoint failed".to_owned(),
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("FCM token endpoint: {}", e.without_url()))?;
        if !status.is_success() {
            return Err(format!(
                "FCM token endpoint answered {}: {}",
                status.as_u16(),
                excerpt(&body)
            ));
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| "FCM token endpoint answered without an access_token".to_owned())?;
        let lifetime = Duration::from_secs(token.expires_in);
        Ok(AccessToken {
            value: token.access_token,
            refresh_at: started + lifetime.saturating_sub(REFRESH_MARGIN),
        })
    }
}

/// The parts of a Google API error body (`{"error":{"status","message","details":[..]}}`).
#[derive(Debug, Default)]
struct FcmError {
    /// `error.status` (`NOT_FOUND`, `INVALID_ARGUMENT`…).
    status: Option<String>,
    /// The FCM `errorCode` from `details` (`UNREGISTERED`, `QUOTA_EXCEEDED`…).
    error_code: Option<String>,
    /// `error.message`, or a body excerpt.
    message: String,
}

impl FcmError {
    fn parse(body: &[u8]) -> Self {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Self {
                message: excerpt(body),
                ..Self::default()
            };
        };
        let error = &value["error"];
        let error_code = error["details"].as_array().and_then(|details| {
            details
                .iter()
                .find_map(|d| d["errorCode"].as_str().map(str::to_owned))
        });
        Self {
            status: error["status"].as_str().map(str::to_owned),
            error_code,
            message: error["message"]
                .as_str()
                .map(|m| excerpt(m.as_bytes()))
                .unwrap_or_else(|| excerpt(body)),
        }
    }

    /// The most specific code there is.
    fn code(&self) -> &str {
        self.error_code
            .as_deref()
            .or(self.status.as_deref())
            .unwrap_or("error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_error_bodies_give_their_fcm_error_code() {
        let body = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        let error = FcmError::parse(body);
        assert_eq!(error.error_code.as_deref(), Some("UNREGISTERED"));
        assert_eq!(error.code(), "UNREGISTERED");
        assert_eq!(error.message, "Requested entity was not found.");
        let plain = FcmError::parse(b"upstream connect error");
        assert_eq!(plain.code(), "error");
        assert_eq!(plain.message, "upstream connect error");
    }

    #[test]
    fn broken_credentials_name_the_field_and_not_its_value() {
        let err = parse_credentials("{")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not JSON"), "{err}");
        let err =
            parse_credentials(r#"{"project_id":"p","client_email":"e","token_uri":"http://t"}"#)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(err.contains("private_key"), "{err}");
        let err = parse_credentials(
            r#"{"project_id":"p","client_email":"e","token_uri":"http://t","private_key":"-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n"}"#,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("private_key") && !err.contains("secretstuff"),
            "{err}"
        );
    }
}
