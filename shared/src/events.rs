//! The event envelope and every event type of `events.md`, shared by publishers and readers.
//!
//! A change that would break a reader bumps [`Envelope::version`]; readers check it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// The routing keys (event types) on `clickcollect.events`.
pub mod types {
    /// A store was created or changed.
    pub const STORE_UPSERTED: &str = "inventory.store.upserted";
    /// A stock level changed.
    pub const STOCK_CHANGED: &str = "inventory.stock.changed";
    /// A reservation for an order (or a checkout hold) is in place.
    pub const RESERVATION_CONFIRMED: &str = "inventory.reservation.confirmed";
    /// An order's reservation could not be made.
    pub const RESERVATION_REJECTED: &str = "inventory.reservation.rejected";
    /// A reservation was given back.
    pub const RESERVATION_RELEASED: &str = "inventory.reservation.released";
    /// A reservation ran past its expiry and returned its stock.
    pub const RESERVATION_EXPIRED: &str = "inventory.reservation.expired";
    /// A reservation's goods left the store.
    pub const RESERVATION_COMMITTED: &str = "inventory.reservation.committed";
    /// A POS sale left less on hand than is reserved.
    pub const RESERVATION_AT_RISK: &str = "inventory.reservation.at_risk";
    /// A click-and-collect order was placed.
    pub const ORDER_PLACED: &str = "orders.order.placed";
    /// Order confirmed (stock reserved).
    pub const ORDER_CONFIRMED: &str = "orders.order.confirmed";
    /// Order rejected (stock short).
    pub const ORDER_REJECTED: &str = "orders.order.rejected";
    /// Staff started picking.
    pub const ORDER_PICKING: &str = "orders.order.picking";
    /// Order is ready at the counter.
    pub const ORDER_READY_FOR_PICKUP: &str = "orders.order.ready_for_pickup";
    /// Order handed over.
    pub const ORDER_COLLECTED: &str = "orders.order.collected";
    /// Order cancelled by customer or staff.
    pub const ORDER_CANCELLED: &str = "orders.order.cancelled";
    /// Order not collected before its deadline.
    pub const ORDER_EXPIRED: &str = "orders.order.expired";
    /// The pickup deadline is near.
    pub const ORDER_PICKUP_REMINDER: &str = "orders.order.pickup_reminder";
    /// A push could not be delivered.
    pub const DELIVERY_FAILED: &str = "notifications.delivery.failed";
}

/// The current envelope version.
pub const ENVELOPE_VERSION: u32 = 1;

/// The message body of every event: metadata around a typed `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T = serde_json::Value> {
    /// Message id (UUID v7), also the AMQP `message_id`.
    pub id: Uuid,
    /// The event type, also the routing key.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version of `data`.
    pub version: u32,
    /// When the change happened.
    pub occurred_at: DateTime<Utc>,
    /// The service that published it.
    pub source: String,
    /// Ties together everything one user action caused.
    pub correlation_id: Uuid,
    /// The message that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// The event's own fields.
    pub data: T,
    /// The W3C `traceparent` of what caused it. Travels as the AMQP header of that name
    /// and beside the body in the outbox row, never inside the body.
    #[serde(default, skip_serializing)]
    pub traceparent: Option<String>,
}

impl<T: Serialize> Envelope<T> {
    /// A new envelope with a fresh id; `correlation_id` starts a new chain when `None`.
    pub fn new(event_type: &str, source: &str, data: T, correlation_id: Option<Uuid>) -> Self {
        let id = Uuid::now_v7();
        Self {
            id,
            event_type: event_type.to_owned(),
            version: ENVELOPE_VERSION,
            occurred_at: Utc::now(),
            source: source.to_owned(),
            correlation_id: correlation_id.unwrap_or(id),
            causation_id: None,
            data,
            // A span of the request or delivery being handled, when there is one.
            traceparent: crate::trace::current().map(|t| t.child().to_string()),
        }
    }

