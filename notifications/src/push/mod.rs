//! The three push providers, speaking their real protocols: Web Push (RFC 8030, with
//! RFC 8291 `aes128gcm` encryption and RFC 8292 VAPID), FCM HTTP v1 (OAuth2 service
//! account) and APNs (HTTP/2, ES256 provider token).
//!
//! [`Providers::send`] makes one attempt and sorts the answer into an [`Outcome`]; the
//! delivery worker owns retries, backoff and the delivery log.
//!
//! Layout: [`ece`] (RFC 8291 payload encryption and decryption), [`vapid`] (the VAPID
//! key, its storage and JWT), [`webpush`], [`fcm`] and [`apns`] (one sender each), and
//! `http` (what the three share about HTTP answers).

pub mod apns;
pub mod ece;
pub mod fcm;
pub mod guard;
mod http;
pub mod vapid;
pub mod webpush;

use sea_orm::DatabaseConnection;
use shared::config::{ConfigError, env_or, env_parse};
use std::collections::BTreeMap;
use std::time::Duration;

/// `WEBPUSH_VAPID_SUBJECT` when unset.
pub const DEFAULT_VAPID_SUBJECT: &str = "mailto:ops@clickcollect.example";
/// `FCM_ENDPOINT` when unset.
pub const DEFAULT_FCM_ENDPOINT: &str = "https://fcm.googleapis.com";
/// `APNS_ENDPOINT` when unset.
pub const DEFAULT_APNS_ENDPOINT: &str = "https://api.push.apple.com";
/// `PUSH_TIMEOUT_MS` when unset.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A device's push channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A browser's Web Push subscription.
    WebPush,
    /// A Firebase Cloud Messaging registration token.
    Fcm,
    /// An Apple Push Notification service device token.
    Apns,
}

impl Kind {
    /// The name used in the API and the database: `webpush`, `fcm`, `apns`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WebPush => "webpush",
            Kind::Fcm => "fcm",
            Kind::Apns => "apns",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "webpush" => Some(Kind::WebPush),
            "fcm" => Some(Kind::Fcm),
            "apns" => Some(Kind::Apns),
            _ => None,
        }
    }
}

/// Where one push goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Web Push subscription: the push service URL and the browser's keys (base64url).
    WebPush {
        /// The push service URL the browser gave.
        endpoint: String,
        /// The user agent's P-256 public key, uncompressed, base64url.
        p256dh: String,
        /// The 16-byte authentication secret, base64url.
        auth: String,
    },
    /// An FCM registration token.
    Fcm {
        /// The registration token.
        token: String,
    },
    /// An APNs device token (hex).
    Apns {
        /// The device token.
        token: String,
    },
}

impl Target {
    /// Its channel.
    pub fn kind(&self) -> Kind {
        match self {
            Target::WebPush { .. } => Kind::WebPush,
            Target::Fcm { .. } => Kind::Fcm,
            Target::Apns { .. } => Kind::Apns,
        }
    }
}

/// How soon the push service should deliver (RFC 8030 `Urgency`; APNs priority 10 for
/// `High`, 5 otherwise; FCM `android.priority` high for `High`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// `very-low`.
    VeryLow,
    /// `low`.
    Low,
    /// `normal`.
    Normal,
    /// `high`.
    High,
}

/// What the customer sees, already rendered in their language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The title line.
    pub title: String,
    /// The text.
    pub body: String,
    /// Machine-readable fields for the app (`order_id`, `event_type`, `store_id`…).
    pub data: BTreeMap<String, String>,
    /// Delivery urgency.
    pub urgency: Urgency,
    /// How long the push service may hold it for an offline device.
    pub ttl: Duration,
    /// Pushes with the same key replace each other on the device (Web Push `Topic`, APNs
    /// `apns-collapse-id`, FCM `collapse_key`).
    pub collapse_key: Option<String>,
}

/// The answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the push service.
    Sent,
    /// 429, 5xx, a timeout or a connection error: try again, not before `retry_after`
    /// when the service said so (`Retry-After`).
    Retry {
        /// What went wrong, for the delivery log (no secrets).
        reason: String,
        /// The service's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The device is gone (Web Push 404/410, FCM `UNREGISTERED`, APNs `BadDeviceToken` or
    /// 410): remove it, never retry.
    Gone {
        /// What the service said.
        reason: String,
    },
    /// Refused for good (a 4xx that retrying cannot fix): the delivery is dead.
    Rejected {
        /// What the service said.
        reason: String,
    },
    /// The provider for this kind is not configured.
    Disabled {
        /// Which setting is missing.
        reason: String,
    },
}

