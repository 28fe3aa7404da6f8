//! Stock writes from stores and back office: counts, adjustments, bulk imports, POS sales
//! and returns, and the movement ledger.

use super::availability::{AvailabilityItem, item_of};
use super::{AppState, correlation, idempotent_write, page_params, query_pairs, to_json};
use crate::domain;
use crate::store::{self, BulkItem, Level, MoveKind, Movement, Provenance};
use actix_web::{HttpRequest, HttpResponse, get, http::StatusCode, post, put, web};
use serde::{Deserialize, Serialize};
use shared::auth::{Caller, Role};
use shared::problem::{Body, Problem, Validation};

/// The store and SKU of a path, checked, with the caller's right to act on the store.
async fn level_path(
    state: &AppState,
    caller: &Caller,
    store_id: &str,
    sku: Option<&str>,
) -> Result<store::Store, Problem> {
    caller.require(&[Role::Staff, Role::Admin])?;
    if !domain::is_code(store_id) {
        return Err(Problem::not_found(format!("no store {store_id}")));
    }
    if let Some(sku) = sku
        && !domain::is_code(sku)
    {
        return Err(Problem::not_found(format!("no SKU {sku}")));
    }
    caller.require_store(store_id)?;
    state
        .view
        .store(store_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no store {store_id}")))
}

/// Body of a stock count.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountBody {
    /// Units counted on the shelf (0 or more).
    pub on_hand: i64,
    /// New safety stock, when it changes.
    pub safety_stock: Option<i64>,
    /// The stock-take's reference.
    pub reference: Option<String>,
}

fn provenance(req: &HttpRequest, caller: &Caller, reference: Option<String>) -> Provenance {
    Provenance {
        actor: caller.identity(),
        reference,
        correlation: correlation(req),
    }
}

fn check_reference(v: &mut Validation, reference: Option<&String>) {
    if let Some(r) = reference
        && (r.is_empty() || r.chars().count() > 200)
    {
        v.add("reference", "must be 1-200 characters");
    }
}

/// Stock count: sets on_hand (and optionally safety_stock). Staff of the store, admin.
#[utoipa::path(
    tag = "stock",
    params(("store_id" = String, Path), ("sku" = String, Path)),
    request_body = CountBody,
    responses((status = 200, body = AvailabilityItem), (status = 422, body = Problem),
              (status = 404, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
#[put("/v1/stores/{store_id}/stock/{sku}")]
pub async fn put_count(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    let (store_id, sku) = path.into_inner();
    let shop = level_path(&state, &caller, &store_id, Some(&sku)).await?;
    let count = body.json::<CountBody>()?;
    let mut v = Validation::new();
    if !(0..=domain::MAX_QUANTITY).contains(&count.on_hand) {
        v.add("on_hand", format!("must be 0..={}", domain::MAX_QUANTITY));
    }
    if let Some(s) = count.safety_stock
        && !(0..=domain::MAX_QUANTITY).contains(&s)
    {
        v.add(
            "safety_stock",
            format!("must be 0..={}", domain::MAX_QUANTITY),
        );
    }
    check_reference(&mut v, count.reference.as_ref());
    v.finish()?;
    let by = provenance(&req, &caller, count.reference.clone());
    let mark = state.view.mark();
    idempotent_write(&state, &req, &caller, &body, async |txn| {
        let level = store::move_stock(
            txn,
            &store_id,
            &sku,
            MoveKind::Count,
            count.on_hand,
            count.safety_stock,
            &by,
        )
        .await?
        .ok_or_else(Problem::internal)?;
        Ok((
            StatusCode::OK,
            to_json(&item_of(&level, &shop)),
            vec![level],
        ))
    })
    .await
    .map(|(response, levels)| state.view.applied(mark, response, levels))
}

/// Body of an adjustment.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    /// Signed change of on_hand (not zero).
    pub delta: i64,
    /// Why (damage, theft, found…), 1–200 characters.
    pub reason: String,
}

/// Adjustment of on_hand by a signed delta; 409 when on_hand would go negative.
#[utoipa::path(
    tag = "stock",
    params(("store_id" = String, Path), ("sku" = String, Path)),
    request_body = AdjustmentBody,
    responses((status = 200, body = AvailabilityItem), (status = 409, body = Problem),
              (status = 422, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/stores/{store_id}/stock/{sku}/adjustments")]
pub async fn post_adjustment(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    let (store_id, sku) = path.into_inner();
    let shop = level_path(&state, &caller, &store_id, Some(&sku)).await?;
    let adj = body.json::<AdjustmentBody>()?;
    let mut v = Validation::new();
    if adj.delta == 0 || adj.delta.unsigned_abs() > domain::MAX_QUANTITY.unsigned_abs() {
        v.add(
            "delta",
            format!(
                "must be non-zero and at most {} in size",
                domain::MAX_QUANTITY
            ),
        );
    }
    if adj.reason.trim().is_empty() || adj.reason.chars().count() > 200 {
        v.add("reason", "must be 1-200 characters");
    }
    v.finish()?;
    let by = provenance(&req, &caller, Some(adj.reason.clone()));
    let mark = state.view.mark();
    idempotent_write(&state, &req, &caller, &body, async |txn| {
        let level = store::move_stock(
            txn,
            &store_id,
            &sku,
            MoveKind::Adjustment,
            adj.delta,
            None,
            &by,
        )
        .await?
        .ok_or_else(|| {
            Problem::conflict(
                "negative-stock",
                format!("an adjustment of {} would make on_hand negative", adj.delta),
            )
        })?;
        Ok((
            StatusCode::OK,
            to_json(&item_of(&level, &shop)),
            vec![level],
        ))
    })
    .await
    .map(|(response, levels)| state.view.applied(mark, response, levels))
}

/// One line of a bulk import.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkLine {
    /// Store code.
    pub store_id: String,
    /// SKU.
    pub sku: String,
    /// `count` (absolute on_hand, 0 allowed) or `receipt` (units added).
    pub kind: String,
    /// Units.
    pub quantity: i64,
}

/// Body of a bulk import.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// Up to 10,000 lines, applied all or nothing.
    #[schema(value_type = Vec<BulkLine>)]
    pub items: Vec<serde_json::Value>,
    /// The import's reference.
    pub reference: Option<String>,
}

/// What a bulk import did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    /// Lines applied.
    pub applied: usize,
}

