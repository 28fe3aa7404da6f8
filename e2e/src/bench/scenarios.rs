//! What each scenario loads, measures and checks: availability reads (single and batch)
//! against the pgbench read baseline, reservations against the write and hot-row baselines.

use crate::bench::api::{ItemCount, failure, transport};
use crate::bench::cli::{Options, Scenario};
use crate::bench::cpu;
use crate::bench::driver::{ClosedLoop, Outcome, Tally, closed_loop};
use crate::bench::events;
use crate::bench::fixture::Fixture;
use crate::bench::postgres::{self, BASELINE_TABLE, PgbenchRun};
use crate::bench::report::{Figure, ScenarioReport};
use anyhow::{Context, bail};
use rand::Rng;
use reqwest::StatusCode;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Stores in the catalogue (`S001`…).
pub const STORES: usize = 20;
/// SKUs per store (`SKU-00001`…).
pub const SKUS: usize = 500;
/// Stock of every level in the read scenarios.
const READ_ON_HAND: i64 = 1_000;
/// Stock of every level in the reservation scenarios: nothing runs out.
const PLENTY: i64 = 1_000_000;
/// Bounds of the stock of the hot SKU that is meant to sell out; within them, what the
/// measured rate reserves in half the phase, so it sells out whatever the service's speed.
const SELL_OUT_STOCK: (i64, i64) = (200, 50_000);
/// The store of the hot SKUs.
const HOT_STORE: &str = "S001";
/// The hot SKU that never runs out during the measured phase.
const HOT_SKU: &str = "HOT-00001";
/// The hot SKU that sells out.
const SELL_OUT_SKU: &str = "HOT-00002";

/// Store id number `n` (from 1).
pub fn store_id(n: usize) -> String {
    format!("S{n:03}")
}

/// SKU number `n` (from 1).
pub fn sku(n: usize) -> String {
    format!("SKU-{n:05}")
}

/// Runs one scenario on its own database and service; a failure becomes a report too.
pub async fn run(
    scenario: Scenario,
    options: &Options,
    binary: &Result<PathBuf, String>,
) -> ScenarioReport {
    let binary = match binary {
        Ok(binary) => binary,
        Err(err) => return failed(scenario, &anyhow::anyhow!("{err}"), Vec::new()),
    };
    let fixture = match Fixture::start(scenario, options, binary).await {
        Ok(fixture) => fixture,
        Err(err) => return failed(scenario, &err, Vec::new()),
    };
    let outcome = match scenario {
        Scenario::Availability => availability(&fixture, options).await,
        Scenario::AvailabilityBatch => availability_batch(&fixture, options).await,
        Scenario::Reserve => reserve(&fixture, options).await,
        Scenario::ReserveHot => reserve_hot(&fixture, options).await,
        Scenario::Events => events::run(&fixture, options).await,
        Scenario::Orders => crate::bench::orders::run(&fixture, options).await,
        Scenario::Push => crate::bench::push::run(&fixture, options).await,
    };
    let teardown = fixture.finish().await;
    match outcome {
        Ok(mut report) => {
            report.notes.push(format!(
                "machine: 1-minute load average {} at the end (2 cores shared by loadgen, service, PostgreSQL, RabbitMQ)",
                load_average()
            ));
            report.notes.extend(teardown);
            report
        }
        Err(err) => failed(scenario, &err, teardown),
    }
}

/// `/proc/loadavg`'s first figure: whether something else was busy on the machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".to_owned())
}

fn failed(scenario: Scenario, err: &anyhow::Error, teardown: Vec<String>) -> ScenarioReport {
    let mut notes = vec![format!("FAILED: {err:#}")];
    notes.extend(teardown);
    ScenarioReport {
        figure: Figure::empty(scenario.name()),
        baseline_name: None,
        notes,
        failed: true,
    }
}

