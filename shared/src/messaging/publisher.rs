//! Publishing envelopes with publisher confirms, one at a time or pipelined; envelopes
//! already encoded (the outbox relay's) go out as they are.

use super::{Broker, BrokerError, topology::name};
use crate::events::Envelope;
use futures::future::{MaybeDone, maybe_done};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use std::{collections::HashMap, pin::Pin, sync::Arc, task::Poll, time::Duration};
use tokio::sync::Mutex;

/// How long a batch may wait for the broker's confirms before we give up on them.
const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishes handed to the connection at once (see [`in_order`]).
const SEND_WINDOW: usize = 256;
/// `delivery_mode` 2: written to disk (quorum queues persist regardless; classic ones
/// bound by a policy later would not without it).
const PERSISTENT: u8 = 2;

/// Why an envelope was not published. In every case the message must be treated as not
/// sent (it may still have reached the broker when the outcome is unknown: at least once).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No queue is bound to the routing key: the broker returned the mandatory message.
    #[error("no queue is bound to {routing_key:?}: returned with {reply_code} {reply_text}")]
    Unroutable {
        /// The event type nobody is bound to.
        routing_key: String,
        /// AMQP reply code, 312 (`NO_ROUTE`).
        reply_code: u16,
        /// The broker's explanation.
        reply_text: String,
    },
    /// The broker refused to take responsibility for the message.
    #[error("the broker nacked the message")]
    Nacked,
    /// The broker did not confirm in time; the channel was dropped.
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    /// The channel was not in confirm mode, so the broker promised nothing.
    #[error("the broker was not asked to confirm")]
    NotConfirmed,
    /// Not sent because an earlier message of the same batch broke the channel.
    #[error("not sent: the channel failed earlier in the batch")]
    NotSent,
    /// The envelope cannot be expressed as an AMQP message (e.g. a type over 255 bytes).
    #[error("cannot encode the message: {0}")]
    Encode(String),
    /// No connection or channel (outage, reconnect in progress).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<lapin::Error> for PublishError {
    fn from(err: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(err))
    }
}

/// Publishes envelopes to the events exchange, `mandatory`, and waits for confirms.
///
/// Cheap to clone; clones share one confirm-mode channel, reopened after a failure.
/// Batches on one publisher run one after the other: a returned message is told apart
/// by its `message_id` within its batch, which two interleaved batches would confuse.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// Shared by the clones.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where channels come from.
    broker: Broker,
    /// The confirm-mode channel; `None` until first use and after a failure. The lock is
    /// held for a whole batch.
    channel: Mutex<Option<Channel>>,
    /// How long a batch may wait for its confirms.
    confirm_timeout: Duration,
}

impl Publisher {
    /// A publisher on `broker`'s connection; the channel opens on first use.
    pub fn new(broker: Broker) -> Self {
        Self::with_confirm_timeout(broker, DEFAULT_CONFIRM_TIMEOUT)
    }