    /// The same envelope marked as caused by `cause` (same correlation).
    pub fn caused_by<U>(mut self, cause: &Envelope<U>) -> Self {
        self.correlation_id = cause.correlation_id;
        self.causation_id = Some(cause.id);
        self
    }

    /// The envelope with `data` turned into plain JSON, as stored in the outbox.
    pub fn into_json(self) -> Result<Envelope, serde_json::Error> {
        Ok(Envelope {
            id: self.id,
            event_type: self.event_type,
            version: self.version,
            occurred_at: self.occurred_at,
            source: self.source,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            data: serde_json::to_value(self.data)?,
            traceparent: self.traceparent,
        })
    }
}

impl Envelope {
    /// Reads `data` as the typed event `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

/// One SKU and quantity of a reservation or order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The retailer's SKU.
    pub sku: String,
    /// Units, positive.
    pub quantity: i64,
}

/// A line that could not be reserved, and by how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Shortage {
    /// The SKU that fell short.
    pub sku: String,
    /// Units asked for (all lines of this SKU together).
    pub requested: i64,
    /// Units available when asked.
    pub available: i64,
}

/// `inventory.store.upserted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreUpserted {
    /// The store's code.
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// WGS84 latitude.
    pub latitude: f64,
    /// WGS84 longitude.
    pub longitude: f64,
    /// IANA time zone.
    pub timezone: String,
    /// Whether online orders may be collected here.
    pub pickup_enabled: bool,
    /// Available at or under this is `low_stock`.
    pub low_stock_threshold: i64,
    /// Hours a ready order waits at the counter.
    pub pickup_window_hours: i64,
}

/// `inventory.stock.changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockChanged {
    /// The store.
    pub store_id: String,
    /// The SKU.
    pub sku: String,
    /// Physically in the store.
    pub on_hand: i64,
    /// Promised to active reservations.
    pub reserved: i64,
    /// Never offered online.
    pub safety_stock: i64,
    /// `max(0, on_hand - reserved - safety_stock)`.
    pub available: i64,
    /// `in_stock`, `low_stock` or `out_of_stock`.
    pub status: String,
    /// Grows with every change of this level; readers drop lower ones.
    pub revision: i64,
    /// When the level changed (added in a compatible way: absent in older events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// `inventory.reservation.confirmed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationConfirmed {
    /// The reservation.
    pub reservation_id: Uuid,
    /// The order it serves, when it serves one.
    pub order_id: Option<Uuid>,
    /// The store holding the goods.
    pub store_id: String,
    /// What is held.
    pub lines: Vec<Line>,
    /// When the hold lapses.
    pub expires_at: DateTime<Utc>,
}

/// `inventory.reservation.rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationRejected {
    /// The order that could not be reserved.
    pub order_id: Uuid,
    /// Its store.
    pub store_id: String,
    /// Which SKUs fell short and by how much.
    pub shortages: Vec<Shortage>,
}

/// `inventory.reservation.released`, `.expired` and `.committed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationEnded {
    /// The reservation.
    pub reservation_id: Uuid,
    /// The order it served, if any.
    pub order_id: Option<Uuid>,
    /// Its store.
    pub store_id: String,
    /// What it held.
    pub lines: Vec<Line>,
}

/// `inventory.reservation.at_risk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationAtRisk {
    /// The reservation whose goods may be gone.
    pub reservation_id: Uuid,
    /// The order it serves, if any.
    pub order_id: Option<Uuid>,
    /// Its store.
    pub store_id: String,
    /// The SKU that is short.
    pub sku: String,
    /// Units missing for this reservation.
    pub short_by: i64,
}

/// `orders.order.placed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: Uuid,
    /// Its customer (token `sub`).
    pub customer_id: String,
    /// The pickup store.
    pub store_id: String,
    /// What was ordered.
    pub lines: Vec<Line>,
    /// A checkout hold to adopt instead of reserving again.
    pub reservation_id: Option<Uuid>,
}

