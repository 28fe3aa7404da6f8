//! HTTP plumbing every service mounts: health, metrics, OpenAPI and Swagger UI.

use crate::problem::Problem;
use actix_web::HttpRequest;
use actix_web::{
    HttpResponse, Responder,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// What `/health/ready` checks: the database answers and the broker is connected.
#[derive(Clone)]
pub struct Readiness {
    /// The service's database.
    pub db: DatabaseConnection,
    /// Whether the broker connection is up.
    pub broker_up: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// The Prometheus registry and the HTTP metrics recorded for every request.
#[derive(Clone)]
pub struct Metrics {
    /// Everything `/metrics` exposes.
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Outbox rows not yet published (read at each scrape): a growing figure means the
    /// broker or the relay is stuck.
    outbox_pending: IntGauge,
    /// 1 while every broker connection is up.
    broker_up: IntGauge,
    /// 1 while the database answers.
    database_up: IntGauge,
}

impl Metrics {
    /// A registry with the HTTP request counter and latency histogram, labelled by service.
    pub fn new(service: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(
            Some("clickcollect".into()),
            Some([("service".to_owned(), service.to_owned())].into()),
        )?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP latency by route").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &["method", "route"],
        )?;
        let outbox_pending = IntGauge::new("outbox_pending", "Outbox rows not yet published")?;
        let broker_up = IntGauge::new("broker_up", "1 while every broker connection is up")?;
        let database_up = IntGauge::new("database_up", "1 while the database answers")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(outbox_pending.clone()))?;
        registry.register(Box::new(broker_up.clone()))?;
        registry.register(Box::new(database_up.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            outbox_pending,
            broker_up,
            database_up,
        })
    }
}

/// Middleware making each request part of a trace: the caller's `traceparent` when it
/// sent a valid one (this request is a child span), a new trace otherwise. Everything the
/// request publishes carries it on, and the answer names it in its own `traceparent`.
pub async fn trace_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let trace = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::trace::Traceparent::parse)
        .map_or_else(crate::trace::Traceparent::root, |t| t.child());
    let span = tracing::info_span!("request", trace_id = %trace.trace_id_hex());
    let mut res =
        crate::trace::scope(trace, tracing::Instrument::instrument(next.call(req), span)).await?;
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&trace.to_string()) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("traceparent"),
            value,
        );
    }
    Ok(res)
}

/// Middleware recording the request count and latency of every matched route.
pub async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().as_str().to_owned();
    let res = next.call(req).await?;
    if let Some(metrics) = metrics {
        // The route pattern, not the path, keeps label cardinality bounded.
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let status = res.status().as_u16().to_string();
        metrics
            .requests
            .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
            .inc();
        metrics
            .latency
            .with_label_values(&[method.as_str(), route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

async fn live() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({"status": "up"}))
}

async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    let db_ok = readiness
        .db
        .execute_unprepared("SELECT 1")
        .await
        .map(|_| true)
        .unwrap_or(false);
    let broker_ok = (readiness.broker_up)();
    let body = serde_json::json!({
        "status": if db_ok && broker_ok { "ready" } else { "unavailable" },
        "checks": {"database": db_ok, "broker": broker_ok},
    });
    if db_ok && broker_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(
    metrics: web::Data<Metrics>,
    readiness: web::Data<Readiness>,
) -> Result<HttpResponse, Problem> {
    // The platform gauges are read at scrape time (one count over the outbox, which holds
    // only unpublished rows and recent ones).
    match crate::outbox::pending_count(&readiness.db).await {
        Ok(pending) => {
            metrics
                .outbox_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
            metrics.database_up.set(1);
        }
        Err(_) => metrics.database_up.set(0),
    }
    metrics.broker_up.set(i64::from((readiness.broker_up)()));
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&metrics.registry.gather(), &mut buf)
        .map_err(|e| {
            tracing::error!(error = %e, "metrics encoding failed");
            Problem::internal()
        })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(buf))
}

/// Mounts `/health/live`, `/health/ready`, `/metrics` (needs `Readiness` and `Metrics` app data).
pub fn health_and_metrics(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}

/// Mounts `/openapi.json` and the Swagger UI at `/docs` (assets served from the binary).
pub fn docs(cfg: &mut web::ServiceConfig, openapi: utoipa::openapi::OpenApi) {
    cfg.service(utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi))
        .route(
            "/docs",
            web::get().to(|| async {
                HttpResponse::PermanentRedirect()
                    .insert_header(("Location", "/docs/"))
                    .finish()
            }),
        );
}

/// The bearer security scheme added to every service's OpenAPI document.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as the pretty JSON committed beside each service.
pub fn openapi_json(openapi: &utoipa::openapi::OpenApi) -> String {
    let mut text = openapi.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The correlation id of a request: the caller's `X-Correlation-Id` when it is a UUID.
pub fn correlation(req: &HttpRequest) -> Uuid {
    req.headers()
        .get("X-Correlation-Id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::now_v7)
}

/// Query parameters as a list of pairs (keys may repeat).
pub fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, Problem> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .map_err(|e| Problem::bad_request(format!("invalid query string: {e}")))
}

/// Reads `limit` (1..=max, default) and the opaque `cursor` of a paginated list.
pub fn page_params(
    pairs: &[(String, String)],
    default: u64,
    max: u64,
) -> Result<(u64, Option<String>), Problem> {
    let mut limit = default;
    let mut cursor = None;
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                let parsed = v
                    .parse::<i128>()
                    .map_err(|_| Problem::bad_request("limit must be an integer"))?;
                limit = u64::try_from(parsed)
                    .ok()
                    .filter(|l| (1..=max).contains(l))
                    .ok_or_else(|| Problem::unprocessable(format!("limit must be 1..={max}")))?;
            }
            "cursor" => cursor = Some(v.clone()),
            _ => {}
        }
    }
    Ok((limit, cursor))
}

/// The OpenAPI document a service generates: its top (`doc`) completed by the handlers
/// `routes` registers.
pub fn generated_openapi(
    doc: utoipa::openapi::OpenApi,
    routes: fn(&mut utoipa_actix_web::service_config::ServiceConfig),
) -> utoipa::openapi::OpenApi {
    use utoipa_actix_web::AppExt;
    let (_, doc) = actix_web::App::new()
        .into_utoipa_app()
        .openapi(doc)
        .configure(routes)
        .split_for_parts();
    doc
}
