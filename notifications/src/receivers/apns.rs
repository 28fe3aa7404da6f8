//! APNs over HTTP/2 cleartext (prior knowledge, nothing else spoken), with its own P-256
//! provider key: `POST /3/device/{hex token}`.

use super::{
    ANY_LOOPBACK_PORT, Received, Recorder, Reply, Server, ec_decoding_key, header, header_map,
    read_body, respond_json, start_server,
};
use crate::push::ece::public_key_bytes;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Version};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::SecretKey;
use p256::elliptic_curve::Generate;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// APNs refuses provider tokens older than an hour.
const MAX_TOKEN_AGE_SECS: i64 = 3600;
/// APNs' payload limit for alerts.
const MAX_PAYLOAD: usize = 4096;

/// What the server shares between requests.
struct State {
    /// Attempts (by device token), scripts, accepted pushes, violations.
    recorder: Recorder,
    /// The app's bundle id (`apns-topic`).
    topic: String,
    /// JWT `kid`.
    key_id: String,
    /// JWT `iss`.
    team_id: String,
    /// Verifies provider tokens.
    decoding: DecodingKey,
    /// Distinct provider tokens seen.
    provider_tokens: Mutex<HashSet<String>>,
}

/// A local APNs; clones share it, and it stops with the last clone.
#[derive(Clone)]
pub struct ApnsService {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<State>,
    address: std::net::SocketAddr,
    key_pem: String,
    _server: Server,
}

impl ApnsService {
    /// Starts it on `127.0.0.1:0` for app `topic`, with a fresh signing key.
    pub async fn start(topic: &str) -> anyhow::Result<Self> {
        Self::start_on(topic, ANY_LOOPBACK_PORT.into()).await
    }

    /// Starts it on `address` (the local demo uses a fixed port).
    pub async fn start_on(topic: &str, address: std::net::SocketAddr) -> anyhow::Result<Self> {
        let key = SecretKey::generate();
        let key_pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
        let decoding = ec_decoding_key(&public_key_bytes(&key.public_key()))
            .ok_or_else(|| anyhow::anyhow!("cannot make the APNs verification key"))?;
        let id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let (address, state, server) = start_server(
            address,
            true,
            |_| {
                Ok(Arc::new(State {
                    recorder: Recorder::default(),
                    topic: topic.to_owned(),
                    key_id: id[..10].to_owned(),
                    team_id: id[10..20].to_owned(),
                    decoding,
                    provider_tokens: Mutex::new(HashSet::new()),
                }))
            },
            handle,
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                address,
                key_pem,
                _server: server,
            }),
        })
    }

    /// The signing key, PKCS#8 PEM (for `APNS_KEY`).
    pub fn key_pem(&self) -> String {
        self.inner.key_pem.clone()
    }

    /// The key id (for `APNS_KEY_ID`).
    pub fn key_id(&self) -> String {
        self.inner.state.key_id.clone()
    }

    /// The team id (for `APNS_TEAM_ID`).
    pub fn team_id(&self) -> String {
        self.inner.state.team_id.clone()
    }

    /// The topic it was started with (for `APNS_TOPIC`).
    pub fn topic(&self) -> &str {
        &self.inner.state.topic
    }

    /// The base URL, `http://127.0.0.1:PORT` (for `APNS_ENDPOINT`; h2c).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.inner.address)
    }

    /// How many distinct provider tokens were presented (a sender that reuses its token
    /// shows 1).
    pub fn provider_tokens_seen(&self) -> usize {
        lock(&self.inner.state.provider_tokens).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> BoxFuture<'static, Response<Full<Bytes>>> {
    Box::pin(async move { push(&state, request).await })
}

/// An APNs error answer: `{"reason": ..}` (with a timestamp for 410, as Apple does).
fn apns_error(status: u16, reason: &str, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({ "reason": reason });
    if status == 410 {
        body["timestamp"] = chrono::Utc::now().timestamp_millis().into();
    }
    let headers: Vec<(&str, String)> = retry_after
        .map(|secs| ("retry-after", secs.to_string()))
        .into_iter()
        .collect();
    respond_json(status, &headers, body)
}

