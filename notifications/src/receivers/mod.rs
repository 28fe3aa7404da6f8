//! Local stand-ins for the push services (tests, the benchmark and the local demo).
//!
//! Each is a small hyper server on `127.0.0.1:0` that checks what the real service checks
//! (signatures, audiences, expiries, required headers, the payload's shape and, for Web
//! Push, that the body decrypts with the subscription's keys). A request that fails a
//! check is answered 4xx and listed in `violations()`; one that passes gets the next
//! scripted [`Reply`] (2xx when nothing is scripted) and, when that is a success, is
//! listed in `received()`.
//!
//! Layout: this module holds what the three share ([`Received`], [`Reply`], the ledger
//! of attempts and the server loop); [`webpush`], [`fcm`] and [`apns`] one service each.
//!
//! These are tooling: start-up errors are `anyhow` errors; a server stops when the last
//! clone of its handle is dropped.

pub mod apns;
pub mod fcm;
pub mod webpush;

pub use apns::ApnsService;
pub use fcm::FcmService;
pub use webpush::{WebPushService, WebPushSubscription};

use crate::push::PushConfig;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The largest request body a receiver reads (real services refuse far less).
const MAX_BODY: usize = 64 * 1024;

/// One push a receiver accepted, verified and (Web Push) decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Web Push: the subscription's endpoint URL; FCM: the registration token; APNs: the
    /// device token.
    pub path_or_token: String,
    /// The notification title.
    pub title: String,
    /// The notification text.
    pub body: String,
    /// The app data (Web Push `data`, FCM `data`, APNs top-level fields).
    pub data: BTreeMap<String, String>,
    /// Request headers with lower-case names (`ttl`, `urgency`, `topic`, `apns-topic`,
    /// `apns-priority`…); for FCM also `android.priority`, `android.ttl` and
    /// `android.collapse_key` from the message body.
    pub headers: BTreeMap<String, String>,
    /// When it arrived.
    pub at: Instant,
}

/// How a receiver answers one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status; a 2xx accepts the push, anything else refuses it with the service's
    /// usual error body for that status.
    Status(u16),
    /// This status with `Retry-After: <secs>`.
    StatusWithRetryAfter(u16, u64),
    /// The device is gone: Web Push 410, FCM 404 `UNREGISTERED`, APNs 410 `Unregistered`.
    Gone,
    /// APNs 400 `BadDeviceToken` (elsewhere: 400).
    BadDeviceToken,
    /// This status with the service's error code: APNs `reason` (`ExpiredProviderToken`),
    /// FCM `errorCode` (`QUOTA_EXCEEDED`), Web Push the body text.
    StatusWithReason(u16, String),
}

impl Reply {
    /// Whether this answer accepts the push.
    fn accepts(&self) -> bool {
        matches!(self, Reply::Status(s) if (200..300).contains(s))
    }
}

/// What a receiver saw: per-key scripts and counts, accepted pushes, violations.
#[derive(Default)]
struct Ledger {
    /// Accepted pushes, in order.
    received: Vec<Received>,
    /// Requests per endpoint or token, whatever the answer.
    attempts: HashMap<String, usize>,
    /// Next answers per endpoint or token.
    scripts: HashMap<String, VecDeque<Reply>>,
    /// The answer once the script is used up.
    always: HashMap<String, Reply>,
    /// Failed protocol checks.
    violations: Vec<String>,
}

/// What a stand-in saw and how it will answer, keyed by subscription endpoint (Web Push)
/// or token (FCM, APNs). Every stand-in derefs to its recorder, so `script`, `always`,
/// `received`, `attempts`, `violations`, `received_count` and `wait_for` are the same on
/// all three.
#[derive(Default)]
pub struct Recorder {
    ledger: Mutex<Ledger>,
    arrived: Notify,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding it cannot leave the ledger half-written in a way that
        // matters for test tooling.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one request for `key`.
    fn attempt(&self, key: &str) {
        *self.lock().attempts.entry(key.to_owned()).or_default() += 1;
    }

    /// Notes a failed check.
    fn violation(&self, service: &str, what: String) {
        tracing::warn!(service, violation = %what, "push receiver refused a request");
        self.lock().violations.push(what);
    }

    /// The answer for this request to `key`: the script, then `always`, then `success`.
    fn next_reply(&self, key: &str, success: u16) -> Reply {
        let mut ledger = self.lock();
        if let Some(reply) = ledger.scripts.get_mut(key).and_then(VecDeque::pop_front) {
            return reply;
        }
        ledger
            .always
            .get(key)
            .cloned()
            .unwrap_or(Reply::Status(success))
    }

