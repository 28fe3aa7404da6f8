//! Consuming a service's queue: inbox, handler and commit in one transaction, then ack.

use super::{
    Broker, BrokerError,
    backoff::Backoff,
    broker::close_quietly,
    topology::{DELIVERY_LIMIT, name},
};
use crate::{events::Envelope, inbox, shutdown::Shutdown};
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::{AMQPValue, FieldTable},
};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use std::{future::Future, time::Duration};
use tracing::Instrument;

/// Unacked deliveries the broker may push ahead of our handling.
const DEFAULT_PREFETCH: u16 = 32;
/// First pause before requeueing a transient failure; doubles with each redelivery.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest pause before requeueing a transient failure.
const RETRY_DELAY_CAP: Duration = Duration::from_secs(5);
/// Pause between attempts to (re)subscribe while the broker is away.
const RESUBSCRIBE_BASE: Duration = Duration::from_millis(100);
const RESUBSCRIBE_CAP: Duration = Duration::from_secs(5);
/// At shutdown, how long deliveries already received may take to finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Retrying cannot help (malformed data, unknown version): the message is parked now.
    #[error("permanent failure: {0:#}")]
    Permanent(anyhow::Error),
    /// Might work later (database busy or down): requeued, up to the delivery limit.
    #[error("transient failure: {0:#}")]
    Transient(anyhow::Error),
}

impl HandlerError {
    /// A failure that retrying cannot fix.
    pub fn permanent(err: impl Into<anyhow::Error>) -> Self {
        Self::Permanent(err.into())
    }

    /// A failure that may go away on its own.
    pub fn transient(err: impl Into<anyhow::Error>) -> Self {
        Self::Transient(err.into())
    }
}

/// Database errors are usually passing (connection lost, serialization failure); one that
/// is not is parked after the delivery limit anyway.
impl From<DbErr> for HandlerError {
    fn from(err: DbErr) -> Self {
        Self::Transient(err.into())
    }
}

/// `data` that does not match the event type will not match on the next try either.
impl From<serde_json::Error> for HandlerError {
    fn from(err: serde_json::Error) -> Self {
        Self::Permanent(err.into())
    }
}

/// An unclassified error is retried, within the delivery limit.
impl From<anyhow::Error> for HandlerError {
    fn from(err: anyhow::Error) -> Self {
        Self::Transient(err)
    }
}

