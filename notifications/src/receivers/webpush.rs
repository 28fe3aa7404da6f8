//! A Web Push service (RFC 8030) with browser-side subscriptions: it checks VAPID (RFC
//! 8292) and decrypts each push (RFC 8291) with the subscription's private key.

use super::{
    ANY_LOOPBACK_PORT, Received, Recorder, Reply, Server, ec_decoding_key, header, header_map,
    read_body, respond, start_server,
};
use crate::push::ece;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use jsonwebtoken::{Algorithm, Validation};
use p256::SecretKey;
use p256::elliptic_curve::Generate;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// RFC 8292 §2: a JWT may not expire more than 24 hours ahead (a minute of clock skew
/// allowed).
const MAX_JWT_AHEAD_SECS: i64 = 24 * 3600 + 60;
/// The most a push service has to accept (RFC 8291 §4).
const MAX_PUSH_BODY: usize = 4096;

/// A browser's subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushSubscription {
    /// The push URL.
    pub endpoint: String,
    /// The browser's public key, base64url uncompressed point.
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

/// The browser side of a subscription: what decrypts its pushes.
struct BrowserKeys {
    secret: SecretKey,
    auth: [u8; 16],
}

/// What the server shares between requests.
struct State {
    /// `http://127.0.0.1:PORT`: the JWT `aud` we insist on.
    origin: String,
    /// Attempts, scripts, accepted pushes, violations.
    recorder: Recorder,
    /// Subscriptions by their path id.
    subscriptions: Mutex<HashMap<String, Arc<BrowserKeys>>>,
    /// The application server key subscriptions were made with, once told.
    expected_key: Mutex<Option<String>>,
    /// Distinct VAPID JWTs seen.
    jwts: Mutex<HashSet<String>>,
}

/// A local Web Push service; clones share it, and it stops with the last clone.
#[derive(Clone)]
pub struct WebPushService {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<State>,
    address: std::net::SocketAddr,
    _server: Server,
}

impl WebPushService {
    /// Starts it on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(ANY_LOOPBACK_PORT.into()).await
    }

    /// Starts it on `address` (the local demo uses a fixed port).
    pub async fn start_on(address: std::net::SocketAddr) -> anyhow::Result<Self> {
        let (address, state, server) = start_server(
            address,
            false,
            |address| {
                Ok(Arc::new(State {
                    origin: format!("http://{address}"),
                    recorder: Recorder::default(),
                    subscriptions: Mutex::new(HashMap::new()),
                    expected_key: Mutex::new(None),
                    jwts: Mutex::new(HashSet::new()),
                }))
            },
            handle,
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                address,
                _server: server,
            }),
        })
    }

    /// A new subscription: a fresh browser key pair and auth secret, and an endpoint
    /// `http://127.0.0.1:PORT/push/<uuid>`.
    pub fn subscribe(&self) -> WebPushSubscription {
        let secret = SecretKey::generate();
        let auth: [u8; 16] = rand::random();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let subscription = WebPushSubscription {
            endpoint: format!("{}/push/{id}", self.url()),
            p256dh: URL_SAFE_NO_PAD.encode(ece::public_key_bytes(&secret.public_key())),
            auth: URL_SAFE_NO_PAD.encode(auth),
        };
        lock(&self.inner.state.subscriptions).insert(id, Arc::new(BrowserKeys { secret, auth }));
        subscription
    }

    /// From now on a push's JWT must verify with this key and `k=` must equal it (as a
    /// browser subscribed with `applicationServerKey` does); until then only against `k=`.
    pub fn expect_vapid_key(&self, public_key_b64url: &str) {
        *lock(&self.inner.state.expected_key) = Some(public_key_b64url.trim().to_owned());
    }

    /// How many distinct VAPID JWTs were presented (a sender that caches shows 1 per
    /// origin).
    pub fn jwts_seen(&self) -> usize {
        lock(&self.inner.state.jwts).len()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.address)
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