/// Creates `stores` and counts `on_hand` of every `skus` in each, through the HTTP API.
pub async fn load(
    fixture: &Fixture,
    stores: &[String],
    skus: &[String],
    on_hand: i64,
) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    for (n, store) in stores.iter().enumerate() {
        fixture.api.put_store(&fixture.admin, store, n + 1).await?;
    }
    let levels: Vec<(String, String, i64)> = stores
        .iter()
        .flat_map(|s| skus.iter().map(move |k| (s.clone(), k.clone(), on_hand)))
        .collect();
    fixture.api.bulk_counts(&fixture.admin, &levels).await?;
    let first = fixture.api.level(&stores[0], &skus[0]).await?;
    if first.on_hand != on_hand || first.reserved != 0 {
        bail!(
            "after loading, {}/{} shows on_hand {} reserved {} (expected {on_hand} and 0)",
            stores[0],
            skus[0],
            first.on_hand,
            first.reserved
        );
    }
    Ok(format!(
        "loaded {} stores × {} SKUs = {} levels through the API in {:.1} s",
        stores.len(),
        skus.len(),
        levels.len(),
        started.elapsed().as_secs_f64()
    ))
}

fn catalogue() -> (Vec<String>, Vec<String>) {
    (
        (1..=STORES).map(store_id).collect(),
        (1..=SKUS).map(sku).collect(),
    )
}

/// A warm-up (counted for correctness, not for speed) and the measured phase.
struct Measured {
    /// The warm-up.
    warmup: Tally,
    /// The measured phase.
    phase: Tally,
    /// Where the cores went during the measured phase.
    cpu: cpu::Use,
}

impl Measured {
    fn done(&self) -> u64 {
        self.warmup.done + self.phase.done
    }
    fn failed(&self) -> u64 {
        self.warmup.failed + self.phase.failed
    }
}

fn warmup_of(duration: Duration) -> Duration {
    (duration / 5).min(Duration::from_secs(2))
}

async fn measure<Op, Fut>(fixture: &Fixture, options: &Options, op: Op) -> anyhow::Result<Measured>
where
    Op: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let plan = ClosedLoop {
        clients: options.clients,
        duration: warmup_of(options.duration),
        stop_at_first_refusal: false,
    };
    let warmup = closed_loop(plan, op.clone()).await?;
    let before = cpu::Sample::now(Some(fixture.service.pid()));
    let phase = closed_loop(
        ClosedLoop {
            duration: options.duration,
            ..plan
        },
        op,
    )
    .await?;
    let cpu = before.until(&cpu::Sample::now(Some(fixture.service.pid())));
    Ok(Measured { warmup, phase, cpu })
}

fn baseline_note(what: &str, options: &Options, run: &PgbenchRun) -> Vec<String> {
    let mut notes = vec![format!(
        "baseline: pgbench {what}, -M prepared -c {} -j {} -T {}: {:.0} tps ({} transactions, {} failed{})",
        options.clients,
        options.clients.clamp(1, 2),
        options.duration.as_secs(),
        run.tps,
        run.transactions,
        run.failed,
        run.latency_avg_ms
            .map(|l| format!(", avg latency {l:.2} ms"))
            .unwrap_or_default()
    )];
    if let Some(cpu) = &run.cpu {
        notes.push(format!("  {}", cpu.describe(run.tps, "transaction")));
    }
    notes
}

