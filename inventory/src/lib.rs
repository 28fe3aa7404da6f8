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
//!   that guard stock).
//! - [`view`]: the in-memory availability view kept exact by LISTEN/NOTIFY, feeding SSE.
//! - [`api`]: HTTP handlers, one module per resource, and the OpenAPI document.
//! - [`workers`]: the reservation expiry sweeper.

pub mod api;
pub mod config;
pub mod domain;
pub mod store;
pub mod view;
pub mod workers;

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use config::InventoryConfig;
use shared::auth::Authenticator;
use shared::http::{Metrics, Readiness};
use shared::messaging::{Broker, Publisher, Topology};
use shared::outbox::OutboxRelay;
use shared::shutdown::Shutdown;
use std::sync::Arc;
use utoipa_actix_web::AppExt;

/// The routing keys the inventory service consumes (the order saga, issue 3).
pub const CONSUMED_EVENTS: &[&str] = &[];

/// A built, bound service: call [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    shutdown: Shutdown,
    workers_stop: Shutdown,
    workers: Vec<tokio::task::JoinHandle<()>>,
    broker: Broker,
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
        let readiness = web::Data::new(Readiness {
            db: db.clone(),
            broker_up: Arc::new(move || broker_for_ready.is_connected()),
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
            broker,
        })
    }

    /// The bound port (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled, then drains: HTTP first (in-flight
    /// requests finish), then the workers (the relay publishes what is committed).
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
        self.workers_stop.cancel();
        for worker in self.workers {
            let _ = worker.await;
        }
        self.broker.close().await;
        tracing::info!("inventory stopped");
        Ok(())
    }
}