/// Apple's reason for a bare status.
fn reason_for(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "BadPath",
        405 => "MethodNotAllowed",
        410 => "Unregistered",
        413 => "PayloadTooLarge",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

/// Provider token claims.
#[derive(Deserialize)]
struct ProviderClaims {
    iat: i64,
}

/// `POST /3/device/{token}`.
async fn push(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let refuse = |status: u16, reason: &str, what: String| {
        state.recorder.violation("apns", what);
        apns_error(status, reason, None)
    };
    // The h2-only server makes anything else impossible; say so if it ever changes.
    if parts.version != Version::HTTP_2 {
        return refuse(
            400,
            "BadRequest",
            format!("{:?} instead of HTTP/2", parts.version),
        );
    }
    let Some(token) = parts.uri.path().strip_prefix("/3/device/") else {
        return refuse(404, "BadPath", format!("path {}", parts.uri.path()));
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse(
            400,
            "BadDeviceToken",
            format!("device token {token:?} is not hex"),
        );
    }
    state.recorder.attempt(token);
    let refuse = |status: u16, reason: &str, what: String| {
        state.recorder.violation("apns", format!("{token}: {what}"));
        apns_error(status, reason, None)
    };
    if parts.method != Method::POST {
        return refuse(405, "MethodNotAllowed", format!("method {}", parts.method));
    }
    if let Err((reason, what)) = check_provider_token(state, &parts) {
        return refuse(403, reason, what);
    }
    match header(&parts, "apns-topic") {
        None => return refuse(400, "MissingTopic", "no apns-topic".into()),
        Some(topic) if topic != state.topic => {
            return refuse(
                400,
                "DeviceTokenNotForTopic",
                format!("apns-topic {topic:?} is not {:?}", state.topic),
            );
        }
        Some(_) => {}
    }
    match header(&parts, "apns-push-type") {
        Some(
            "alert" | "background" | "location" | "voip" | "complication" | "fileprovider" | "mdm"
            | "liveactivity" | "pushtotalk",
        ) => {}
        other => return refuse(400, "InvalidPushType", format!("apns-push-type {other:?}")),
    }
    if let Some(priority) = header(&parts, "apns-priority")
        && !matches!(priority, "1" | "5" | "10")
    {
        return refuse(400, "BadPriority", format!("apns-priority {priority:?}"));
    }
    if let Some(expiration) = header(&parts, "apns-expiration")
        && expiration.parse::<u64>().is_err()
    {
        return refuse(
            400,
            "BadExpirationDate",
            format!("apns-expiration {expiration:?}"),
        );
    }
    if let Some(collapse_id) = header(&parts, "apns-collapse-id")
        && collapse_id.len() > 64
    {
        return refuse(
            400,
            "BadCollapseId",
            "apns-collapse-id over 64 bytes".into(),
        );
    }

    let Some(bytes) = read_body(body).await else {
        return refuse(413, "PayloadTooLarge", "body too large".into());
    };
    if bytes.len() > MAX_PAYLOAD {
        return refuse(
            413,
            "PayloadTooLarge",
            format!("payload of {} bytes", bytes.len()),
        );
    }
    let Some((title, text, data)) = parse_payload(&bytes) else {
        return refuse(
            400,
            "PayloadEmpty",
            "payload is not {\"aps\":{\"alert\":{title, body}}, ..}".into(),
        );
    };

    let reply = state.recorder.next_reply(token, 200);
    if reply.accepts() {
        state.recorder.accept(Received {
            path_or_token: token.to_owned(),
            title,
            body: text,
            data,
            headers: header_map(&parts.headers),
            at: Instant::now(),
        });
    }
    match reply {
        Reply::Status(status) if (200..300).contains(&status) => respond_json(
            status,
            &[(
                "apns-id",
                uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase(),
            )],
            serde_json::json!({}),
        ),
        Reply::Status(status) => apns_error(status, reason_for(status), None),
        Reply::StatusWithRetryAfter(status, secs) => {
            apns_error(status, reason_for(status), Some(secs))
        }
        Reply::Gone => apns_error(410, "Unregistered", None),
        Reply::BadDeviceToken => apns_error(400, "BadDeviceToken", None),
        Reply::StatusWithReason(status, reason) => apns_error(status, &reason, None),
    }
}

/// `authorization: bearer <jwt>`: ES256 with our `kid`, `iss` = team id, `iat` within the
/// last hour. Errors are (APNs reason, what was wrong).
fn check_provider_token(
    state: &State,
    parts: &hyper::http::request::Parts,
) -> Result<(), (&'static str, String)> {
    let Some(jwt) = header(parts, "authorization").and_then(|v| v.strip_prefix("bearer ")) else {
        return Err(("MissingProviderToken", "no bearer provider token".into()));
    };
    let jwt_header = jsonwebtoken::decode_header(jwt).map_err(|e| {
        (
            "InvalidProviderToken",
            format!("provider token header: {e}"),
        )
    })?;
    if jwt_header.alg != Algorithm::ES256 {
        return Err(("InvalidProviderToken", format!("alg {:?}", jwt_header.alg)));
    }
    if jwt_header.kid.as_deref() != Some(state.key_id.as_str()) {
        return Err(("InvalidProviderToken", format!("kid {:?}", jwt_header.kid)));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    // Provider tokens carry no exp: their age is judged by iat.
    validation.set_required_spec_claims(&["iss"]);
    validation.validate_exp = false;
    validation.set_issuer(&[&state.team_id]);
    let claims = jsonwebtoken::decode::<ProviderClaims>(jwt, &state.decoding, &validation)
        .map_err(|e| ("InvalidProviderToken", format!("provider token: {e}")))?
        .claims;
    let now = chrono::Utc::now().timestamp();
    if now - claims.iat > MAX_TOKEN_AGE_SECS {
        return Err((
            "ExpiredProviderToken",
            "provider token older than an hour".into(),
        ));
    }
    if claims.iat > now + 60 {
        return Err((
            "InvalidProviderToken",
            "provider token iat in the future".into(),
        ));
    }
    lock(&state.provider_tokens).insert(jwt.to_owned());
    Ok(())
}

/// Title, text and the top-level data fields (strings as they are, other values as JSON).
fn parse_payload(bytes: &[u8]) -> Option<(String, String, BTreeMap<String, String>)> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = value.as_object()?;
    let alert = &object.get("aps")?["alert"];
    let title = alert["title"].as_str()?.to_owned();
    let text = alert["body"].as_str()?.to_owned();
    let data = object
        .iter()
        .filter(|(key, _)| *key != "aps")
        .map(|(key, value)| {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            (key.clone(), text)
        })
        .collect();
    Some((title, text, data))
}

impl std::ops::Deref for ApnsService {
    type Target = super::Recorder;

    fn deref(&self) -> &super::Recorder {
        &self.inner.state.recorder
    }
}
