//! The inventory half of the click-and-collect order saga: `orders.order.placed` becomes a
//! reservation (confirmed) or a refusal (rejected); `collected` commits the order's
//! reservation, `cancelled` and `expired` release it.
//!
//! Each event is handled in the consumer's transaction (its inbox row already written in
//! it), so a redelivered message has one effect, and the events published through the
//! outbox commit with the change. Two replicas compete on the queue, so one order's events
//! may be handled at the same time or out of order; every handler therefore first takes a
//! transaction-scoped advisory lock on the order id, and:
//! - an order gets at most one reservation (checked under the lock, and guarded by the
//!   unique index `reservations_by_order`), so a second `placed` envelope for an order
//!   changes and publishes nothing;
//! - a `cancelled` or `expired` that finds no reservation for its order leaves a tombstone
//!   (`ended_orders`); a later `placed` of that order reserves nothing and publishes
//!   nothing (the order is already over in the orders service: a `rejected` there would
//!   be one more illegal transition to refuse). A rejected order is recorded the same way,
//!   so a duplicate `placed` can't confirm an order the orders service has rejected;
//! - a `collected` without an active reservation changes nothing and is logged at warn.
//!
//! The availability view learns of these changes like of another replica's: every level
//! change publishes `inventory.stock.changed`, which the view follows by revision. The
//! consumer commits after the handler returns and offers no after-commit hook, so the
//! levels cannot be applied locally at commit the way the HTTP handlers do (applying them
//! before the commit could show a change that then rolls back).

use crate::domain;
use crate::store::saga::{self as sql, Adoption, OrderEnd};
use crate::store::{self, Ending, ReserveCall};
use anyhow::anyhow;
use sea_orm::DatabaseTransaction;
use serde::Deserialize;
use shared::events::{
    ENVELOPE_VERSION, Envelope, OrderPlaced, ReservationRejected, Shortage, types,
};
use shared::messaging::{EventHandler, HandlerError};
use uuid::Uuid;

/// The ledger's actor for changes the orders service asked for.
const ORDERS_ACTOR: &str = "service:orders";

/// The channel of a reservation made for an order.
const ORDER_CHANNEL: &str = "order";

/// Applies the orders service's events to reservations.
#[derive(Debug, Clone)]
pub struct OrderSaga {
    /// How long an order's reservation holds (`ORDER_HOLD_SECONDS`).
    hold_seconds: i64,
}

/// What inventory reads of the `orders.order.*` status events: only the order (a tolerant
/// reader; the rest of `OrderStatusChanged` is for the customer's messages).
#[derive(Debug, Deserialize)]
struct OrderRef {
    /// The order.
    order_id: Uuid,
}

impl OrderSaga {
    /// A saga handler giving order reservations `hold_seconds` to live.
    pub fn new(hold_seconds: i64) -> Self {
        Self { hold_seconds }
    }

    /// `orders.order.placed`: reserve the order's lines (or adopt its checkout hold), or
    /// reject it.
    ///
    /// Adoption: when the order names a checkout hold (`reservation_id`) that is active and
    /// in time, at the order's store, owned by the order's customer (`customer:<id>`),
    /// serving no order yet, and holding exactly the order's lines (merged per SKU), that
    /// hold becomes the order's reservation: its `order_id` is set, its channel and
    /// reference stay, its expiry moves to at least now + `ORDER_HOLD_SECONDS`, and
    /// `inventory.reservation.confirmed` names it. Any other hold (unknown, ended, expired,
    /// another customer's or store's, other lines, already adopted) is left alone and the
    /// order is reserved afresh; the site's hold then lapses or is released by the site.
    async fn placed(
        &self,
        event: &Envelope,
        txn: &DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        let order: OrderPlaced = event.data_as()?;
        let order_id = order.order_id;
        sql::lock_order(txn, order_id).await?;
        if let Some((reservation_id, status)) = sql::reservation_of_order(txn, order_id).await? {
            tracing::info!(%order_id, %reservation_id, %status, "order already has its reservation; nothing to do");
            return Ok(());
        }
        if let Some(outcome) = sql::order_end(txn, order_id).await? {
            tracing::info!(%order_id, %outcome, "order ended before it was reserved; reserving nothing");
            return Ok(());
        }

        let raw: Vec<(String, i64)> = order
            .lines
            .iter()
            .map(|l| (l.sku.clone(), l.quantity))
            .collect();
        let lines = domain::merge_lines(raw.iter().cloned());
        if let Some(problem) = domain::order_lines_problem(&raw) {
            tracing::warn!(%order_id, %problem, "order lines are invalid; rejecting the order");
            return reject(txn, event, &order, none_available(&lines)).await;
        }
        match sql::pickup_enabled(txn, &order.store_id).await? {
            Some(true) => {}
            found => {
                tracing::warn!(%order_id, store_id = %order.store_id, known = found.is_some(),
                    "the store is unknown or takes no pickup orders; rejecting the order");
                return reject(txn, event, &order, none_available(&lines)).await;
            }
        }

        let owner = format!("customer:{}", order.customer_id);
        if let Some(hold_id) = order.reservation_id {
            let adoption = Adoption {
                hold_id,
                order_id,
                store_id: &order.store_id,
                owner: &owner,
                lines: &lines,
                ttl_seconds: self.hold_seconds,
                correlation: event.correlation_id,
                causation: event.id,
            };
            if sql::adopt_hold(txn, &adoption).await?.is_some() {
                shared::outbox::wake_local_relays();
                tracing::info!(%order_id, reservation_id = %hold_id, "order adopted its checkout hold");
                return Ok(());
            }
            tracing::info!(%order_id, reservation_id = %hold_id,
                "the checkout hold does not match the order; reserving afresh");
        }

        let call = ReserveCall {
            id: Uuid::now_v7(),
            store_id: order.store_id.clone(),
            lines,
            channel: ORDER_CHANNEL.to_owned(),
            reference: order_id.to_string(),
            owner,
            order_id: Some(order_id),
            ttl_seconds: self.hold_seconds,
            correlation: event.correlation_id,
            causation: Some(event.id),
            idempotency: None,
        };
        // Publishes `inventory.reservation.confirmed` itself when created.
        let answer = store::reserve(txn, &call).await?;
        match answer.outcome.as_str() {
            "created" => {
                shared::outbox::wake_local_relays();
                tracing::info!(%order_id, reservation_id = %call.id, "order reserved");
                Ok(())
            }
            "short" => {
                let shortages: Vec<Shortage> =
                    serde_json::from_str(answer.body.as_deref().unwrap_or("[]")).map_err(|e| {
                        HandlerError::transient(anyhow!("unreadable shortages from reserve: {e}"))
                    })?;
                tracing::info!(%order_id, short_lines = shortages.len(), "order short of stock; rejecting it");
                reject(txn, event, &order, shortages).await
            }
            other => Err(HandlerError::transient(anyhow!(
                "reserve answered {other} without an idempotency key"
            ))),
        }
    }

