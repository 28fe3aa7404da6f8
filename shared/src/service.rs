//! The run time every service shares: connecting (database, migrations, broker), the HTTP
//! server with the common plumbing, and the drain order on shutdown.
//!
//! A service builds its own state, routes, consumers and workers on a [`Platform`] and
//! hands them to [`Service::start`]; [`Service::run_until_stopped`] then stops things in
//! the order that loses nothing: HTTP first (in-flight requests finish), then the
//! consumers (deliveries in hand are handled and acked), then the workers (the outbox
//! relay publishes what everything before it committed).

use crate::auth::Authenticator;
use crate::config::ServiceConfig;
use crate::http::{Metrics, Readiness};
use crate::messaging::{Broker, Topology};
use crate::shutdown::Shutdown;
use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use tokio::task::JoinHandle;
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig as RouteConfig;

/// The connections a service runs on.
#[derive(Clone)]
pub struct Platform {
    /// The service's own database, migrated.
    pub db: DatabaseConnection,
    /// The publishing connection (outbox relay, live views).
    pub broker: Broker,
    /// The consumers' own connection: flow control or a blocked consumer channel never
    /// holds up the relay's publishes.
    pub consumer_broker: Broker,
}

impl Platform {
    /// Warns about a development secret, applies `migrate`, connects to the database and
    /// the broker, and declares the whole topology of events.md.
    pub async fn connect<F, Fut>(base: &ServiceConfig, migrate: F) -> anyhow::Result<Self>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(), DbErr>>,
    {
        if base.jwt_secret_is_default {
            tracing::warn!(
                "AUTH_JWT_SECRET is unset: using the DEVELOPMENT secret; never run like this in production"
            );
        }
        migrate(base.database_url.clone())
            .await
            .context("applying migrations")?;
        let db = crate::db::connect(&base.database_url, base.database_pool_size)
            .await
            .context("connecting to the database")?;
        let broker = Broker::connect(&base.amqp_url, Topology::new(base.amqp_prefix.clone()))
            .await
            .context("connecting to RabbitMQ")?;
        crate::messaging::declare_all(&broker)
            .await
            .context("declaring the RabbitMQ topology")?;
        let consumer_broker = Broker::connect_named(
            &base.amqp_url,
            Topology::new(base.amqp_prefix.clone()),
            &format!("{}-consumer", base.service),
        )
        .await
        .context("connecting the consumer to RabbitMQ")?;
        Ok(Self {
            db,
            broker,
            consumer_broker,
        })
    }

    /// How many deliveries a consumer handles at once: half the pool at most, so HTTP
    /// keeps connections.
    pub fn consumer_concurrency(base: &ServiceConfig) -> usize {
        usize::try_from((base.database_pool_size / 2).clamp(1, 16)).unwrap_or(1)
    }
}

