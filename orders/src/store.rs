//! Every SQL call of the orders service, and its migrations.
//!
//! Every change of an order's status is one conditional `UPDATE … WHERE status = ANY(from)`
//! in the transaction that also writes its history row and its event (outbox): a stale or
//! repeated command updates nothing and changes nothing.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use sea_orm_migration::prelude::*;
use serde::Serialize;
use shared::events::{Envelope, OrderPlaced, OrderStatusChanged, StoreUpserted, types};
use uuid::Uuid;

/// The migrations, the platform's first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        shared::db::platform_and(&[shared::db::SqlMigration {
            name: "m0100_orders_schema",
            sql: include_str!("schema.sql"),
        }])
    }
}

/// Applies pending migrations; replicas starting together take turns on an advisory lock.
pub async fn migrate(database_url: &str) -> Result<(), DbErr> {
    shared::db::migrate::<Migrator>(database_url, 7261002).await
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The events' source.
const SOURCE: &str = "orders";

/// An order row.
#[derive(Debug, Clone, FromQueryResult)]
pub struct OrderRow {
    /// Its id.
    pub id: Uuid,
    /// Its customer (the token's `sub`).
    pub customer_id: String,
    /// The pickup store.
    pub store_id: String,
    /// Where it is in the life cycle.
    pub status: String,
    /// `[{sku, quantity, unit_price_cents}]`.
    pub lines: serde_json::Value,
    /// Sum of quantity × unit price.
    pub total_cents: i64,
    /// `{email?, phone?, locale}`.
    pub contact: serde_json::Value,
    /// The customer's language.
    pub locale: String,
    /// The checkout hold named at checkout.
    pub hold_id: Option<Uuid>,
    /// The reservation inventory confirmed.
    pub reservation_id: Option<Uuid>,
    /// Why inventory rejected it.
    pub shortages: Option<serde_json::Value>,
    /// The code shown to the customer, from `ready_for_pickup`.
    pub pickup_code: Option<String>,
    /// When a ready order is given up.
    pub pickup_deadline: Option<DateTime<Utc>>,
    /// Wrong codes tried since the code was made or the lock lifted.
    pub wrong_code_attempts: i32,
    /// When the pickup reminder went out.
    pub reminder_sent_at: Option<DateTime<Utc>>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// Whether a POS sale left less on hand than its reservation holds.
    pub at_risk: bool,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// Its last change.
    pub updated_at: DateTime<Utc>,
}

/// One transition of an order.
#[derive(Debug, Clone, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// The status before (`null` for the first entry).
    #[serde(rename = "from")]
    pub from_status: Option<String>,
    /// The status after.
    #[serde(rename = "to")]
    pub to_status: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (`role:id`).
    pub actor: String,
    /// Why, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A store as the orders service knows it.
#[derive(Debug, Clone, FromQueryResult)]
pub struct StoreRow {
    /// Its code.
    pub store_id: String,
    /// Its display name.
    pub name: String,
    /// Whether it takes pickup orders.
    pub pickup_enabled: bool,
    /// How long a ready order waits.
    pub pickup_window_hours: i64,
}

/// A new order to insert.
pub struct NewOrder {
    /// Its id (UUID v7).
    pub id: Uuid,
    /// The token's subject.
    pub customer_id: String,
    /// The pickup store.
    pub store_id: String,
    /// `[{sku, quantity, unit_price_cents}]`.
    pub lines: Vec<(String, i64, i64)>,
    /// The total.
    pub total_cents: i64,
    /// `{email?, phone?, locale}`.
    pub contact: serde_json::Value,
    /// The language.
    pub locale: String,
    /// The checkout hold to adopt.
    pub hold_id: Option<Uuid>,
    /// Who placed it.
    pub actor: String,
    /// The request's correlation id.
    pub correlation: Uuid,
}

/// Upserts a store from `inventory.store.upserted`.
pub async fn upsert_store(db: &impl ConnectionTrait, s: &StoreUpserted) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "INSERT INTO stores (store_id, name, timezone, pickup_enabled, pickup_window_hours)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (store_id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone,
             pickup_enabled = excluded.pickup_enabled,
             pickup_window_hours = excluded.pickup_window_hours, updated_at = now()",
        vec![
            s.store_id.clone().into(),
            s.name.clone().into(),
            s.timezone.clone().into(),
            s.pickup_enabled.into(),
            s.pickup_window_hours.into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// A store, if known.
pub async fn store(db: &impl ConnectionTrait, store_id: &str) -> Result<Option<StoreRow>, DbErr> {
    StoreRow::find_by_statement(stmt(
        "SELECT store_id, name, pickup_enabled, pickup_window_hours FROM stores WHERE store_id = $1",
        vec![store_id.into()],
    ))
    .one(db)
    .await
}

/// Inserts a pending order, its first history row and `orders.order.placed`.
pub async fn insert_order(db: &impl ConnectionTrait, order: &NewOrder) -> Result<OrderRow, DbErr> {
    let lines: Vec<serde_json::Value> = order
        .lines
        .iter()
        .map(|(sku, quantity, price)| {
            serde_json::json!({"sku": sku, "quantity": quantity, "unit_price_cents": price})
        })
        .collect();
    let row = OrderRow::find_by_statement(stmt(
        "INSERT INTO orders (id, customer_id, store_id, status, lines, total_cents, contact,
                             locale, hold_id)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8) RETURNING *",
        vec![
            order.id.into(),
            order.customer_id.clone().into(),
            order.store_id.clone().into(),
            serde_json::Value::Array(lines).into(),
            order.total_cents.into(),
            order.contact.clone().into(),
            order.locale.clone().into(),
            order.hold_id.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::Custom("insert returned no row".into()))?;
    history(db, order.id, None, "pending", &order.actor, None).await?;
    let event = Envelope::new(
        types::ORDER_PLACED,
        SOURCE,
        OrderPlaced {
            order_id: order.id,
            customer_id: order.customer_id.clone(),
            store_id: order.store_id.clone(),
            lines: order
                .lines
                .iter()
                .map(|(sku, quantity, _)| shared::events::Line {
                    sku: sku.clone(),
                    quantity: *quantity,
                })
                .collect(),
            reservation_id: order.hold_id,
        },
        Some(order.correlation),
    );
    shared::outbox::enqueue(db, &aggregate(order.id), &event).await?;
    Ok(row)
}

fn aggregate(order_id: Uuid) -> String {
    format!("order:{order_id}")
}

async fn history(
    db: &impl ConnectionTrait,
    order_id: Uuid,
    from: Option<&str>,
    to: &str,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "INSERT INTO order_history (order_id, from_status, to_status, actor, reason)
         VALUES ($1, $2, $3, $4, $5)",
        vec![
            order_id.into(),
            from.map(str::to_owned).into(),
            to.into(),
            actor.into(),
            reason.map(str::to_owned).into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// An order, if it exists; `lock` takes its row lock (in a transaction).
pub async fn order(
    db: &impl ConnectionTrait,
    id: Uuid,
    lock: bool,
) -> Result<Option<OrderRow>, DbErr> {
    let sql = if lock {
        "SELECT * FROM orders WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM orders WHERE id = $1"
    };
    OrderRow::find_by_statement(stmt(sql, vec![id.into()]))
        .one(db)
        .await
}

/// An order's transitions, oldest first.
pub async fn order_history(
    db: &impl ConnectionTrait,
    id: Uuid,
) -> Result<Vec<HistoryEntry>, DbErr> {
    HistoryEntry::find_by_statement(stmt(
        "SELECT from_status, to_status, at, actor, reason FROM order_history
         WHERE order_id = $1 ORDER BY seq",
        vec![id.into()],
    ))
    .all(db)
    .await
}

/// Filters of a list of orders (each `None` is "any").
#[derive(Debug, Default)]
pub struct ListFilter {
    /// Only these stores (staff: theirs).
    pub stores: Option<Vec<String>>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this customer.
    pub customer_id: Option<String>,
    /// Only orders after this id (the cursor).
    pub after: Option<Uuid>,
    /// Page size.
    pub limit: u64,
}

/// A page of orders, oldest first.
pub async fn list(db: &impl ConnectionTrait, f: &ListFilter) -> Result<Vec<OrderRow>, DbErr> {
    let limit = <i64 as TryFrom<u64>>::try_from(f.limit).unwrap_or(100);
    OrderRow::find_by_statement(stmt(
        "SELECT * FROM orders
         WHERE ($1::text[] IS NULL OR store_id = ANY ($1))
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR customer_id = $3)
           AND ($4::uuid IS NULL OR id > $4)
         ORDER BY id LIMIT $5",
        vec![
            f.stores.clone().into(),
            f.status.clone().into(),
            f.customer_id.clone().into(),
            f.after.into(),
            limit.into(),
        ],
    ))
    .all(db)
    .await
}

/// One requested change of status, with what it sets besides.
#[derive(Debug, Default)]
pub struct Transition<'a> {
    /// The states it may start from.
    pub from: &'a [&'a str],
    /// The state it ends in.
    pub to: &'a str,
    /// Who asks.
    pub actor: &'a str,
    /// Why (cancellations).
    pub reason: Option<&'a str>,
    /// The reservation inventory confirmed.
    pub reservation_id: Option<Uuid>,
    /// Why inventory rejected the order.
    pub shortages: Option<serde_json::Value>,
    /// For `ready_for_pickup`: the new code and the store's pickup window.
    pub pickup: Option<(String, i64)>,
    /// Ties the event to its cause.
    pub correlation: Option<Uuid>,
    /// The event that caused it.
    pub causation: Option<Uuid>,
}

/// Applies `t` if the order is in one of `t.from`; returns the order after, or `None`
/// when it is not (then nothing changed). Writes the history row and the event.
pub async fn transition(
    db: &impl ConnectionTrait,
    id: Uuid,
    t: &Transition<'_>,
) -> Result<Option<OrderRow>, DbErr> {
    let from: Vec<String> = t.from.iter().map(|s| (*s).to_owned()).collect();
    let (code, window) = match &t.pickup {
        Some((code, hours)) => (Some(code.clone()), Some(*hours)),
        None => (None, None),
    };
    // The guard of "every transition once": the row is locked, its status read, and the
    // update is conditional on it still being one of `from`.
    let current = db
        .query_one_raw(stmt(
            "SELECT status FROM orders WHERE id = $1 FOR UPDATE",
            vec![id.into()],
        ))
        .await?;
    let Some(current) = current else {
        return Ok(None);
    };
    let previous: String = current.try_get("", "status")?;
    if !t.from.contains(&previous.as_str()) {
        return Ok(None);
    }
    let row = OrderRow::find_by_statement(stmt(
        "UPDATE orders o SET status = $2, updated_at = now(),
             reservation_id = coalesce($4, o.reservation_id),
             shortages = coalesce($5, o.shortages),
             pickup_code = coalesce($6, o.pickup_code),
             pickup_deadline = CASE WHEN $7::bigint IS NULL THEN o.pickup_deadline
                                    ELSE now() + make_interval(hours => $7::int) END,
             wrong_code_attempts = CASE WHEN $7::bigint IS NULL THEN o.wrong_code_attempts ELSE 0 END,
             cancel_reason = CASE WHEN $2 = 'cancelled' THEN $8 ELSE o.cancel_reason END
         WHERE o.id = $1 AND o.status = ANY ($3)
         RETURNING o.*",
        vec![
            id.into(),
            t.to.into(),
            from.into(),
            t.reservation_id.into(),
            t.shortages.clone().into(),
            code.into(),
            window.into(),
            t.reason.map(str::to_owned).into(),
        ],
    ))
    .one(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    history(db, id, Some(&previous), t.to, t.actor, t.reason).await?;
    publish_status(
        db,
        &row,
        status_event_type(t.to),
        t.correlation,
        t.causation,
    )
    .await?;
    Ok(Some(row))
}

/// The event type announcing `status`.
pub fn status_event_type(status: &str) -> &'static str {
    match status {
        "confirmed" => types::ORDER_CONFIRMED,
        "rejected" => types::ORDER_REJECTED,
        "picking" => types::ORDER_PICKING,
        "ready_for_pickup" => types::ORDER_READY_FOR_PICKUP,
        "collected" => types::ORDER_COLLECTED,
        "cancelled" => types::ORDER_CANCELLED,
        "expired" => types::ORDER_EXPIRED,
        _ => types::ORDER_PLACED,
    }
}

/// Writes an `orders.order.*` status event of `row` to the outbox.
pub async fn publish_status(
    db: &impl ConnectionTrait,
    row: &OrderRow,
    event_type: &str,
    correlation: Option<Uuid>,
    causation: Option<Uuid>,
) -> Result<(), DbErr> {
    let with_code = matches!(
        event_type,
        types::ORDER_READY_FOR_PICKUP | types::ORDER_PICKUP_REMINDER
    );
    let store_name = if with_code {
        store(db, &row.store_id).await?.map(|s| s.name)
    } else {
        None
    };
    let mut event = Envelope::new(
        event_type,
        SOURCE,
        OrderStatusChanged {
            order_id: row.id,
            customer_id: row.customer_id.clone(),
            store_id: row.store_id.clone(),
            status: row.status.clone(),
            locale: row.locale.clone(),
            pickup_code: row.pickup_code.clone().filter(|_| with_code),
            pickup_deadline: row.pickup_deadline.filter(|_| with_code),
            store_name,
        },
        correlation,
    );
    event.causation_id = causation;
    shared::outbox::enqueue(db, &aggregate(row.id), &event).await
}

/// Counts one wrong pickup code; returns the attempts so far.
pub async fn wrong_code(db: &impl ConnectionTrait, id: Uuid) -> Result<i32, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "UPDATE orders SET wrong_code_attempts = wrong_code_attempts + 1, updated_at = now()
             WHERE id = $1 RETURNING wrong_code_attempts",
            vec![id.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(id.to_string()))?;
    row.try_get("", "wrong_code_attempts")
}

