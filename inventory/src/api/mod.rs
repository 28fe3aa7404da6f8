//! The HTTP API of api.md, one module per resource.

pub mod availability;
pub mod reservations;
pub mod stock;
pub mod stores;

use crate::view::AvailabilityView;
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use sea_orm::{DatabaseConnection, TransactionTrait};
use shared::auth::Caller;
use shared::http::BearerAuth;
use shared::idempotency::{self, Begin, IdempotencyKey};
use shared::problem::{Body, Problem};
use std::sync::Arc;
use utoipa::OpenApi;
use uuid::Uuid;

/// What every handler reaches through app data.
#[derive(Clone)]
pub struct AppState {
    /// The inventory database.
    pub db: DatabaseConnection,
    /// Levels and stores in memory.
    pub view: Arc<AvailabilityView>,
    /// Cancelled when the service stops (ends SSE streams).
    pub shutdown: shared::shutdown::Shutdown,
}

/// The correlation id of a request: the caller's `X-Correlation-Id` when it is a UUID.
pub fn correlation(req: &HttpRequest) -> Uuid {
    req.headers()
        .get("X-Correlation-Id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::now_v7)
}

/// Runs a write in one transaction with its `Idempotency-Key` (when sent): a retry replays
/// the first response and changes nothing; the key and the effect commit together.
/// The write's third output (levels to show at once, say) is handed back only after commit.
pub async fn idempotent_write<F, T>(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    body: &Body,
    write: F,
) -> Result<(HttpResponse, Option<T>), Problem>
where
    F: AsyncFnOnce(
        &sea_orm::DatabaseTransaction,
    ) -> Result<(StatusCode, serde_json::Value, T), Problem>,
{
    let key = IdempotencyKey::from_request(req, &caller.identity(), &body.0)?;
    let txn = state.db.begin().await?;
    if let Some(key) = &key
        && let Begin::Replay { status, body } = idempotency::begin(&txn, key).await?
    {
        return Ok((idempotency::replay_response(status, body), None));
    }
    let (status, value, after) = write(&txn).await?;
    if let Some(key) = &key {
        idempotency::finish(&txn, key, status.as_u16(), &value).await?;
    }
    txn.commit().await?;
    shared::outbox::wake_local_relays();
    Ok((HttpResponse::build(status).json(value), Some(after)))
}

/// Serializes a response value (infallible for our types).
pub fn to_json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The OpenAPI document's top, completed by the handlers registered in [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "clickcollect inventory",
        description = "Stores, stock levels, the movement ledger, availability and reservations."
    ),
    modifiers(&BearerAuth),
    components(schemas(shared::problem::Problem, shared::problem::FieldError, shared::events::Shortage))
)]
pub struct ApiDoc;

/// Registers every documented handler.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(stores::put_store)
        .service(stores::list_stores)
        .service(stores::get_store)
        .service(stock::put_count)
        .service(stock::post_adjustment)
        .service(stock::post_bulk)
        .service(stock::get_movements)
        .service(stock::post_sale)
        .service(stock::post_return)
        .service(availability::get_availability)
        .service(availability::get_nearby)
        .service(availability::get_stream)
        .service(reservations::post_reservation)
        .service(reservations::get_reservation)
        .service(reservations::commit_reservation)
        .service(reservations::release_reservation);
}

/// The OpenAPI document the code generates (committed as `inventory/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa_actix_web::AppExt;
    let (_, doc) = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(routes)
        .split_for_parts();
    doc
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

/// Answers unknown paths with problem+json.
pub fn default_service() -> actix_web::Route {
    web::route().to(shared::problem::not_found_route)
}