fn ours_note(options: &Options, m: &Measured, baseline: &PgbenchRun, what: &str) -> Vec<String> {
    let mut notes = vec![format!(
        "ours: {what}, {} clients × {:.1} s after a {:.1} s warm-up: {} done, {} refused (409), {} failed",
        options.clients,
        m.phase.elapsed.as_secs_f64(),
        m.warmup.elapsed.as_secs_f64(),
        m.phase.done,
        m.phase.refused,
        m.phase.failed
    )];
    let per_s = m.phase.done_per_s();
    notes.push(format!("  {}", m.cpu.describe(per_s, "request")));
    if let Some(base) = &baseline.cpu
        && per_s > 0.0
        && baseline.tps > 0.0
    {
        // Both phases fill the machine: throughput goes inversely with CPU per operation.
        let ours_us = cpu::micros_per_op(m.cpu.machine, per_s);
        let base_us = cpu::micros_per_op(base.machine, baseline.tps);
        notes.push(format!(
            "  machine CPU per operation: ours {ours_us:.0} µs, the baseline's {base_us:.0} µs: {:.2} of its cost-per-operation (where both fill the 2 cores, the ratio tends to this)",
            base_us / ours_us
        ));
    }
    let mut failures = m.warmup.clone();
    if failures.merge(&m.phase).is_ok() {
        notes.extend(
            failures
                .failure_lines()
                .into_iter()
                .map(|l| format!("  failure: {l}")),
        );
    }
    notes
}

fn target_note(figure: &Figure, min_ratio: f64, max_p99_ms: f64) -> String {
    let ratio_ok = figure.ratio.is_some_and(|r| r >= min_ratio);
    let p99_ok = figure.p99_ms.is_some_and(|p| p <= max_p99_ms);
    let verdict = if ratio_ok && p99_ok { "met" } else { "MISSED" };
    format!(
        "target (quality.md): ratio ≥ {min_ratio} and p99 ≤ {max_p99_ms} ms: {verdict} (ratio {}, p99 {})",
        if ratio_ok { "ok" } else { "short" },
        if p99_ok { "ok" } else { "over" },
    )
}

fn figure(scenario: Scenario, m: &Measured, baseline: &PgbenchRun) -> Figure {
    Figure {
        ours_per_s: Some(m.phase.done_per_s()),
        baseline_per_s: Some(baseline.tps),
        p50_ms: m.phase.quantile_ms(0.5),
        p99_ms: m.phase.quantile_ms(0.99),
        errors: Some(m.phase.failed),
        ..Figure::empty(scenario.name())
    }
}

async fn read_baseline(fixture: &Fixture, options: &Options) -> anyhow::Result<PgbenchRun> {
    let script = fixture.script("read.sql", &postgres::read_script(STORES, SKUS))?;
    fixture.database.query("ANALYZE stock_levels").await?;
    postgres::pgbench(
        &fixture.database.name,
        &script,
        options.clients,
        options.duration,
    )
    .await
    .context("read baseline")
}

/// GET `url`, expecting 200 and, when `items` is set, that many availability items.
async fn get_availability(http: reqwest::Client, url: String, items: Option<usize>) -> Outcome {
    let resp = match http.get(&url).send().await {
        Ok(resp) => resp,
        Err(err) => return Outcome::Failed(format!("GET /v1/availability: {}", transport(&err))),
    };
    if resp.status() != StatusCode::OK {
        return Outcome::Failed(format!("GET /v1/availability: {}", failure(resp).await));
    }
    match items {
        None => crate::bench::api::drain(resp, Outcome::Done).await,
        Some(want) => match resp.json::<ItemCount>().await {
            Ok(page) if page.items.len() == want => Outcome::Done,
            Ok(page) => Outcome::Failed(format!(
                "GET /v1/availability: {} items, expected {want}",
                page.items.len()
            )),
            Err(err) => Outcome::Failed(format!("GET /v1/availability: body: {err}")),
        },
    }
}

