//! What the messaging, outbox and broker-restart tests share: a migrated fresh database,
//! a broker under a unique prefix, a recording handler, and queue helpers.

#![allow(dead_code)] // each test binary uses its own part of this module

use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement};
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use shared::{
    events::Envelope,
    inbox,
    messaging::{Broker, EventHandler, HandlerError, Topology},
    outbox, testing,
};
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use uuid::Uuid;

/// The shared migrations in the order a service lists them.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(inbox::Migration), Box::new(outbox::Migration)]
    }
}

/// One test's database and broker.
pub struct TestEnv {
    /// The database URL (for `LISTEN`).
    pub url: String,
    /// A pool on the migrated database, with an `effects` table for handlers.
    pub db: DatabaseConnection,
    /// Names under this test's unique prefix.
    pub topology: Topology,
    /// Connected to the test broker.
    pub broker: Broker,
    /// Services whose queues `cleanup` deletes.
    services: Mutex<Vec<String>>,
}

/// A migrated fresh database named after `label`, and a broker under a fresh prefix.
pub async fn test_env(label: &str) -> TestEnv {
    let (url, db) = testing::fresh_database(label).await.expect("test database");
    Migrator::up(&db, None).await.expect("migrations");
    db.execute_unprepared(
        "CREATE TABLE effects (
            n bigserial PRIMARY KEY,
            message_id uuid NOT NULL,
            event_type text NOT NULL,
            data jsonb NOT NULL
        )",
    )
    .await
    .expect("effects table");
    let topology = Topology::new(testing::unique_prefix());
    let broker = Broker::connect(&testing::amqp_url(), topology.clone())
        .await
        .expect("broker");
    TestEnv {
        url,
        db,
        topology,
        broker,
        services: Mutex::new(Vec::new()),
    }
}

impl TestEnv {
    /// Declares `service`'s queues bound to `keys` (and deletes them at cleanup).
    pub async fn declare(&self, service: &str, keys: &[&str]) {
        self.broker
            .declare_service(service, keys)
            .await
            .expect("declare service");
        self.services
            .lock()
            .expect("services")
            .push(service.to_owned());
    }

    /// Deletes this test's queues and exchanges from the broker.
    pub async fn cleanup(self) {
        let Ok(channel) = self.broker.channel().await else {
            return;
        };
        let services = self.services.lock().expect("services").clone();
        for service in services {
            for queue in [
                self.topology.service_queue(&service),
                self.topology.parking_queue(&service),
            ] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        for exchange in [
            self.topology.events_exchange(),
            self.topology.dead_letter_exchange(),
        ] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        self.broker.close().await;
    }

    /// Rows in `effects` for `message_id`.
    pub async fn effects_of(&self, message_id: Uuid) -> i64 {
        count(
            &self.db,
            &format!("SELECT count(*) AS n FROM effects WHERE message_id = '{message_id}'"),
        )
        .await
    }

    /// All rows in `effects`.
    pub async fn effects(&self) -> i64 {
        count(&self.db, "SELECT count(*) AS n FROM effects").await
    }

    /// Ready messages in `queue`.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let channel = self.broker.channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        declared.message_count()
    }

    /// Takes (and acks) `expected` messages from `queue`, waiting up to `within`; returns
    /// what arrived by then.
    pub async fn take(&self, queue: &str, expected: usize, within: Duration) -> Vec<Delivery> {
        let channel = self.broker.channel().await.expect("channel");
        let deadline = tokio::time::Instant::now() + within;
        let mut taken = Vec::new();
        while taken.len() < expected && tokio::time::Instant::now() < deadline {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .expect("basic.get");
            match got {
                Some(message) => {
                    message
                        .delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                    taken.push(message.delivery);
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        taken
    }
}

/// Runs a `SELECT count(*) AS n …`.
pub async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("count query")
        .expect("one row");
    row.try_get("", "n").expect("n")
}

/// Waits until `check` holds, up to `within`; whether it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How the recording handler should treat one message id.
#[derive(Debug, Clone, Copy)]
pub enum Fail {
    /// Fail transiently this many more times, then succeed.
    Transient(u32),
    /// Fail transiently every time.
    AlwaysTransient,
    /// Fail permanently.
    Permanent,
}

/// A handler that writes each event into `effects` and counts its calls.
#[derive(Clone, Default)]
pub struct Recorder {
    /// Calls per message id (including failed ones).
    calls: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// All calls.
    total: Arc<AtomicUsize>,
    /// Planned failures.
    failures: Arc<Mutex<HashMap<Uuid, Fail>>>,
    /// A pause inside each call, to keep deliveries in flight.
    pause: Arc<Mutex<Duration>>,
}

impl Recorder {
    /// Makes `message_id` fail as planned.
    pub fn fail(&self, message_id: Uuid, how: Fail) {
        self.failures
            .lock()
            .expect("failures")
            .insert(message_id, how);
    }

    /// Sleeps `pause` in each call.
    pub fn pause_each_call(&self, pause: Duration) {
        *self.pause.lock().expect("pause") = pause;
    }

    /// How many times `message_id` reached the handler.
    pub fn calls(&self, message_id: Uuid) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(&message_id)
            .copied()
            .unwrap_or(0)
    }

    /// How many calls in all.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// The planned outcome of this call (and counts it).
    fn plan(&self, message_id: Uuid) -> Result<(), HandlerError> {
        *self
            .calls
            .lock()
            .expect("calls")
            .entry(message_id)
            .or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().expect("failures");
        match failures.get_mut(&message_id) {
            Some(Fail::Transient(0)) | None => Ok(()),
            Some(Fail::Transient(left)) => {
                *left -= 1;
                Err(HandlerError::transient(anyhow::anyhow!("database busy")))
            }
            Some(Fail::AlwaysTransient) => {
                Err(HandlerError::transient(anyhow::anyhow!("database down")))
            }
            Some(Fail::Permanent) => Err(HandlerError::permanent(anyhow::anyhow!("bad data"))),
        }
    }
}

impl EventHandler for Recorder {
    async fn handle(
        &self,
        event: &Envelope,
        txn: &DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        let pause = *self.pause.lock().expect("pause");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        self.plan(event.id)?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO effects (message_id, event_type, data) VALUES ($1, $2, $3)",
            [
                event.id.into(),
                event.event_type.as_str().into(),
                event.data.clone().into(),
            ],
        ))
        .await?;
        Ok(())
    }
}
