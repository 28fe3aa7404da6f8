//! Order placed → order confirmed over the saga, paced at 100 orders/s (open loop): the
//! orders service takes the order (202), publishes `orders.order.placed` through its
//! outbox, inventory reserves and answers, orders confirms and publishes
//! `orders.order.confirmed`. Latency runs from the moment the checkout request was sent to
//! the moment another process sees `orders.order.confirmed`.

use crate::bench::api::{failure, transport};
use crate::bench::broker::{Listener, events_exchange};
use crate::bench::cli::Options;
use crate::bench::driver::{micros, quantile_ms};
use crate::bench::fixture::Fixture;
use crate::bench::report::{Figure, ScenarioReport};
use crate::bench::scenarios::{load, sku, store_id};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// Orders per second, as quality.md asks.
pub const RATE_PER_S: u64 = 100;
/// Stores and SKUs ordered from (random lines), with stock that never runs out.
const STORES: usize = 10;
const SKUS: usize = 200;
const PLENTY: i64 = 1_000_000;
/// How long confirmations may trail the last order before the missing ones count as lost.
const GRACE: Duration = Duration::from_secs(15);

/// One paced checkout as the sender saw it.
struct Placed {
    sent: Instant,
    id: Result<String, String>,
}

/// Runs the scenario: a second service (orders) on its own database, next to the
/// fixture's inventory, on the same broker prefix.
pub async fn run(fixture: &Fixture, options: &Options) -> anyhow::Result<ScenarioReport> {
    let exchange = events_exchange(&fixture.amqp_prefix);
    let listener = tokio::time::timeout(
        Duration::from_secs(60),
        Listener::bind(&fixture.amqp_url, &exchange, "orders.order.*"),
    )
    .await
    .map_err(|_| anyhow::anyhow!("binding a queue on {exchange} took over 60 s"))??;
    let (orders, database) = fixture.start_beside("orders", options, Vec::new()).await?;
    let result = measure(fixture, options, &listener, &orders.base_url).await;
    let mut report = result?;
    fixture
        .stop_beside("orders", orders, database, &mut report)
        .await?;
    listener.close().await;
    Ok(report)
}

async fn measure(
    fixture: &Fixture,
    options: &Options,
    listener: &Listener,
    orders_url: &str,
) -> anyhow::Result<ScenarioReport> {
    let stores: Vec<String> = (1..=STORES).map(store_id).collect();
    let skus: Vec<String> = (1..=SKUS).map(sku).collect();
    let mut notes = vec![load(fixture, &stores, &skus, PLENTY).await?];
    notes.push(fixture.settle().await);
    let http = fixture.api.http.clone();
    let customers: Vec<String> = (0..64)
        .map(|n| fixture.tokens.customer(n))
        .collect::<anyhow::Result<_>>()?;
    let body = |n: usize| {
        let store = &stores[n % STORES];
        let sku = &skus[(n * 7919) % SKUS];
        serde_json::json!({"store_id": store,
                           "lines": [{"sku": sku, "quantity": 1, "unit_price_cents": 999}],
                           "contact": {"locale": "fr-FR"}})
    };
    // The orders service learns the stores from inventory's events: wait until it takes one.
    let warm = Instant::now();
    loop {
        let r = http
            .post(format!("{orders_url}/v1/orders"))
            .bearer_auth(&customers[0])
            .json(&body(0))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().as_u16() == 202)
            && stores_known(&http, orders_url, &customers[0], &stores, &body).await
        {
            break;
        }
        if warm.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the orders service never took an order");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen_before = listener
        .received
        .lock()
        .map(|r| r.orders.len())
        .unwrap_or(0);

    eprintln!("[orders] {RATE_PER_S} orders/s for {:?}", options.duration);
    let total = usize::try_from(RATE_PER_S * options.duration.as_secs())?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE_PER_S as f64));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total);
    let started = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let request = http
            .post(format!("{orders_url}/v1/orders"))
            .bearer_auth(&customers[n % customers.len()])
            .json(&body(n + 1));
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            let id = match request.send().await {
                Ok(r) if r.status().as_u16() == 202 => r
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|e| transport(&e))
                    .and_then(|v| {
                        v["id"]
                            .as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| "no id".to_owned())
                    }),
                Ok(r) => Err(failure(r).await),
                Err(e) => Err(transport(&e)),
            };
            Placed { sent, id }
        }));
    }
    let send_elapsed = started.elapsed();
    let mut placed = Vec::with_capacity(total);
    for handle in handles {
        placed.push(handle.await?);
    }
    let wanted = placed.iter().filter(|p| p.id.is_ok()).count();
    let waited = Instant::now();
    while waited.elapsed() < GRACE {
        let confirmed = listener
            .received
            .lock()
            .map(|r| {
                r.orders[seen_before..]
                    .iter()
                    .filter(|e| e.event_type == "orders.order.confirmed")
                    .count()
            })
            .unwrap_or(0);
        if confirmed >= wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirmed_at: HashMap<String, Instant> = listener
        .received
        .lock()
        .map(|r| {
            r.orders
                .iter()
                .filter(|e| e.event_type == "orders.order.confirmed")
                .map(|e| (e.order_id.clone(), e.at))
                .collect()
        })
        .unwrap_or_default();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut errors = 0u64;
    let mut failures: Vec<String> = Vec::new();
    for p in &placed {
        match &p.id {
            Ok(id) => match confirmed_at.get(id) {
                Some(at) => {
                    histogram.record(micros(at.saturating_duration_since(p.sent)).max(1))?
                }
                None => errors += 1,
            },
            Err(e) => {
                errors += 1;
                if failures.len() < 3 {
                    failures.push(e.clone());
                }
            }
        }
    }
    let confirmed = histogram.len();
    notes.push(format!(
        "{total} orders sent in {:.1} s, {confirmed} confirmed seen on the broker, {errors} not (rejected, refused or lost){}",
        send_elapsed.as_secs_f64(),
        if failures.is_empty() { String::new() } else { format!("; e.g. {}", failures.join(" | ")) }
    ));
    let p99 = quantile_ms(&histogram, 0.99);
    notes.push(format!(
        "target: p99 ≤ 250 ms → {}",
        match p99 {
            Some(v) if v <= 250.0 => format!("met ({v:.1} ms)"),
            Some(v) => format!("MISSED ({v:.1} ms)"),
            None => "no figure".to_owned(),
        }
    ));
    Ok(ScenarioReport {
        figure: Figure {
            ours_per_s: Some(confirmed as f64 / send_elapsed.as_secs_f64()),
            p50_ms: quantile_ms(&histogram, 0.5),
            p99_ms: p99,
            errors: Some(errors),
            ..Figure::empty("orders")
        }
        .with_ratio(),
        baseline_name: None,
        notes,
        failed: false,
    })
}

/// Whether the orders service takes an order at every store (it learnt them all).
pub(crate) async fn stores_known(
    http: &reqwest::Client,
    orders_url: &str,
    token: &str,
    stores: &[String],
    body: &impl Fn(usize) -> serde_json::Value,
) -> bool {
    for n in 0..stores.len() {
        let ok = http
            .post(format!("{orders_url}/v1/orders"))
            .bearer_auth(token)
            .json(&body(n))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 202);
        if !ok {
            return false;
        }
    }
    true
}
