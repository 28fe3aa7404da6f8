//! Order ready → push received, over the three services: staff mark an order ready at
//! orders (200), orders publishes `orders.order.ready_for_pickup` through its outbox, the
//! notifications service writes the delivery in its consumer's transaction and its worker
//! pushes it (RFC 8291 encryption, VAPID) to a local Web Push service in this process,
//! which verifies the JWT and decrypts the payload. Latency runs from the moment the
//! `ready` request was sent to the moment the push service accepted the push.

use crate::bench::api::{failure, transport};
use crate::bench::cli::Options;
use crate::bench::driver::{micros, quantile_ms};
use crate::bench::fixture::Fixture;
use crate::bench::orders::stores_known;
use crate::bench::report::{Figure, ScenarioReport};
use crate::bench::scenarios::{load, sku, store_id};
use futures::StreamExt;
use hdrhistogram::Histogram;
use notifications::receivers::WebPushService;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// Orders marked ready per second.
pub const RATE_PER_S: u64 = 50;
/// Customers (each with one browser subscribed).
const CUSTOMERS: usize = 64;
const STORES: usize = 4;
const SKUS: usize = 100;
/// How long pushes may trail the last ready before the missing ones count as lost.
const GRACE: Duration = Duration::from_secs(15);

/// Runs the scenario: orders and notifications beside the fixture's inventory.
pub async fn run(fixture: &Fixture, options: &Options) -> anyhow::Result<ScenarioReport> {
    let webpush = WebPushService::start().await?;
    let (orders, orders_db) = fixture.start_beside("orders", options, Vec::new()).await?;
    let env = vec![
        ("PUSH_ALLOW_LOCAL_ENDPOINTS".to_owned(), "true".to_owned()),
        ("PUSH_POLL_INTERVAL_MS".to_owned(), "500".to_owned()),
    ];
    let (notifications, notifications_db) =
        match fixture.start_beside("notifications", options, env).await {
            Ok(started) => started,
            Err(err) => {
                let mut report = ScenarioReport {
                    figure: Figure::empty("push"),
                    baseline_name: None,
                    notes: Vec::new(),
                    failed: true,
                };
                fixture
                    .stop_beside("orders", orders, orders_db, &mut report)
                    .await?;
                return Err(err);
            }
        };
    let result = measure(
        fixture,
        options,
        &webpush,
        &orders.base_url,
        &notifications.base_url,
    )
    .await;
    let mut report = result?;
    fixture
        .stop_beside(
            "notifications",
            notifications,
            notifications_db,
            &mut report,
        )
        .await?;
    fixture
        .stop_beside("orders", orders, orders_db, &mut report)
        .await?;
    Ok(report)
}

