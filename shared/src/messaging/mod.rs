//! RabbitMQ: the topology of `events.md`, a connection that comes back after the broker
//! does, a publisher that counts a message as sent only on a real confirm, and a consumer
//! that acks only after the effect is committed.
//!
//! # Layout
//! - [`Topology`]: exchange and queue names, declared idempotently.
//! - [`Broker`]: the connection and its supervisor (reconnects with capped backoff).
//! - [`Publisher`]: `mandatory` publishes with publisher confirms, pipelined in batches.
//! - [`Consumer`] and [`EventHandler`]: inbox + handler + commit, then ack; poison and
//!   over-delivered messages go to the service's parking queue.

mod backoff;
mod broker;
mod catalog;
mod consumer;
mod publisher;
mod subscription;
mod topology;

pub use broker::Broker;
pub use catalog::{BINDINGS, bindings_of, declare_all};
pub use consumer::{Consumer, EventHandler, HandlerError};
pub use publisher::{PublishError, Publisher, RawMessage};
pub use subscription::Subscription;
pub use topology::{DELIVERY_LIMIT, Topology};

pub(crate) use backoff::Backoff;

/// Why the broker could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker refused or dropped the connection attempt.
    #[error("cannot connect to the broker: {0}")]
    Connect(lapin::Error),
    /// Connecting took too long (a broker still starting, or a black-holed network).
    #[error("timed out connecting to the broker")]
    ConnectTimeout,
    /// The connection is down and did not come back in time.
    #[error("the broker is not connected")]
    Unavailable,
    /// An exchange, queue or routing key name is longer than AMQP allows (255 bytes).
    #[error("AMQP name over 255 bytes: {0:?}")]
    InvalidName(String),
    /// The broker answered an operation with an error, or the channel broke.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}
