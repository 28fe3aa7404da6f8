//! Stock change → `inventory.stock.changed` seen by another process, paced at 200 changes/s
//! (open loop), latency from the moment each HTTP change was sent.

use crate::bench::broker::{Listener, events_exchange};
use crate::bench::cli::{Options, Scenario};
use crate::bench::driver::{Outcome, Tally, micros, quantile_ms};
use crate::bench::fixture::Fixture;
use crate::bench::report::{Figure, ScenarioReport};
use crate::bench::scenarios::{load, sku, store_id};
use hdrhistogram::Histogram;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

/// Stock changes per second, as quality.md asks.
pub const RATE_PER_S: u64 = 200;
/// The routing key listened to.
const STOCK_CHANGED: &str = "inventory.stock.changed";
/// Stores in this scenario's catalogue.
const STORES: usize = 20;
/// SKUs per store: 2,000 levels, so one level changes at most every 10 s and every change
/// is told apart by (store, sku, on_hand).
const SKUS: usize = 100;
/// Stock each level starts with; each change adds one.
const ON_HAND: i64 = 1_000;
/// Most changes in flight before the pacer counts one as skipped.
const MAX_IN_FLIGHT: usize = 512;
/// How long events may trail the last change before the missing ones count as lost.
const GRACE: Duration = Duration::from_secs(10);

/// A stock level and the on_hand one change leaves it with.
type ChangeKey = (String, String, i64);

/// One paced change, as the sender saw it.
struct Sent {
    /// Which change.
    key: ChangeKey,
    /// When the request went out.
    sent: Instant,
    /// When its answer came back.
    returned: Instant,
    /// How it ended.
    outcome: Outcome,
}

/// Runs the events scenario on a listener bound before any data is loaded.
pub async fn run(fixture: &Fixture, options: &Options) -> anyhow::Result<ScenarioReport> {
    let exchange = events_exchange(&fixture.amqp_prefix);
    let listener = tokio::time::timeout(
        Duration::from_secs(60),
        Listener::bind(&fixture.amqp_url, &exchange, STOCK_CHANGED),
    )
    .await
    .map_err(|_| anyhow::anyhow!("binding a queue on {exchange} took over 60 s"))??;
    let result = measure(fixture, options, &listener, &exchange).await;
    listener.close().await;
    result
}