    /// [`Publisher::new`] with another limit on waiting for confirms.
    pub fn with_confirm_timeout(broker: Broker, confirm_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                channel: Mutex::new(None),
                confirm_timeout,
            }),
        }
    }

    /// The broker handle this publisher uses.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// Publishes one envelope; `Ok` only on a broker ack with no `basic.return`.
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        self.publish_batch(std::slice::from_ref(envelope))
            .await
            .pop()
            .unwrap_or(Err(PublishError::NotSent))
    }

    /// Sends every envelope, then awaits all confirms (pipelining: the broker confirms
    /// one message at a time far slower than many in flight). One result per envelope,
    /// in order; `Ok` only on an ack with no `basic.return`.
    pub async fn publish_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let mut encoded = Vec::with_capacity(envelopes.len());
        let mut unencodable = Vec::new();
        for (index, envelope) in envelopes.iter().enumerate() {
            match RawMessage::from_envelope(envelope) {
                Ok(message) => encoded.push(message),
                Err(err) => unencodable.push((index, err)),
            }
        }
        let mut results = self.publish_raw_batch(encoded).await;
        // In ascending order, each lands at its envelope's position.
        for (index, err) in unencodable {
            results.insert(index, Err(err));
        }
        results
    }

    /// [`Publisher::publish_batch`] for messages encoded already: one result per message,
    /// in order. Taken by value: their strings move into the AMQP properties instead of
    /// being copied.
    pub async fn publish_raw_batch(
        &self,
        mut messages: Vec<RawMessage>,
    ) -> Vec<Result<(), PublishError>> {
        if messages.is_empty() {
            return Vec::new();
        }
        let mut slot = self.inner.channel.lock().await;
        let channel = match self.usable_channel(&mut slot).await {
            Ok(channel) => channel,
            Err(err) => return vec![Err(err); messages.len()],
        };
        let exchange = match name(&self.inner.broker.topology().events_exchange()) {
            Ok(exchange) => exchange,
            Err(err) => return vec![Err(err.into()); messages.len()],
        };

        let timeout = self.inner.confirm_timeout;
        // One deadline for sending and confirming: a blocked connection (broker memory or
        // disk alarm) stalls the sends themselves.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut results: Vec<Result<(), PublishError>> =
            vec![Err(PublishError::NotSent); messages.len()];
        let mut in_flight = Vec::with_capacity(messages.len());
        let mut channel_failed = false;
        let mut timed_out = false;
        let mut encoded = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter_mut().enumerate() {
            match message.take_properties() {
                Ok((routing_key, properties)) => encoded.push((index, routing_key, properties)),
                Err(err) => results[index] = Err(err),
            }
        }
        let options = BasicPublishOptions {
            // Unroutable messages come back as basic.return instead of vanishing.
            mandatory: true,
            // RabbitMQ does not implement `immediate` (it closes the connection).
            immediate: false,
        };
        let mut encoded = encoded.into_iter();
        while !(channel_failed || timed_out) {
            let window: Vec<_> = encoded.by_ref().take(SEND_WINDOW).collect();
            if window.is_empty() {
                break;
            }
            let indices: Vec<usize> = window.iter().map(|(index, _, _)| *index).collect();
            let sends = window.into_iter().map(|(index, routing_key, properties)| {
                channel.basic_publish(
                    exchange.clone(),
                    routing_key,
                    options,
                    &messages[index].body,
                    properties,
                )
            });
            let Ok(sent) = tokio::time::timeout_at(deadline, in_order(sends)).await else {
                for index in indices {
                    results[index] = Err(PublishError::Timeout(timeout));
                }
                timed_out = true;
                break;
            };
            for (index, sent) in indices.into_iter().zip(sent) {
                match sent {
                    Some(Ok(confirm)) => in_flight.push((index, confirm)),
                    Some(Err(err)) => {
                        results[index] = Err(err.into());
                        channel_failed = true;
                    }
                    None => channel_failed = true,
                }
            }
        }

        let indices: Vec<usize> = in_flight.iter().map(|(index, _)| *index).collect();
        let confirms = tokio::time::timeout_at(
            deadline,
            futures::future::join_all(in_flight.into_iter().map(|(_, confirm)| confirm)),
        )
        .await;
        let confirms = match confirms {
            Ok(confirms) if !timed_out => Some(confirms),
            _ => None,
        };
        let Some(confirms) = confirms else {
            tracing::warn!(
                ?timeout,
                "no confirms from the broker; dropping the channel"
            );
            for index in indices {
                results[index] = Err(PublishError::Timeout(timeout));
            }
            // Late confirms of this batch must not be mistaken for a later batch's.
            super::broker::close_quietly(&channel).await;
            *slot = None;
            return results;
        };

        // lapin hands each returned message to whichever confirm comes next, and a
        // `multiple` ack can settle several tags at once: attribute returns by message id,
        // never by position.
        let mut returned: HashMap<String, (u16, String)> = HashMap::new();
        let mut unattributed_return = false;
        let mut outcomes = Vec::with_capacity(indices.len());
        for confirm in confirms {
            match confirm {
                Ok(confirmation) => {
                    let acked = confirmation.is_ack();
                    let requested = !matches!(confirmation, Confirmation::NotRequested);
                    if let Some(message) = confirmation.take_message() {
                        match message.properties.message_id() {
                            Some(id) => {
                                returned.insert(
                                    id.to_string(),
                                    (message.reply_code, message.reply_text.to_string()),
                                );
                            }
                            None => unattributed_return = true,
                        }
                    }
                    outcomes.push(match (requested, acked) {
                        (true, true) => Ok(()),
                        (true, false) => Err(PublishError::Nacked),
                        // Cannot happen (confirm_select ran on this channel); never
                        // count an unconfirmed message as published.
                        (false, _) => Err(PublishError::NotConfirmed),
                    });
                }
                Err(err) => {
                    channel_failed = true;
                    outcomes.push(Err(err.into()));
                }
            }
        }
        if unattributed_return {
            tracing::error!("a returned message carries no message id; failing the whole batch");
        }
        for (index, outcome) in indices.into_iter().zip(outcomes) {
            let message = &messages[index];
            results[index] = match outcome {
                Ok(()) if unattributed_return => Err(PublishError::NotSent),
                Ok(()) => match returned.get(message.message_id.as_str()) {
                    Some((reply_code, reply_text)) => Err(PublishError::Unroutable {
                        routing_key: message.event_type.clone(),
                        reply_code: *reply_code,
                        reply_text: reply_text.clone(),
                    }),
                    None => Ok(()),
                },
                Err(err) => Err(err),
            };
        }
        if channel_failed {
            *slot = None;
        }
        results
    }

    /// The stored channel when it is still open, else a new one in confirm mode.
    async fn usable_channel(&self, slot: &mut Option<Channel>) -> Result<Channel, PublishError> {
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let channel = self.inner.broker.channel().await?;
        // Confirms are what "published" means here; `nowait: false` so we know they are on
        // before the first message goes out.
        channel
            .confirm_select(ConfirmSelectOptions { nowait: false })
            .await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }
}