/// One store × one SKU availability over HTTP vs. one `SELECT` by primary key.
async fn availability(fixture: &Fixture, options: &Options) -> anyhow::Result<ScenarioReport> {
    let (stores, skus) = catalogue();
    let mut notes = vec![load(fixture, &stores, &skus, READ_ON_HAND).await?];
    notes.push(fixture.settle().await);
    eprintln!("[availability] pgbench read baseline");
    let baseline = read_baseline(fixture, options).await?;
    notes.extend(baseline_note(
        "read: SELECT of one stock_levels row by primary key, random store and SKU",
        options,
        &baseline,
    ));
    eprintln!("[availability] ours");
    let (api, stores, skus) = (fixture.api.clone(), Arc::new(stores), Arc::new(skus));
    let op = move |_client: usize| {
        let url = {
            let mut rng = rand::rng();
            let store = &stores[rng.random_range(0..stores.len())];
            let sku = &skus[rng.random_range(0..skus.len())];
            api.availability_url(&[store], &[sku])
        };
        get_availability(api.http.clone(), url, None)
    };
    let m = measure(fixture, options, op).await?;
    notes.extend(ours_note(
        options,
        &m,
        &baseline,
        "GET /v1/availability?store_id=…&sku=…, random pair, no token",
    ));
    let figure = figure(Scenario::Availability, &m, &baseline).with_ratio();
    notes.push(target_note(&figure, 1.0, 10.0));
    Ok(ScenarioReport {
        figure,
        baseline_name: Some("pgbench read".into()),
        notes,
        failed: false,
    })
}

/// 20 stores × 20 SKUs in one availability call vs. the single-row read baseline.
async fn availability_batch(
    fixture: &Fixture,
    options: &Options,
) -> anyhow::Result<ScenarioReport> {
    const BATCH_SKUS: usize = 20;
    let (stores, skus) = catalogue();
    let mut notes = vec![load(fixture, &stores, &skus, READ_ON_HAND).await?];
    notes.push(fixture.settle().await);
    eprintln!("[availability-batch] pgbench read baseline");
    let baseline = read_baseline(fixture, options).await?;
    notes.extend(baseline_note(
        "read: SELECT of one stock_levels row by primary key, random store and SKU",
        options,
        &baseline,
    ));
    eprintln!("[availability-batch] ours");
    let (api, stores, skus) = (fixture.api.clone(), Arc::new(stores), Arc::new(skus));
    let want = stores.len() * BATCH_SKUS;
    let op = move |_client: usize| {
        let url = {
            let mut rng = rand::rng();
            let picked: Vec<&str> = rand::seq::index::sample(&mut rng, skus.len(), BATCH_SKUS)
                .into_iter()
                .map(|i| skus[i].as_str())
                .collect();
            let all: Vec<&str> = stores.iter().map(String::as_str).collect();
            api.availability_url(&all, &picked)
        };
        get_availability(api.http.clone(), url, Some(want))
    };
    let m = measure(fixture, options, op).await?;
    notes.extend(ours_note(
        options,
        &m,
        &baseline,
        &format!(
            "GET /v1/availability with {STORES} store_id × {BATCH_SKUS} random sku params, {want} items checked per call"
        ),
    ));
    let figure = figure(Scenario::AvailabilityBatch, &m, &baseline).with_ratio();
    notes.push(target_note(&figure, 0.1, 20.0));
    Ok(ScenarioReport {
        figure,
        baseline_name: Some("pgbench read, single rows".into()),
        notes,
        failed: false,
    })
}

