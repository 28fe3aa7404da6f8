//! FCM HTTP v1 and its OAuth2 token endpoint on one server, with its own service
//! account: `POST /token` (JWT bearer grant) and
//! `POST /v1/projects/{project}/messages:send`.

use super::{
    ANY_LOOPBACK_PORT, Received, Recorder, Reply, Server, header, header_map, read_body,
    respond_json, start_server,
};
use crate::push::fcm::{GRANT_TYPE, SCOPE};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// The project every local service account belongs to.
const PROJECT_ID: &str = "clickcollect-local";
/// How long an issued access token is valid, unless changed.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// One RSA key for every local service account of the process: generating one takes
/// a while, and nothing here depends on two services having different keys.
static SERVICE_ACCOUNT_KEY: OnceCell<(String, DecodingKey)> = OnceCell::const_new();

/// The PKCS#8 PEM of the service-account key and its verification key.
async fn service_account_key() -> anyhow::Result<&'static (String, DecodingKey)> {
    SERVICE_ACCOUNT_KEY
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(|| -> anyhow::Result<(String, DecodingKey)> {
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)?;
                let pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
                let public = key.to_public_key();
                let decoding = DecodingKey::from_rsa_components(
                    &URL_SAFE_NO_PAD.encode(public.n_bytes()),
                    &URL_SAFE_NO_PAD.encode(public.e_bytes()),
                )?;
                Ok((pem, decoding))
            })
            .await?
        })
        .await
}

/// What the server shares between requests.
struct State {
    /// Attempts (by registration token), scripts, accepted pushes, violations.
    recorder: Recorder,
    /// The service account's e-mail (assertion `iss`).
    client_email: String,
    /// `http://127.0.0.1:PORT/token` (assertion `aud`).
    token_uri: String,
    /// Verifies assertions.
    decoding: &'static DecodingKey,
    /// Issued access tokens and when each expires.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Tokens revoked by [`FcmService::revoke_tokens`]: refused without a violation.
    revoked: Mutex<HashSet<String>>,
    /// How many access tokens were issued.
    issued: AtomicUsize,
    /// The lifetime given to new access tokens.
    token_lifetime: Mutex<Duration>,
}

/// A local FCM; clones share it, and it stops with the last clone.
#[derive(Clone)]
pub struct FcmService {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<State>,
    address: std::net::SocketAddr,
    credentials: String,
    _server: Server,
}

impl FcmService {
    /// Starts it on `127.0.0.1:0` (the first one in a process also makes the RSA key).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(ANY_LOOPBACK_PORT.into()).await
    }

    /// Starts it on `address` (the local demo uses a fixed port).
    pub async fn start_on(address: std::net::SocketAddr) -> anyhow::Result<Self> {
        let (pem, decoding) = service_account_key().await?;
        let account = uuid::Uuid::new_v4().simple().to_string();
        let client_email = format!(
            "push-{}@{PROJECT_ID}.iam.gserviceaccount.com",
            &account[..8]
        );
        let (address, state, server) = start_server(
            address,
            false,
            |address| {
                Ok(Arc::new(State {
                    recorder: Recorder::default(),
                    client_email: client_email.clone(),
                    token_uri: format!("http://{address}/token"),
                    decoding,
                    tokens: Mutex::new(HashMap::new()),
                    revoked: Mutex::new(HashSet::new()),
                    issued: AtomicUsize::new(0),
                    token_lifetime: Mutex::new(DEFAULT_TOKEN_LIFETIME),
                }))
            },
            handle,
        )
        .await?;
        let credentials = serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": account,
            "private_key": pem,
            "client_email": client_email,
            "client_id": "100000000000000000000",
            "auth_uri": format!("http://{address}/auth"),
            "token_uri": state.token_uri,
        })
        .to_string();
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                address,
                credentials,
                _server: server,
            }),
        })
    }

    /// The service-account JSON (for `FCM_CREDENTIALS`); its `token_uri` is this server.
    pub fn credentials_json(&self) -> String {
        self.inner.credentials.clone()
    }

    /// The base URL (for `FCM_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.inner.address)
    }

    /// The project id in the credentials.
    pub fn project_id(&self) -> &'static str {
        PROJECT_ID
    }

    /// How many access tokens the token endpoint issued.
    pub fn tokens_issued(&self) -> usize {
        self.inner.state.issued.load(Ordering::SeqCst)
    }

    /// Makes every access token issued so far invalid (sends with them get 401), as when
    /// Google revokes a token early.
    pub fn revoke_tokens(&self) {
        let tokens: Vec<String> = lock(&self.inner.state.tokens)
            .drain()
            .map(|(t, _)| t)
            .collect();
        lock(&self.inner.state.revoked).extend(tokens);
    }

    /// The lifetime (`expires_in`) of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.inner.state.token_lifetime) = lifetime;
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
    Box::pin(async move {
        let path = request.uri().path().to_owned();
        if path == "/token" {
            token(&state, request).await
        } else if let Some(rest) = path.strip_prefix("/v1/projects/")
            && let Some(project) = rest.strip_suffix("/messages:send")
        {
            let project = project.to_owned();
            send(&state, &project, request).await
        } else {
            google_error(404, "NOT_FOUND", None, "unknown path", None)
        }
    })
}