/// Every `orders.order.*` status event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStatusChanged {
    /// The order.
    pub order_id: Uuid,
    /// Its customer.
    pub customer_id: String,
    /// The pickup store.
    pub store_id: String,
    /// The status it moved to.
    pub status: String,
    /// The customer's language, e.g. `fr-FR`.
    pub locale: String,
    /// For ready and reminder: the code to show at the counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup_code: Option<String>,
    /// For ready and reminder: when the order is given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup_deadline: Option<DateTime<Utc>>,
    /// For ready and reminder: the store's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_name: Option<String>,
}

/// `notifications.delivery.failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryFailed {
    /// The order the push was about.
    pub order_id: Option<Uuid>,
    /// The device it was for.
    pub device_id: String,
    /// The event that caused the push.
    pub event_type: String,
    /// Why it gave up.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_serializes_with_the_field_names_of_events_md()
    -> Result<(), Box<dyn std::error::Error>> {
        let data = StockChanged {
            store_id: "S1".into(),
            sku: "SKU-1".into(),
            on_hand: 5,
            reserved: 2,
            safety_stock: 1,
            available: 2,
            status: "low_stock".into(),
            revision: 7,
            updated_at: None,
        };
        let mut envelope = Envelope::new(types::STOCK_CHANGED, "inventory", data, None);
        envelope.occurred_at = "2026-11-23T10:00:00Z".parse()?;
        let value = serde_json::to_value(&envelope)?;
        assert_eq!(
            value,
            json!({
                "id": envelope.id,
                "type": "inventory.stock.changed",
                "version": 1,
                "occurred_at": "2026-11-23T10:00:00Z",
                "source": "inventory",
                "correlation_id": envelope.id,
                "causation_id": null,
                "data": {"store_id": "S1", "sku": "SKU-1", "on_hand": 5, "reserved": 2,
                         "safety_stock": 1, "available": 2, "status": "low_stock", "revision": 7}
            })
        );
        Ok(())
    }

    #[test]
    fn a_caused_envelope_keeps_the_correlation_and_names_its_cause() {
        let first = Envelope::new(types::ORDER_PLACED, "orders", json!({}), None);
        let second = Envelope::new(types::RESERVATION_CONFIRMED, "inventory", json!({}), None)
            .caused_by(&first);
        assert_eq!(second.correlation_id, first.correlation_id);
        assert_eq!(second.causation_id, Some(first.id));
    }

    #[test]
    fn order_events_omit_pickup_fields_unless_ready() -> Result<(), Box<dyn std::error::Error>> {
        let event = OrderStatusChanged {
            order_id: Uuid::nil(),
            customer_id: "c1".into(),
            store_id: "S1".into(),
            status: "confirmed".into(),
            locale: "fr-FR".into(),
            pickup_code: None,
            pickup_deadline: None,
            store_name: None,
        };
        assert_eq!(
            serde_json::to_value(&event)?,
            json!({"order_id": Uuid::nil(), "customer_id": "c1", "store_id": "S1",
                   "status": "confirmed", "locale": "fr-FR"})
        );
        Ok(())
    }

    #[test]
    fn reservation_events_pin_their_json() -> Result<(), Box<dyn std::error::Error>> {
        let rejected = ReservationRejected {
            order_id: Uuid::nil(),
            store_id: "S1".into(),
            shortages: vec![Shortage {
                sku: "A".into(),
                requested: 3,
                available: 1,
            }],
        };
        assert_eq!(
            serde_json::to_value(&rejected)?,
            json!({"order_id": Uuid::nil(), "store_id": "S1",
                   "shortages": [{"sku": "A", "requested": 3, "available": 1}]})
        );
        let at_risk = ReservationAtRisk {
            reservation_id: Uuid::nil(),
            order_id: None,
            store_id: "S1".into(),
            sku: "A".into(),
            short_by: 2,
        };
        assert_eq!(
            serde_json::to_value(&at_risk)?,
            json!({"reservation_id": Uuid::nil(), "order_id": null, "store_id": "S1",
                   "sku": "A", "short_by": 2})
        );
        Ok(())
    }
}
