//! A broker restart in the middle of the flow: publishers and consumers come back by
//! themselves and nothing is lost or applied twice.
//!
//! It stops the shared RabbitMQ (`rabbitmqctl stop_app`), so it must not run beside other
//! broker tests: run it in its own nextest invocation or test group (its name contains
//! `broker_restart`). Every restart test takes the file lock at [`RESTART_LOCK`] so two
//! processes never restart the broker at the same time.

mod messaging_support;

use messaging_support::{Recorder, count, eventually, test_env};
use sea_orm::TransactionTrait;
use serde_json::json;
use shared::{
    events::{Envelope, types},
    messaging::{Broker, Consumer, Publisher},
    outbox::{self, OutboxRelay},
    shutdown::Shutdown,
    testing,
};
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    process::Command,
    time::Duration,
};
use uuid::Uuid;

/// Held while a test has the broker stopped or restarting.
const RESTART_LOCK: &str = "/tmp/clickcollect-broker-restart.lock";
const SERVICE: &str = "orders";
const EVENTS: usize = 600;
const AGGREGATES: usize = 8;

/// Runs `rabbitmqctl <action>`, bounded in time.
fn rabbitmqctl(action: &str) {
    let status = Command::new("timeout")
        .args(["-s", "KILL", "90", "rabbitmqctl", "-t", "80", action])
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {action}: {status}");
}

/// Starts the broker's app again if the test ends (or panics) with it stopped.
struct StoppedBroker {
    /// Whether `start_app` already ran.
    started: bool,
}

impl StoppedBroker {
    fn stop() -> Self {
        rabbitmqctl("stop_app");
        Self { started: false }
    }

    fn start(mut self) {
        rabbitmqctl("start_app");
        self.started = true;
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if !self.started {
            rabbitmqctl("start_app");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_flow_loses_nothing_and_applies_nothing_twice() {
    let lock = File::create(RESTART_LOCK).expect("lock file");
    lock.lock().expect("restart lock");
    let env = test_env("restart").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    // Like a service: one connection for publishing, another for consuming.
    let consumer_broker = Broker::connect(&testing::amqp_url(), env.topology.clone())
        .await
        .expect("consumer broker");
    let shutdown = Shutdown::new();
    let recorder = Recorder::default();
    let consumer = tokio::spawn(
        Consumer::new(
            consumer_broker.clone(),
            env.db.clone(),
            SERVICE,
            &[types::STOCK_CHANGED],
            recorder.clone(),
        )
        .run(shutdown.clone()),
    );
    let relay = tokio::spawn(
        OutboxRelay::new(env.db.clone(), Publisher::new(env.broker.clone()), &env.url)
            .with_pipelined_aggregates(&["stock:"])
            .run(shutdown.clone()),
    );

    // Commits a steady stream of events, before, during and after the restart.
    let db = env.db.clone();
    let producer = tokio::spawn(async move {
        let mut enqueued = Vec::with_capacity(EVENTS);
        for n in 0..EVENTS {
            let aggregate = format!("stock:S1:{}", n % AGGREGATES);
            let event = Envelope::new(
                types::STOCK_CHANGED,
                "inventory",
                json!({ "aggregate": aggregate, "n": n / AGGREGATES }),
                None,
            );
            let txn = db.begin().await.expect("begin");
            outbox::enqueue(&txn, &aggregate, &event)
                .await
                .expect("enqueue");
            txn.commit().await.expect("commit");
            enqueued.push(event.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        enqueued
    });

    assert!(
        eventually(Duration::from_secs(20), || async {
            env.effects().await >= 100
        })
        .await,
        "events flow before the restart"
    );
    let stopped = tokio::task::spawn_blocking(StoppedBroker::stop)
        .await
        .expect("stop_app");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !env.broker.is_connected(),
        "the publisher saw the broker go"
    );
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .expect("start_app");

    let enqueued = producer.await.expect("producer");
    let all_arrived = eventually(Duration::from_secs(45), || async {
        env.effects().await >= i64::try_from(EVENTS).expect("small")
            && outbox::pending_count(&env.db).await.expect("pending") == 0
    })
    .await;

    // Count lost, duplicated and unexpected, as Jepsen's RabbitMQ checker does.
    let effects = sea_orm::ConnectionTrait::query_all_raw(
        &env.db,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT message_id, data FROM effects ORDER BY n",
        ),
    )
    .await
    .expect("effects");
    let mut applied: HashMap<Uuid, usize> = HashMap::new();
    let mut last_n: HashMap<String, i64> = HashMap::new();
    let mut out_of_order = 0;
    for row in &effects {
        let id: Uuid = row.try_get("", "message_id").expect("id");
        let data: serde_json::Value = row.try_get("", "data").expect("data");
        *applied.entry(id).or_default() += 1;
        let aggregate = data["aggregate"].as_str().expect("aggregate").to_owned();
        let n = data["n"].as_i64().expect("n");
        if last_n
            .insert(aggregate, n)
            .is_some_and(|previous| n <= previous)
        {
            out_of_order += 1;
        }
    }
    let expected: HashSet<Uuid> = enqueued.iter().copied().collect();
    let lost = expected
        .iter()
        .filter(|id| !applied.contains_key(id))
        .count();
    let duplicated = applied.values().filter(|times| **times > 1).count();
    let unexpected = applied.keys().filter(|id| !expected.contains(id)).count();
    let inbox_rows = count(&env.db, "SELECT count(*) AS n FROM inbox").await;
    assert!(all_arrived, "lost {lost} of {EVENTS} after the restart");
    assert_eq!((lost, duplicated, unexpected), (0, 0, 0));
    assert_eq!(out_of_order, 0, "each aggregate's events applied in order");
    assert_eq!(inbox_rows, i64::try_from(EVENTS).expect("small"));
    assert!(env.broker.reconnects() >= 1 && consumer_broker.reconnects() >= 1);

    shutdown.cancel();
    consumer.await.expect("consumer task");
    relay.await.expect("relay task");
    consumer_broker.close().await;
    env.cleanup().await;
    drop(lock);
}
