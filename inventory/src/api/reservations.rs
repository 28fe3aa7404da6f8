//! `/v1/reservations`: holds on stock, all lines or none, until committed, released or expired.

use super::{AppState, correlation, idempotent_write};
use crate::domain;
use crate::store::{self, Ending, ReserveCall};
use actix_web::{HttpRequest, HttpResponse, get, http::StatusCode, post, web};
use serde::{Deserialize, Serialize};
use shared::auth::{Caller, Role};
use shared::idempotency::{self, IdempotencyKey};
use shared::problem::{Body, Problem, Validation};
use uuid::Uuid;

/// A requested line.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    /// SKU.
    pub sku: String,
    /// Units, positive.
    pub quantity: i64,
}

/// Body of `POST /v1/reservations`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationBody {
    /// The store holding the goods.
    pub store_id: String,
    /// 1 to 100 lines; lines naming one SKU are added up.
    pub lines: Vec<LineBody>,
    /// `web`, `app`, `pos` or `order`.
    pub channel: String,
    /// Cart id, POS ticket or order id (1–200 characters).
    pub reference: String,
    /// Hold duration, 1 s to 14 days.
    pub ttl_seconds: i64,
    /// The order this hold serves, if known.
    pub order_id: Option<Uuid>,
}

/// A reservation as answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    /// Its id.
    pub id: Uuid,
    /// `active`, `committed`, `released` or `expired`.
    pub status: String,
    /// The store.
    pub store_id: String,
    /// One line per SKU.
    pub lines: Vec<LineBody>,
    /// The channel.
    pub channel: String,
    /// The caller's reference.
    pub reference: String,
    /// The order it serves.
    pub order_id: Option<Uuid>,
    /// When an active hold lapses.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it ended.
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether a POS sale left less on hand than it holds.
    pub at_risk: bool,
}

const CHANNELS: [&str; 4] = ["web", "app", "pos", "order"];

impl ReservationBody {
    fn validate(&self) -> Result<(), Problem> {
        let mut v = Validation::new();
        domain::check_code(&mut v, "store_id", &self.store_id);
        if self.lines.is_empty() || self.lines.len() > domain::MAX_LINES {
            v.add(
                "lines",
                format!("must hold 1..={} lines", domain::MAX_LINES),
            );
        }
        for (i, line) in self.lines.iter().enumerate() {
            domain::check_code(&mut v, &format!("lines[{i}].sku"), &line.sku);
            domain::check_quantity(&mut v, &format!("lines[{i}].quantity"), line.quantity);
        }
        if !CHANNELS.contains(&self.channel.as_str()) {
            v.add("channel", "must be web, app, pos or order");
        }
        if self.reference.is_empty() || self.reference.chars().count() > 200 {
            v.add("reference", "must be 1-200 characters");
        }
        if !(1..=domain::MAX_TTL_SECONDS).contains(&self.ttl_seconds) {
            v.add("ttl_seconds", "must be 1..=1209600 (14 days)");
        }
        v.finish()
    }
}

/// The 409 for a cart that cannot be fully reserved.
pub fn shortage_problem(shortages: serde_json::Value) -> Problem {
    Problem::conflict(
        "insufficient-stock",
        "not enough stock for every line; nothing was reserved",
    )
    .with("shortages", shortages)
}

