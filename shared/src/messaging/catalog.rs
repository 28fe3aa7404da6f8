//! Which service's queue is bound to which event types: the whole topology of events.md.
//!
//! Every service declares all of it at start, so that an event is queued for its reader
//! even before that reader first starts, and so that every event type published is
//! routable (a mandatory publish of an unroutable event is refused, never dropped).

use super::{Broker, BrokerError};
use crate::events::types;

/// `(service, routing keys)` for every consuming service.
pub const BINDINGS: &[(&str, &[&str])] = &[
    (
        "inventory",
        &[
            types::ORDER_PLACED,
            types::ORDER_COLLECTED,
            types::ORDER_CANCELLED,
            types::ORDER_EXPIRED,
        ],
    ),
    (
        "orders",
        &[
            types::STORE_UPSERTED,
            "inventory.reservation.*",
            types::DELIVERY_FAILED,
        ],
    ),
    (
        "notifications",
        &[
            types::STORE_UPSERTED,
            types::STOCK_CHANGED,
            "orders.order.*",
        ],
    ),
];

/// The routing keys `service` consumes.
pub fn bindings_of(service: &str) -> &'static [&'static str] {
    BINDINGS
        .iter()
        .find(|(s, _)| *s == service)
        .map_or(&[], |(_, keys)| keys)
}

/// Declares the exchanges and every service's queues with their bindings (idempotent).
pub async fn declare_all(broker: &Broker) -> Result<(), BrokerError> {
    for (service, keys) in BINDINGS {
        broker.declare_service(service, keys).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(key: &str) -> bool {
        BINDINGS.iter().any(|(_, keys)| {
            keys.iter().any(|k| {
                *k == key
                    || (k.ends_with(".*")
                        && key.rsplit_once('.').map(|(p, _)| p) == Some(&k[..k.len() - 2]))
            })
        })
    }

    #[test]
    fn every_event_type_published_has_a_queue_bound_to_it() {
        for key in [
            types::STORE_UPSERTED,
            types::STOCK_CHANGED,
            types::RESERVATION_CONFIRMED,
            types::RESERVATION_REJECTED,
            types::RESERVATION_RELEASED,
            types::RESERVATION_EXPIRED,
            types::RESERVATION_COMMITTED,
            types::RESERVATION_AT_RISK,
            types::ORDER_PLACED,
            types::ORDER_CONFIRMED,
            types::ORDER_REJECTED,
            types::ORDER_PICKING,
            types::ORDER_READY_FOR_PICKUP,
            types::ORDER_COLLECTED,
            types::ORDER_CANCELLED,
            types::ORDER_EXPIRED,
            types::ORDER_PICKUP_REMINDER,
            types::DELIVERY_FAILED,
        ] {
            assert!(routed(key), "{key} is bound to no queue");
        }
    }
}