/// The assertion's claims.
#[derive(Deserialize)]
struct AssertionClaims {
    iat: i64,
    exp: i64,
    #[serde(default)]
    scope: String,
}

/// `POST /token`: the RFC 7523 JWT bearer grant.
async fn token(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let refuse = |what: String| {
        state
            .recorder
            .violation("fcm", format!("token endpoint: {what}"));
        respond_json(
            400,
            &[],
            serde_json::json!({"error": "invalid_grant", "error_description": what}),
        )
    };
    if parts.method != Method::POST {
        return refuse(format!("method {} instead of POST", parts.method));
    }
    if !header(&parts, "content-type")
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    {
        return refuse("body is not application/x-www-form-urlencoded".into());
    }
    let Some(bytes) = read_body(body).await else {
        return refuse("body too large".into());
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&bytes).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some(GRANT_TYPE) {
        return refuse(format!("grant_type is not {GRANT_TYPE}"));
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion".into());
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&state.token_uri]);
    validation.set_issuer(&[&state.client_email]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let claims =
        match jsonwebtoken::decode::<AssertionClaims>(assertion, state.decoding, &validation) {
            Ok(data) => data.claims,
            Err(err) => return refuse(format!("assertion refused: {err}")),
        };
    let now = chrono::Utc::now().timestamp();
    if claims.exp - claims.iat > 3600 {
        return refuse("assertion valid for more than an hour".into());
    }
    if claims.iat > now + 60 {
        return refuse("assertion iat is in the future".into());
    }
    if !claims.scope.split(' ').any(|s| s == SCOPE) {
        return refuse(format!("scope does not include {SCOPE}"));
    }
    let lifetime = *lock(&state.token_lifetime);
    let access_token = format!("ya29.local-{}", uuid::Uuid::new_v4().simple());
    lock(&state.tokens).insert(access_token.clone(), Instant::now() + lifetime);
    state.issued.fetch_add(1, Ordering::SeqCst);
    respond_json(
        200,
        &[],
        serde_json::json!({
            "access_token": access_token,
            "expires_in": lifetime.as_secs(),
            "token_type": "Bearer",
        }),
    )
}

/// The `messages:send` body we accept.
#[derive(Deserialize)]
struct SendRequest {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    token: String,
    notification: MessageNotification,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    android: Option<AndroidConfig>,
}

#[derive(Deserialize)]
struct MessageNotification {
    title: String,
    body: String,
}

#[derive(Deserialize)]
struct AndroidConfig {
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    collapse_key: Option<String>,
}

