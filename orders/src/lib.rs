//! The orders service: click-and-collect orders from checkout to the counter.
//!
//! Placing an order stores it as `pending` and publishes `orders.order.placed`; inventory
//! answers with a reservation confirmed or rejected, which moves the order on. Staff pick
//! it, mark it ready (a 6-digit pickup code and a deadline) and hand it over against the
//! code; no-shows expire. Every transition is a conditional update, recorded in the order's
//! history and published as its event through the outbox.
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`domain`]: pure rules (statuses, pickup codes, checks).
//! - [`store`]: every SQL call, the migrations and the transition guard.
//! - [`api`]: HTTP handlers and the OpenAPI document.
//! - [`saga`]: the consumer of inventory's answers and store events.
//! - [`workers`]: the deadline sweeper (no-shows and reminders).

pub mod api;
pub mod config;
pub mod domain;
pub mod saga;
pub mod store;
pub mod workers;

use anyhow::Context;
use config::OrdersConfig;
use shared::messaging::{Consumer, Publisher};
use shared::outbox::OutboxRelay;
use shared::service::{Platform, Service, Tasks};
use shared::shutdown::Shutdown;

/// The queue and inbox name.
const SERVICE: &str = "orders";

/// A built, bound service: call [`Service::run_until_stopped`].
pub type Application = Service;

/// Connects, migrates, binds and starts the workers; stops when `shutdown` is cancelled.
pub async fn build(config: OrdersConfig, shutdown: Shutdown) -> anyhow::Result<Application> {
    let base = &config.base;
    let platform = Platform::connect(base, async |url| store::migrate(&url).await).await?;
    let db = platform.db.clone();

    let mut workers = Tasks::new();
    workers.spawn(|stop| {
        workers::deadline_sweeper(
            db.clone(),
            config.sweep_interval,
            config.reminder_before,
            stop,
        )
    });
    workers.spawn(|stop| {
        shared::service::housekeeping(db.clone(), config.idempotency_retention, stop)
    });
    let relay = OutboxRelay::new(
        db.clone(),
        Publisher::new(platform.broker.clone()),
        &base.database_url,
    );
    workers.spawn(|stop| relay.run(stop));

    // Orders are independent, so several deliveries at once. One order's answers may
    // then be applied out of order; each handler locks the order and every transition
    // is conditional on its status, so a late answer changes nothing (see `saga`).
    let consumer = Consumer::new(
        platform.consumer_broker.clone(),
        db.clone(),
        SERVICE,
        shared::messaging::bindings_of(SERVICE),
        saga::InventoryAnswers,
    )
    .with_prefetch(64)
    .with_concurrency(Platform::consumer_concurrency(base));
    let mut consumers = Tasks::new();
    consumers.spawn(|stop| consumer.run(stop));

    let state = actix_web::web::Data::new(api::AppState { db });
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