    /// Records an accepted push and wakes the waiters.
    fn accept(&self, received: Received) {
        self.lock().received.push(received);
        self.arrived.notify_waiters();
    }

    /// The next answers for that key, then success (or the `always` answer).
    pub fn script(&self, key: &str, replies: Vec<Reply>) {
        self.lock()
            .scripts
            .entry(key.to_owned())
            .or_default()
            .extend(replies);
    }

    /// The answer for that key once its script is used up.
    pub fn always(&self, key: &str, reply: Reply) {
        self.lock().always.insert(key.to_owned(), reply);
    }

    /// Accepted and verified (Web Push: decrypted) pushes, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Every request for that key, whatever the answer.
    pub fn attempts(&self, key: &str) -> usize {
        self.lock().attempts.get(key).copied().unwrap_or(0)
    }

    /// Every failed protocol check.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// How many pushes were accepted so far.
    pub fn received_count(&self) -> usize {
        self.lock().received.len()
    }

    /// Waits until at least `n` pushes were accepted, or `timeout`; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the signal before looking, so an arrival in between is not
            // missed; count without copying (a benchmark waits for thousands).
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.received_count() >= n
                || tokio::time::timeout_at(deadline, arrived).await.is_err()
            {
                return self.received();
            }
        }
    }
}

/// Lower-case header names and their values (non-UTF-8 values lossily).
fn header_map(headers: &hyper::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A header's value, if present and text.
fn header<'a>(request: &'a hyper::http::request::Parts, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The whole body, or `None` when it is larger than [`MAX_BODY`] or broken.
async fn read_body(body: Incoming) -> Option<Bytes> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|collected| collected.to_bytes())
}

