//! The HTTP API of api.md for orders: checkout, reads, the staff flow, cancellation.

use crate::domain::{self, CANCELLABLE, MAX_CODE_ATTEMPTS};
use crate::store::{self, HistoryEntry, ListFilter, NewOrder, OrderRow, Transition};
use actix_web::{HttpRequest, HttpResponse, get, http::StatusCode, post, web};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde::{Deserialize, Serialize};
use shared::auth::{Caller, Role};
use shared::http::{BearerAuth, correlation, page_params, query_pairs};
use shared::idempotency::idempotent_write;
use shared::problem::{Body, Problem, Validation};
use utoipa::OpenApi;
use uuid::Uuid;

/// What every handler reaches through app data.
#[derive(Clone)]
pub struct AppState {
    /// The orders database.
    pub db: DatabaseConnection,
}

/// A line of an order.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// SKU.
    pub sku: String,
    /// Units, positive.
    pub quantity: i64,
    /// Price of one unit in cents (0 allowed: a free item).
    pub unit_price_cents: i64,
}

/// How to reach the customer.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// E-mail address.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Language of the customer's messages, e.g. `fr-FR` or `en`.
    pub locale: String,
}

/// Body of `POST /v1/orders`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    /// The pickup store.
    pub store_id: String,
    /// 1 to 100 lines.
    pub lines: Vec<OrderLine>,
    /// A checkout hold taken earlier by the site, for inventory to adopt.
    pub reservation_id: Option<Uuid>,
    /// How to reach the customer.
    pub contact: Contact,
    /// For a service placing an order on behalf of a customer: that customer (a customer's
    /// own orders always get the token's subject).
    pub customer_id: Option<String>,
}

/// An order as answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Order {
    /// Its id.
    pub id: Uuid,
    /// Its customer.
    pub customer_id: String,
    /// The pickup store.
    pub store_id: String,
    /// `pending`, `confirmed`, `rejected`, `picking`, `ready_for_pickup`, `collected`,
    /// `cancelled` or `expired`.
    pub status: String,
    /// The lines.
    #[schema(value_type = Vec<OrderLine>)]
    pub lines: serde_json::Value,
    /// Sum of quantity × unit price.
    pub total_cents: i64,
    /// How to reach the customer.
    #[schema(value_type = Contact)]
    pub contact: serde_json::Value,
    /// The reservation holding its goods, once confirmed.
    pub reservation_id: Option<Uuid>,
    /// Why inventory rejected it: `[{sku, requested, available}]`.
    #[schema(value_type = Option<Vec<shared::events::Shortage>>)]
    pub shortages: Option<serde_json::Value>,
    /// The code to give at the counter: shown to the order's customer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickup_code: Option<String>,
    /// When a ready order is given up.
    pub pickup_deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether wrong pickup codes locked the hand-over until a staff override.
    pub pickup_locked: bool,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// Whether a POS sale left less on hand than its reservation holds.
    pub at_risk: bool,
    /// When it was placed.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Its last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Every transition, oldest first (single reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
}

