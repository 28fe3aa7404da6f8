//! Fan-out subscriptions: every process gets every matching event, for caches and live
//! streams (not for effects: those go through a service queue and the inbox).

use super::{Broker, BrokerError, topology::name};
use crate::events::Envelope;
use futures::StreamExt;
use lapin::{
    Channel,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

/// A server-named, exclusive, auto-deleted queue of this process bound to some event types.
///
/// It lives and dies with its connection: when [`Subscription::next`] returns `None`,
/// events may have been missed, and whoever built state from them must start over.
pub struct Subscription {
    consumer: lapin::Consumer,
    // Kept open for as long as the subscription is read.
    _channel: Channel,
}

impl Subscription {
    /// Declares the queue, binds it to `routing_keys` on the events exchange, and consumes.
    pub async fn open(broker: &Broker, routing_keys: &[&str]) -> Result<Self, BrokerError> {
        let channel = broker.channel().await?;
        let exchange = broker.topology().events_exchange();
        let queue = channel
            .queue_declare(
                // Empty: the broker names it, unique to this process.
                "".into(),
                QueueDeclareOptions {
                    // Only this connection reads it; it goes away with the connection, so a
                    // crashed replica leaves nothing behind to fill up.
                    exclusive: true,
                    auto_delete: true,
                    durable: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for key in routing_keys {
            channel
                .queue_bind(
                    queue.name().clone(),
                    name(&exchange)?,
                    name(key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    // A cache has nothing to redo: losing the queue is handled by starting over.
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            consumer,
            _channel: channel,
        })
    }

    /// The next event; `None` when the subscription ended (connection or channel lost).
    /// Unreadable messages are logged and skipped.
    pub async fn next(&mut self) -> Option<Envelope> {
        self.next_as(|_| true).await.map(|(_, envelope)| envelope)
    }

    /// The next event whose type `wanted` accepts, with its `data` read straight into
    /// `T` (no intermediate JSON tree: caches that follow busy streams parse thousands a
    /// second); the type comes from the AMQP `type` property. `None` when the subscription
    /// ended; unreadable messages are logged and skipped.
    pub async fn next_as<T: serde::de::DeserializeOwned>(
        &mut self,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<(String, Envelope<T>)> {
        loop {
            match self.consumer.next().await? {
                Ok(delivery) => {
                    let event_type = delivery
                        .properties
                        .kind()
                        .as_ref()
                        .map(|kind| kind.to_string())
                        .unwrap_or_else(|| delivery.routing_key.to_string());
                    if !wanted(&event_type) {
                        continue;
                    }
                    match serde_json::from_slice::<Envelope<T>>(&delivery.data) {
                        Ok(envelope) => return Some((event_type, envelope)),
                        Err(err) => {
                            tracing::warn!(error = %err, %event_type, "unreadable event on a subscription");
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "subscription ended");
                    return None;
                }
            }
        }
    }
}
