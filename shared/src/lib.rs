//! The platform crate every clickcollect service stands on.
//!
//! # Layout
//! - [`events`]: the envelope and every event type of `events.md`.
//! - [`messaging`]: RabbitMQ connection with reconnection, topology, confirmed publisher,
//!   consumer that acks after commit.
//! - [`outbox`]: the transactional outbox table and its relay worker.
//! - [`inbox`]: handled message ids, written in the handler's transaction.
//! - [`db`]: connecting to PostgreSQL (creating the database when missing).
//! - [`problem`]: RFC 9457 problem+json errors.
//! - [`auth`]: the JWT bearer extractor, roles and store scopes.
//! - [`idempotency`]: the `Idempotency-Key` store.
//! - [`http`]: health, metrics, OpenAPI and Swagger UI, JSON limits.
//! - [`config`]: typed settings from the environment.
//! - [`telemetry`]: JSON tracing logs.
//! - [`shutdown`]: a signal every worker can wait on.
//! - [`service`]: the run time every service shares (connect, serve, drain in order).
//! - [`trace`]: W3C `traceparent` from HTTP through the outbox and the broker.
//! - `testing` (feature `testing`, for tests only): fresh databases, broker prefixes,
//!   polling.

pub mod auth;
pub mod codes;
pub mod config;
pub mod db;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod inbox;
pub mod messaging;
pub mod outbox;
pub mod problem;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