    /// `collected`, `cancelled`, `expired`: end the order's reservation as `ending`; with
    /// no reservation yet, a cancellation or expiry leaves the tombstone `end`.
    async fn ended(
        &self,
        event: &Envelope,
        txn: &DatabaseTransaction,
        ending: Ending,
        tombstone: Option<OrderEnd>,
    ) -> Result<(), HandlerError> {
        let OrderRef { order_id } = event.data_as()?;
        sql::lock_order(txn, order_id).await?;
        let Some((reservation_id, status)) = sql::reservation_of_order(txn, order_id).await? else {
            match tombstone {
                Some(end) => {
                    sql::record_order_end(txn, order_id, end).await?;
                    tracing::info!(%order_id, event_type = %event.event_type,
                        "order ended before its reservation; a later placed will reserve nothing");
                }
                None => {
                    tracing::warn!(%order_id, "order collected but it has no reservation; nothing to commit");
                }
            }
            return Ok(());
        };
        if status == "active" {
            let ended = store::end_reservation(
                txn,
                reservation_id,
                ending,
                ORDERS_ACTOR,
                event.correlation_id,
                Some(event.id),
            )
            .await?;
            if ended.is_some() {
                shared::outbox::wake_local_relays();
                tracing::info!(%order_id, %reservation_id, event_type = %event.event_type,
                    "order's reservation ended");
                return Ok(());
            }
        }
        // Already ended (by the sweeper, say), or ended under us: its event is out already.
        if ending == Ending::Committed {
            tracing::warn!(%order_id, %reservation_id, %status,
                "order collected but its reservation is not active; nothing to commit");
        } else {
            tracing::info!(%order_id, %reservation_id, %status, "order's reservation already ended");
        }
        Ok(())
    }
}

/// Every line short with nothing available (an unknown store, a store without pickup,
/// lines that can't be reserved as sent).
fn none_available(lines: &[(String, i64)]) -> Vec<Shortage> {
    lines
        .iter()
        .map(|(sku, requested)| Shortage {
            sku: sku.clone(),
            requested: *requested,
            available: 0,
        })
        .collect()
}

/// Publishes `inventory.reservation.rejected` and remembers that the order was rejected.
async fn reject(
    txn: &DatabaseTransaction,
    event: &Envelope,
    order: &OrderPlaced,
    shortages: Vec<Shortage>,
) -> Result<(), HandlerError> {
    let rejected = ReservationRejected {
        order_id: order.order_id,
        store_id: order.store_id.clone(),
        shortages,
    };
    sql::enqueue_rejected(txn, rejected, event).await?;
    sql::record_order_end(txn, order.order_id, OrderEnd::Rejected).await?;
    Ok(())
}

impl EventHandler for OrderSaga {
    async fn handle(
        &self,
        event: &Envelope,
        txn: &DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        if event.version != ENVELOPE_VERSION {
            return Err(HandlerError::permanent(anyhow!(
                "envelope version {} is not {ENVELOPE_VERSION}",
                event.version
            )));
        }
        match event.event_type.as_str() {
            types::ORDER_PLACED => self.placed(event, txn).await,
            types::ORDER_COLLECTED => self.ended(event, txn, Ending::Committed, None).await,
            types::ORDER_CANCELLED => {
                self.ended(event, txn, Ending::Released, Some(OrderEnd::Cancelled))
                    .await
            }
            types::ORDER_EXPIRED => {
                self.ended(event, txn, Ending::Released, Some(OrderEnd::Expired))
                    .await
            }
            other => {
                // Bound by mistake: nothing to do, and nothing a retry would change.
                tracing::warn!(event_type = %other, "event type not consumed by inventory; ignored");
                Ok(())
            }
        }
    }
}