/// Drives `sends` to completion, polling them in order; `None` for one that did not finish
/// (cannot happen). A publish queues its frames on its first poll, so they go out in this
/// order, and the connection's IO thread writes many per wakeup: awaiting each publish in
/// turn cost two thread switches per message, most of the relay's CPU.
async fn in_order<F: Future>(sends: impl Iterator<Item = F>) -> Vec<Option<F::Output>> {
    let mut sends: Vec<Pin<Box<MaybeDone<F>>>> =
        sends.map(|send| Box::pin(maybe_done(send))).collect();
    // Every send before this one is done.
    let mut done = 0;
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for send in &mut sends[done..] {
            if send.as_mut().poll(cx).is_pending() {
                pending = true;
            } else if !pending {
                done += 1;
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    sends
        .iter_mut()
        .map(|send| send.as_mut().take_output())
        .collect()
}

/// An event encoded for the broker: its JSON body and what its AMQP properties are made of
/// (per `events.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The event type, also the routing key.
    pub event_type: String,
    /// The envelope's id, as `message_id` (returned messages are told apart by it).
    pub message_id: String,
    /// The envelope's correlation id.
    pub correlation_id: String,
    /// The publishing service, as `app_id`.
    pub source: String,
    /// When the change happened, in whole seconds since the epoch (AMQP's resolution; the
    /// body has the precise time).
    pub timestamp: u64,
    /// The W3C `traceparent`, sent as the header of that name.
    pub traceparent: Option<String>,
    /// The envelope as JSON, without its `traceparent`.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// `envelope` serialized, as [`Publisher::publish`] sends it.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, PublishError> {
        Ok(Self {
            event_type: envelope.event_type.clone(),
            message_id: envelope.id.to_string(),
            correlation_id: envelope.correlation_id.to_string(),
            source: envelope.source.clone(),
            timestamp: u64::try_from(envelope.occurred_at.timestamp()).unwrap_or(0),
            traceparent: envelope.traceparent.clone(),
            body: serde_json::to_vec(envelope)
                .map_err(|err| PublishError::Encode(err.to_string()))?,
        })
    }

    /// The routing key and AMQP properties. Moves out what is not needed afterwards (the
    /// id and type stay, to attribute returns); the body stays too, for `basic_publish`.
    fn take_properties(&mut self) -> Result<(ShortString, BasicProperties), PublishError> {
        let too_long = |what: &str| PublishError::Encode(format!("{what} is over 255 bytes"));
        let event_type =
            ShortString::try_new(self.event_type.as_str()).map_err(|_| too_long("the type"))?;
        let message_id = ShortString::try_new(self.message_id.as_str())
            .map_err(|_| too_long("the message id"))?;
        let correlation_id = ShortString::try_new(std::mem::take(&mut self.correlation_id))
            .map_err(|_| too_long("the correlation id"))?;
        let source = ShortString::try_new(std::mem::take(&mut self.source))
            .map_err(|_| too_long("the source"))?;
        let properties = BasicProperties::default()
            .with_message_id(message_id)
            .with_type(event_type.clone())
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(self.timestamp)
            .with_correlation_id(correlation_id)
            .with_app_id(source);
        let properties = match self.traceparent.take() {
            Some(trace) => {
                let mut headers = lapin::types::FieldTable::default();
                headers.insert(
                    "traceparent".into(),
                    lapin::types::AMQPValue::LongString(trace.into()),
                );
                properties.with_headers(headers)
            }
            None => properties,
        };
        Ok((event_type, properties))
    }
}
