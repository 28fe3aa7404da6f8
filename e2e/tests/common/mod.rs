//! The cross-service test harness: inventory, orders and notifications (any number of
//! replicas of each) in this process, on fresh databases and a broker prefix of their
//! own, with local push services standing in for Web Push, FCM and APNs.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc
)]

use notifications::receivers::{ApnsService, FcmService, WebPushService, WebPushSubscription};
use notifications::worker::RetryPolicy;
use reqwest::{Client, Method, Response, StatusCode};
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use shared::auth::{Role, mint_for};
use shared::config::ServiceConfig;
use shared::shutdown::Shutdown;
use std::time::Duration;

pub use shared::testing::{eventually, problem, wait_ready};
/// [`shared::testing::scalar`], failing the test when the query does.
pub async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    shared::testing::scalar(db, sql).await.unwrap()
}

use uuid::Uuid;

/// The HS256 secret every service of the stack checks tokens with.
pub const SECRET: &str = "test-secret-for-the-whole-stack";
/// The APNs topic (bundle id) the stand-in APNs expects.
pub const APNS_TOPIC: &str = "com.clickcollect.app";

/// One running instance of a service.
pub struct Instance {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Cancel to stop it.
    pub shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Instance {
    /// Stops it and waits for its drain.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// How to build a stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Inventory replicas.
    pub inventory: usize,
    /// Orders replicas.
    pub orders: usize,
    /// Notifications replicas.
    pub notifications: usize,
    /// The delivery worker's retries.
    pub retry: RetryPolicy,
    /// Whether FCM is configured (pointing at the stand-in).
    pub fcm: bool,
    /// Whether APNs is configured (pointing at the stand-in).
    pub apns: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            inventory: 1,
            orders: 1,
            notifications: 1,
            retry: RetryPolicy {
                base: Duration::from_millis(50),
                max: Duration::from_millis(400),
                max_attempts: 4,
            },
            fcm: true,
            apns: true,
        }
    }
}

/// The three services on one broker prefix, and the stand-in push services.
pub struct Stack {
    /// The broker prefix.
    pub prefix: String,
    /// Inventory replicas.
    pub inventory: Vec<Instance>,
    /// Orders replicas.
    pub orders: Vec<Instance>,
    /// Notifications replicas.
    pub notifications: Vec<Instance>,
    /// Databases of the three services.
    pub inventory_db: DatabaseConnection,
    /// The orders database.
    pub orders_db: DatabaseConnection,
    /// The notifications database.
    pub notifications_db: DatabaseConnection,
    /// The database URLs, to start more replicas.
    urls: [String; 3],
    /// Options it was built with.
    options: Options,
    /// The stand-in Web Push service.
    pub webpush: WebPushService,
    /// The stand-in FCM.
    pub fcm: FcmService,
    /// The stand-in APNs.
    pub apns: ApnsService,
    /// A client with a timeout.
    pub http: Client,
}

fn base_config(service: &str, database_url: &str, prefix: &str) -> ServiceConfig {
    ServiceConfig {
        service: service.into(),
        database_url: database_url.into(),
        database_pool_size: 8,
        amqp_url: shared::testing::amqp_url(),
        amqp_prefix: prefix.into(),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        jwt_secret: SECRET.into(),
        jwt_secret_is_default: false,
        body_limit_bytes: 1024 * 1024,
        http_workers: 1,
    }
}