/// Provider addresses and credentials (api.md, "Running a service").
#[derive(Clone, Default)]
pub struct PushConfig {
    /// `WEBPUSH_VAPID_PRIVATE_KEY`: base64url P-256 private scalar; when unset, a key pair
    /// is generated on first start and kept in the database.
    pub vapid_private_key: Option<String>,
    /// `WEBPUSH_VAPID_SUBJECT`: the `sub` claim (a `mailto:` or `https:` URL).
    pub vapid_subject: String,
    /// `FCM_ENDPOINT`: base URL of the FCM API (default `https://fcm.googleapis.com`).
    pub fcm_endpoint: String,
    /// `FCM_CREDENTIALS`: the service-account JSON, inline or as a file path; its
    /// `token_uri` is where the signed JWT is exchanged for an access token. Unset: FCM
    /// is disabled.
    pub fcm_credentials: Option<String>,
    /// `APNS_ENDPOINT`: base URL of APNs (default `https://api.push.apple.com`).
    pub apns_endpoint: String,
    /// `APNS_KEY`: the `.p8` PKCS#8 PEM signing key, inline or as a file path. Unset (or
    /// any of the three below unset): APNs is disabled.
    pub apns_key: Option<String>,
    /// `APNS_KEY_ID`: the key's id (JWT `kid`).
    pub apns_key_id: Option<String>,
    /// `APNS_TEAM_ID`: the team id (JWT `iss`).
    pub apns_team_id: Option<String>,
    /// `APNS_TOPIC`: the app's bundle id (`apns-topic`).
    pub apns_topic: Option<String>,
    /// Per-request timeout (`PUSH_TIMEOUT_MS`, default 10 s).
    pub request_timeout: Duration,
    /// Whether Web Push may dial plain `http://` endpoints and loopback or private
    /// addresses (`PUSH_ALLOW_LOCAL_ENDPOINTS`, false): local runs and tests only, since a
    /// customer could otherwise make the service call internal addresses.
    pub allow_local_endpoints: bool,
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and credentials never reach the logs.
        f.debug_struct("PushConfig")
            .field("vapid_private_key", &self.vapid_private_key.is_some())
            .field("vapid_subject", &self.vapid_subject)
            .field("fcm_endpoint", &self.fcm_endpoint)
            .field("fcm_credentials", &self.fcm_credentials.is_some())
            .field("apns_endpoint", &self.apns_endpoint)
            .field("apns_key", &self.apns_key.is_some())
            .field("apns_key_id", &self.apns_key_id)
            .field("apns_team_id", &self.apns_team_id)
            .field("apns_topic", &self.apns_topic)
            .field("request_timeout", &self.request_timeout)
            .field("allow_local_endpoints", &self.allow_local_endpoints)
            .finish()
    }
}

impl PushConfig {
    /// Reads the environment (see the field docs for names and defaults).
    pub fn from_env() -> Result<Self, ConfigError> {
        let optional = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        let timeout_ms: u64 = env_parse(
            "PUSH_TIMEOUT_MS",
            DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
        )?;
        if timeout_ms == 0 {
            return Err(ConfigError {
                name: "PUSH_TIMEOUT_MS".into(),
                reason: "must be at least 1".into(),
            });
        }
        let vapid_subject = env_or("WEBPUSH_VAPID_SUBJECT", DEFAULT_VAPID_SUBJECT);
        // RFC 8292 §2.1: a contact URI the push service operator can use.
        if !(vapid_subject.starts_with("mailto:") || vapid_subject.starts_with("https:")) {
            return Err(ConfigError {
                name: "WEBPUSH_VAPID_SUBJECT".into(),
                reason: "must be a mailto: or https: URL".into(),
            });
        }
        Ok(Self {
            vapid_private_key: optional("WEBPUSH_VAPID_PRIVATE_KEY"),
            vapid_subject,
            fcm_endpoint: env_or("FCM_ENDPOINT", DEFAULT_FCM_ENDPOINT),
            fcm_credentials: optional("FCM_CREDENTIALS"),
            apns_endpoint: env_or("APNS_ENDPOINT", DEFAULT_APNS_ENDPOINT),
            apns_key: optional("APNS_KEY"),
            apns_key_id: optional("APNS_KEY_ID"),
            apns_team_id: optional("APNS_TEAM_ID"),
            apns_topic: optional("APNS_TOPIC"),
            request_timeout: Duration::from_millis(timeout_ms),
            allow_local_endpoints: env_parse("PUSH_ALLOW_LOCAL_ENDPOINTS", false)?,
        })
    }
}

/// The configured providers; a provider without credentials answers
/// [`Outcome::Disabled`].
pub struct Providers {
    /// Web Push is always on: there is always a VAPID key.
    webpush: webpush::WebPush,
    /// FCM, or why it is off.
    fcm: Result<fcm::Fcm, String>,
    /// APNs, or why it is off.
    apns: Result<apns::Apns, String>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("vapid_public_key", &self.webpush.public_key())
            .field("fcm", &self.fcm.is_ok())
            .field("apns", &self.apns.is_ok())
            .finish()
    }
}