/// The decrypted payload we expect: `{"title","body","data"}`.
#[derive(Deserialize)]
struct Payload {
    title: String,
    body: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// VAPID claims.
#[derive(Deserialize)]
struct VapidClaims {
    exp: i64,
    #[serde(default)]
    sub: Option<String>,
}

/// `POST /push/{id}`.
async fn push(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let Some(id) = parts.uri.path().strip_prefix("/push/") else {
        return respond(404, &[], "no such subscription");
    };
    let endpoint = format!("{}{}", state.origin, parts.uri.path());
    let Some(keys) = lock(&state.subscriptions).get(id).cloned() else {
        // What a push service says about a subscription it does not know.
        return respond(404, &[], "no such subscription");
    };
    state.recorder.attempt(&endpoint);
    let refuse = |status: u16, what: String| {
        state
            .recorder
            .violation("webpush", format!("{endpoint}: {what}"));
        respond(status, &[], what)
    };
    if parts.method != Method::POST {
        return refuse(405, format!("method {} instead of POST", parts.method));
    }

    // RFC 8030 §5.2: TTL is required.
    match header(&parts, "ttl").map(|v| v.trim().parse::<u64>()) {
        Some(Ok(_)) => {}
        Some(Err(_)) => return refuse(400, "TTL is not a number of seconds".into()),
        None => return refuse(400, "missing TTL header".into()),
    }
    if let Some(urgency) = header(&parts, "urgency")
        && !matches!(urgency, "very-low" | "low" | "normal" | "high")
    {
        return refuse(400, format!("invalid Urgency {urgency:?}"));
    }
    if let Some(topic) = header(&parts, "topic")
        && (topic.is_empty()
            || topic.len() > 32
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return refuse(
            400,
            format!("invalid Topic {topic:?} (at most 32 base64url characters)"),
        );
    }
    if header(&parts, "content-encoding") != Some("aes128gcm") {
        return refuse(400, "Content-Encoding is not aes128gcm".into());
    }
    if let Err((status, what)) = check_vapid(state, &parts) {
        return refuse(status, what);
    }

    let Some(bytes) = read_body(body).await else {
        return refuse(413, "body too large or unreadable".into());
    };
    if bytes.len() > MAX_PUSH_BODY {
        return refuse(413, format!("body of {} bytes exceeds 4096", bytes.len()));
    }
    let plaintext = match ece::decrypt(&bytes, &keys.secret, &keys.auth) {
        Ok(plaintext) => plaintext,
        Err(err) => return refuse(400, format!("cannot decrypt: {err}")),
    };
    let payload: Payload = match serde_json::from_slice(&plaintext) {
        Ok(payload) => payload,
        Err(err) => {
            return refuse(
                400,
                format!("payload is not {{title, body, data: string map}}: {err}"),
            );
        }
    };

    let reply = state.recorder.next_reply(&endpoint, 201);
    if reply.accepts() {
        state.recorder.accept(Received {
            path_or_token: endpoint.clone(),
            title: payload.title,
            body: payload.body,
            data: payload.data,
            headers: header_map(&parts.headers),
            at: Instant::now(),
        });
    }
    answer(&reply, &endpoint)
}

/// The HTTP answer for a reply.
fn answer(reply: &Reply, endpoint: &str) -> Response<Full<Bytes>> {
    let message_location = || {
        (
            "location",
            format!("{endpoint}/messages/{}", uuid::Uuid::new_v4().simple()),
        )
    };
    match reply {
        Reply::Status(status) if (200..300).contains(status) => {
            respond(*status, &[message_location()], "")
        }
        Reply::Status(status) => respond(*status, &[], format!("scripted {status}")),
        Reply::StatusWithRetryAfter(status, secs) => respond(
            *status,
            &[("retry-after", secs.to_string())],
            format!("scripted {status}"),
        ),
        Reply::Gone => respond(410, &[], "push subscription has unsubscribed or expired"),
        Reply::BadDeviceToken => respond(400, &[], "bad subscription"),
        Reply::StatusWithReason(status, reason) => respond(*status, &[], reason.clone()),
    }
}

/// RFC 8292: `Authorization: vapid t=<jwt>, k=<key>`, the JWT ES256-signed by `k`, with
/// `aud` our origin, `exp` in the next 24 h and a contact `sub`.
fn check_vapid(state: &State, parts: &hyper::http::request::Parts) -> Result<(), (u16, String)> {
    let Some(value) = header(parts, "authorization") else {
        return Err((401, "missing Authorization".into()));
    };
    let Some(params) = value
        .strip_prefix("vapid ")
        .or_else(|| value.strip_prefix("Vapid "))
    else {
        return Err((401, "Authorization is not the vapid scheme".into()));
    };
    let mut jwt = None;
    let mut key = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => jwt = Some(v.trim()),
            Some(("k", v)) => key = Some(v.trim()),
            _ => {}
        }
    }
    let (Some(jwt), Some(key)) = (jwt, key) else {
        return Err((401, "vapid Authorization without t= and k=".into()));
    };
    if let Some(expected) = lock(&state.expected_key).as_deref()
        && expected != key.trim_end_matches('=')
    {
        return Err((
            403,
            "k= is not the key the subscription was made with".into(),
        ));
    }
    let point = URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .map_err(|_| (401, "k= is not base64url".to_owned()))?;
    let decoding = ec_decoding_key(&point)
        .ok_or_else(|| (401, "k= is not an uncompressed P-256 public key".to_owned()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[&state.origin]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<VapidClaims>(jwt, &decoding, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidAudience => (403, format!("JWT aud is not {}", state.origin)),
                ErrorKind::ExpiredSignature => (403, "JWT expired".to_owned()),
                ErrorKind::InvalidSignature => {
                    (401, "JWT signature does not verify with k=".to_owned())
                }
                _ => (401, format!("bad VAPID JWT: {e}")),
            }
        })?
        .claims;
    if claims.exp > chrono::Utc::now().timestamp() + MAX_JWT_AHEAD_SECS {
        return Err((403, "JWT exp is more than 24 hours ahead".into()));
    }
    match claims.sub.as_deref() {
        Some(sub) if sub.starts_with("mailto:") || sub.starts_with("https:") => {}
        _ => return Err((403, "JWT sub is not a mailto: or https: contact".into())),
    }
    lock(&state.jwts).insert(jwt.to_owned());
    Ok(())
}

impl std::ops::Deref for WebPushService {
    type Target = super::Recorder;

    fn deref(&self) -> &super::Recorder {
        &self.inner.state.recorder
    }
}