/// Reserve every line or none. Customer, staff (of the store), service.
#[utoipa::path(
    tag = "reservations",
    request_body = ReservationBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response")),
    responses((status = 201, body = Reservation),
              (status = 409, body = Problem, description = "shortages, or the same key still running"),
              (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/reservations")]
pub async fn post_reservation(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Body,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Customer, Role::Staff, Role::Service, Role::Admin])?;
    let ask = body.json::<ReservationBody>()?;
    ask.validate()?;
    if caller.role == Role::Staff {
        caller.require_store(&ask.store_id)?;
    }
    // The order saga trusts reservation events naming an order: only services name one.
    if ask.order_id.is_some() && !matches!(caller.role, Role::Service | Role::Admin) {
        return Err(Problem::forbidden(
            "only a service may reserve on behalf of an order",
        ));
    }
    if !state.view.has_store(&ask.store_id).await? {
        let mut v = Validation::new();
        v.add("store_id", "unknown store");
        v.finish()?;
    }
    let owner = caller.identity();
    let call = ReserveCall {
        id: Uuid::now_v7(),
        store_id: ask.store_id,
        lines: domain::merge_lines(ask.lines.into_iter().map(|l| (l.sku, l.quantity))),
        channel: ask.channel,
        reference: ask.reference,
        idempotency: IdempotencyKey::from_request(&req, &owner, &body.0)?,
        owner,
        order_id: ask.order_id,
        ttl_seconds: ask.ttl_seconds,
        correlation: correlation(&req),
        causation: None,
    };
    let id = call.id;
    let mark = state.view.mark();
    let answer = state.reserver.reserve(call).await?;
    if answer.outcome == "created" {
        shared::outbox::wake_local_relays();
    }
    // Committed: show the new levels on this replica at once.
    let body = state.view.applied(mark, answer.body, Some(answer.levels));
    match answer.outcome.as_str() {
        // As the database wrote it: no parsing and printing again.
        "created" => Ok(HttpResponse::Created()
            .insert_header(("Location", format!("/v1/reservations/{id}")))
            .content_type(actix_web::http::header::ContentType::json())
            .body(body.unwrap_or_default())),
        "short" => Err(shortage_problem(parse_body(body)?)),
        state_name => {
            match idempotency::interpret(state_name, answer.status, Some(parse_body(body)?))? {
                idempotency::Begin::Replay { status, body } => {
                    Ok(idempotency::replay_response(status, body))
                }
                idempotency::Begin::Proceed => Err(Problem::internal()),
            }
        }
    }
}

/// A body the database wrote, parsed (null when there is none).
fn parse_body(body: Option<String>) -> Result<serde_json::Value, Problem> {
    Ok(store::parse_answer_body(body.as_deref())?.unwrap_or(serde_json::Value::Null))
}

/// Whether the caller may see or release a reservation (owner, its store's staff, service).
fn may_see(caller: &Caller, owner: &str, store_id: &str) -> bool {
    caller.identity() == owner || caller.acts_for_store(store_id)
}

async fn load_visible(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<serde_json::Value, Problem> {
    let not_found = || Problem::not_found(format!("no reservation {id}"));
    let (body, owner) = store::get_reservation(&state.db, id)
        .await?
        .ok_or_else(not_found)?;
    let store_id = body["store_id"].as_str().unwrap_or_default();
    if may_see(caller, &owner, store_id) {
        Ok(body)
    } else {
        // Not yours looks the same as unknown.
        Err(not_found())
    }
}

fn reservation_id(path: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(path).map_err(|_| Problem::not_found(format!("no reservation {path}")))
}

/// A reservation. Its owner, staff of its store, service.
#[utoipa::path(
    tag = "reservations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Reservation), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
#[get("/v1/reservations/{id}")]
pub async fn get_reservation(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id = reservation_id(&path)?;
    Ok(HttpResponse::Ok().json(load_visible(&state, &caller, id).await?))
}

async fn end(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: &str,
    body: Body,
    ending: Ending,
) -> Result<HttpResponse, Problem> {
    let id = reservation_id(id)?;
    let current = load_visible(&state, &caller, id).await?;
    if ending == Ending::Committed {
        caller.require(&[Role::Staff, Role::Service, Role::Admin])?;
        caller.require_store(current["store_id"].as_str().unwrap_or_default())?;
    }
    let actor = caller.identity();
    let corr = correlation(&req);
    let mark = state.view.mark();
    idempotent_write(&state, &req, &caller, &body, async |txn| {
        let ended = store::end_reservation(txn, id, ending, &actor, corr, None)
            .await?
            .ok_or_else(|| {
                Problem::conflict(
                    "illegal-transition",
                    format!(
                        "reservation {id} is {}, not active",
                        current["status"].as_str().unwrap_or("ended")
                    ),
                )
            })?;
        Ok((StatusCode::OK, ended.reservation, ended.levels))
    })
    .await
    .map(|(response, levels)| state.view.applied(mark, response, levels))
}

/// Goods handed over: on_hand and reserved both drop. Staff of the store, service.
#[utoipa::path(
    tag = "reservations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Reservation), (status = 409, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/reservations/{id}/commit")]
pub async fn commit_reservation(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    end(state, req, caller, &path, body, Ending::Committed).await
}

/// Give the stock back. Owner, staff of the store, service.
#[utoipa::path(
    tag = "reservations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Reservation), (status = 409, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/reservations/{id}/release")]
pub async fn release_reservation(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    end(state, req, caller, &path, body, Ending::Released).await
}
