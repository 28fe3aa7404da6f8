//! `/v1/stores`: the retailer's stores.

use super::{AppState, correlation, idempotent_write, to_json};
use crate::domain;
use crate::store::{self, Store, StoreWrite};
use actix_web::{HttpRequest, HttpResponse, get, http::StatusCode, put, web};
use serde::Deserialize;
use shared::auth::{Caller, Role};
use shared::problem::{Body, Problem, Validation};

/// Body of `PUT /v1/stores/{store_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreBody {
    /// Display name (1–200 characters).
    pub name: String,
    /// WGS84 latitude, -90..90.
    pub latitude: f64,
    /// WGS84 longitude, -180..180.
    pub longitude: f64,
    /// IANA time zone, e.g. `Europe/Paris`.
    pub timezone: String,
    /// Whether online orders may be collected here.
    pub pickup_enabled: bool,
    /// Available at or under this shows `low_stock` (default 5).
    #[serde(default = "default_threshold")]
    pub low_stock_threshold: i64,
    /// Hours a ready order waits at the counter (default 72).
    #[serde(default = "default_window")]
    pub pickup_window_hours: i64,
}

fn default_threshold() -> i64 {
    5
}

fn default_window() -> i64 {
    72
}

impl StoreBody {
    fn parse(self, store_id: String) -> Result<StoreWrite, Problem> {
        let mut v = Validation::new();
        domain::check_code(&mut v, "store_id", &store_id);
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            v.add("name", "must be 1-200 characters");
        }
        if !(-90.0..=90.0).contains(&self.latitude) {
            v.add("latitude", "must be within -90..90");
        }
        if !(-180.0..=180.0).contains(&self.longitude) {
            v.add("longitude", "must be within -180..180");
        }
        let tz_ok = !self.timezone.is_empty()
            && self.timezone.len() <= 64
            && self
                .timezone
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
        if !tz_ok {
            v.add("timezone", "must be an IANA time zone name");
        }
        if !(0..=domain::MAX_QUANTITY).contains(&self.low_stock_threshold) {
            v.add("low_stock_threshold", "must be 0 or more");
        }
        if !(1..=24 * 90).contains(&self.pickup_window_hours) {
            v.add("pickup_window_hours", "must be 1..=2160");
        }
        v.finish()?;
        Ok(StoreWrite {
            store_id,
            name: self.name.trim().to_owned(),
            latitude: self.latitude,
            longitude: self.longitude,
            timezone: self.timezone,
            pickup_enabled: self.pickup_enabled,
            low_stock_threshold: self.low_stock_threshold,
            pickup_window_hours: self.pickup_window_hours,
        })
    }
}

/// Create or update a store (admin).
#[utoipa::path(
    tag = "stores",
    params(("store_id" = String, Path, description = "store code")),
    request_body = StoreBody,
    responses((status = 200, body = Store), (status = 422, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
#[put("/v1/stores/{store_id}")]
pub async fn put_store(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let write = body.json::<StoreBody>()?.parse(path.into_inner())?;
    let corr = correlation(&req);
    let (response, saved) = idempotent_write(&state, &req, &caller, &body, async |txn| {
        let saved = store::upsert_store(txn, &write, corr).await?;
        Ok((StatusCode::OK, to_json(&saved), saved))
    })
    .await?;
    if let Some(saved) = saved {
        state.view.apply_store(saved);
    }
    Ok(response)
}

/// The list of stores.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StoreList {
    /// Every store, by id.
    pub stores: Vec<Store>,
}

/// Every store (public).
#[utoipa::path(tag = "stores", responses((status = 200, body = StoreList)))]
#[get("/v1/stores")]
pub async fn list_stores(state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let stores = state.view.stores().await?;
    Ok(HttpResponse::Ok().json(StoreList { stores }))
}

/// One store (public).
#[utoipa::path(
    tag = "stores",
    params(("store_id" = String, Path, description = "store code")),
    responses((status = 200, body = Store), (status = 404, body = Problem))
)]
#[get("/v1/stores/{store_id}")]
pub async fn get_store(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id = path.into_inner();
    if !domain::is_code(&id) {
        return Err(Problem::not_found(format!("no store {id}")));
    }
    let found = state.view.store(&id).await?;
    found
        .map(|s| HttpResponse::Ok().json(s))
        .ok_or_else(|| Problem::not_found(format!("no store {id}")))
}
