//! Loads the demo data through the public APIs: a dozen Paris stores, a few thousand SKUs
//! with stock, reservations in each state, a Web Push device of the demo customer (when
//! `DEMO_WEBPUSH_SUBSCRIPTION` names a subscription file of the local push receiver), and
//! click-and-collect orders in each state.
//! `seed [INVENTORY_URL] [ORDERS_URL] [NOTIFICATIONS_URL]`.

use serde_json::{Value, json};
use shared::auth::{Role, mint_for};
use shared::config::{DEV_JWT_SECRET, env_or};

/// Store code, name, latitude, longitude.
const STORES: &[(&str, &str, f64, f64)] = &[
    ("PAR-LOUVRE", "Paris Louvre", 48.8606, 2.3376),
    ("PAR-BASTILLE", "Paris Bastille", 48.8532, 2.3692),
    ("PAR-MONTPARNASSE", "Paris Montparnasse", 48.8421, 2.3219),
    ("PAR-LADEFENSE", "La Défense", 48.8918, 2.2380),
    ("PAR-BELLEVILLE", "Belleville", 48.8722, 2.3767),
    ("PAR-MONTMARTRE", "Montmartre", 48.8867, 2.3431),
    ("PAR-NATION", "Nation", 48.8483, 2.3958),
    ("PAR-AUTEUIL", "Auteuil", 48.8475, 2.2650),
    ("PAR-BERCY", "Bercy", 48.8386, 2.3822),
    ("VERSAILLES", "Versailles", 48.8049, 2.1204),
    ("SAINT-DENIS", "Saint-Denis", 48.9362, 2.3574),
    ("PAR-DEPOT", "Paris Depot (no pickup)", 48.9000, 2.4000),
];

const SKUS: usize = 3000;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let device_only = std::env::args().any(|a| a == "--device-only");
    let urls: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let url = |n: usize, default: &str| urls.get(n).cloned().unwrap_or_else(|| default.to_owned());
    let base = url(0, "http://127.0.0.1:8081");
    let orders_url = url(1, "http://127.0.0.1:8082");
    let notifications_url = url(2, "http://127.0.0.1:8083");
    let secret = env_or("AUTH_JWT_SECRET", DEV_JWT_SECRET);
    if device_only {
        let customer = mint_for(&secret, "demo-customer", Role::Customer, &[], 3600)?;
        let device = seed_device(
            &reqwest::Client::new(),
            &notifications_url,
            &customer,
            false,
        )
        .await?;
        return tracing_free_print(&device);
    }
    let admin = mint_for(&secret, "demo-admin", Role::Admin, &[], 3600)?;
    let http = reqwest::Client::new();
    for (id, name, lat, lon) in STORES {
        let r = http
            .put(format!("{base}/v1/stores/{id}"))
            .bearer_auth(&admin)
            .json(
                &json!({"name": name, "latitude": lat, "longitude": lon, "timezone": "Europe/Paris",
                          "pickup_enabled": *id != "PAR-DEPOT", "low_stock_threshold": 3,
                          "pickup_window_hours": 72}),
            )
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "store {id}: {}", r.text().await?);
    }
    let mut items = Vec::new();
    for (s, (id, ..)) in STORES.iter().enumerate() {
        for k in 0..SKUS {
            // Deterministic spread: some SKUs out of stock, some low, most in stock.
            let quantity = ((k * 7 + s * 13) % 40) as i64 - 5;
            items.push(
                json!({"store_id": id, "sku": format!("SKU-{k:05}"), "kind": "count",
                              "quantity": quantity.max(0)}),
            );
        }
    }
    for chunk in items.chunks(9000) {
        let r = http
            .post(format!("{base}/v1/stock/bulk"))
            .bearer_auth(&admin)
            .json(&json!({"items": chunk, "reference": "demo-seed"}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "bulk: {}", r.text().await?);
    }
    // Reservations: active, committed, released.
    let customer = mint_for(&secret, "demo-customer", Role::Customer, &[], 3600)?;
    let staff = mint_for(&secret, "demo-staff", Role::Staff, &["PAR-LOUVRE"], 3600)?;
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = http
            .post(format!("{base}/v1/reservations"))
            .bearer_auth(&customer)
            .json(&json!({"store_id": "PAR-LOUVRE", "lines": [{"sku": format!("SKU-0000{}", n + 1), "quantity": 1}],
                          "channel": "web", "reference": format!("demo-cart-{n}"), "ttl_seconds": 86400}))
            .send()
            .await?;
        let body: Value = r.json().await?;
        ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    }
    if let [_, committed, released] = ids.as_slice() {
        http.post(format!("{base}/v1/reservations/{committed}/commit"))
            .bearer_auth(&staff)
            .send()
            .await?;
        http.post(format!("{base}/v1/reservations/{released}/release"))
            .bearer_auth(&customer)
            .send()
            .await?;
    }
    let device = seed_device(&http, &notifications_url, &customer, true).await?;
    let orders = seed_orders(&http, &orders_url, &customer, &staff).await?;
    tracing_free_print(&format!(
        "seeded {} stores, {} stock levels, 3 reservations (active, committed, released), \
         orders: {orders}; {device}",
        STORES.len(),
        items.len()
    ))
}