async fn measure(
    fixture: &Fixture,
    options: &Options,
    webpush: &WebPushService,
    orders_url: &str,
    notifications_url: &str,
) -> anyhow::Result<ScenarioReport> {
    let http = fixture.api.http.clone();
    let key: serde_json::Value = http
        .get(format!("{notifications_url}/v1/webpush/vapid-public-key"))
        .send()
        .await?
        .json()
        .await?;
    webpush.expect_vapid_key(key["public_key"].as_str().unwrap_or_default());

    let stores: Vec<String> = (1..=STORES).map(store_id).collect();
    let skus: Vec<String> = (1..=SKUS).map(sku).collect();
    let mut notes = vec![load(fixture, &stores, &skus, 1_000_000).await?];
    notes.push(fixture.settle().await);
    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|n| fixture.tokens.customer(n))
        .collect::<anyhow::Result<_>>()?;
    for (n, token) in customers.iter().enumerate() {
        let sub = webpush.subscribe();
        let r = http
            .put(format!(
                "{notifications_url}/v1/customers/bench-customer-{n}/devices/{}",
                uuid::Uuid::now_v7()
            ))
            .bearer_auth(token)
            .json(
                &serde_json::json!({"kind": "webpush", "endpoint": sub.endpoint,
                                      "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}),
            )
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            anyhow::bail!("registering a device: {}", failure(r).await);
        }
    }
    let staff = fixture.tokens.mint("bench-staff", "staff", &stores)?;
    let body = |n: usize| {
        serde_json::json!({"store_id": &stores[n % STORES],
                           "lines": [{"sku": &skus[(n * 31) % SKUS], "quantity": 1, "unit_price_cents": 999}],
                           "contact": {"locale": "fr-FR"}})
    };
    let warm = Instant::now();
    while !stores_known(&http, orders_url, &customers[0], &stores, &body).await {
        if warm.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the orders service never took an order");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Orders to mark ready, placed and picked beforehand.
    let total = usize::try_from(RATE_PER_S * options.duration.as_secs())?;
    eprintln!("[push] placing and picking {total} orders");
    let placed: Vec<Result<String, String>> = futures::stream::iter(0..total)
        .map(|n| {
            let http = http.clone();
            let token = customers[n % CUSTOMERS].clone();
            let (body, orders_url, staff) = (body(n), orders_url.to_owned(), staff.clone());
            async move {
                let r = http
                    .post(format!("{orders_url}/v1/orders"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| transport(&e))?;
                let v: serde_json::Value = r.json().await.map_err(|e| transport(&e))?;
                let id = v["id"].as_str().ok_or("no id")?.to_owned();
                // Picking needs the order confirmed: retry while the saga runs.
                for _ in 0..200 {
                    let r = http
                        .post(format!("{orders_url}/v1/orders/{id}/start-picking"))
                        .bearer_auth(&staff)
                        .json(&serde_json::json!({}))
                        .send()
                        .await
                        .map_err(|e| transport(&e))?;
                    if r.status().as_u16() == 200 {
                        return Ok(id);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(format!("order {id} never confirmed"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let ids: Vec<String> = placed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    notes.push(format!("{} of {total} orders placed and picked", ids.len()));
    // Let the confirmed pushes drain first: only ready pushes are timed.
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!(
        "[push] {RATE_PER_S} orders ready/s for {:?}",
        options.duration
    );
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE_PER_S as f64));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(ids.len());
    let started = Instant::now();
    for id in &ids {
        ticker.tick().await;
        let request = http
            .post(format!("{orders_url}/v1/orders/{id}/ready"))
            .bearer_auth(&staff)
            .json(&serde_json::json!({}));
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = match request.send().await {
                Ok(r) if r.status().as_u16() == 200 => Ok(()),
                Ok(r) => Err(failure(r).await),
                Err(e) => Err(transport(&e)),
            };
            (id, sent, ok)
        }));
    }
    let send_elapsed = started.elapsed();
    let mut readied = Vec::with_capacity(handles.len());
    for handle in handles {
        readied.push(handle.await?);
    }
    let wanted = readied.iter().filter(|r| r.2.is_ok()).count();
    let ready_pushes = || {
        webpush
            .received()
            .into_iter()
            .filter(|p| p.data.get("event_type").map(String::as_str) == Some("ready_for_pickup"))
            .collect::<Vec<_>>()
    };
    let waited = Instant::now();
    while waited.elapsed() < GRACE && ready_pushes().len() < wanted {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pushed_at: HashMap<String, Instant> = HashMap::new();
    let mut duplicated = 0u64;
    for push in ready_pushes() {
        if let Some(order) = push.data.get("order_id")
            && pushed_at.insert(order.clone(), push.at).is_some()
        {
            duplicated += 1;
        }
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut errors = duplicated;
    let mut failures = Vec::new();
    for (id, sent, ok) in &readied {
        match (ok, pushed_at.get(id)) {
            (Ok(()), Some(at)) => {
                histogram.record(micros(at.saturating_duration_since(*sent)).max(1))?
            }
            (Ok(()), None) => errors += 1,
            (Err(e), _) => {
                errors += 1;
                if failures.len() < 3 {
                    failures.push(e.clone());
                }
            }
        }
    }
    let violations = webpush.violations();
    notes.push(format!(
        "{} orders marked ready in {:.1} s, {} ready pushes received and decrypted, {duplicated} duplicated, {} protocol violations{}",
        readied.len(),
        send_elapsed.as_secs_f64(),
        histogram.len(),
        violations.len(),
        if failures.is_empty() { String::new() } else { format!("; e.g. {}", failures.join(" | ")) }
    ));
    errors += violations.len() as u64;
    let p99 = quantile_ms(&histogram, 0.99);
    notes.push(format!(
        "target: p99 ≤ 500 ms → {}",
        match p99 {
            Some(v) if v <= 500.0 => format!("met ({v:.1} ms)"),
            Some(v) => format!("MISSED ({v:.1} ms)"),
            None => "no figure".to_owned(),
        }
    ));
    Ok(ScenarioReport {
        figure: Figure {
            ours_per_s: Some(histogram.len() as f64 / send_elapsed.as_secs_f64()),
            p50_ms: quantile_ms(&histogram, 0.5),
            p99_ms: p99,
            errors: Some(errors),
            ..Figure::empty("push")
        }
        .with_ratio(),
        baseline_name: None,
        notes,
        failed: false,
    })
}
