//! The benchmark of quality.md ("Speed"): for each scenario, a fresh database and a fresh
//! inventory process, data loaded through the HTTP API, the `pgbench` baseline on the same
//! table while the service idles, then our operation with the same clients and duration.
//! Prints a human line per figure and, last, one JSON line per scenario.
//!
//! # Layout
//! - [`cli`]: options and scenario names.
//! - [`cpu`]: where the cores went during a phase, by part.
//! - [`fixture`]: one scenario's database, service, secret and broker prefix, torn down on
//!   every path.
//! - [`service`]: the inventory child process (built if needed, stopped by a guard).
//! - [`postgres`]: `psql` and `pgbench`: fresh databases, the baseline copy table, scripts.
//! - [`broker`]: a private queue on `inventory.stock.changed`; clean-up of a run's prefix.
//! - [`auth`]: HS256 tokens per role.
//! - [`api`]: the inventory HTTP calls, against the public contract only.
//! - [`driver`]: closed-loop clients with latency histograms.
//! - [`scenarios`]: availability, availability-batch, reserve, reserve-hot.
//! - [`events`]: stock change → event received, paced at 200/s.
//! - [`report`]: the human lines and the JSON line.

pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod cpu;
pub mod driver;
pub mod events;
pub mod fixture;
pub mod orders;
pub mod postgres;
pub mod push;
pub mod report;
pub mod scenarios;
pub mod service;

use cli::Options;
use report::{ScenarioReport, say};

/// Runs every scenario asked for, prints the human lines as each ends and the JSON lines at
/// the very end. Returns whether every scenario ran to its end.
pub async fn run(options: &Options) -> bool {
    // Resolved (and, through cargo, rebuilt) once, so every scenario runs the same binary.
    // Every scenario stands on inventory.
    let inventory = service::binary("inventory").map_err(|err| format!("{err:#}"));
    let mut reports: Vec<ScenarioReport> = Vec::new();
    for scenario in &options.scenarios {
        eprintln!("== {}", scenario.name());
        let report = scenarios::run(*scenario, options, &inventory).await;
        for line in report.human_lines() {
            say(&line);
        }
        reports.push(report);
    }
    for report in &reports {
        say(&report.figure.json());
    }
    reports.iter().all(|r| !r.failed)
}
