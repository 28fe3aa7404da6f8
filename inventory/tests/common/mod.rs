//! The test harness: the inventory service on port 0 against a fresh database and a
//! broker prefix of its own.
#![allow(dead_code, clippy::unwrap_used)]

use inventory::config::InventoryConfig;
use reqwest::{Client, Response, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use shared::auth::{Role, mint_for};
use shared::config::ServiceConfig;
use shared::shutdown::Shutdown;
use std::time::Duration;

#[allow(unused_imports)] // not every test binary uses it
pub use shared::testing::problem;

pub const SECRET: &str = "test-secret-for-inventory";

/// One running instance of the service.
pub struct TestApp {
    pub base: String,
    pub database_url: String,
    pub prefix: String,
    pub db: DatabaseConnection,
    pub http: Client,
    pub shutdown: Shutdown,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn config(database_url: &str, prefix: &str, pool: u32) -> InventoryConfig {
    InventoryConfig {
        base: ServiceConfig {
            service: "inventory".into(),
            database_url: database_url.into(),
            database_pool_size: pool,
            amqp_url: shared::testing::amqp_url(),
            amqp_prefix: prefix.into(),
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            jwt_secret: SECRET.into(),
            jwt_secret_is_default: false,
            body_limit_bytes: 2 * 1024 * 1024,
            http_workers: 1,
        },
        sweep_interval: Duration::from_millis(200),
        idempotency_retention: Duration::from_secs(3600),
        order_hold_seconds: inventory::config::DEFAULT_ORDER_HOLD_SECONDS,
    }
}

/// A fresh database and prefix, and one instance on them.
pub async fn spawn_app() -> TestApp {
    spawn_app_with_pool(6).await
}

pub async fn spawn_app_with_pool(pool: u32) -> TestApp {
    shared::telemetry::init();
    let database_url = shared::testing::fresh_database_url("inv");
    let prefix = shared::testing::unique_prefix();
    spawn_on(&database_url, &prefix, pool).await
}

/// Another instance on the same database and broker prefix (a second replica).
pub async fn spawn_on(database_url: &str, prefix: &str, pool: u32) -> TestApp {
    let shutdown = Shutdown::new();
    let app = inventory::build(config(database_url, prefix, pool), shutdown.clone())
        .await
        .expect("the service starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let task = tokio::spawn(app.run_until_stopped());
    let db = shared::db::connect(database_url, 4).await.unwrap();
    let http = Client::builder()
        .pool_max_idle_per_host(128)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let app = TestApp {
        base,
        database_url: database_url.into(),
        prefix: prefix.into(),
        db,
        http,
        shutdown,
        task: Some(task),
    };
    app.wait_live().await;
    app
}

pub fn token(sub: &str, role: Role, stores: &[&str]) -> String {
    mint_for(SECRET, sub, role, stores, 3600).unwrap()
}

pub fn admin() -> String {
    token("admin-1", Role::Admin, &[])
}

pub fn staff(stores: &[&str]) -> String {
    token("staff-1", Role::Staff, stores)
}

pub fn customer(id: &str) -> String {
    token(id, Role::Customer, &[])
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits until the availability view follows the database (reads are exact).
    pub async fn wait_live(&self) {
        for _ in 0..100 {
            if let Ok(r) = self.http.get(self.url("/health/ready")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("service never became ready");
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Response {
        self.http
            .put(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_keyed(&self, path: &str, token: &str, key: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// Creates a store with a threshold of 2 (admin).
    pub async fn store(&self, id: &str, lat: f64, lon: f64) {
        let r = self
            .put(
                &format!("/v1/stores/{id}"),
                &admin(),
                json!({"name": format!("Store {id}"), "latitude": lat, "longitude": lon,
                       "timezone": "Europe/Paris", "pickup_enabled": true,
                       "low_stock_threshold": 2, "pickup_window_hours": 72}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    /// Sets on_hand by a count (admin).
    pub async fn stock(&self, store: &str, sku: &str, on_hand: i64) {
        let r = self
            .put(
                &format!("/v1/stores/{store}/stock/{sku}"),
                &admin(),
                json!({"on_hand": on_hand}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    pub async fn availability(&self, store: &str, sku: &str) -> Value {
        let r = self
            .get(
                &format!("/v1/availability?store_id={store}&sku={sku}"),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["items"][0].clone()
    }

    pub async fn reserve(&self, token: &str, store: &str, lines: Value) -> Response {
        self.post(
            "/v1/reservations",
            token,
            json!({"store_id": store, "lines": lines, "channel": "web",
                   "reference": "cart-1", "ttl_seconds": 600}),
        )
        .await
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// The quality.md invariants, for every level: 0 <= reserved, reserved = sum of
    /// active lines, and the level = the sum of its ledger.
    pub async fn assert_invariants(&self) {
        let broken = self
            .scalar(
                "SELECT count(*) FROM stock_levels l
                 LEFT JOIN (SELECT store_id, sku, sum(on_hand_delta) AS oh, sum(reserved_delta) AS rs
                            FROM movements GROUP BY 1, 2) m USING (store_id, sku)
                 LEFT JOIN (SELECT rl.store_id, rl.sku, sum(rl.quantity) AS q FROM reservation_lines rl
                            JOIN reservations r ON r.id = rl.reservation_id AND r.status = 'active'
                            GROUP BY 1, 2) a USING (store_id, sku)
                 WHERE l.reserved < 0 OR l.on_hand < 0
                    OR l.reserved <> coalesce(a.q, 0)
                    OR l.on_hand <> coalesce(m.oh, 0) OR l.reserved <> coalesce(m.rs, 0)",
            )
            .await;
        assert_eq!(broken, 0, "levels break the invariants");
    }

    /// Stops the instance cleanly, then deletes the broker queues of the test's prefix
    /// (every service's, as `declare_all` made them): quorum queues are not free.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        shared::testing::delete_queues(&self.prefix).await;
    }
}

/// A queue of the test's own, bound to `routing_key` on the service's events exchange.
pub async fn shared_queue(app: &TestApp, routing_key: &str) -> lapin::Channel {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(
        &shared::testing::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{}probe.{}", app.prefix, uuid::Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            format!("{}clickcollect.events", app.prefix).as_str().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // The connection lives as long as the channel is used.
    std::mem::forget(conn);
    PROBES.lock().unwrap().insert(channel.id(), queue);
    channel
}

static PROBES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<u16, String>>> =
    std::sync::LazyLock::new(Default::default);

/// The name of the queue behind a probe channel.
pub fn probe_queue(channel: &lapin::Channel) -> String {
    PROBES.lock().unwrap().get(&channel.id()).cloned().unwrap()
}

/// The next message on a probe queue (waits up to 10 s), with its AMQP properties checked.
pub async fn next_delivery(channel: &lapin::Channel) -> lapin::message::Delivery {
    let queue = probe_queue(channel);
    for _ in 0..200 {
        let got = channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if let Some(message) = got {
            let delivery = message.delivery;
            let props = &delivery.properties;
            let body: Value = serde_json::from_slice(&delivery.data).unwrap();
            assert_eq!(
                props.content_type().as_ref().map(|s| s.as_str()),
                Some("application/json")
            );
            assert_eq!(props.delivery_mode(), &Some(2));
            assert_eq!(
                props.message_id().as_ref().map(|s| s.to_string()),
                body["id"].as_str().map(str::to_owned)
            );
            assert_eq!(
                props.kind().as_ref().map(|s| s.to_string()),
                body["type"].as_str().map(str::to_owned)
            );
            return delivery;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no event arrived on {queue}");
}

/// The body of [`next_delivery`].
pub async fn next_event(channel: &lapin::Channel) -> Value {
    serde_json::from_slice(&next_delivery(channel).await.data).unwrap()
}

/// The next message on a probe queue if one arrives within `wait` (for "nothing more").
pub async fn event_within(channel: &lapin::Channel, wait: Duration) -> Option<Value> {
    let queue = probe_queue(channel);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let got = channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if let Some(message) = got {
            return Some(serde_json::from_slice(&message.delivery.data).unwrap());
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