/// Registers the local push receiver's subscription as the demo customer's browser, so
/// the demo orders' pushes arrive there.
async fn seed_device(
    http: &reqwest::Client,
    base: &str,
    customer: &str,
    with_alert: bool,
) -> anyhow::Result<String> {
    let Ok(path) = std::env::var("DEMO_WEBPUSH_SUBSCRIPTION") else {
        return Ok("no Web Push device (DEMO_WEBPUSH_SUBSCRIPTION unset)".to_owned());
    };
    let sub: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    // A fixed id: seeding again replaces the device instead of adding one.
    let device = "0193a000-0000-7000-8000-00000000d3e0";
    let r = http
        .put(format!(
            "{base}/v1/customers/demo-customer/devices/{device}"
        ))
        .bearer_auth(customer)
        .json(
            &json!({"kind": "webpush", "endpoint": sub["endpoint"], "locale": "fr-FR",
                      "keys": {"p256dh": sub["p256dh"], "auth": sub["auth"]}}),
        )
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "device: {}", r.text().await?);
    if !with_alert {
        return Ok(format!(
            "the Web Push device of demo-customer is {}",
            sub["endpoint"]
        ));
    }
    let r = http
        .post(format!("{base}/v1/customers/demo-customer/stock-alerts"))
        .bearer_auth(customer)
        .json(&json!({"store_id": "PAR-LOUVRE", "sku": "SKU-00000", "product_name": "Demo product 0"}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "stock alert: {}", r.text().await?);
    Ok(format!(
        "a Web Push device of demo-customer at {}, a back-in-stock alert on SKU-00000",
        sub["endpoint"]
    ))
}

/// Orders at PAR-LOUVRE left in each state: pending→confirmed, picking, ready (with its
/// code), collected, cancelled, and one rejected for shortage.
async fn seed_orders(
    http: &reqwest::Client,
    base: &str,
    customer: &str,
    staff: &str,
) -> anyhow::Result<String> {
    // The orders service learns the stores from inventory's events: wait for PAR-LOUVRE.
    let mut placed = Vec::new();
    for (n, (sku, quantity)) in [
        ("SKU-00010", 1),
        ("SKU-00011", 1),
        ("SKU-00013", 2),
        ("SKU-00014", 1),
        ("SKU-00016", 1),
        ("SKU-00005", 10_000),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"store_id": "PAR-LOUVRE",
                          "lines": [{"sku": sku, "quantity": quantity, "unit_price_cents": 1299}],
                          "contact": {"email": "demo@example.com", "locale": if n % 2 == 0 { "fr-FR" } else { "en" }}});
        let mut id = None;
        for _ in 0..100 {
            let r = http
                .post(format!("{base}/v1/orders"))
                .bearer_auth(customer)
                .header("Idempotency-Key", format!("demo-order-{n}"))
                .json(&body)
                .send()
                .await?;
            if r.status().as_u16() == 202 {
                let v: Value = r.json().await?;
                id = v["id"].as_str().map(str::to_owned);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        placed.push(id.ok_or_else(|| anyhow::anyhow!("orders never accepted a demo order"))?);
    }
    // Wait for inventory's answers.
    for id in &placed {
        for _ in 0..100 {
            let v: Value = http
                .get(format!("{base}/v1/orders/{id}"))
                .bearer_auth(customer)
                .send()
                .await?
                .json()
                .await?;
            if v["status"] != "pending" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let step = async |id: &str, action: &str, body: Value| -> anyhow::Result<Value> {
        let r = http
            .post(format!("{base}/v1/orders/{id}/{action}"))
            .bearer_auth(staff)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "{action} {id}: {}",
            r.text().await?
        );
        Ok(r.json().await?)
    };
    // [0] stays confirmed; [1] picking; [2] ready; [3] collected; [4] cancelled; [5] rejected.
    step(&placed[1], "start-picking", json!({})).await?;
    for id in &placed[2..4] {
        step(id, "start-picking", json!({})).await?;
        step(id, "ready", json!({})).await?;
    }
    let ready: Value = http
        .get(format!("{base}/v1/orders/{}", placed[3]))
        .bearer_auth(customer)
        .send()
        .await?
        .json()
        .await?;
    let code = ready["pickup_code"].as_str().unwrap_or_default().to_owned();
    step(&placed[3], "collect", json!({"pickup_code": code})).await?;
    step(
        &placed[4],
        "cancel",
        json!({"reason": "demo: customer called"}),
    )
    .await?;
    Ok(format!(
        "confirmed {}, picking {}, ready {}, collected {}, cancelled {}, rejected {}",
        placed[0], placed[1], placed[2], placed[3], placed[4], placed[5]
    ))
}

fn tracing_free_print(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}