/// Lifts the wrong-code lock of a ready order (staff override), recorded in its history.
pub async fn unlock_code(db: &impl ConnectionTrait, id: Uuid, actor: &str) -> Result<bool, DbErr> {
    let done = db
        .execute_raw(stmt(
            "UPDATE orders SET wrong_code_attempts = 0, updated_at = now()
             WHERE id = $1 AND status = 'ready_for_pickup'",
            vec![id.into()],
        ))
        .await?;
    if done.rows_affected() == 1 {
        history(
            db,
            id,
            Some("ready_for_pickup"),
            "ready_for_pickup",
            actor,
            Some("pickup code lock lifted"),
        )
        .await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Marks an order at risk (a POS sale left less on hand than it holds).
pub async fn mark_at_risk(db: &impl ConnectionTrait, id: Uuid) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE orders SET at_risk = true, updated_at = now() WHERE id = $1 AND NOT at_risk",
        vec![id.into()],
    ))
    .await
    .map(|_| ())
}

/// Expires one ready order past its deadline, if any is due and not taken by another
/// sweeper; its event and history commit with it.
pub async fn expire_one_due(db: &impl ConnectionTrait) -> Result<Option<OrderRow>, DbErr> {
    let due = db
        .query_one_raw(stmt(
            "SELECT id FROM orders WHERE status = 'ready_for_pickup' AND pickup_deadline <= now()
             ORDER BY pickup_deadline LIMIT 1 FOR UPDATE SKIP LOCKED",
            vec![],
        ))
        .await?;
    let Some(due) = due else {
        return Ok(None);
    };
    let id: Uuid = due.try_get("", "id")?;
    transition(
        db,
        id,
        &Transition {
            from: &["ready_for_pickup"],
            to: "expired",
            actor: "service:orders",
            reason: Some("not collected before the pickup deadline"),
            ..Default::default()
        },
    )
    .await
}

/// Sends the pickup reminder of one ready order whose deadline is within `before_secs`,
/// once (the reminder time is set in the same statement that picks it).
pub async fn remind_one_due(
    db: &impl ConnectionTrait,
    before_secs: i64,
) -> Result<Option<OrderRow>, DbErr> {
    let row = OrderRow::find_by_statement(stmt(
        "UPDATE orders SET reminder_sent_at = now() WHERE id = (
             SELECT id FROM orders
             WHERE status = 'ready_for_pickup' AND reminder_sent_at IS NULL
               AND pickup_deadline > now()
               AND pickup_deadline <= now() + make_interval(secs => $1)
             ORDER BY pickup_deadline LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING *",
        vec![before_secs.into()],
    ))
    .one(db)
    .await?;
    if let Some(row) = &row {
        publish_status(db, row, types::ORDER_PICKUP_REMINDER, None, None).await?;
    }
    Ok(row)
}
