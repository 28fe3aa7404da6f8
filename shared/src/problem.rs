//! RFC 9457 problem details: the one error type every handler returns.

use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem+json error: `type`, `title`, `status`, `detail`, and extra members.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short, human summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Extra members (`shortages`, `errors`, …).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// A problem of `status`, with a slug naming its kind (e.g. `insufficient-stock`).
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("https://clickcollect.dev/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    /// Adds an extra member.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extensions.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 401: no token, or an invalid or expired one.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403: the caller may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404: unknown, or not the caller's.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 409: conflicts with the current state.
    pub fn conflict(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, slug, detail)
    }

    /// 422: well-formed but invalid.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            detail,
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
    }

    /// 429: slow down.
    pub fn too_many_requests(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
    }

    /// 500: something failed on our side; the detail says nothing internal.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    /// 503: a dependency is down.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

impl std::error::Error for Problem {}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .content_type(PROBLEM_JSON)
            .json(self)
    }
}

impl From<sea_orm::DbErr> for Problem {
    fn from(err: sea_orm::DbErr) -> Self {
        // Sort what the caller can act on from what only we can.
        match err.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => {
                Problem::conflict("already-exists", "a record with this key already exists")
            }
            _ => {
                let text = err.to_string();
                if text.contains("could not serialize") || text.contains("deadlock detected") {
                    tracing::warn!(error = %text, "transaction conflict");
                    Problem::conflict("retry", "a concurrent change conflicted; retry")
                } else if text.contains("pool timed out") || text.contains("Connection") {
                    tracing::error!(error = %text, "database unavailable");
                    Problem::unavailable("the database is unavailable; retry shortly")
                } else {
                    tracing::error!(error = %text, "database error");
                    Problem::internal()
                }
            }
        }
    }
}

/// One invalid field, listed in a 422's `errors`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer-like path of the field (`lines[2].quantity`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Collects field errors while parsing a request, then fails once with all of them.
#[derive(Debug, Default)]
pub struct Validation {
    errors: Vec<FieldError>,
}

impl Validation {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Fails now with what was recorded so far, if anything; goes on collecting otherwise.
    pub fn checkpoint(&mut self) -> Result<(), Problem> {
        std::mem::take(self).finish()
    }

    /// `Ok` when nothing was recorded, else a 422 listing every error.
    pub fn finish(self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let detail = self
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Err(Problem::unprocessable(detail).with("errors", &self.errors))
    }
}

/// JSON body extractor settings: size limit and problem+json errors.
pub fn json_config(limit_bytes: usize) -> actix_web::web::JsonConfig {
    actix_web::web::JsonConfig::default()
        .limit(limit_bytes)
        .error_handler(move |err, _req: &HttpRequest| {
            use actix_web::error::JsonPayloadError as E;
            let problem = match &err {
                E::OverflowKnownLength { .. } | E::Overflow { .. } => {
                    Problem::too_large(format!("request body over {limit_bytes} bytes"))
                }
                E::ContentType => Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "send Content-Type: application/json",
                ),
                E::Deserialize(inner) if inner.is_data() => {
                    Problem::unprocessable(format!("invalid body: {inner}"))
                }
                other => Problem::bad_request(format!("malformed JSON body: {other}")),
            };
            problem.into()
        })
}

/// Query string extractor settings: problem+json errors.
pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|err, _req| {
        Problem::bad_request(format!("invalid query string: {err}")).into()
    })
}

/// Path extractor settings: problem+json errors.
pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default()
        .error_handler(|err, _req| Problem::bad_request(format!("invalid path: {err}")).into())
}

/// Answers unknown routes with a problem+json 404.
pub async fn not_found_route() -> Result<HttpResponse, Problem> {
    Err(Problem::not_found("no such resource"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_serializes_its_extensions_beside_the_standard_members()
    -> Result<(), Box<dyn std::error::Error>> {
        let p = Problem::conflict("insufficient-stock", "short")
            .with("shortages", serde_json::json!([{"sku": "A"}]));
        let v = serde_json::to_value(&p)?;
        assert_eq!(v["status"], 409);
        assert_eq!(v["title"], "Conflict");
        assert_eq!(
            v["type"],
            "https://clickcollect.dev/problems/insufficient-stock"
        );
        assert_eq!(v["shortages"][0]["sku"], "A");
        Ok(())
    }

    #[test]
    fn validation_lists_every_field_error() {
        let mut v = Validation::new();
        v.add("lines[0].quantity", "must be positive");
        v.add("store_id", "unknown");
        let err = v.finish().err();
        assert_eq!(err.as_ref().map(|e| e.status), Some(422));
        assert_eq!(
            err.as_ref()
                .and_then(|e| e.extensions["errors"].as_array().map(Vec::len)),
            Some(2)
        );
    }
}

/// A raw request body (size-limited by the app's `PayloadConfig`), kept as bytes so the
/// idempotency hash sees exactly what was sent; parse it with [`Body::json`].
#[derive(Debug, Clone)]
pub struct Body(pub actix_web::web::Bytes);

impl actix_web::FromRequest for Body {
    type Error = Problem;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let fut = actix_web::web::Bytes::from_request(req, payload);
        Box::pin(async move {
            fut.await.map(Body).map_err(|err| {
                let status = err.as_response_error().status_code();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::too_large("request body is over the size limit")
                } else {
                    Problem::bad_request(format!("unreadable request body: {err}"))
                }
            })
        })
    }
}

impl Body {
    /// Parses the body: broken JSON is 400, JSON of the wrong shape (missing fields,
    /// wrong types, numbers out of range) is 422.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        serde_json::from_slice(&self.0).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => {
                Problem::unprocessable(format!("invalid body: {err}"))
            }
            _ => Problem::bad_request(format!("malformed JSON body: {err}")),
        })
    }
}