/// Background tasks stopped together by one token.
pub struct Tasks {
    /// Cancelled to stop them.
    pub stop: Shutdown,
    /// Their handles, awaited on stop.
    pub handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self {
            stop: Shutdown::new(),
            handles: Vec::new(),
        }
    }

    /// Spawns a task built from the stop token.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handles.push(tokio::spawn(task(self.stop.clone())));
    }

    async fn stop(self) {
        self.stop.cancel();
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

/// A built, bound service: call [`Service::run_until_stopped`].
pub struct Service {
    name: String,
    port: u16,
    server: actix_web::dev::Server,
    shutdown: Shutdown,
    consumers: Tasks,
    workers: Tasks,
    platform: Platform,
}

impl Service {
    /// Binds HTTP with the shared plumbing (auth, metrics, health, body limits,
    /// problem+json extractors, OpenAPI and Swagger UI) around `routes`, which registers
    /// the service's own data and handlers; `doc` is its OpenAPI document.
    pub fn start<R>(
        base: &ServiceConfig,
        platform: Platform,
        doc: utoipa::openapi::OpenApi,
        routes: R,
        consumers: Tasks,
        workers: Tasks,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self>
    where
        R: Fn(&mut RouteConfig<'_>) + Clone + Send + 'static,
    {
        let auth = web::Data::new(
            Authenticator::new(&base.jwt_secret).context("AUTH_JWT_SECRET is not usable")?,
        );
        let metrics = web::Data::new(Metrics::new(&base.service)?);
        let (b1, b2) = (platform.broker.clone(), platform.consumer_broker.clone());
        let readiness = web::Data::new(Readiness {
            db: platform.db.clone(),
            broker_up: Arc::new(move || b1.is_connected() && b2.is_connected()),
        });
        let limit = base.body_limit_bytes;
        let server = HttpServer::new(move || {
            let routes = routes.clone();
            let (app, doc) = App::new()
                .into_utoipa_app()
                .openapi(doc.clone())
                .app_data(auth.clone())
                .app_data(metrics.clone())
                .app_data(readiness.clone())
                .app_data(web::PayloadConfig::new(limit))
                .app_data(crate::problem::json_config(limit))
                .app_data(crate::problem::query_config())
                .app_data(crate::problem::path_config())
                .configure(move |cfg| routes(cfg))
                .split_for_parts();
            app.wrap(middleware::from_fn(crate::http::record_metrics))
                .wrap(middleware::from_fn(crate::http::trace_requests))
                .configure(crate::http::health_and_metrics)
                .configure(|cfg| crate::http::docs(cfg, doc))
                .default_service(web::route().to(crate::problem::not_found_route))
        })
        .workers(if base.http_workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            base.http_workers
        })
        .backlog(2048)
        // Signals are ours (`shutdown`), so the drain order below holds.
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
        tracing::info!(port, service = %base.service, "listening");
        Ok(Self {
            name: base.service.clone(),
            port,
            server,
            shutdown,
            consumers,
            workers,
            platform,
        })
    }

    /// The bound port (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled, then drains: HTTP, consumers,
    /// workers, in that order.
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
        self.consumers.stop().await;
        self.platform.consumer_broker.close().await;
        self.workers.stop().await;
        self.platform.broker.close().await;
        tracing::info!(service = %self.name, "stopped");
        Ok(())
    }
}

/// How long handled message ids are kept in the inbox: far longer than any redelivery
/// takes (a message waits in its queue at most through an outage).
pub const INBOX_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Keys deleted per statement by [`housekeep`]: short transactions, however many are due.
const PURGE_BATCH: u32 = 5_000;

/// Every minute, [`housekeep`]: `Idempotency-Key`s older than `key_retention` and inbox ids
/// older than [`INBOX_RETENTION`] go, so both tables stay small. Safe in every replica
/// (plain deletes of old rows).
pub async fn housekeeping(
    db: DatabaseConnection,
    key_retention: std::time::Duration,
    stop: Shutdown,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
        housekeep(&db, key_retention, &stop).await;
    }
}

/// One pass: every key that is due, in batches of [`PURGE_BATCH`] until one comes back
/// short (a busy service writes far more keys a minute than one batch), then the inbox.
/// Returns how many keys and inbox ids went; failures are logged, not returned, and
/// leave the rest for the next pass.
pub async fn housekeep(
    db: &DatabaseConnection,
    key_retention: std::time::Duration,
    stop: &Shutdown,
) -> (u64, u64) {
    let mut keys = 0;
    loop {
        match crate::idempotency::purge(db, key_retention, PURGE_BATCH).await {
            Ok(n) => {
                keys += n;
                if n < u64::from(PURGE_BATCH) || stop.is_cancelled() {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "idempotency key purge failed");
                break;
            }
        }
    }
    if keys > 0 {
        tracing::info!(deleted = keys, "old idempotency keys purged");
    }
    let inbox = match crate::inbox::purge(db, INBOX_RETENTION).await {
        Ok(n) => n,
        Err(err) => {
            tracing::warn!(error = %err, "inbox purge failed");
            0
        }
    };
    if inbox > 0 {
        tracing::info!(deleted = inbox, "old inbox ids purged");
    }
    (keys, inbox)
}