/// `POST /v1/projects/{project}/messages:send`.
async fn send(state: &State, project: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let refuse = |status: u16, code: &str, what: String| {
        state
            .recorder
            .violation("fcm", format!("messages:send: {what}"));
        google_error(status, code, None, &what, None)
    };
    if parts.method != Method::POST {
        return refuse(405, "INVALID_ARGUMENT", format!("method {}", parts.method));
    }
    let Some(bytes) = read_body(body).await else {
        return refuse(413, "INVALID_ARGUMENT", "body too large".into());
    };
    // Count the attempt first, whatever happens to it next.
    let token = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["message"]["token"].as_str().map(str::to_owned));
    if let Some(token) = &token {
        state.recorder.attempt(token);
    }
    // The bearer token: one we issued, not expired (a revoked one is refused quietly:
    // that is the test's doing, not the sender's).
    let Some(bearer) = header(&parts, "authorization").and_then(|v| v.strip_prefix("Bearer "))
    else {
        return refuse(401, "UNAUTHENTICATED", "no bearer token".into());
    };
    if lock(&state.revoked).contains(bearer) {
        return google_error(
            401,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
            None,
        );
    }
    let expires = lock(&state.tokens).get(bearer).copied();
    match expires {
        None => {
            return refuse(
                401,
                "UNAUTHENTICATED",
                "a bearer token this server never issued".into(),
            );
        }
        Some(expires) if expires <= Instant::now() => {
            return refuse(401, "UNAUTHENTICATED", "an expired access token".into());
        }
        Some(_) => {}
    }
    if project != PROJECT_ID {
        return refuse(
            403,
            "PERMISSION_DENIED",
            format!("project {project:?} is not {PROJECT_ID}"),
        );
    }
    let request: SendRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(err) => return refuse(400, "INVALID_ARGUMENT", format!("body: {err}")),
    };
    let message = request.message;
    if message.token.is_empty() {
        return refuse(400, "INVALID_ARGUMENT", "empty message.token".into());
    }
    let mut headers = header_map(&parts.headers);
    if let Some(android) = &message.android {
        if let Some(priority) = &android.priority {
            if !matches!(priority.as_str(), "high" | "normal") {
                return refuse(
                    400,
                    "INVALID_ARGUMENT",
                    format!("android.priority {priority:?}"),
                );
            }
            headers.insert("android.priority".into(), priority.clone());
        }
        if let Some(ttl) = &android.ttl {
            if !valid_duration(ttl) {
                return refuse(
                    400,
                    "INVALID_ARGUMENT",
                    format!("android.ttl {ttl:?} is not like \"3600s\""),
                );
            }
            headers.insert("android.ttl".into(), ttl.clone());
        }
        if let Some(key) = &android.collapse_key {
            headers.insert("android.collapse_key".into(), key.clone());
        }
    }

    let reply = state.recorder.next_reply(&message.token, 200);
    if reply.accepts() {
        state.recorder.accept(Received {
            path_or_token: message.token.clone(),
            title: message.notification.title,
            body: message.notification.body,
            data: message.data,
            headers,
            at: Instant::now(),
        });
    }
    match reply {
        Reply::Status(status) if (200..300).contains(&status) => respond_json(
            status,
            &[],
            serde_json::json!({
                "name": format!("projects/{PROJECT_ID}/messages/{}", uuid::Uuid::new_v4().simple())
            }),
        ),
        Reply::Status(status) => google_error(status, status_name(status), None, "scripted", None),
        Reply::StatusWithRetryAfter(status, secs) => {
            google_error(status, status_name(status), None, "scripted", Some(secs))
        }
        Reply::Gone => google_error(
            404,
            "NOT_FOUND",
            Some("UNREGISTERED"),
            "Requested entity was not found.",
            None,
        ),
        Reply::BadDeviceToken => google_error(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
            None,
        ),
        Reply::StatusWithReason(status, reason) => {
            google_error(status, status_name(status), Some(&reason), "scripted", None)
        }
    }
}

/// A protobuf JSON duration: seconds with up to nine decimals and an `s`.
fn valid_duration(value: &str) -> bool {
    let Some(number) = value.strip_suffix('s') else {
        return false;
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// The canonical Google status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// A Google API error body, with an FCM `errorCode` detail when given.
fn google_error(
    status: u16,
    status_name: &str,
    error_code: Option<&str>,
    message: &str,
    retry_after: Option<u64>,
) -> Response<Full<Bytes>> {
    let details: Vec<serde_json::Value> = error_code
        .map(|code| {
            serde_json::json!({
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": code,
            })
        })
        .into_iter()
        .collect();
    let headers: Vec<(&str, String)> = retry_after
        .map(|secs| ("retry-after", secs.to_string()))
        .into_iter()
        .collect();
    respond_json(
        status,
        &headers,
        serde_json::json!({
            "error": {"code": status, "message": message, "status": status_name, "details": details}
        }),
    )
}

impl std::ops::Deref for FcmService {
    type Target = super::Recorder;

    fn deref(&self) -> &super::Recorder {
        &self.inner.state.recorder
    }
}

#[cfg(test)]
mod tests {
    use super::valid_duration;

    #[test]
    fn ttl_durations_are_seconds_with_an_s() {
        assert!(valid_duration("3600s"));
        assert!(valid_duration("0.5s"));
        assert!(!valid_duration("3600"));
        assert!(!valid_duration("s"));
        assert!(!valid_duration("-1s"));
    }
}