/// Applies one event; implement it with `async fn handle(&self, …)`.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `event`'s effect inside `txn`. The consumer has already recorded the
    /// message id in the inbox within `txn`, and commits then acks on `Ok`.
    fn handle(
        &self,
        event: &Envelope,
        txn: &DatabaseTransaction,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Consumes one service's queue until shut down, surviving broker restarts.
///
/// Each delivery: unreadable JSON is rejected to the parking queue; otherwise one
/// database transaction records the id in the inbox (a duplicate is acked with no
/// effect), runs the handler and commits; the ack follows the commit, so a crash between
/// the two redelivers a message the inbox then recognises.
///
/// Deliveries are handled one at a time by default, in queue order: events of one
/// aggregate arrive in the order they were published and are applied in that order.
/// [`Consumer::with_concurrency`] trades that order for throughput.
pub struct Consumer<H> {
    /// Where deliveries come from.
    broker: Broker,
    /// Where the inbox and the handler's effects are written.
    db: DatabaseConnection,
    /// Names the queue and the inbox's `consumer` column.
    service: String,
    /// Event types the queue is bound to.
    routing_keys: Vec<String>,
    /// Applies each event.
    handler: H,
    /// `basic.qos` prefetch.
    prefetch: u16,
    /// Deliveries handled at the same time.
    concurrency: usize,
    /// First pause before requeueing a transient failure.
    retry_delay: Duration,
}

/// How one delivery ended, for the ack decision.
enum Outcome {
    /// Committed (or found in the inbox): ack.
    Done,
    /// Cannot succeed: reject to the dead-letter exchange.
    Park,
    /// Might succeed later: requeue.
    Retry,
}

/// Why a consuming session ended.
enum SessionEnd {
    /// Shutdown was requested and in-flight deliveries are settled.
    Shutdown,
    /// The subscription was lost (connection or channel closed, queue deleted).
    Lost,
}

impl<H: EventHandler> Consumer<H> {
    /// A consumer of `service`'s queue, bound to `routing_keys`, applying events with
    /// `handler` on `db`.
    pub fn new(
        broker: Broker,
        db: DatabaseConnection,
        service: &str,
        routing_keys: &[&str],
        handler: H,
    ) -> Self {
        Self {
            broker,
            db,
            service: service.to_owned(),
            routing_keys: routing_keys.iter().map(|key| (*key).to_owned()).collect(),
            handler,
            prefetch: DEFAULT_PREFETCH,
            concurrency: 1,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }

    /// Lets the broker push up to `prefetch` unacked deliveries ahead (at least 1).
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Handles up to `concurrency` deliveries at once (at least 1). Above 1, events may be
    /// applied out of order, so handlers must tolerate that (e.g. by revision).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The first pause before a transient failure is requeued (doubling per redelivery).
    pub fn with_retry_delay(mut self, retry_delay: Duration) -> Self {
        self.retry_delay = retry_delay;
        self
    }

    /// Consumes until `shutdown` is cancelled, then finishes the deliveries already
    /// received and returns. Connection losses are waited out, never returned.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Backoff::new(RESUBSCRIBE_BASE, RESUBSCRIBE_CAP);
        loop {
            match self.session(&shutdown).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Lost) => {
                    // It worked until now: come back quickly.
                    backoff.reset();
                    tracing::warn!(service = %self.service, "lost the subscription; resubscribing");
                }
                Err(err) => {
                    tracing::warn!(service = %self.service, %err, "cannot subscribe; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        tracing::info!(service = %self.service, "consumer stopped");
    }

    /// Declares, subscribes and handles deliveries until the subscription ends.
    async fn session(&self, shutdown: &Shutdown) -> Result<SessionEnd, BrokerError> {
        let channel = tokio::select! {
            channel = self.broker.channel() => channel?,
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
        };
        let keys: Vec<&str> = self.routing_keys.iter().map(String::as_str).collect();
        // Redeclared on every subscription: after a broker reset the queue may be gone.
        self.broker
            .topology()
            .declare_service(&channel, &self.service, &keys)
            .await?;
        channel
            // `global: false`: the limit is per consumer, which is what bounds our buffer.
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await?;
        let queue = self.broker.topology().service_queue(&self.service);
        let deliveries = channel
            .basic_consume(
                name(&queue)?,
                // Empty: the broker picks a unique tag for each replica's consumer.
                "".into(),
                BasicConsumeOptions {
                    // Only meaningful for exclusive queues; receiving our own is fine.
                    no_local: false,
                    // We ack only after the effect is committed.
                    no_ack: false,
                    // Replicas of the service compete on the queue.
                    exclusive: false,
                    // We need the consumer tag from consume-ok to cancel at shutdown.
                    nowait: false,
                },
                FieldTable::default(),
            )
            .await?;
        let tag = deliveries.tag();
        tracing::info!(service = %self.service, %queue, "consuming");

        let processing = deliveries.for_each_concurrent(self.concurrency, |item| async move {
            match item {
                Ok(delivery) => self.process(delivery, shutdown).await,
                // Always followed by the end of the stream; the loop resubscribes.
                Err(err) => tracing::warn!(service = %self.service, %err, "delivery stream failed"),
            }
        });
        tokio::pin!(processing);
        tokio::select! {
            () = &mut processing => {
                // The broker may have cancelled us (queue deleted) on a live channel.
                close_quietly(&channel).await;
                Ok(SessionEnd::Lost)
            }
            () = shutdown.cancelled() => {
                // Cancel instead of closing: the broker stops sending, and the deliveries
                // already buffered here are handled rather than returned (a return counts
                // against their delivery limit); the stream ends after the last of them.
                if let Err(err) = channel
                    .basic_cancel(tag, BasicCancelOptions { nowait: false })
                    .await
                {
                    tracing::debug!(%err, "cancelling the consumer");
                }
                if tokio::time::timeout(SHUTDOWN_DRAIN, &mut processing).await.is_err() {
                    tracing::warn!(service = %self.service, "in-flight deliveries did not finish; they will be redelivered");
                }
                close_quietly(&channel).await;
                Ok(SessionEnd::Shutdown)
            }
        }
    }

    /// Handles one delivery and settles it with the broker.
    async fn process(&self, delivery: Delivery, shutdown: &Shutdown) {
        let redeliveries = delivery_count(&delivery);
        let envelope = match serde_json::from_slice::<Envelope>(&delivery.data) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(
                    service = %self.service,
                    message_id = ?delivery.properties.message_id(),
                    %err,
                    "unreadable message; parking it"
                );
                settle(&delivery, Outcome::Park).await;
                return;
            }
        };
        // The publisher's trace continues here (a new one when it sent none).
        let trace = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("traceparent").cloned())
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => {
                    crate::trace::Traceparent::parse(&s.to_string())
                }
                _ => None,
            })
            .map_or_else(crate::trace::Traceparent::root, |t| t.child());
        let mut envelope = envelope;
        envelope.traceparent = Some(trace.to_string());
        let span = tracing::info_span!(
            "event",
            service = %self.service,
            event_type = %envelope.event_type,
            message_id = %envelope.id,
            correlation_id = %envelope.correlation_id,
            trace_id = %trace.trace_id_hex(),
            redeliveries,
        );
        crate::trace::scope(trace, async {
            let outcome = match self.apply(&envelope).await {
                Ok(()) => Outcome::Done,
                Err(HandlerError::Permanent(err)) => {
                    tracing::error!(error = %format!("{err:#}"), "event cannot be handled; parking it");
                    Outcome::Park
                }
                Err(HandlerError::Transient(err)) => {
                    let delay = self.retry_delay_after(redeliveries);
                    tracing::warn!(
                        error = %format!("{err:#}"),
                        ?delay,
                        limit = DELIVERY_LIMIT,
                        "event failed; requeueing"
                    );
                    // Requeueing at once would burn the delivery limit in milliseconds.
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                    Outcome::Retry
                }
            };
            settle(&delivery, outcome).await;
        }
        .instrument(span))
        .await;
    }

    /// Inbox, handler and commit in one transaction; a duplicate changes nothing.
    async fn apply(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let txn = self.db.begin().await?;
        // For events the handler's SQL writes itself.
        crate::trace::bind(&txn, envelope.traceparent.as_deref()).await?;
        if !inbox::record(&txn, &self.service, envelope.id).await? {
            tracing::debug!("already handled; acking the duplicate");
            rollback_quietly(txn).await;
            return Ok(());
        }
        if let Err(err) = self.handler.handle(envelope, &txn).await {
            rollback_quietly(txn).await;
            return Err(err);
        }
        txn.commit().await?;
        // What the handler wrote to the outbox is committed now: publish it at once.
        crate::outbox::wake_local_relays();
        Ok(())
    }

    /// `retry_delay × 2^redeliveries`, capped.
    fn retry_delay_after(&self, redeliveries: i64) -> Duration {
        let exponent = u32::try_from(redeliveries.clamp(0, 16)).unwrap_or(16);
        self.retry_delay
            .saturating_mul(1u32 << exponent)
            .min(RETRY_DELAY_CAP)
    }
}

/// Acks, rejects (to the dead-letter exchange) or requeues `delivery`.
async fn settle(delivery: &Delivery, outcome: Outcome) {
    let result = match outcome {
        // `multiple: false`: with concurrency, earlier tags may still be in progress.
        Outcome::Done => {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: false })
                .await
        }
        // `requeue: false` dead-letters it to the parking queue.
        Outcome::Park => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: false,
                })
                .await
        }
        // `requeue: true`: back in the queue; the quorum queue counts the redelivery and
        // parks the message past its delivery limit.
        Outcome::Retry => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
    };
    if let Err(err) = result {
        // The channel is gone: the broker requeues the message and the inbox absorbs the
        // redelivery if its effect was committed.
        tracing::warn!(%err, "cannot settle the delivery; it will be redelivered");
    }
}

async fn rollback_quietly(txn: DatabaseTransaction) {
    if let Err(err) = txn.rollback().await {
        tracing::debug!(%err, "rolling back");
    }
}

/// How many times the quorum queue delivered this message before (`x-delivery-count`).
fn delivery_count(delivery: &Delivery) -> i64 {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-delivery-count"));
    match count {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        _ => 0,
    }
}