/// Many counts and receipts in one call, all or nothing; a 422 lists every bad line.
#[utoipa::path(
    tag = "stock",
    request_body = BulkBody,
    responses((status = 200, body = BulkResult), (status = 422, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/stock/bulk")]
pub async fn post_bulk(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Body,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Staff, Role::Admin])?;
    let bulk = body.json::<BulkBody>()?;
    if bulk.items.is_empty() || bulk.items.len() > domain::MAX_BULK_ITEMS {
        let mut v = Validation::new();
        v.add(
            "items",
            format!("must hold 1..={} lines", domain::MAX_BULK_ITEMS),
        );
        v.finish()?;
    }
    let mut v = Validation::new();
    check_reference(&mut v, bulk.reference.as_ref());
    // Each line on its own, so that a line of the wrong shape is named like any other.
    let mut lines = Vec::with_capacity(bulk.items.len());
    for (i, raw) in bulk.items.into_iter().enumerate() {
        match serde_json::from_value::<BulkLine>(raw) {
            Ok(line) => lines.push(line),
            Err(err) => v.add(format!("items[{i}]"), err.to_string()),
        }
    }
    v.checkpoint()?;
    let mut forbidden = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        domain::check_code(&mut v, &format!("items[{i}].store_id"), &line.store_id);
        domain::check_code(&mut v, &format!("items[{i}].sku"), &line.sku);
        match line.kind.as_str() {
            "count" if !(0..=domain::MAX_QUANTITY).contains(&line.quantity) => {
                v.add(format!("items[{i}].quantity"), "a count must be 0 or more");
            }
            "count" => {}
            "receipt" => {
                domain::check_quantity(&mut v, &format!("items[{i}].quantity"), line.quantity)
            }
            _ => v.add(format!("items[{i}].kind"), "must be count or receipt"),
        }
        if !caller.acts_for_store(&line.store_id) {
            forbidden.push(line.store_id.clone());
        }
    }
    if !forbidden.is_empty() {
        forbidden.sort();
        forbidden.dedup();
        return Err(Problem::forbidden(format!(
            "not allowed to act on store(s) {}",
            forbidden.join(", ")
        )));
    }
    let mut wanted: Vec<String> = lines.iter().map(|l| l.store_id.clone()).collect();
    wanted.sort();
    wanted.dedup();
    let known = store::existing_stores(&state.db, wanted).await?;
    for (i, line) in lines.iter().enumerate() {
        if domain::is_code(&line.store_id) && !known.contains(&line.store_id) {
            v.add(format!("items[{i}].store_id"), "unknown store");
        }
    }
    v.finish()?;
    let by = provenance(&req, &caller, bulk.reference.clone());
    let mut items: Vec<BulkItem> = lines
        .into_iter()
        .map(|l| BulkItem {
            kind: if l.kind == "count" {
                MoveKind::Count
            } else {
                MoveKind::Receipt
            },
            store_id: l.store_id,
            sku: l.sku,
            quantity: l.quantity,
        })
        .collect();
    let applied = items.len();
    idempotent_write(&state, &req, &caller, &body, async |txn| {
        store::move_stock_bulk(txn, &mut items, &by).await?;
        Ok((StatusCode::OK, to_json(&BulkResult { applied }), ()))
    })
    .await
    .map(|(response, _)| response)
}

