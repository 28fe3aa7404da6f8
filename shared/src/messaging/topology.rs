//! Names and declarations of the exchanges and queues of `events.md`.

use super::BrokerError;
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// How many times a quorum queue hands out one message before dead-lettering it to the
/// service's parking queue: enough to ride out a short outage, few enough that a poison
/// message stops costing work quickly.
pub const DELIVERY_LIMIT: i64 = 5;

/// The broker objects of one deployment; `prefix` keeps tests (and side-by-side
/// environments) apart on one broker, and is empty in production.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Put in front of every exchange and queue name, e.g. `t1a2b3c4d5e6f.`.
    pub prefix: String,
}

impl Topology {
    /// The topology named with `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The durable topic exchange every event is published to (routing key = event type).
    pub fn events_exchange(&self) -> String {
        format!("{}clickcollect.events", self.prefix)
    }

    /// The durable direct exchange that receives dead-lettered messages.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}clickcollect.dlx", self.prefix)
    }

    /// The queue `service` consumes its events from.
    pub fn service_queue(&self, service: &str) -> String {
        format!("{}{service}.events", self.prefix)
    }

    /// Where messages `service` could not handle wait for a human.
    pub fn parking_queue(&self, service: &str) -> String {
        format!("{}{service}.parking", self.prefix)
    }

    /// The routing key under which `service`'s dead letters reach its parking queue.
    pub fn parking_routing_key(service: &str) -> String {
        format!("{service}.parking")
    }

    /// Declares both exchanges; declaring what already exists (same arguments) is a no-op.
    pub async fn declare_exchanges(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            // Only checking for existence would fail on a fresh broker; we create.
            passive: false,
            // Bindings and queues hang off these; they must outlive a broker restart.
            durable: true,
            // They have no consumers of their own; deleting them would drop every binding.
            auto_delete: false,
            // Publishers publish straight to the events exchange.
            internal: false,
            // We want the broker's answer so a mismatched declaration fails here, loudly.
            nowait: false,
        };
        channel
            .exchange_declare(
                name(&self.events_exchange())?,
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                name(&self.dead_letter_exchange())?,
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Declares `service`'s queue bound to `routing_keys` and its parking queue.
    ///
    /// Idempotent. Bindings are only ever added: a key dropped from `routing_keys` stays
    /// bound until someone unbinds it.
    pub async fn declare_service(
        &self,
        channel: &Channel,
        service: &str,
        routing_keys: &[&str],
    ) -> Result<(), BrokerError> {
        self.declare_exchanges(channel).await?;
        let durable_queue = QueueDeclareOptions {
            passive: false,
            // Quorum queues must be durable; messages survive a broker restart.
            durable: true,
            // Several replicas of the service compete on the same queue.
            exclusive: false,
            // The queue must keep collecting events while every replica is down.
            auto_delete: false,
            // A mismatched declaration must fail here rather than on a later call.
            nowait: false,
        };

        let parking = self.parking_queue(service);
        let mut parking_args = FieldTable::default();
        // Replicated and fsynced like the main queue: a parked message is kept, not lost.
        parking_args.insert("x-queue-type".into(), long("quorum"));
        channel
            .queue_declare(name(&parking)?, durable_queue, parking_args)
            .await?;
        channel
            .queue_bind(
                name(&parking)?,
                name(&self.dead_letter_exchange())?,
                name(&Self::parking_routing_key(service))?,
                QueueBindOptions { nowait: false },
                FieldTable::default(),
            )
            .await?;

        let queue = self.service_queue(service);
        let mut args = FieldTable::default();
        // Raft-replicated, and the only queue type with a delivery limit.
        args.insert("x-queue-type".into(), long("quorum"));
        // Rejected (requeue=false) and over-delivered messages go to the dead-letter exchange…
        args.insert(
            "x-dead-letter-exchange".into(),
            long(&self.dead_letter_exchange()),
        );
        // …under the key that routes them to this service's parking queue only.
        args.insert(
            "x-dead-letter-routing-key".into(),
            long(&Self::parking_routing_key(service)),
        );
        // Bounded redeliveries: a message that keeps failing is parked, the rest flow on.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        // The default (at-most-once) drops a dead letter if the parking queue does not
        // confirm it; at-least-once keeps it in this queue until parking has it.
        args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
        // At-least-once dead-lettering requires reject-publish overflow (no length limit is
        // set, so it only matters if one is added by policy).
        args.insert("x-overflow".into(), long("reject-publish"));
        channel
            .queue_declare(name(&queue)?, durable_queue, args)
            .await?;
        for key in routing_keys {
            channel
                .queue_bind(
                    name(&queue)?,
                    name(&self.events_exchange())?,
                    name(key)?,
                    // Wait for the broker: publishing right after must already be routed.
                    QueueBindOptions { nowait: false },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// An AMQP name, refused (rather than panicking) when longer than 255 bytes.
pub(crate) fn name(value: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(value).map_err(|_| BrokerError::InvalidName(value.to_owned()))
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::Topology;

    #[test]
    fn names_carry_the_prefix_and_the_service() {
        let topology = Topology::new("t1.");
        assert_eq!(topology.events_exchange(), "t1.clickcollect.events");
        assert_eq!(topology.dead_letter_exchange(), "t1.clickcollect.dlx");
        assert_eq!(topology.service_queue("orders"), "t1.orders.events");
        assert_eq!(topology.parking_queue("orders"), "t1.orders.parking");
        assert_eq!(Topology::parking_routing_key("orders"), "orders.parking");
        assert_eq!(Topology::default().events_exchange(), "clickcollect.events");
    }
}
