//! The HTTP API of api.md, one module per resource.

pub mod availability;
pub mod reservations;
pub mod stock;
pub mod stores;

use crate::view::AvailabilityView;
use actix_web::{HttpRequest, HttpResponse, http::StatusCode};
use sea_orm::DatabaseConnection;
use shared::auth::Caller;
use shared::http::BearerAuth;
pub use shared::http::{correlation, page_params, query_pairs};
use shared::idempotency;
use shared::problem::{Body, Problem};
use std::sync::Arc;
use utoipa::OpenApi;

/// What every handler reaches through app data.
#[derive(Clone)]
pub struct AppState {
    /// The inventory database.
    pub db: DatabaseConnection,
    /// Reservations in groups, one commit for many.
    pub reserver: Arc<crate::reserver::Reserver>,
    /// Levels and stores in memory.
    pub view: Arc<AvailabilityView>,
    /// Cancelled when the service stops (ends SSE streams).
    pub shutdown: shared::shutdown::Shutdown,
}

/// [`shared::idempotency::idempotent_write`] on the inventory database, with the request's
/// trace handed to the SQL that writes the events (`shared::trace::bind`).
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
    // The request's trace goes on the events this service's SQL enqueues in the write.
    let trace = shared::trace::current().map(|t| t.to_string());
    idempotency::idempotent_write(&state.db, req, caller, body, async |txn| {
        shared::trace::bind(txn, trace.as_deref()).await?;
        write(txn).await
    })
    .await
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
    shared::http::generated_openapi(ApiDoc::openapi(), routes)
}