/// A response with `status`, optional extra headers and `body`.
fn respond(
    status: u16,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A JSON response.
fn respond_json(
    status: u16,
    headers: &[(&str, String)],
    body: serde_json::Value,
) -> Response<Full<Bytes>> {
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json".to_owned()));
    respond(status, &headers, body.to_string())
}

/// How one service answers a request.
type Handler<S> = fn(Arc<S>, Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>>;

/// The accept loop; aborting it (on drop) also ends its connections.
struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address receivers bind by default: any free port on loopback.
const ANY_LOOPBACK_PORT: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

/// Binds `address`, then serves `make_state(bound address)` with `handler`: HTTP/1.1 and
/// h2c (prior knowledge) unless `http2_only`.
async fn start_server<S: Send + Sync + 'static>(
    address: SocketAddr,
    http2_only: bool,
    make_state: impl FnOnce(SocketAddr) -> anyhow::Result<Arc<S>>,
    handler: Handler<S>,
) -> anyhow::Result<(SocketAddr, Arc<S>, Server)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let state = make_state(address)?;
    let served = state.clone();
    let task = tokio::spawn(async move {
        // Connections live in the set so that aborting this task drops them too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: back off a little.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = served.clone();
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(state.clone(), request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            connections.spawn(async move {
                let io = TokioIo::new(stream);
                // A client that hangs up mid-request is no concern of the receiver.
                if http2_only {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    Ok((address, state, Server { task }))
}

/// A [`PushConfig`] pointing at the given receivers, the others disabled, with a 5 s
/// timeout. It carries a fresh VAPID key (so `Providers::new` needs no `vapid_key`
/// table: a disconnected `DatabaseConnection::default()` will do), and a Web Push
/// receiver given here is told to insist on that key.
pub fn config_for(
    webpush: Option<&WebPushService>,
    fcm: Option<&FcmService>,
    apns: Option<&ApnsService>,
) -> PushConfig {
    let vapid_private_key = crate::push::vapid::VapidKey::generate().ok().map(|key| {
        if let Some(service) = webpush {
            service.expect_vapid_key(key.public_base64url());
        }
        key.private_base64url()
    });
    PushConfig {
        vapid_private_key,
        vapid_subject: crate::push::DEFAULT_VAPID_SUBJECT.to_owned(),
        fcm_endpoint: fcm.map_or_else(
            || crate::push::DEFAULT_FCM_ENDPOINT.to_owned(),
            FcmService::endpoint,
        ),
        fcm_credentials: fcm.map(FcmService::credentials_json),
        apns_endpoint: apns.map_or_else(
            || crate::push::DEFAULT_APNS_ENDPOINT.to_owned(),
            ApnsService::endpoint,
        ),
        apns_key: apns.map(ApnsService::key_pem),
        apns_key_id: apns.map(ApnsService::key_id),
        apns_team_id: apns.map(ApnsService::team_id),
        apns_topic: apns.map(|a| a.topic().to_owned()),
        request_timeout: Duration::from_secs(5),
        // The stand-ins listen on loopback over plain http.
        allow_local_endpoints: true,
    }
}

/// A jsonwebtoken verification key for an uncompressed P-256 point (65 bytes).
fn ec_decoding_key(point: &[u8]) -> Option<jsonwebtoken::DecodingKey> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if point.len() != 65 || point[0] != 0x04 {
        return None;
    }
    // Reject points that are not on the curve before anything else.
    p256::PublicKey::from_sec1_bytes(point).ok()?;
    jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_web_push_without_ttl_or_vapid_is_refused_and_listed_as_a_violation()
    -> Result<(), Box<dyn std::error::Error>> {
        let service = WebPushService::start().await?;
        let subscription = service.subscribe();
        let client = reqwest::Client::new();

        let no_ttl = client
            .post(&subscription.endpoint)
            .header("content-encoding", "aes128gcm")
            .body(vec![0u8; 100])
            .send()
            .await?;
        assert_eq!(no_ttl.status(), 400);
        let no_vapid = client
            .post(&subscription.endpoint)
            .header("ttl", "60")
            .header("content-encoding", "aes128gcm")
            .body(vec![0u8; 100])
            .send()
            .await?;
        assert_eq!(no_vapid.status(), 401);

        assert_eq!(service.attempts(&subscription.endpoint), 2);
        assert_eq!(service.violations().len(), 2, "{:?}", service.violations());
        assert!(service.received().is_empty());
        let unknown = client
            .post(format!("{}/push/nobody", service.url()))
            .send()
            .await?;
        assert_eq!(unknown.status(), 404);
        Ok(())
    }

    #[tokio::test]
    async fn fcm_refuses_a_bearer_token_it_never_issued() -> Result<(), Box<dyn std::error::Error>>
    {
        let service = FcmService::start().await?;
        let answer = reqwest::Client::new()
            .post(format!(
                "{}/v1/projects/{}/messages:send",
                service.endpoint(),
                service.project_id()
            ))
            .bearer_auth("ya29.made-up")
            .json(&serde_json::json!({"message": {"token": "t1", "notification": {"title": "a", "body": "b"}}}))
            .send()
            .await
            ?;
        assert_eq!(answer.status(), 401);
        assert_eq!(service.attempts("t1"), 1);
        assert_eq!(service.violations().len(), 1);
        assert_eq!(service.tokens_issued(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn apns_speaks_nothing_but_http2() -> Result<(), Box<dyn std::error::Error>> {
        let service = ApnsService::start("app").await?;
        let http1 = reqwest::Client::builder().http1_only().build()?;
        let result = http1
            .post(format!("{}/3/device/abcd", service.endpoint()))
            .body("{}")
            .send()
            .await;
        assert!(result.is_err(), "{result:?}");
        let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
        let answer = h2
            .post(format!("{}/3/device/abcd", service.endpoint()))
            .body("{}")
            .send()
            .await?;
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        assert_eq!(answer.status(), 403);
        let body: serde_json::Value = answer.json().await?;
        assert_eq!(body["reason"], "MissingProviderToken");
        Ok(())
    }

    #[tokio::test]
    async fn waiting_for_more_pushes_than_arrive_returns_what_there_is_at_the_timeout()
    -> Result<(), Box<dyn std::error::Error>> {
        let service = WebPushService::start().await?;
        let started = Instant::now();
        let received = service.wait_for(1, Duration::from_millis(100)).await;
        assert!(received.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(100));
        Ok(())
    }

    #[test]
    fn scripted_replies_come_first_then_the_always_reply_then_success() {
        let recorder = Recorder::default();
        recorder.script("k", vec![Reply::Status(500), Reply::Gone]);
        recorder.always("k", Reply::Status(429));
        assert_eq!(recorder.next_reply("k", 201), Reply::Status(500));
        assert_eq!(recorder.next_reply("k", 201), Reply::Gone);
        assert_eq!(recorder.next_reply("k", 201), Reply::Status(429));
        assert_eq!(recorder.next_reply("other", 201), Reply::Status(201));
        assert!(Reply::Status(201).accepts() && !Reply::Status(429).accepts());
    }
}