fn instance(
    port: u16,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> Instance {
    Instance {
        base: format!("http://127.0.0.1:{port}"),
        shutdown,
        task: Some(task),
    }
}

impl Stack {
    /// One replica of each service.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// The stack as `options` says.
    pub async fn spawn_with(options: Options) -> Self {
        shared::telemetry::init();
        let prefix = shared::testing::unique_prefix();
        let urls = [
            shared::testing::fresh_database_url("stinv"),
            shared::testing::fresh_database_url("stord"),
            shared::testing::fresh_database_url("stnot"),
        ];
        let webpush = WebPushService::start().await.unwrap();
        let fcm = FcmService::start().await.unwrap();
        let apns = ApnsService::start(APNS_TOPIC).await.unwrap();
        let mut stack = Self {
            inventory_db: shared::db::connect(&urls[0], 4).await.unwrap(),
            orders_db: shared::db::connect(&urls[1], 4).await.unwrap(),
            notifications_db: shared::db::connect(&urls[2], 4).await.unwrap(),
            prefix,
            inventory: Vec::new(),
            orders: Vec::new(),
            notifications: Vec::new(),
            urls,
            options: options.clone(),
            webpush,
            fcm,
            apns,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        for _ in 0..options.inventory {
            stack.add_inventory().await;
        }
        for _ in 0..options.orders {
            stack.add_orders().await;
        }
        for _ in 0..options.notifications {
            stack.add_notifications().await;
        }
        stack
    }

    /// Starts one more inventory replica.
    pub async fn add_inventory(&mut self) {
        let config = inventory::config::InventoryConfig {
            base: base_config("inventory", &self.urls[0], &self.prefix),
            sweep_interval: Duration::from_millis(100),
            idempotency_retention: Duration::from_secs(3600),
            order_hold_seconds: inventory::config::DEFAULT_ORDER_HOLD_SECONDS,
        };
        let shutdown = Shutdown::new();
        let app = inventory::build(config, shutdown.clone())
            .await
            .expect("inventory starts");
        let i = instance(app.port(), shutdown, tokio::spawn(app.run_until_stopped()));
        wait_ready(&self.http, &i.base).await;
        self.inventory.push(i);
    }

    /// Starts one more orders replica.
    pub async fn add_orders(&mut self) {
        let config = orders::config::OrdersConfig {
            base: base_config("orders", &self.urls[1], &self.prefix),
            sweep_interval: Duration::from_millis(100),
            reminder_before: Duration::from_secs(3600),
            idempotency_retention: Duration::from_secs(3600),
        };
        let shutdown = Shutdown::new();
        let app = orders::build(config, shutdown.clone())
            .await
            .expect("orders starts");
        let i = instance(app.port(), shutdown, tokio::spawn(app.run_until_stopped()));
        wait_ready(&self.http, &i.base).await;
        self.orders.push(i);
    }

    /// The notifications configuration of this stack (push services are the stand-ins).
    pub fn notifications_config(&self) -> notifications::config::NotificationsConfig {
        // Web Push needs no address (each subscription names its push service). The VAPID
        // key is the database's, generated by the first replica and shared by all, as in
        // production; the Web Push stand-in is told to insist on it once it is served.
        let mut push = notifications::receivers::config_for(
            None,
            self.options.fcm.then_some(&self.fcm),
            self.options.apns.then_some(&self.apns),
        );
        push.vapid_private_key = None;
        notifications::config::NotificationsConfig {
            base: base_config("notifications", &self.urls[2], &self.prefix),
            push,
            retry: self.options.retry,
            concurrency: 32,
            poll_interval: Duration::from_millis(100),
            lease: Duration::from_secs(30),
        }
    }

    /// Starts one more notifications replica.
    pub async fn add_notifications(&mut self) {
        let shutdown = Shutdown::new();
        let app = notifications::build(self.notifications_config(), shutdown.clone())
            .await
            .expect("notifications starts");
        let i = instance(app.port(), shutdown, tokio::spawn(app.run_until_stopped()));
        wait_ready(&self.http, &i.base).await;
        self.notifications.push(i);
        let key = self.vapid_public_key().await;
        self.webpush.expect_vapid_key(&key);
    }

    /// Sends a request; `token` and `body` when given.
    pub async fn send(
        &self,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// A request to replica `i` (modulo the count) of inventory.
    pub async fn inv(
        &self,
        i: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let base = &self.inventory[i % self.inventory.len()].base;
        self.send(method, format!("{base}{path}"), token, body)
            .await
    }

    /// A request to replica `i` of orders.
    pub async fn ord(
        &self,
        i: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let base = &self.orders[i % self.orders.len()].base;
        self.send(method, format!("{base}{path}"), token, body)
            .await
    }

    /// A request to replica `i` of notifications.
    pub async fn notif(
        &self,
        i: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let base = &self.notifications[i % self.notifications.len()].base;
        self.send(method, format!("{base}{path}"), token, body)
            .await
    }

    /// The served VAPID public key.
    pub async fn vapid_public_key(&self) -> String {
        let r = self
            .notif(0, Method::GET, "/v1/webpush/vapid-public-key", None, None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["public_key"].as_str().unwrap().to_owned()
    }

    /// A pickup store in inventory, once orders and notifications have its event.
    pub async fn store(&self, id: &str, name: &str) {
        let r = self
            .inv(
                0,
                Method::PUT,
                &format!("/v1/stores/{id}"),
                Some(&admin()),
                Some(json!({"name": name, "latitude": 48.85, "longitude": 2.35,
                            "timezone": "Europe/Paris", "pickup_enabled": true,
                            "low_stock_threshold": 2, "pickup_window_hours": 72})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        let sql = format!("SELECT count(*) FROM stores WHERE store_id = '{id}'");
        eventually("orders and notifications know the store", || async {
            scalar(&self.orders_db, &sql).await == 1
                && scalar(&self.notifications_db, &sql).await == 1
        })
        .await;
    }

    /// Sets on_hand by a count.
    pub async fn count(&self, store: &str, sku: &str, on_hand: i64) {
        let r = self
            .inv(
                0,
                Method::PUT,
                &format!("/v1/stores/{store}/stock/{sku}"),
                Some(&admin()),
                Some(json!({"on_hand": on_hand})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    /// Receives `quantity` units (a bulk import line of kind `receipt`).
    pub async fn receipt(&self, store: &str, sku: &str, quantity: i64) {
        let r = self
            .inv(
                0,
                Method::POST,
                "/v1/stock/bulk",
                Some(&admin()),
                Some(json!({"items": [{"store_id": store, "sku": sku, "kind": "receipt", "quantity": quantity}]})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    /// Places an order through orders replica `i`; returns its id.
    pub async fn place_on(
        &self,
        i: usize,
        customer_id: &str,
        store: &str,
        lines: &[(&str, i64)],
        locale: &str,
    ) -> String {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, q)| json!({"sku": sku, "quantity": q, "unit_price_cents": 250}))
            .collect();
        let r = self
            .ord(
                i,
                Method::POST,
                "/v1/orders",
                Some(&customer(customer_id)),
                Some(json!({"store_id": store, "lines": lines,
                            "contact": {"email": "alice@example.com", "locale": locale}})),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "{}",
            r.text().await.unwrap()
        );
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the order reaches `status`.
    pub async fn wait_status(&self, id: &str, status: &str) {
        let sql = format!("SELECT count(*) FROM orders WHERE id = '{id}' AND status = '{status}'");
        eventually(&format!("order {id} is {status}"), || async {
            scalar(&self.orders_db, &sql).await == 1
        })
        .await;
    }

    /// Staff of `store` picks the order and marks it ready, on orders replicas `i` and
    /// `i + 1`; returns the pickup code as its customer sees it.
    pub async fn make_ready_on(
        &self,
        i: usize,
        id: &str,
        store: &str,
        customer_id: &str,
    ) -> String {
        let s = staff(&[store]);
        for (n, step) in ["start-picking", "ready"].iter().enumerate() {
            let r = self
                .ord(
                    i + n,
                    Method::POST,
                    &format!("/v1/orders/{id}/{step}"),
                    Some(&s),
                    Some(json!({})),
                )
                .await;
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "{step}: {}",
                r.text().await.unwrap()
            );
        }
        let r = self
            .ord(
                i,
                Method::GET,
                &format!("/v1/orders/{id}"),
                Some(&customer(customer_id)),
                None,
            )
            .await;
        let v: Value = r.json().await.unwrap();
        v["pickup_code"].as_str().unwrap().to_owned()
    }

    /// Registers a new Web Push subscription of the stand-in service as a device of the
    /// customer; returns the device id and the subscription.
    pub async fn register_webpush(
        &self,
        customer_id: &str,
        locale: Option<&str>,
    ) -> (Uuid, WebPushSubscription) {
        let sub = self.webpush.subscribe();
        let device = Uuid::now_v7();
        let mut body = json!({"kind": "webpush", "endpoint": sub.endpoint,
                              "keys": {"p256dh": sub.p256dh, "auth": sub.auth}});
        if let Some(l) = locale {
            body["locale"] = json!(l);
        }
        let r = self
            .notif(
                0,
                Method::PUT,
                &format!("/v1/customers/{customer_id}/devices/{device}"),
                Some(&customer(customer_id)),
                Some(body),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        (device, sub)
    }

    /// The delivery rows of an order as `(status, attempts)`, oldest first.
    pub async fn deliveries_of(&self, order_id: &str) -> Vec<Value> {
        let r = self
            .notif(
                0,
                Method::GET,
                &format!("/v1/notifications?order_id={order_id}"),
                Some(&admin()),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["items"].as_array().unwrap().clone()
    }

    /// Stops every instance cleanly (notifications, orders, inventory) and deletes the
    /// test's queues.
    pub async fn stop(mut self) {
        for i in self
            .notifications
            .iter_mut()
            .chain(self.orders.iter_mut())
            .chain(self.inventory.iter_mut())
        {
            i.stop().await;
        }
        shared::testing::delete_queues(&self.prefix).await;
    }
}

/// A token of `role` for `sub`.
pub fn token(sub: &str, role: Role, stores: &[&str]) -> String {
    mint_for(SECRET, sub, role, stores, 3600).unwrap()
}

/// An admin token.
pub fn admin() -> String {
    token("admin-1", Role::Admin, &[])
}

/// A staff token for `stores`.
pub fn staff(stores: &[&str]) -> String {
    token("staff-1", Role::Staff, stores)
}

/// A customer token.
pub fn customer(id: &str) -> String {
    token(id, Role::Customer, &[])
}
