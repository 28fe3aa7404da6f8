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

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use config::OrdersConfig;
use shared::auth::Authenticator;
use shared::http::{Metrics, Readiness};
use shared::messaging::{Broker, Consumer, Publisher, Topology};
use shared::outbox::OutboxRelay;
use shared::shutdown::Shutdown;
use std::sync::Arc;
use utoipa_actix_web::AppExt;

/// The queue and inbox name.
const SERVICE: &str = "orders";

/// A built, bound service: call [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    shutdown: Shutdown,
    consumers_stop: Shutdown,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    workers_stop: Shutdown,
    workers: Vec<tokio::task::JoinHandle<()>>,
    broker: Broker,
    consumer_broker: Broker,
}

impl Application {
    /// Connects, migrates, binds and starts the workers; stops when `shutdown` is cancelled.
    pub async fn build(config: OrdersConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
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
        let consumer_broker = Broker::connect_named(
            &base.amqp_url,
            Topology::new(base.amqp_prefix.clone()),
            "orders-consumer",
        )
        .await
        .context("connecting the consumer to RabbitMQ")?;

        let workers_stop = Shutdown::new();
        let consumers_stop = Shutdown::new();
        let workers = vec![
            tokio::spawn(workers::deadline_sweeper(
                db.clone(),
                config.sweep_interval,
                config.reminder_before,
                config.idempotency_retention,
                workers_stop.clone(),
            )),
            {
                let relay = OutboxRelay::new(
                    db.clone(),
                    Publisher::new(broker.clone()),
                    &base.database_url,
                );
                let stop = workers_stop.clone();
                tokio::spawn(async move { relay.run(stop).await })
            },
        ];
        // Orders are independent, so several deliveries at once (half the pool at most, so
        // HTTP keeps connections). One order's answers may then be applied out of order;
        // each handler locks the order and every transition is conditional on its status,
        // so a late answer changes nothing (see `saga`).
        let consumer = Consumer::new(
            consumer_broker.clone(),
            db.clone(),
            SERVICE,
            shared::messaging::bindings_of(SERVICE),
            saga::InventoryAnswers,
        )
        .with_prefetch(64)
        .with_concurrency(usize::try_from((base.database_pool_size / 2).clamp(1, 16)).unwrap_or(1));
        let consumers = vec![tokio::spawn(consumer.run(consumers_stop.clone()))];

        let state = web::Data::new(api::AppState { db: db.clone() });
        let auth = web::Data::new(
            Authenticator::new(&base.jwt_secret).context("AUTH_JWT_SECRET is not usable")?,
        );
        let metrics = web::Data::new(Metrics::new("orders")?);
        let (b1, b2) = (broker.clone(), consumer_broker.clone());
        let readiness = web::Data::new(Readiness {
            db: db.clone(),
            broker_up: Arc::new(move || b1.is_connected() && b2.is_connected()),
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
        tracing::info!(port, "orders listening");
        Ok(Self {
            port,
            server,
            shutdown,
            consumers_stop,
            consumers,
            workers_stop,
            workers,
            broker,
            consumer_broker,
        })
    }

    /// The bound port (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled, then drains: HTTP first, then the
    /// consumer (deliveries in hand are handled and acked), then the workers (the relay
    /// publishes what is committed).
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
        tracing::info!("orders stopped");
        Ok(())
    }
}