/// One customer token per client.
fn customer_tokens(fixture: &Fixture, clients: usize) -> anyhow::Result<Arc<Vec<String>>> {
    let tokens = (0..clients)
        .map(|n| fixture.tokens.customer(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(tokens))
}

/// Units a (store, SKU) promised beyond what it could: the 201s beyond the stock it started
/// with, or `reserved` beyond `on_hand - safety_stock`, whichever is worse.
fn oversold(
    successful_units: i64,
    initial_available: i64,
    on_hand: i64,
    reserved: i64,
    safety: i64,
) -> u64 {
    let by_answers = successful_units - initial_available;
    let by_level = reserved - (on_hand - safety);
    u64::try_from(by_answers.max(by_level).max(0)).unwrap_or(0)
}

/// How far `reserved` is from what the 201s add up to, beyond what failed requests (whose
/// fate we do not know) could explain.
fn ledger_mismatch(successful_units: i64, failed_units: i64, reserved: i64) -> u64 {
    let short = successful_units - reserved;
    let extra = reserved - successful_units - failed_units;
    u64::try_from(short.max(extra).max(0)).unwrap_or(0)
}

/// Reservations of one unit on random SKUs vs. the conditional `UPDATE` on random rows.
async fn reserve(fixture: &Fixture, options: &Options) -> anyhow::Result<ScenarioReport> {
    let (stores, skus) = catalogue();
    let mut notes = vec![load(fixture, &stores, &skus, PLENTY).await?];
    let copied = postgres::copy_stock_levels(&fixture.database).await?;
    notes.push(fixture.settle().await);
    eprintln!("[reserve] pgbench write baseline");
    let script = fixture.script("write.sql", &postgres::write_script(STORES, SKUS))?;
    let baseline = postgres::pgbench(
        &fixture.database.name,
        &script,
        options.clients,
        options.duration,
    )
    .await
    .context("write baseline")?;
    notes.extend(baseline_note(
        &format!(
            "write: the conditional UPDATE … SET reserved = reserved + 1 WHERE … AND on_hand - reserved - safety_stock >= 1 \
             of one random row, on {BASELINE_TABLE} (an identical copy of stock_levels, {copied} rows, so the service's ledger stays true)"
        ),
        options,
        &baseline,
    ));
    eprintln!("[reserve] ours");
    let tokens = customer_tokens(fixture, options.clients)?;
    let (api, stores_a, skus_a) = (
        fixture.api.clone(),
        Arc::new(stores.clone()),
        Arc::new(skus.clone()),
    );
    let op = move |client: usize| {
        let (store, sku) = {
            let mut rng = rand::rng();
            (
                stores_a[rng.random_range(0..stores_a.len())].clone(),
                skus_a[rng.random_range(0..skus_a.len())].clone(),
            )
        };
        let (api, tokens) = (api.clone(), Arc::clone(&tokens));
        async move { api.reserve(&tokens[client], &store, &sku, 1).await }
    };
    let m = measure(fixture, options, op).await?;
    notes.extend(ours_note(
        options,
        &m,
        &baseline,
        "POST /v1/reservations of 1 unit, random store and SKU, a fresh Idempotency-Key each, customer tokens",
    ));

    // Checks: every 201 is one unit reserved, nothing beyond stock, by HTTP and by SQL.
    let mut http_reserved = 0;
    let mut http_oversold = 0;
    let mut levels = 0;
    for chunk in skus.chunks(100) {
        let store_refs: Vec<&str> = stores.iter().map(String::as_str).collect();
        let sku_refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for item in fixture.api.availability(&store_refs, &sku_refs).await? {
            levels += 1;
            http_reserved += item.reserved;
            http_oversold += oversold(0, PLENTY, item.on_hand, item.reserved, item.safety_stock);
        }
    }
    let successes = i64::try_from(m.done())?;
    let failed = i64::try_from(m.failed())?;
    let sql = fixture
        .database
        .query(
            "SELECT coalesce(sum(reserved), 0), coalesce(sum(greatest(reserved - (on_hand - safety_stock), 0)), 0) \
             FROM stock_levels WHERE sku LIKE 'SKU-%'",
        )
        .await?;
    let (sql_reserved, sql_oversold) = parse_pair(&sql)?;
    let mismatch = ledger_mismatch(successes, failed, http_reserved).max(ledger_mismatch(
        successes,
        failed,
        sql_reserved,
    ));
    let oversold_units = http_oversold.max(u64::try_from(sql_oversold.max(0))?);
    notes.push(format!(
        "check: {successes} reservations answered 201 (warm-up included, {failed} failed); reserved over {levels} levels: \
         {http_reserved} by GET /v1/availability, {sql_reserved} in stock_levels; oversold units {oversold_units}: {}",
        if mismatch == 0 && oversold_units == 0 { "ok" } else { "BROKEN" }
    ));
    let mut figure = figure(Scenario::Reserve, &m, &baseline);
    figure.errors = Some(m.phase.failed + mismatch);
    figure.oversold = Some(oversold_units);
    let figure = figure.with_ratio();
    notes.push(target_note(&figure, 0.7, 50.0));
    // After the checks: these reservations bypass the service.
    notes.extend(database_alone(fixture, options, &baseline).await?);
    Ok(ScenarioReport {
        figure,
        baseline_name: Some("pgbench write".into()),
        notes,
        failed: false,
    })
}

/// Group sizes [`database_alone`] runs.
const ALONE_GROUPS: [usize; 2] = [16, 64];

/// What the database alone can do with the service's groups: pgbench calling
/// `reserve_batch` directly (2 connections, like the service's 2 groups in flight) with
/// groups of one-unit requests on random levels, in the shape the service sends, each with
/// its own Idempotency-Key. The requests are built by PostgreSQL itself, so this slightly
/// understates it. No HTTP and no request handling share the cores; the service's relay
/// still publishes the groups' events to RabbitMQ, as it must (its CPU shows as "other").
/// This is the ceiling the reservation figure works under.
async fn database_alone(
    fixture: &Fixture,
    options: &Options,
    baseline: &PgbenchRun,
) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for size in ALONE_GROUPS {
        eprintln!("[reserve] the database alone, groups of {size}");
        let script = fixture.script(
            &format!("groups-{size}.sql"),
            &postgres::group_script(STORES, SKUS, size),
        )?;
        let run = postgres::pgbench(&fixture.database.name, &script, 2, options.duration)
            .await
            .with_context(|| format!("reserve_batch alone, groups of {size}"))?;
        let per_s = run.tps * size as f64;
        notes.push(format!(
            "the database alone: reserve_batch from pgbench, 2 connections, groups of {size} random one-unit \
             requests: {:.0} groups/s = {per_s:.0} reservations/s = {:.2} × the write baseline ({} failed)",
            run.tps,
            per_s / baseline.tps,
            run.failed
        ));
        if let Some(cpu) = &run.cpu {
            notes.push(format!("  {}", cpu.describe(per_s, "reservation")));
        }
    }
    Ok(notes)
}

