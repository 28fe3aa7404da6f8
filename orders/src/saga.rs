//! The orders half of the saga: inventory's answers move orders, and its store events keep
//! the orders service's copy of the stores.
//!
//! - `inventory.reservation.confirmed` (naming an order): pending → confirmed.
//! - `inventory.reservation.rejected`: pending → rejected, with the shortages.
//! - `inventory.reservation.expired` or `.released` of an order still holding stock
//!   (confirmed, picking, ready): the order is **cancelled** with the reason
//!   `reservation_expired` / `reservation_released`, because without its reservation its
//!   goods may be sold to someone else. Inventory gives order reservations a long hold
//!   (`ORDER_HOLD_SECONDS`, 14 days by default) so this happens only to forgotten orders;
//!   for an order already over the event is the echo of our own cancel and changes nothing.
//! - `inventory.reservation.at_risk`: the order is flagged, for staff to act.
//! - `inventory.store.upserted`: the store copy is upserted.
//!
//! Each runs in the consumer's transaction with its inbox row; a stale answer (the order
//! already moved on) changes nothing, like a repeated one.

use crate::domain::HOLDING;
use crate::store::{self, Transition};
use sea_orm::DatabaseTransaction;
use shared::events::{
    ENVELOPE_VERSION, Envelope, ReservationAtRisk, ReservationConfirmed, ReservationEnded,
    ReservationRejected, StoreUpserted, types,
};
use shared::messaging::{EventHandler, HandlerError};

/// The actor of transitions inventory caused.
const INVENTORY_ACTOR: &str = "service:inventory";

/// Applies inventory's events to orders.
#[derive(Debug, Clone, Default)]
pub struct InventoryAnswers;

impl EventHandler for InventoryAnswers {
    async fn handle(
        &self,
        event: &Envelope,
        txn: &DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        if event.version != ENVELOPE_VERSION {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "unknown version {} of {}",
                event.version,
                event.event_type
            )));
        }
        let cause = |from: &'static [&'static str], to: &'static str| Transition {
            from,
            to,
            actor: INVENTORY_ACTOR,
            correlation: Some(event.correlation_id),
            causation: Some(event.id),
            ..Default::default()
        };
        match event.event_type.as_str() {
            types::STORE_UPSERTED => {
                let s: StoreUpserted = event.data_as()?;
                store::upsert_store(txn, &s).await?;
            }
            types::RESERVATION_CONFIRMED => {
                let r: ReservationConfirmed = event.data_as()?;
                let Some(order_id) = r.order_id else {
                    return Ok(());
                };
                let t = Transition {
                    reservation_id: Some(r.reservation_id),
                    ..cause(&["pending"], "confirmed")
                };
                if store::transition(txn, order_id, &t).await?.is_none() {
                    tracing::info!(%order_id, "reservation confirmed for an order no longer pending");
                }
            }
            types::RESERVATION_REJECTED => {
                let r: ReservationRejected = event.data_as()?;
                let t = Transition {
                    shortages: Some(serde_json::to_value(&r.shortages)?),
                    ..cause(&["pending"], "rejected")
                };
                if store::transition(txn, r.order_id, &t).await?.is_none() {
                    tracing::info!(order_id = %r.order_id, "rejection for an order no longer pending");
                }
            }
            types::RESERVATION_EXPIRED | types::RESERVATION_RELEASED => {
                let r: ReservationEnded = event.data_as()?;
                let Some(order_id) = r.order_id else {
                    return Ok(());
                };
                let reason = if event.event_type == types::RESERVATION_EXPIRED {
                    "reservation_expired"
                } else {
                    "reservation_released"
                };
                let t = Transition {
                    reason: Some(reason),
                    ..cause(&HOLDING, "cancelled")
                };
                if store::transition(txn, order_id, &t).await?.is_some() {
                    tracing::warn!(%order_id, reason, "order cancelled: its reservation ended in inventory");
                }
            }
            types::RESERVATION_AT_RISK => {
                let r: ReservationAtRisk = event.data_as()?;
                if let Some(order_id) = r.order_id {
                    store::mark_at_risk(txn, order_id).await?;
                    tracing::warn!(%order_id, sku = %r.sku, short_by = r.short_by, "order at risk");
                }
            }
            types::DELIVERY_FAILED => {
                tracing::info!(data = %event.data, "a customer could not be notified");
            }
            _ => {
                // Committed reservations and unknown types need nothing here.
            }
        }
        Ok(())
    }
}
