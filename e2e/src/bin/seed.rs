//! Loads the demo data through the inventory API: a dozen Paris stores, a few thousand
//! SKUs with stock, and reservations in each state. `seed [INVENTORY_URL]`.

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
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8081".to_owned());
    let secret = env_or("AUTH_JWT_SECRET", DEV_JWT_SECRET);
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
    tracing_free_print(&format!(
        "seeded {} stores, {} stock levels, 3 reservations (active, committed, released)",
        STORES.len(),
        items.len()
    ))
}

fn tracing_free_print(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}