/// A page of the ledger.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MovementPage {
    /// Newest first.
    pub items: Vec<Movement>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// The ledger of a level, newest first (`limit` 1..=500, default 50; `cursor`).
#[utoipa::path(
    tag = "stock",
    params(("store_id" = String, Path), ("sku" = String, Path),
           ("limit" = Option<u64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = MovementPage), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
#[get("/v1/stores/{store_id}/stock/{sku}/movements")]
pub async fn get_movements(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (store_id, sku) = path.into_inner();
    level_path(&state, &caller, &store_id, Some(&sku)).await?;
    let (limit, cursor) = page_params(&query_pairs(&req)?, 50, 500)?;
    let before = cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| Problem::bad_request("invalid cursor"))
        })
        .transpose()?;
    let items = store::movements(&state.db, &store_id, &sku, before, limit).await?;
    let next_cursor = (items.len() as u64 == limit)
        .then(|| items.last().map(|m| m.id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(MovementPage { items, next_cursor }))
}

/// A line of a POS sale or return.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PosLine {
    /// SKU.
    pub sku: String,
    /// Units, positive.
    pub quantity: i64,
}

/// Body of a POS sale or return.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PosBody {
    /// What crossed the till (up to 100 lines).
    pub lines: Vec<PosLine>,
    /// The POS ticket.
    pub reference: String,
}

/// What a POS sale or return did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PosResult {
    /// The store.
    pub store_id: String,
    /// The POS ticket.
    pub reference: String,
    /// The levels after it, one per SKU.
    pub items: Vec<AvailabilityItem>,
}

async fn pos_movement(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    store_id: String,
    body: Body,
    kind: MoveKind,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Staff, Role::Admin])?;
    let shop = level_path(&state, &caller, &store_id, None).await?;
    let pos = body.json::<PosBody>()?;
    let mut v = Validation::new();
    if pos.lines.is_empty() || pos.lines.len() > domain::MAX_LINES {
        v.add(
            "lines",
            format!("must hold 1..={} lines", domain::MAX_LINES),
        );
    }
    for (i, line) in pos.lines.iter().enumerate() {
        domain::check_code(&mut v, &format!("lines[{i}].sku"), &line.sku);
        domain::check_quantity(&mut v, &format!("lines[{i}].quantity"), line.quantity);
    }
    if pos.reference.is_empty() || pos.reference.chars().count() > 200 {
        v.add("reference", "must be 1-200 characters");
    }
    v.finish()?;
    let lines = domain::merge_lines(pos.lines.iter().map(|l| (l.sku.clone(), l.quantity)));
    let by = provenance(&req, &caller, Some(pos.reference.clone()));
    let reference = pos.reference.clone();
    let mark = state.view.mark();
    idempotent_write(&state, &req, &caller, &body, async |txn| {
        let mut levels: Vec<Level> = Vec::with_capacity(lines.len());
        for (sku, quantity) in &lines {
            let level = store::move_stock(txn, &store_id, sku, kind, *quantity, None, &by)
                .await?
                .ok_or_else(Problem::internal)?;
            levels.push(level);
        }
        let items = levels.iter().map(|l| item_of(l, &shop)).collect();
        let result = PosResult {
            store_id: store_id.clone(),
            reference,
            items,
        };
        Ok((StatusCode::OK, to_json(&result), levels))
    })
    .await
    .map(|(response, levels)| state.view.applied(mark, response, levels))
}

/// POS sale of goods in hand: never refused; reservations it puts at risk are flagged.
#[utoipa::path(
    tag = "pos",
    params(("store_id" = String, Path)),
    request_body = PosBody,
    responses((status = 200, body = PosResult), (status = 422, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/stores/{store_id}/sales")]
pub async fn post_sale(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    pos_movement(state, req, caller, path.into_inner(), body, MoveKind::Sale).await
}

/// POS return: goods back on the shelf.
#[utoipa::path(
    tag = "pos",
    params(("store_id" = String, Path)),
    request_body = PosBody,
    responses((status = 200, body = PosResult), (status = 422, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
#[post("/v1/stores/{store_id}/returns")]
pub async fn post_return(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    pos_movement(
        state,
        req,
        caller,
        path.into_inner(),
        body,
        MoveKind::Return,
    )
    .await
}
