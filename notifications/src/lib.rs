//! The notifications service: the customer's phone or browser hears of their order, and
//! of the stock they waited for.
//!
//! Order events (confirmed, ready for pickup, reminder, cancelled, rejected, expired) and
//! fired back-in-stock alerts become one delivery row per device, written in the
//! consumer's transaction before anything is sent; the delivery worker then pushes each
//! through Web Push, FCM or APNs, retries with backoff, removes devices the push service
//! says are gone, and gives up (`dead`, `notifications.delivery.failed`) after the last
//! attempt.
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`domain`]: pure rules (messages in French and English, retry delays).
//! - [`store`]: every SQL call and the migrations.
//! - [`api`]: HTTP handlers and the OpenAPI document.
//! - [`events`]: the consumer of order, stock and store events.
//! - [`worker`]: the delivery worker.
//! - [`push`]: the three providers, speaking their real protocols.
//! - [`receivers`]: local stand-ins for the push services (tests, benchmark, demo).

pub mod api;
pub mod config;
pub mod domain;
pub mod events;
pub mod push;
pub mod receivers;
pub mod store;
pub mod worker;

use anyhow::Context;
use config::NotificationsConfig;
use push::Providers;
use shared::messaging::{Consumer, Publisher};
use shared::outbox::OutboxRelay;
use shared::service::{Platform, Service, Tasks};
use shared::shutdown::Shutdown;
use std::sync::Arc;

/// The queue and inbox name.
const SERVICE: &str = "notifications";

/// A built, bound service: call [`Service::run_until_stopped`].
pub type Application = Service;

/// Connects, migrates, binds and starts the workers; stops when `shutdown` is cancelled.
pub async fn build(config: NotificationsConfig, shutdown: Shutdown) -> anyhow::Result<Application> {
    let base = &config.base;
    anyhow::ensure!(
        config.lease > config.push.request_timeout * 2,
        "PUSH_LEASE_SECS must be more than twice PUSH_TIMEOUT_MS: an attempt still running \
         when its lease ends may be made again by another replica"
    );
    let platform = Platform::connect(base, async |url| store::migrate(&url).await).await?;
    let db = platform.db.clone();
    let providers = Arc::new(
        Providers::new(&config.push, &db)
            .await
            .context("setting up the push providers")?,
    );

    let mut workers = Tasks::new();
    let sender = worker::DeliveryWorker {
        db: db.clone(),
        providers: providers.clone(),
        retry: config.retry,
        // No more than can be in flight at once: a claimed row's lease runs from the
        // claim, so rows waiting for a free slot could lose theirs to another replica.
        batch: u32::try_from(config.concurrency.clamp(1, 256)).unwrap_or(32),
        concurrency: config.concurrency.clamp(1, 256),
        poll_interval: config.poll_interval,
        lease: config.lease,
    };
    workers.spawn(|stop| sender.run(stop));
    workers.spawn(|stop| {
        shared::service::housekeeping(db.clone(), std::time::Duration::from_secs(24 * 3600), stop)
    });
    let relay = OutboxRelay::new(
        db.clone(),
        Publisher::new(platform.broker.clone()),
        &base.database_url,
    );
    workers.spawn(|stop| relay.run(stop));

    // Events of different orders and SKUs are independent; stock changes carry a
    // revision and order deliveries are keyed per (order, event), so handling several
    // at once is safe.
    let consumer = Consumer::new(
        platform.consumer_broker.clone(),
        db.clone(),
        SERVICE,
        events::CONSUMED_EVENTS,
        events::Handler,
    )
    .with_prefetch(64)
    .with_concurrency(Platform::consumer_concurrency(base));
    let mut consumers = Tasks::new();
    consumers.spawn(|stop| consumer.run(stop));

    let state = actix_web::web::Data::new(api::AppState {
        db,
        providers,
        allow_local_endpoints: config.push.allow_local_endpoints,
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