fn parse_pair(psql_row: &str) -> anyhow::Result<(i64, i64)> {
    let (a, b) = psql_row
        .split_once('|')
        .with_context(|| format!("unexpected psql row {psql_row:?}"))?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}

/// A hot level after a run: what HTTP and SQL say, and whether it matches the 201s.
struct HotCheck {
    /// Units the service promised beyond stock.
    oversold: u64,
    /// Units `reserved` is off from the 201s.
    mismatch: u64,
    /// The human line.
    note: String,
}

async fn check_hot_level(
    fixture: &Fixture,
    sku: &str,
    initial: i64,
    successes: i64,
    failed: i64,
) -> anyhow::Result<HotCheck> {
    let http = fixture.api.level(HOT_STORE, sku).await?;
    let sql = fixture
        .database
        .query(&format!(
            "SELECT on_hand, reserved, safety_stock FROM stock_levels WHERE store_id = '{HOT_STORE}' AND sku = '{sku}'"
        ))
        .await?;
    let fields: Vec<i64> = sql
        .split('|')
        .map(|f| f.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected psql row {sql:?}"))?;
    let [on_hand, reserved, safety] = fields[..] else {
        bail!("unexpected psql row {sql:?}");
    };
    let oversold_units = oversold(
        successes,
        initial - http.safety_stock,
        http.on_hand,
        http.reserved,
        http.safety_stock,
    )
    .max(oversold(
        successes,
        initial - safety,
        on_hand,
        reserved,
        safety,
    ));
    let mismatch = ledger_mismatch(successes, failed, http.reserved)
        .max(ledger_mismatch(successes, failed, reserved));
    let lines = match active_reservation_units(fixture, HOT_STORE, sku).await {
        Ok(units) => format!("{units} in active reservation lines"),
        Err(err) => format!(
            "reservation lines not checked ({})",
            err.to_string().lines().next().unwrap_or_default()
        ),
    };
    let verdict = if oversold_units == 0 && mismatch == 0 {
        "ok"
    } else {
        "BROKEN"
    };
    Ok(HotCheck {
        oversold: oversold_units,
        mismatch,
        note: format!(
            "check {HOT_STORE}/{sku} (stock {initial}): {successes} × 201 ({failed} failed); \
             GET /v1/availability on_hand {} reserved {} available {}; stock_levels on_hand {on_hand} reserved {reserved}; \
             {lines}; oversold {oversold_units}: {verdict}",
            http.on_hand, http.reserved, http.available
        ),
    })
}

/// Units held by active reservations on one level, from the reservation tables. The schema
/// is the service's own; adjust this query when it changes (the HTTP counts are primary).
async fn active_reservation_units(
    fixture: &Fixture,
    store: &str,
    sku: &str,
) -> anyhow::Result<i64> {
    let sql = format!(
        "SELECT coalesce(sum(l.quantity), 0) FROM reservation_lines l \
         JOIN reservations r ON r.id = l.reservation_id \
         WHERE r.status = 'active' AND r.store_id = '{store}' AND l.sku = '{sku}'"
    );
    Ok(fixture.database.query(&sql).await?.parse()?)
}

/// Reservations on one hot SKU vs. the conditional `UPDATE` always on one row; then a second
/// hot SKU that sells out, to show it never oversells.
async fn reserve_hot(fixture: &Fixture, options: &Options) -> anyhow::Result<ScenarioReport> {
    let started = std::time::Instant::now();
    fixture.api.put_store(&fixture.admin, HOT_STORE, 1).await?;
    fixture
        .api
        .bulk_counts(
            &fixture.admin,
            &[(HOT_STORE.into(), HOT_SKU.into(), PLENTY)],
        )
        .await?;
    let mut notes = vec![format!(
        "loaded {HOT_STORE}/{HOT_SKU} with {PLENTY} in {:.1} s",
        started.elapsed().as_secs_f64()
    )];
    postgres::copy_stock_levels(&fixture.database).await?;
    notes.push(fixture.settle().await);
    eprintln!("[reserve-hot] pgbench hot baseline");
    let script = fixture.script("hot.sql", &postgres::hot_script(HOT_STORE, HOT_SKU))?;
    let baseline = postgres::pgbench(
        &fixture.database.name,
        &script,
        options.clients,
        options.duration,
    )
    .await
    .context("hot baseline")?;
    notes.extend(baseline_note(
        &format!(
            "hot: the same conditional UPDATE always on {HOT_STORE}/{HOT_SKU}, on {BASELINE_TABLE} (an identical copy of stock_levels)"
        ),
        options,
        &baseline,
    ));

    eprintln!("[reserve-hot] ours on {HOT_SKU} (plenty of stock)");
    let tokens = customer_tokens(fixture, options.clients)?;
    let hot_op = |sku: &'static str| {
        let (api, tokens) = (fixture.api.clone(), Arc::clone(&tokens));
        move |client: usize| {
            let (api, tokens) = (api.clone(), Arc::clone(&tokens));
            async move { api.reserve(&tokens[client], HOT_STORE, sku, 1).await }
        }
    };
    let m = measure(fixture, options, hot_op(HOT_SKU)).await?;
    notes.extend(ours_note(
        options,
        &m,
        &baseline,
        &format!("POST /v1/reservations of 1 unit, always {HOT_STORE}/{HOT_SKU}, customer tokens"),
    ));
    let plenty = check_hot_level(
        fixture,
        HOT_SKU,
        PLENTY,
        i64::try_from(m.done())?,
        i64::try_from(m.failed())?,
    )
    .await?;
    notes.push(plenty.note);

    // Sized from the rate just measured: sold out about half-way through the phase.
    let sell_out_stock = ((m.phase.done_per_s() * options.duration.as_secs_f64() / 2.0) as i64)
        .clamp(SELL_OUT_STOCK.0, SELL_OUT_STOCK.1);
    fixture
        .api
        .bulk_counts(
            &fixture.admin,
            &[(HOT_STORE.into(), SELL_OUT_SKU.into(), sell_out_stock)],
        )
        .await?;
    eprintln!("[reserve-hot] selling out {SELL_OUT_SKU} ({sell_out_stock} units)");
    let sell_out = closed_loop(
        ClosedLoop {
            clients: options.clients,
            // Twice the phase, should the service slow down as stock runs out.
            duration: options.duration * 2,
            stop_at_first_refusal: true,
        },
        hot_op(SELL_OUT_SKU),
    )
    .await?;
    let sold_out = sell_out.refused >= options.clients as u64;
    let check = check_hot_level(
        fixture,
        SELL_OUT_SKU,
        sell_out_stock,
        i64::try_from(sell_out.done)?,
        i64::try_from(sell_out.failed)?,
    )
    .await?;
    // Once every client has met a 409, all the stock must have gone to 201s (409 only when
    // stock really ran out), unless failed requests leave it open.
    let undersold = if sold_out && sell_out.failed == 0 {
        u64::try_from(sell_out_stock - i64::try_from(sell_out.done)?).unwrap_or(0)
    } else {
        0
    };
    notes.push(format!(
        "sell-out: {} clients on {HOT_STORE}/{SELL_OUT_SKU} ({sell_out_stock} units) until each met a 409: {} × 201, {} × 409, {} failed in {:.1} s, p99 {}; {}",
        options.clients,
        sell_out.done,
        sell_out.refused,
        sell_out.failed,
        sell_out.elapsed.as_secs_f64(),
        sell_out
            .quantile_ms(0.99)
            .map_or("n/a".into(), |p| format!("{p:.1} ms")),
        match (sold_out, undersold) {
            (false, _) => "did not sell out within the phase".to_owned(),
            (true, 0) => "every unit went to a 201 and none more".to_owned(),
            (true, n) => format!("BROKEN: 409 while {n} units were still available"),
        }
    ));
    notes.extend(
        sell_out
            .failure_lines()
            .into_iter()
            .map(|l| format!("  failure: {l}")),
    );
    notes.push(check.note);

    let mut figure = figure(Scenario::ReserveHot, &m, &baseline);
    figure.errors =
        Some(m.phase.failed + plenty.mismatch + sell_out.failed + check.mismatch + undersold);
    figure.oversold = Some(plenty.oversold + check.oversold);
    let figure = figure.with_ratio();
    notes.push(target_note(&figure, 3.0, 150.0));
    Ok(ScenarioReport {
        figure,
        baseline_name: Some("pgbench hot row".into()),
        notes,
        failed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_zero_padded_as_the_pgbench_scripts_expect() {
        assert_eq!(store_id(7), "S007");
        assert_eq!(sku(42), "SKU-00042");
    }

    #[test]
    fn oversold_counts_201s_beyond_stock_and_reserved_beyond_on_hand() {
        assert_eq!(oversold(100, 100, 100, 100, 0), 0);
        assert_eq!(oversold(103, 100, 100, 100, 0), 3);
        assert_eq!(oversold(100, 100, 100, 105, 0), 5);
        assert_eq!(oversold(0, 1_000, 1_000, 999, 2), 1);
    }

    #[test]
    fn failed_requests_excuse_extra_reserved_units_but_not_missing_ones() {
        assert_eq!(ledger_mismatch(10, 0, 10), 0);
        assert_eq!(ledger_mismatch(10, 0, 9), 1);
        assert_eq!(ledger_mismatch(10, 2, 12), 0);
        assert_eq!(ledger_mismatch(10, 2, 13), 1);
    }
}