/// A page of orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderPage {
    /// Oldest first.
    pub items: Vec<Order>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/orders/{id}/collect`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectBody {
    /// The 6-digit code the customer shows.
    pub pickup_code: String,
}

/// Body of `POST /v1/orders/{id}/cancel`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why (1–500 characters).
    pub reason: String,
}

fn render(row: OrderRow, caller: &Caller, history: Option<Vec<HistoryEntry>>) -> Order {
    let owner = is_owner(caller, &row);
    Order {
        id: row.id,
        customer_id: row.customer_id,
        store_id: row.store_id,
        status: row.status,
        lines: row.lines,
        total_cents: row.total_cents,
        contact: row.contact,
        reservation_id: row.reservation_id,
        shortages: row.shortages,
        pickup_code: row.pickup_code.filter(|_| owner),
        pickup_deadline: row.pickup_deadline,
        pickup_locked: row.wrong_code_attempts >= MAX_CODE_ATTEMPTS,
        cancel_reason: row.cancel_reason,
        at_risk: row.at_risk,
        created_at: row.created_at,
        updated_at: row.updated_at,
        history,
    }
}

fn is_owner(caller: &Caller, row: &OrderRow) -> bool {
    caller.role == Role::Customer && caller.id == row.customer_id
}

/// Whether the caller may see the order: its customer, staff of its store, admin.
fn may_see(caller: &Caller, row: &OrderRow) -> bool {
    is_owner(caller, row)
        || match caller.role {
            Role::Staff => caller.acts_for_store(&row.store_id),
            Role::Admin | Role::Service => true,
            Role::Customer => false,
        }
}

fn parse_id(path: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(path).map_err(|_| Problem::not_found(format!("no order {path}")))
}

/// The order if the caller may see it; unknown and not-yours look the same (404).
async fn load_visible(
    db: &impl sea_orm::ConnectionTrait,
    caller: &Caller,
    id: Uuid,
    lock: bool,
) -> Result<OrderRow, Problem> {
    store::order(db, id, lock)
        .await?
        .filter(|row| may_see(caller, row))
        .ok_or_else(|| Problem::not_found(format!("no order {id}")))
}

fn illegal(row: &OrderRow, action: &str) -> Problem {
    Problem::conflict(
        "illegal-transition",
        format!("order {} is {}: it cannot {action}", row.id, row.status),
    )
    .with("order_status", &row.status)
}

impl OrderBody {
    fn validate(&self) -> Result<i64, Problem> {
        let mut v = Validation::new();
        domain::check_code(&mut v, "store_id", &self.store_id);
        if self.lines.is_empty() || self.lines.len() > domain::MAX_LINES {
            v.add(
                "lines",
                format!("must hold 1..={} lines", domain::MAX_LINES),
            );
        }
        let mut total: Option<i64> = Some(0);
        for (i, line) in self.lines.iter().enumerate() {
            domain::check_code(&mut v, &format!("lines[{i}].sku"), &line.sku);
            if !(1..=domain::MAX_QUANTITY).contains(&line.quantity) {
                v.add(
                    format!("lines[{i}].quantity"),
                    format!("must be 1..={}", domain::MAX_QUANTITY),
                );
            }
            if !(0..=domain::MAX_UNIT_PRICE_CENTS).contains(&line.unit_price_cents) {
                v.add(
                    format!("lines[{i}].unit_price_cents"),
                    format!("must be 0..={}", domain::MAX_UNIT_PRICE_CENTS),
                );
            }
            total = total
                .and_then(|t| {
                    line.quantity
                        .checked_mul(line.unit_price_cents)
                        .map(|x| (t, x))
                })
                .and_then(|(t, x)| t.checked_add(x));
        }
        if domain::locale(&self.contact.locale).is_none() {
            v.add(
                "contact.locale",
                "must be a language tag such as fr-FR or en",
            );
        }
        if let Some(email) = &self.contact.email
            && (email.len() > 254 || !email.contains('@') || email.chars().any(char::is_whitespace))
        {
            v.add("contact.email", "must be an e-mail address");
        }
        if let Some(phone) = &self.contact.phone
            && (phone.is_empty()
                || phone.len() > 32
                || !phone
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c)))
        {
            v.add("contact.phone", "must be a phone number");
        }
        v.checkpoint()?;
        let total = total.unwrap_or(-1);
        if total < 0 {
            v.add("lines", "the order total is too large");
        }
        v.finish()?;
        Ok(total)
    }
}

/// Place an order for pickup: stored as `pending` and answered at once (202); inventory
/// then confirms or rejects it. Customer (for themself), service (naming `customer_id`).
#[utoipa::path(
    tag = "orders",
    request_body = OrderBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "a retried checkout replays the first answer")),
    responses((status = 202, body = Order), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/orders")]
pub async fn post_order(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Body,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Customer, Role::Service])?;
    let ask = body.json::<OrderBody>()?;
    let total = ask.validate()?;
    let customer_id = match caller.role {
        Role::Customer => {
            if ask.customer_id.as_ref().is_some_and(|c| *c != caller.id) {
                return Err(Problem::forbidden("a customer orders for themself only"));
            }
            caller.id.clone()
        }
        _ => match &ask.customer_id {
            Some(c) if !c.is_empty() && c.len() <= 200 => c.clone(),
            _ => {
                let mut v = Validation::new();
                v.add(
                    "customer_id",
                    "a service must name the customer (1-200 characters)",
                );
                return Err(v.finish().err().unwrap_or_else(Problem::internal));
            }
        },
    };
    let store_row = store::store(&state.db, &ask.store_id).await?;
    match store_row {
        Some(s) if s.pickup_enabled => {}
        Some(_) => {
            let mut v = Validation::new();
            v.add("store_id", "this store takes no pickup orders");
            v.finish()?;
        }
        None => {
            let mut v = Validation::new();
            v.add("store_id", "unknown store");
            v.finish()?;
        }
    }
    let order = NewOrder {
        id: Uuid::now_v7(),
        customer_id,
        store_id: ask.store_id,
        lines: ask
            .lines
            .into_iter()
            .map(|l| (l.sku, l.quantity, l.unit_price_cents))
            .collect(),
        total_cents: total,
        contact: serde_json::json!({
            "email": ask.contact.email, "phone": ask.contact.phone,
            "locale": domain::locale(&ask.contact.locale),
        }),
        locale: domain::locale(&ask.contact.locale).unwrap_or_else(|| "en".into()),
        hold_id: ask.reservation_id,
        actor: caller.identity(),
        correlation: correlation(&req),
    };
    let (response, _) = idempotent_write(&state.db, &req, &caller, &body, async |txn| {
        let row = store::insert_order(txn, &order).await?;
        let history = store::order_history(txn, row.id).await?;
        let value = serde_json::to_value(render(row, &caller, Some(history)))
            .map_err(|_| Problem::internal())?;
        Ok((StatusCode::ACCEPTED, value, ()))
    })
    .await?;
    Ok(response)
}

/// An order with its history. Its customer (who alone sees the pickup code), staff of its
/// store, admin.
#[utoipa::path(
    tag = "orders",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = []))
)]
#[get("/v1/orders/{id}")]
pub async fn get_order(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id = parse_id(&path)?;
    let row = load_visible(&state.db, &caller, id, false).await?;
    let history = store::order_history(&state.db, id).await?;
    Ok(HttpResponse::Ok().json(render(row, &caller, Some(history))))
}

/// Orders, oldest first, paginated (`limit` 1–100, `cursor`). Staff: the orders of their
/// stores (`store_id` one of them, or all of them); customer: their own; admin: any.
#[utoipa::path(
    tag = "orders",
    params(("store_id" = Option<String>, Query), ("status" = Option<String>, Query),
           ("customer_id" = Option<String>, Query), ("limit" = Option<u64>, Query),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = OrderPage), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
#[get("/v1/orders")]
pub async fn list_orders(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(&req)?;
    let (limit, cursor) = page_params(&pairs, 20, domain::MAX_PAGE)?;
    let one = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut v = Validation::new();
    let store_id = one("store_id");
    if let Some(s) = &store_id {
        domain::check_code(&mut v, "store_id", s);
    }
    let status = one("status");
    if let Some(s) = &status
        && !domain::STATUSES.contains(&s.as_str())
    {
        v.add(
            "status",
            format!("must be one of {}", domain::STATUSES.join(", ")),
        );
    }
    v.finish()?;
    let after = cursor
        .map(|c| Uuid::parse_str(&c).map_err(|_| Problem::bad_request("invalid cursor")))
        .transpose()?;
    let mut filter = ListFilter {
        stores: store_id.clone().map(|s| vec![s]),
        status,
        customer_id: one("customer_id"),
        after,
        limit,
    };
    match caller.role {
        Role::Customer => {
            if filter.customer_id.as_ref().is_some_and(|c| *c != caller.id) {
                return Err(Problem::forbidden("a customer lists their own orders only"));
            }
            filter.customer_id = Some(caller.id.clone());
        }
        Role::Staff => match &store_id {
            Some(s) => caller.require_store(s)?,
            None => filter.stores = Some(caller.stores.clone()),
        },
        Role::Admin => {}
        Role::Service => return Err(Problem::forbidden("services do not list orders")),
    }
    let rows = store::list(&state.db, &filter).await?;
    let next_cursor = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let items = rows.into_iter().map(|r| render(r, &caller, None)).collect();
    Ok(HttpResponse::Ok().json(OrderPage { items, next_cursor }))
}

/// A staff action on an order of their store: check, transition, answer the order.
async fn staff_step(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    id: &str,
    from: &str,
    to: &str,
    action: &str,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Staff, Role::Admin])?;
    let id = parse_id(id)?;
    let txn = state.db.begin().await?;
    let row = load_visible(&txn, caller, id, true).await?;
    let pickup = if to == "ready_for_pickup" {
        let window = store::store(&txn, &row.store_id)
            .await?
            .map_or(72, |s| s.pickup_window_hours);
        Some((domain::pickup_code(), window))
    } else {
        None
    };
    let actor = caller.identity();
    let moved = store::transition(
        &txn,
        id,
        &Transition {
            from: &[from],
            to,
            actor: &actor,
            pickup,
            correlation: Some(correlation(req)),
            ..Default::default()
        },
    )
    .await?
    .ok_or_else(|| illegal(&row, action))?;
    txn.commit().await?;
    shared::outbox::wake_local_relays();
    Ok(HttpResponse::Ok().json(render(moved, caller, None)))
}

/// confirmed → picking. Staff of the order's store.
#[utoipa::path(tag = "orders", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
#[post("/v1/orders/{id}/start-picking")]
pub async fn start_picking(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    staff_step(
        &state,
        &req,
        &caller,
        &path,
        "confirmed",
        "picking",
        "start picking",
    )
    .await
}

/// picking → ready_for_pickup: makes the pickup code and the deadline (the store's pickup
/// window). Staff of the order's store.
#[utoipa::path(tag = "orders", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
#[post("/v1/orders/{id}/ready")]
pub async fn mark_ready(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    staff_step(
        &state,
        &req,
        &caller,
        &path,
        "picking",
        "ready_for_pickup",
        "be made ready",
    )
    .await
}

/// ready_for_pickup → collected, with the customer's code. A wrong code is 422; after five
/// the order is locked (429) until a staff override. Staff of the order's store.
#[utoipa::path(tag = "orders", params(("id" = Uuid, Path)), request_body = CollectBody,
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem, description = "wrong code"),
              (status = 429, body = Problem, description = "locked after too many wrong codes")),
    security(("bearer" = [])))]
#[post("/v1/orders/{id}/collect")]
pub async fn collect(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Staff, Role::Admin])?;
    let id = parse_id(&path)?;
    let ask = body.json::<CollectBody>()?;
    let txn = state.db.begin().await?;
    let row = load_visible(&txn, &caller, id, true).await?;
    if row.status != "ready_for_pickup" {
        return Err(illegal(&row, "be collected"));
    }
    if row.wrong_code_attempts >= MAX_CODE_ATTEMPTS {
        return Err(Problem::too_many_requests(
            "too many wrong pickup codes: a staff override (unlock-pickup) is needed",
        ));
    }
    let expected = row.pickup_code.clone().unwrap_or_default();
    if !domain::code_matches(ask.pickup_code.trim(), &expected) {
        let attempts = store::wrong_code(&txn, id).await?;
        txn.commit().await?;
        tracing::warn!(order_id = %id, attempts, "wrong pickup code");
        return Err(Problem::unprocessable("wrong pickup code")
            .with("attempts_left", (MAX_CODE_ATTEMPTS - attempts).max(0)));
    }
    let actor = caller.identity();
    let moved = store::transition(
        &txn,
        id,
        &Transition {
            from: &["ready_for_pickup"],
            to: "collected",
            actor: &actor,
            correlation: Some(correlation(&req)),
            ..Default::default()
        },
    )
    .await?
    .ok_or_else(|| illegal(&row, "be collected"))?;
    txn.commit().await?;
    shared::outbox::wake_local_relays();
    Ok(HttpResponse::Ok().json(render(moved, &caller, None)))
}

/// Lifts the lock five wrong codes put on a ready order. Staff of the order's store.
#[utoipa::path(tag = "orders", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
#[post("/v1/orders/{id}/unlock-pickup")]
pub async fn unlock_pickup(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Staff, Role::Admin])?;
    let id = parse_id(&path)?;
    let txn = state.db.begin().await?;
    let row = load_visible(&txn, &caller, id, true).await?;
    if !store::unlock_code(&txn, id, &caller.identity()).await? {
        return Err(illegal(&row, "have its pickup lock lifted"));
    }
    let row = store::order(&txn, id, false)
        .await?
        .ok_or_else(Problem::internal)?;
    txn.commit().await?;
    Ok(HttpResponse::Ok().json(render(row, &caller, None)))
}

/// Cancels an order that is not over yet (pending, confirmed, picking or ready); its stock
/// goes back. Its customer, staff of its store.
#[utoipa::path(tag = "orders", params(("id" = Uuid, Path)), request_body = CancelBody,
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
#[post("/v1/orders/{id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Customer, Role::Staff, Role::Admin])?;
    let id = parse_id(&path)?;
    let ask = body.json::<CancelBody>()?;
    let reason = ask.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        let mut v = Validation::new();
        v.add("reason", "must be 1-500 characters");
        v.finish()?;
    }
    let txn = state.db.begin().await?;
    let row = load_visible(&txn, &caller, id, true).await?;
    let actor = caller.identity();
    let moved = store::transition(
        &txn,
        id,
        &Transition {
            from: &CANCELLABLE,
            to: "cancelled",
            actor: &actor,
            reason: Some(reason),
            correlation: Some(correlation(&req)),
            ..Default::default()
        },
    )
    .await?
    .ok_or_else(|| illegal(&row, "be cancelled"))?;
    txn.commit().await?;
    shared::outbox::wake_local_relays();
    Ok(HttpResponse::Ok().json(render(moved, &caller, None)))
}

/// The OpenAPI document's top, completed by the handlers registered in [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "clickcollect orders",
        description = "Click-and-collect orders: checkout, the staff flow, pickup codes, cancellation."
    ),
    modifiers(&BearerAuth),
    components(schemas(shared::problem::Problem, shared::problem::FieldError, shared::events::Shortage))
)]
pub struct ApiDoc;

/// Registers every documented handler.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(post_order)
        .service(list_orders)
        .service(get_order)
        .service(start_picking)
        .service(mark_ready)
        .service(collect)
        .service(unlock_pickup)
        .service(cancel);
}

/// The OpenAPI document the code generates (committed as `orders/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    shared::http::generated_openapi(ApiDoc::openapi(), routes)
}