impl Providers {
    /// Builds the providers: loads (or generates and stores, in table `vapid_key`) the
    /// VAPID key, reads the FCM and APNs credentials, and logs one line per disabled
    /// provider.
    pub async fn new(config: &PushConfig, db: &DatabaseConnection) -> anyhow::Result<Self> {
        let key = match &config.vapid_private_key {
            Some(encoded) => vapid::VapidKey::from_base64url(encoded)
                .map_err(|e| anyhow::anyhow!("invalid setting WEBPUSH_VAPID_PRIVATE_KEY: {e}"))?,
            None => vapid::load_or_create(db).await?,
        };
        // No redirects: a push service answers; it never sends a capability URL elsewhere.
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        // Web Push endpoints come from customers: outside local runs, public addresses only.
        let mut webpush_client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if !config.allow_local_endpoints {
            webpush_client = webpush_client.dns_resolver(std::sync::Arc::new(guard::PublicOnly));
        }
        let webpush = webpush::WebPush::new(
            webpush_client.build()?,
            key,
            config.vapid_subject.clone(),
            config.allow_local_endpoints,
        );
        tracing::info!(
            vapid_public_key = %webpush.public_key(),
            subject = %config.vapid_subject,
            "Web Push enabled"
        );

        let fcm = match &config.fcm_credentials {
            None => Err("FCM_CREDENTIALS is not set".to_owned()),
            Some(setting) => {
                let json = fcm::read_credentials(setting)?;
                let sender = fcm::Fcm::new(client.clone(), &json, &config.fcm_endpoint)?;
                tracing::info!(
                    project_id = %sender.project_id(),
                    endpoint = %config.fcm_endpoint,
                    "FCM enabled"
                );
                Ok(sender)
            }
        };
        if let Err(reason) = &fcm {
            tracing::warn!("FCM disabled: {reason}");
        }

        let apns = match (
            &config.apns_key,
            &config.apns_key_id,
            &config.apns_team_id,
            &config.apns_topic,
        ) {
            (Some(key), Some(key_id), Some(team_id), Some(topic)) => {
                let pem = apns::read_key(key)?;
                // APNs speaks only HTTP/2: h2 over TLS for https://, h2c for http://.
                let h2 = reqwest::Client::builder()
                    .http2_prior_knowledge()
                    .timeout(config.request_timeout)
                    .connect_timeout(config.request_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?;
                let sender =
                    apns::Apns::new(h2, &config.apns_endpoint, &pem, key_id, team_id, topic)?;
                tracing::info!(
                    topic = %sender.topic(),
                    endpoint = %config.apns_endpoint,
                    "APNs enabled"
                );
                Ok(sender)
            }
            (key, key_id, team_id, topic) => {
                let missing: Vec<&str> = [
                    ("APNS_KEY", key.is_none()),
                    ("APNS_KEY_ID", key_id.is_none()),
                    ("APNS_TEAM_ID", team_id.is_none()),
                    ("APNS_TOPIC", topic.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect();
                let verb = if missing.len() == 1 { "is" } else { "are" };
                Err(format!("{} {verb} not set", missing.join(", ")))
            }
        };
        if let Err(reason) = &apns {
            tracing::warn!("APNs disabled: {reason}");
        }

        Ok(Self { webpush, fcm, apns })
    }

    /// The VAPID public key: base64url, uncompressed P-256 point (65 bytes).
    pub fn vapid_public_key(&self) -> &str {
        self.webpush.public_key()
    }

    /// Which kinds are configured.
    pub fn enabled(&self, kind: Kind) -> bool {
        match kind {
            Kind::WebPush => true,
            Kind::Fcm => self.fcm.is_ok(),
            Kind::Apns => self.apns.is_ok(),
        }
    }

    /// One attempt to deliver `notification` to `target`.
    #[tracing::instrument(skip_all, fields(kind = target.kind().as_str()))]
    pub async fn send(&self, target: &Target, notification: &Notification) -> Outcome {
        let outcome = match target {
            Target::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                self.webpush
                    .send(endpoint, p256dh, auth, notification)
                    .await
            }
            Target::Fcm { token } => match &self.fcm {
                Ok(sender) => sender.send(token, notification).await,
                Err(reason) => disabled("FCM", reason),
            },
            Target::Apns { token } => match &self.apns {
                Ok(sender) => sender.send(token, notification).await,
                Err(reason) => disabled("APNs", reason),
            },
        };
        tracing::debug!(?outcome, "push attempt");
        outcome
    }
}

fn disabled(provider: &str, reason: &str) -> Outcome {
    Outcome::Disabled {
        reason: format!("{provider} is disabled: {reason}"),
    }
}
