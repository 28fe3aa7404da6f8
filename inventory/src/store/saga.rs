//! The SQL of the order saga: the per-order lock, an order's reservation, tombstones,
//! hold adoption and the rejection event. Every call runs in the consumer's transaction.

use super::stmt;
use sea_orm::{ConnectionTrait, DbErr};
use shared::events::{Envelope, ReservationRejected, types};
use uuid::Uuid;

/// Namespace of the per-order advisory locks (the migration lock is a single bigint key,
/// so the two never meet).
const ORDER_LOCK_SPACE: i32 = 7_261_002;

/// Takes the order's transaction-scoped advisory lock: every handler of one order's events
/// runs after the others have committed, whichever replica holds them and in whatever
/// order they arrive. Two orders whose ids hash alike only wait for each other.
pub async fn lock_order(db: &impl ConnectionTrait, order_id: Uuid) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        vec![ORDER_LOCK_SPACE.into(), order_id.to_string().into()],
    ))
    .await
    .map(|_| ())
}

/// The reservation serving an order (at most one: `reservations_by_order`), with its status.
pub async fn reservation_of_order(
    db: &impl ConnectionTrait,
    order_id: Uuid,
) -> Result<Option<(Uuid, String)>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT id, status FROM reservations WHERE order_id = $1",
            vec![order_id.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get("", "id")?, r.try_get("", "status")?)))
        .transpose()
}

/// Why nothing may be reserved for an order any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEnd {
    /// Cancelled before its reservation was made.
    Cancelled,
    /// Expired before its reservation was made.
    Expired,
    /// Its reservation was refused.
    Rejected,
}

impl OrderEnd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Rejected => "rejected",
        }
    }
}

/// Records that an order ended (the first outcome stays).
pub async fn record_order_end(
    db: &impl ConnectionTrait,
    order_id: Uuid,
    end: OrderEnd,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "INSERT INTO ended_orders (order_id, outcome) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        vec![order_id.into(), end.as_str().into()],
    ))
    .await
    .map(|_| ())
}

/// How the order ended, if it did before being reserved (or was rejected).
pub async fn order_end(db: &impl ConnectionTrait, order_id: Uuid) -> Result<Option<String>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT outcome FROM ended_orders WHERE order_id = $1",
            vec![order_id.into()],
        ))
        .await?;
    row.map(|r| r.try_get("", "outcome")).transpose()
}

/// Whether a store exists and takes click-and-collect orders: `None` when unknown.
pub async fn pickup_enabled(
    db: &impl ConnectionTrait,
    store_id: &str,
) -> Result<Option<bool>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT pickup_enabled FROM stores WHERE store_id = $1",
            vec![store_id.into()],
        ))
        .await?;
    row.map(|r| r.try_get("", "pickup_enabled")).transpose()
}

/// A checkout hold to hand to an order (see `adopt_hold` in `saga.sql`).
#[derive(Debug, Clone)]
pub struct Adoption<'a> {
    /// The hold.
    pub hold_id: Uuid,
    /// The order taking it.
    pub order_id: Uuid,
    /// The order's store.
    pub store_id: &'a str,
    /// The order's customer identity (`customer:<id>`).
    pub owner: &'a str,
    /// The order's lines, merged per SKU and sorted.
    pub lines: &'a [(String, i64)],
    /// The order's hold duration.
    pub ttl_seconds: i64,
    /// Correlation of the order.
    pub correlation: Uuid,
    /// The `placed` message.
    pub causation: Uuid,
}

/// Adopts the hold when it qualifies (and publishes its confirmation); the reservation's
/// JSON, or `None` when it does not qualify.
pub async fn adopt_hold(
    db: &impl ConnectionTrait,
    a: &Adoption<'_>,
) -> Result<Option<serde_json::Value>, DbErr> {
    let skus: Vec<String> = a.lines.iter().map(|l| l.0.clone()).collect();
    let quantities: Vec<i64> = a.lines.iter().map(|l| l.1).collect();
    let row = db
        .query_one_raw(stmt(
            "SELECT adopt_hold($1, $2, $3, $4, $5, $6, $7, $8, $9) AS body",
            vec![
                a.hold_id.into(),
                a.order_id.into(),
                a.store_id.into(),
                a.owner.into(),
                skus.into(),
                quantities.into(),
                a.ttl_seconds.into(),
                a.correlation.into(),
                a.causation.into(),
            ],
        ))
        .await?;
    Ok(match row {
        Some(r) => r.try_get::<Option<serde_json::Value>>("", "body")?,
        None => None,
    })
}

/// Writes `inventory.reservation.rejected` to the outbox, caused by `cause`.
pub async fn enqueue_rejected(
    db: &impl ConnectionTrait,
    rejected: ReservationRejected,
    cause: &Envelope,
) -> Result<(), DbErr> {
    // There is no reservation to name: the order is the aggregate.
    let aggregate = format!("order:{}", rejected.order_id);
    let envelope =
        Envelope::new(types::RESERVATION_REJECTED, "inventory", rejected, None).caused_by(cause);
    shared::outbox::enqueue(db, &aggregate, &envelope).await
}
