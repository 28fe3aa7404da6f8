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
//! - [`api`]: HTTP handlers, one module per resource, and the OpenAPI document.
//! - [`saga`]: the consumer of the orders service's events (the order saga): reserve,
//!   adopt a checkout hold, reject, commit, release.
//! - [`workers`]: the reservation expiry sweeper.

pub mod api;
pub mod config;
pub mod domain;
pub mod saga;
pub mod store;
pub mod view;
pub mod workers;

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use config::InventoryConfig;
use shared::auth::Authenticator;
use shared::events::types;
use shared::http::{Metrics, Readiness};
use shared::messaging::{Broker, Consumer, Publisher, Topology};
use shared::outbox::OutboxRelay;
use shared::shutdown::Shutdown;
use std::sync::Arc;
use utoipa_actix_web::AppExt;

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

/// A built, bound service: call [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    shutdown: Shutdown,
    workers_stop: Shutdown,
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// Stopped before the workers, so the relay still publishes what they committed.
    consumers_stop: Shutdown,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    broker: Broker,
    /// The consumers' own connection (a slow consumer never stalls the relay's confirms).
    consumer_broker: Broker,
}

impl Application {
    /// Connects, migrates, binds and starts the workers; stops when `shutdown` is cancelled.
    pub async fn build(config: InventoryConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        let base = &config.base;
        if base.jwt_secret_is_default {
            tracing::warn!(
                "AUTH_JWT_SECRET is unset: using the DEVELOPMENT secret; never run like this in production"
            );
        }
        store::migrate(&base.database_url)
            .await
            .context("applying migrations")?;
        let db = shared::db::connect(&base.database_url, base.database_pool_size)
            .await
            .context("connecting to the database")?;
        let broker = Broker::connect(&base.amqp_url, Topology::new(base.amqp_prefix.clone()))
            .await
            .context("connecting to RabbitMQ")?;
        shared::messaging::declare_all(&broker)
            .await
            .context("declaring the RabbitMQ topology")?;

        let view = view::AvailabilityView::new(db.clone());
        // The workers stop after HTTP has drained, so the relay publishes what the last
        // requests committed and the view follows until the end.
        let workers_stop = Shutdown::new();
        let mut workers = Vec::new();
        workers.push(tokio::spawn(
            view.clone().follow(broker.clone(), workers_stop.clone()),
        ));
        workers.push(tokio::spawn(workers::expiry_sweeper(
            db.clone(),
            view.clone(),
            config.sweep_interval,
            config.idempotency_retention,
            workers_stop.clone(),
        )));
        // Consumers get a connection of their own: it is our convention, and flow control
        // or a blocked consumer channel then never holds up the relay's publishes.
        let consumer_broker = Broker::connect_named(
            &base.amqp_url,
            Topology::new(base.amqp_prefix.clone()),
            "inventory-consumer",
        )
        .await
        .context("connecting the consumer to RabbitMQ")?;
        let consumers_stop = workers_stop.child_token();
        let saga = Consumer::new(
            consumer_broker.clone(),
            db.clone(),
            SERVICE,
            CONSUMED_EVENTS,
            saga::OrderSaga::new(config.order_hold_seconds),
        )
        // Orders are independent (each handler locks its order), so several at once;
        // half the pool at most, so HTTP keeps connections.
        .with_concurrency(usize::try_from((base.database_pool_size / 2).clamp(1, 16)).unwrap_or(1));
        let consumers = vec![tokio::spawn(saga.run(consumers_stop.clone()))];

        let relay = OutboxRelay::new(
            db.clone(),
            Publisher::new(broker.clone()),
            &base.database_url,
        )
        // stock.changed carries a revision; reservation events must stay in order.
        .with_pipelined_aggregates(&["stock:"]);
        let relay_shutdown = workers_stop.clone();
        workers.push(tokio::spawn(async move { relay.run(relay_shutdown).await }));

        let state = web::Data::new(api::AppState {
            db: db.clone(),
            view,
            shutdown: shutdown.clone(),
        });
        let auth = web::Data::new(
            Authenticator::new(&base.jwt_secret).context("AUTH_JWT_SECRET is not usable")?,
        );
        let metrics = web::Data::new(Metrics::new("inventory")?);
        let broker_for_ready = broker.clone();
        let consumer_broker_for_ready = consumer_broker.clone();
        let readiness = web::Data::new(Readiness {
            db: db.clone(),
            broker_up: Arc::new(move || {
                broker_for_ready.is_connected() && consumer_broker_for_ready.is_connected()
            }),
        });
        let limit = base.body_limit_bytes;
        let server = HttpServer::new(move || {
            let (app, doc) = App::new()
                .into_utoipa_app()
                .openapi(<api::ApiDoc as utoipa::OpenApi>::openapi())
                .app_data(state.clone())
                .app_data(auth.clone())
                .app_data(metrics.clone())
                .app_data(readiness.clone())
                .app_data(web::PayloadConfig::new(limit))
                .app_data(shared::problem::json_config(limit))
                .app_data(shared::problem::query_config())
                .app_data(shared::problem::path_config())
                .configure(api::routes)
                .split_for_parts();
            app.wrap(middleware::from_fn(shared::http::record_metrics))
                .configure(shared::http::health_and_metrics)
                .configure(|cfg| shared::http::docs(cfg, doc))
                .default_service(api::default_service())
        })
        .workers(if base.http_workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            base.http_workers
        })
        .backlog(2048)
        .disable_signals()
        .shutdown_timeout(10)
        .bind(base.bind_addr)
        .with_context(|| format!("binding {}", base.bind_addr))?;
        let port = server
            .addrs()
            .first()
            .map(|a| a.port())
            .context("no bound address")?;
        let server = server.run();
        tracing::info!(port, "inventory listening");
        Ok(Self {
            port,
            server,
            shutdown,
            workers_stop,
            workers,
            consumers_stop,
            consumers,
            broker,
            consumer_broker,
        })
    }

    /// The bound port (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled, then drains: HTTP first (in-flight
    /// requests finish), then the consumers (deliveries in hand are handled and acked),
    /// then the workers (the relay publishes what is committed).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let shutdown = self.shutdown.clone();
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        self.server.await?;
        self.shutdown.cancel();
        let _ = stopper.await;
        self.consumers_stop.cancel();
        for consumer in self.consumers {
            let _ = consumer.await;
        }
        self.consumer_broker.close().await;
        self.workers_stop.cancel();
        for worker in self.workers {
            let _ = worker.await;
        }
        self.broker.close().await;
        tracing::info!("inventory stopped");
        Ok(())
    }
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