async fn measure(
    fixture: &Fixture,
    options: &Options,
    listener: &Listener,
    exchange: &str,
) -> anyhow::Result<ScenarioReport> {
    let stores: Vec<String> = (1..=STORES).map(store_id).collect();
    let skus: Vec<String> = (1..=SKUS).map(sku).collect();
    let mut notes = vec![load(fixture, &stores, &skus, ON_HAND).await?];
    let levels: Vec<(String, String)> = stores
        .iter()
        .flat_map(|s| skus.iter().map(move |k| (s.clone(), k.clone())))
        .collect();

    // Let the load's own events through first, so they do not queue ahead of ours.
    let drained = Instant::now();
    let mut last = (listener.changes_seen(), Instant::now());
    while listener.changes_seen() < levels.len()
        && last.1.elapsed() < Duration::from_secs(3)
        && drained.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = listener.changes_seen();
        if seen != last.0 {
            last = (seen, Instant::now());
        }
    }
    let load_events = listener.changes_seen();
    notes.push(format!(
        "loading produced {load_events} {STOCK_CHANGED} events on {exchange} for {} levels in {:.1} s{}",
        levels.len(),
        drained.elapsed().as_secs_f64(),
        if load_events < levels.len() { " (FEWER than levels)" } else { "" }
    ));
    notes.push(fixture.settle().await);

    eprintln!("[events] {RATE_PER_S} changes/s for {:?}", options.duration);
    let total = RATE_PER_S * options.duration.as_secs();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE_PER_S as f64));
    // Open loop: a late tick is sent at once, so the rate holds whatever the answers do.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut skipped = 0u64;
    let mut handles = Vec::with_capacity(usize::try_from(total)?);
    let started = Instant::now();
    for i in 0..usize::try_from(total)? {
        ticker.tick().await;
        let (store, sku) = levels[i % levels.len()].clone();
        let expect = ON_HAND + i64::try_from(i / levels.len())? + 1;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (api, token) = (fixture.api.clone(), fixture.admin.clone());
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let outcome = api.adjust(&token, &store, &sku, 1).await;
            Sent {
                key: (store, sku, expect),
                sent,
                returned: Instant::now(),
                outcome,
            }
        }));
    }
    let send_elapsed = started.elapsed();
    let mut http = Tally::new()?;
    let mut changes = Vec::with_capacity(handles.len());
    for handle in handles {
        let change = handle.await?;
        http.record(change.outcome.clone(), change.returned - change.sent);
        changes.push(change);
    }
    let expected: HashMap<&ChangeKey, &Sent> = changes
        .iter()
        .filter(|c| c.outcome == Outcome::Done)
        .map(|c| (&c.key, c))
        .collect();

    // Wait for the stragglers.
    let grace = Instant::now();
    while grace.elapsed() < GRACE {
        let arrived = {
            let received = listener
                .received
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            let keys: HashSet<ChangeKey> = received
                .changes
                .iter()
                .map(|c| (c.store_id.clone(), c.sku.clone(), c.on_hand))
                .collect();
            expected.keys().filter(|k| keys.contains(**k)).count()
        };
        if arrived == expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut from_sent = Histogram::<u64>::new_with_bounds(1, 300_000_000, 3)?;
    let mut from_returned = Histogram::<u64>::new_with_bounds(1, 300_000_000, 3)?;
    let (mut matched, mut duplicates, mut unexpected, mut before_answer) = (0u64, 0u64, 0u64, 0u64);
    let unreadable;
    {
        let received = listener
            .received
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut first_seen: HashSet<&ChangeKey> = HashSet::new();
        for change in &received.changes {
            let key = (change.store_id.clone(), change.sku.clone(), change.on_hand);
            match expected.get_key_value(&key) {
                Some((key, sent)) => {
                    if !first_seen.insert(key) {
                        duplicates += 1;
                        continue;
                    }
                    matched += 1;
                    from_sent
                        .saturating_record(micros(change.at.saturating_duration_since(sent.sent)));
                    from_returned.saturating_record(micros(
                        change.at.saturating_duration_since(sent.returned),
                    ));
                    if change.at < sent.returned {
                        before_answer += 1;
                    }
                }
                None if change.on_hand > ON_HAND => unexpected += 1,
                None => {}
            }
        }
        unreadable = received.unreadable.clone();
    }
    let lost = u64::try_from(expected.len())? - matched;

    notes.push(format!(
        "ours: {} changes sent as POST /v1/stores/{{s}}/stock/{{sku}}/adjustments {{delta: 1}} over {:.1} s \
         ({:.0}/s, {} done, {} failed, {skipped} skipped for {MAX_IN_FLIGHT} in flight; HTTP p99 {})",
        changes.len(),
        send_elapsed.as_secs_f64(),
        changes.len() as f64 / send_elapsed.as_secs_f64(),
        http.done,
        http.failed,
        http.quantile_ms(0.99).map_or("n/a".into(), |p| format!("{p:.1} ms")),
    ));
    notes.extend(
        http.failure_lines()
            .into_iter()
            .map(|l| format!("  failure: {l}")),
    );
    notes.push(format!(
        "events: {matched} matched by (store_id, sku, on_hand), {lost} lost (not received {GRACE:?} after the last change), {duplicates} duplicates, \
         {unexpected} unexpected, {} unreadable; latency measured from the moment the HTTP request was SENT \
         (from its answer instead: p50 {}, p99 {}; {before_answer} events arrived before the HTTP answer)",
        unreadable.len(),
        fmt_ms(quantile_ms(&from_returned, 0.5)),
        fmt_ms(quantile_ms(&from_returned, 0.99)),
    ));
    notes.extend(
        unreadable
            .iter()
            .take(5)
            .map(|u| format!("  unreadable: {u}")),
    );

    let figure = Figure {
        ours_per_s: Some(matched as f64 / send_elapsed.as_secs_f64()),
        p50_ms: quantile_ms(&from_sent, 0.5),
        p99_ms: quantile_ms(&from_sent, 0.99),
        errors: Some(lost + http.failed + skipped),
        ..Figure::empty(Scenario::Events.name())
    }
    .with_ratio();
    let p99_ok = figure.p99_ms.is_some_and(|p| p <= 100.0);
    notes.push(format!(
        "target (quality.md): p99 ≤ 100 ms at {RATE_PER_S} changes/s, nothing lost: {}",
        if p99_ok && lost == 0 { "met" } else { "MISSED" }
    ));
    Ok(ScenarioReport {
        figure,
        baseline_name: None,
        notes,
        failed: false,
    })
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.1} ms"))
}
