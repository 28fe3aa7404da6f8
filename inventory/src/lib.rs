//! The inventory service: stores, stock levels per (store, SKU), the movement ledger,
//! availability (single, batch, nearby, live stream) and reservations.
//!
//! It owns the one truth about stock: every channel (web, app, POS) reserves through it,
//! and the guard against overselling is a conditional update in PostgreSQL.
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`domain`]: pure rules (codes, quantities, availability, line merging, distance).
//! - [`store`]: every SQL call and the migrations (`store/schema.sql` holds the functions
//!   that guard stock, `store/saga.sql` the order saga's index, tombstones and hold
//!   adoption).
//! - [`view`]: the in-memory availability view kept exact by LISTEN/NOTIFY, feeding SSE.
//! - [`reserver`]: group commit for reservations made over HTTP (many per transaction).
//! - [`api`]: HTTP handlers, one module per resource, and the OpenAPI document.
//! - [`saga`]: the consumer of the orders service's events (the order saga): reserve,
//!   adopt a checkout hold, reject, commit, release.
//! - [`workers`]: the reservation expiry sweeper.

pub mod api;
pub mod config;
pub mod domain;
pub mod reserver;
pub mod saga;
pub mod store;
pub mod view;
pub mod workers;

use anyhow::Context;
use config::InventoryConfig;
use shared::events::types;
use shared::messaging::{Consumer, Publisher};
use shared::outbox::OutboxRelay;
use shared::service::{Platform, Service, Tasks};
use shared::shutdown::Shutdown;

/// The routing keys the inventory service consumes (the order saga): those bound to its
/// queue in `shared::messaging::BINDINGS`.
pub const CONSUMED_EVENTS: &[&str] = &[
    types::ORDER_PLACED,
    types::ORDER_COLLECTED,
    types::ORDER_CANCELLED,
    types::ORDER_EXPIRED,
];

/// The saga consumer's queue and inbox name.
const SERVICE: &str = "inventory";

/// A built, bound service: call [`Service::run_until_stopped`].
pub type Application = Service;

/// Connects, migrates, binds and starts the workers; stops when `shutdown` is cancelled.
pub async fn build(config: InventoryConfig, shutdown: Shutdown) -> anyhow::Result<Application> {
    let base = &config.base;
    let platform = Platform::connect(base, async |url| store::migrate(&url).await).await?;
    let db = platform.db.clone();

    let view = view::AvailabilityView::new(db.clone());
    // The workers stop after HTTP has drained, so the relay publishes what the last
    // requests committed and the view follows until the end.
    let mut workers = Tasks::new();
    workers.spawn(|stop| view.clone().follow(platform.broker.clone(), stop));
    workers.spawn(|stop| {
        workers::expiry_sweeper(db.clone(), view.clone(), config.sweep_interval, stop)
    });
    // Idempotency keys are kept for a day (retries come within minutes), inbox ids a week.
    workers.spawn(|stop| {
        shared::service::housekeeping(db.clone(), config.idempotency_retention, stop)
    });
    let relay = OutboxRelay::new(
        db.clone(),
        Publisher::new(platform.broker.clone()),
        &base.database_url,
    )
    // stock.changed carries a revision; reservation events must stay in order.
    .with_pipelined_aggregates(&["stock:"]);
    workers.spawn(|stop| relay.run(stop));

    let saga = Consumer::new(
        platform.consumer_broker.clone(),
        db.clone(),
        SERVICE,
        CONSUMED_EVENTS,
        saga::OrderSaga::new(config.order_hold_seconds),
    )
    // Orders are independent (each handler locks its order), so several at once.
    .with_concurrency(Platform::consumer_concurrency(base));
    let mut consumers = Tasks::new();
    consumers.spawn(|stop| saga.run(stop));

    let state = actix_web::web::Data::new(api::AppState {
        reserver: reserver::Reserver::start(db.clone()),
        db,
        view,
        shutdown: shutdown.clone(),
    });
    Service::start(
        base,
        platform,
        <api::ApiDoc as utoipa::OpenApi>::openapi(),
        move |cfg| {
            cfg.app_data(state.clone());
            api::routes(cfg);
        },
        consumers,
        workers,
        shutdown,
    )
    .context("starting HTTP")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_saga_consumes_exactly_the_keys_bound_to_the_inventory_queue() {
        assert_eq!(
            super::CONSUMED_EVENTS,
            shared::messaging::bindings_of(super::SERVICE)
        );
    }
}
