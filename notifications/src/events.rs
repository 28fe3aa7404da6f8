//! The consumer of what others publish: order events become deliveries, stock changes
//! fire back-in-stock alerts, store events keep names for the messages.
//!
//! Each handler runs in the consumer's transaction, after the inbox row: the deliveries
//! are committed (or not) together with the message id, and nothing is sent from here;
//! the [`crate::worker`] sends after the commit.

use crate::domain::ORDER_EVENTS;
use crate::store;
use sea_orm::DatabaseTransaction;
use shared::events::{Envelope, OrderStatusChanged, StockChanged, StoreUpserted, types};
use shared::messaging::{EventHandler, HandlerError};

/// The routing keys consumed: those bound to the notifications queue in
/// `shared::messaging::BINDINGS`.
pub const CONSUMED_EVENTS: &[&str] = &[
    types::STORE_UPSERTED,
    types::STOCK_CHANGED,
    "orders.order.*",
];

/// Applies order, stock and store events.
pub struct Handler;

impl EventHandler for Handler {
    async fn handle(
        &self,
        event: &Envelope,
        txn: &DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            types::STOCK_CHANGED => {
                let change: StockChanged = event.data_as()?;
                let fired = store::on_stock_changed(txn, &change).await?;
                if fired.alerts > 0 {
                    tracing::info!(
                        store_id = %change.store_id, sku = %change.sku, revision = change.revision,
                        alerts = fired.alerts, deliveries = fired.deliveries,
                        "back-in-stock alerts fired"
                    );
                } else if fired.stale {
                    tracing::debug!(store_id = %change.store_id, sku = %change.sku,
                        revision = change.revision, "stale stock change ignored");
                }
            }
            types::STORE_UPSERTED => {
                store::upsert_store(txn, &event.data_as::<StoreUpserted>()?).await?;
            }
            other => {
                let Some(short) = other
                    .strip_prefix("orders.order.")
                    .filter(|s| ORDER_EVENTS.contains(s))
                else {
                    // placed, picking, collected: nothing the customer needs pushed.
                    return Ok(());
                };
                let change: OrderStatusChanged = event.data_as()?;
                let queued = store::enqueue_order_event(txn, event, &change, short).await?;
                tracing::debug!(order_id = %change.order_id, event = short, queued, "deliveries written");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_consumer_takes_exactly_the_keys_bound_to_the_notifications_queue() {
        assert_eq!(
            super::CONSUMED_EVENTS,
            shared::messaging::bindings_of("notifications")
        );
    }
}
