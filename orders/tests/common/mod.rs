//! The test harness: inventory and orders running together on fresh databases and a broker
//! prefix of their own, as in production (two services, two databases, one exchange).
#![allow(dead_code, clippy::unwrap_used)]

use orders::config::OrdersConfig;
use reqwest::{Client, Response, StatusCode};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use shared::auth::{Role, mint_for};
use shared::config::ServiceConfig;
use shared::shutdown::Shutdown;
use std::time::Duration;

#[allow(unused_imports)] // not every test binary uses them all
pub use shared::testing::{eventually, problem, wait_ready};
/// [`shared::testing::scalar`], failing the test when the query does.
pub async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    shared::testing::scalar(db, sql).await.unwrap()
}

pub const SECRET: &str = "test-secret-for-orders";

/// One running instance of a service.
pub struct Instance {
    pub base: String,
    pub shutdown: Shutdown,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Both services (possibly several replicas of orders) on one broker prefix.
pub struct Stack {
    pub prefix: String,
    pub inventory: Instance,
    pub inventory_db: DatabaseConnection,
    pub orders: Vec<Instance>,
    pub orders_url: String,
    pub orders_db: DatabaseConnection,
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

pub fn orders_config(database_url: &str, prefix: &str) -> OrdersConfig {
    OrdersConfig {
        base: base_config("orders", database_url, prefix),
        sweep_interval: Duration::from_millis(100),
        reminder_before: Duration::from_secs(3600),
        idempotency_retention: Duration::from_secs(3600),
    }
}

async fn start_inventory(database_url: &str, prefix: &str, hold_seconds: i64) -> Instance {
    let config = inventory::config::InventoryConfig {
        base: base_config("inventory", database_url, prefix),
        sweep_interval: Duration::from_millis(100),
        idempotency_retention: Duration::from_secs(3600),
        order_hold_seconds: hold_seconds,
    };
    let shutdown = Shutdown::new();
    let app = inventory::build(config, shutdown.clone())
        .await
        .expect("inventory starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    Instance {
        base,
        shutdown,
        task: Some(tokio::spawn(app.run_until_stopped())),
    }
}

pub async fn start_orders(database_url: &str, prefix: &str) -> Instance {
    let shutdown = Shutdown::new();
    let app = orders::build(orders_config(database_url, prefix), shutdown.clone())
        .await
        .expect("orders starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    Instance {
        base,
        shutdown,
        task: Some(tokio::spawn(app.run_until_stopped())),
    }
}

/// Inventory and one orders replica.
pub async fn spawn() -> Stack {
    spawn_with(1, inventory::config::DEFAULT_ORDER_HOLD_SECONDS).await
}

/// Inventory and `replicas` orders instances; order reservations hold `hold_seconds`.
pub async fn spawn_with(replicas: usize, hold_seconds: i64) -> Stack {
    shared::telemetry::init();
    let prefix = shared::testing::unique_prefix();
    let inv_url = shared::testing::fresh_database_url("ordinv");
    let ord_url = shared::testing::fresh_database_url("ord");
    let inventory = start_inventory(&inv_url, &prefix, hold_seconds).await;
    let mut orders = Vec::new();
    for _ in 0..replicas {
        orders.push(start_orders(&ord_url, &prefix).await);
    }
    let stack = Stack {
        orders_url: orders[0].base.clone(),
        prefix,
        inventory,
        inventory_db: shared::db::connect(&inv_url, 4).await.unwrap(),
        orders,
        orders_db: shared::db::connect(&ord_url, 4).await.unwrap(),
        http: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    for base in std::iter::once(&stack.inventory.base).chain(stack.orders.iter().map(|o| &o.base)) {
        wait_ready(&stack.http, base).await;
    }
    stack
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

impl Stack {
    pub async fn send(
        &self,
        method: reqwest::Method,
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

    /// POST to orders (replica `i`).
    pub async fn post_on(&self, i: usize, path: &str, token: &str, body: Value) -> Response {
        let url = format!("{}{}", self.orders[i % self.orders.len()].base, path);
        self.send(reqwest::Method::POST, url, Some(token), Some(body))
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.post_on(0, path, token, body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.send(
            reqwest::Method::GET,
            format!("{}{}", self.orders_url, path),
            Some(token),
            None,
        )
        .await
    }

    pub async fn inv(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        self.send(
            method,
            format!("{}{}", self.inventory.base, path),
            token,
            body,
        )
        .await
    }

    /// A pickup store in inventory, known to orders once its event arrived.
    pub async fn store(&self, id: &str) {
        let r = self
            .inv(
                reqwest::Method::PUT,
                &format!("/v1/stores/{id}"),
                Some(&admin()),
                Some(
                    json!({"name": format!("Magasin {id}"), "latitude": 48.85, "longitude": 2.35,
                             "timezone": "Europe/Paris", "pickup_enabled": true,
                             "low_stock_threshold": 2, "pickup_window_hours": 72}),
                ),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        let sql = format!("SELECT count(*) FROM stores WHERE store_id = '{id}'");
        eventually("orders knows the store", || async {
            self.orders_scalar(&sql).await == 1
        })
        .await;
    }

    pub async fn stock(&self, store: &str, sku: &str, on_hand: i64) {
        let r = self
            .inv(
                reqwest::Method::PUT,
                &format!("/v1/stores/{store}/stock/{sku}"),
                Some(&admin()),
                Some(json!({"on_hand": on_hand})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    /// `(on_hand, reserved)` of a level, from the inventory database.
    pub async fn level(&self, store: &str, sku: &str) -> (i64, i64) {
        let sql = format!(
            "SELECT on_hand, reserved FROM stock_levels WHERE store_id = '{store}' AND sku = '{sku}'"
        );
        let row = self
            .inventory_db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get_by_index(0).unwrap(),
            row.try_get_by_index(1).unwrap(),
        )
    }

    pub async fn orders_scalar(&self, sql: &str) -> i64 {
        scalar(&self.orders_db, sql).await
    }

    pub async fn inventory_scalar(&self, sql: &str) -> i64 {
        scalar(&self.inventory_db, sql).await
    }

    /// Places an order of `lines` (`[(sku, quantity)]`) for `customer_id`; returns its id.
    pub async fn place(&self, customer_id: &str, store: &str, lines: &[(&str, i64)]) -> String {
        let r = self
            .post(
                "/v1/orders",
                &customer(customer_id),
                order_body(store, lines, None),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "{}",
            r.text().await.unwrap()
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "pending");
        v["id"].as_str().unwrap().to_owned()
    }

    /// The order as its customer sees it.
    pub async fn order(&self, id: &str, token: &str) -> Value {
        let r = self.get(&format!("/v1/orders/{id}"), token).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Waits until the order reaches `status`.
    pub async fn wait_status(&self, id: &str, status: &str) {
        let sql = format!("SELECT count(*) FROM orders WHERE id = '{id}' AND status = '{status}'");
        eventually(&format!("order {id} is {status}"), || async {
            self.orders_scalar(&sql).await == 1
        })
        .await;
    }

    /// Staff of `store` moves the order through picking and ready; returns the pickup code
    /// (as the customer sees it).
    pub async fn make_ready(&self, id: &str, store: &str, customer_id: &str) -> String {
        let s = staff(&[store]);
        let r = self
            .post(&format!("/v1/orders/{id}/start-picking"), &s, json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        let r = self
            .post(&format!("/v1/orders/{id}/ready"), &s, json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        let v = self.order(id, &customer(customer_id)).await;
        v["pickup_code"].as_str().unwrap().to_owned()
    }

    /// The inventory invariants hold (reserved = active lines, level = ledger).
    pub async fn assert_inventory_invariants(&self) {
        let broken = self
            .inventory_scalar(
                "SELECT count(*) FROM stock_levels l
                 LEFT JOIN (SELECT store_id, sku, sum(on_hand_delta) AS oh, sum(reserved_delta) AS rs
                            FROM movements GROUP BY 1, 2) m USING (store_id, sku)
                 LEFT JOIN (SELECT rl.store_id, rl.sku, sum(rl.quantity) AS q FROM reservation_lines rl
                            JOIN reservations r ON r.id = rl.reservation_id AND r.status = 'active'
                            GROUP BY 1, 2) a USING (store_id, sku)
                 WHERE l.reserved < 0 OR l.on_hand < 0 OR l.reserved <> coalesce(a.q, 0)
                    OR l.on_hand <> coalesce(m.oh, 0) OR l.reserved <> coalesce(m.rs, 0)",
            )
            .await;
        assert_eq!(broken, 0, "inventory levels break the invariants");
    }

    /// Stops every instance cleanly and deletes the test's queues.
    pub async fn stop(mut self) {
        for o in &mut self.orders {
            o.shutdown.cancel();
            if let Some(t) = o.task.take() {
                t.await.unwrap().unwrap();
            }
        }
        self.inventory.shutdown.cancel();
        if let Some(t) = self.inventory.task.take() {
            t.await.unwrap().unwrap();
        }
        shared::testing::delete_queues(&self.prefix).await;
    }
}

pub fn order_body(store: &str, lines: &[(&str, i64)], hold: Option<&str>) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, q)| json!({"sku": sku, "quantity": q, "unit_price_cents": 250}))
        .collect();
    let mut body = json!({"store_id": store, "lines": lines,
                          "contact": {"email": "alice@example.com", "locale": "fr-FR"}});
    if let Some(h) = hold {
        body["reservation_id"] = json!(h);
    }
    body
}
