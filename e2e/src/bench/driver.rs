//! Load: closed-loop clients doing requests back to back for a fixed time, each recording
//! latency into its own histogram, merged at the end.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// What was asked happened (200, 201).
    Done,
    /// Refused for stock (409): an outcome of the scenario, not an error.
    Refused,
    /// Anything else: a wrong status, a transport error, a bad body.
    Failed(String),
}

/// Most distinct failure messages kept per phase.
const DISTINCT_FAILURES: usize = 10;

/// What a phase counted.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Requests that did what they asked.
    pub done: u64,
    /// Requests refused for stock.
    pub refused: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Distinct failure messages and how often each came.
    pub failures: BTreeMap<String, u64>,
    /// Latency of answered requests (done and refused), microseconds.
    pub latency: Histogram<u64>,
    /// From the start until the last client finished.
    pub elapsed: Duration,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            done: 0,
            refused: 0,
            failed: 0,
            failures: BTreeMap::new(),
            // 1 µs to 5 min, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 300_000_000, 3)?,
            elapsed: Duration::ZERO,
        })
    }

    /// Counts one request that took `took`.
    pub fn record(&mut self, outcome: Outcome, took: Duration) {
        match outcome {
            Outcome::Done => self.done += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Failed(message) => {
                self.failed += 1;
                self.note_failure(message);
                return;
            }
        }
        self.latency.saturating_record(micros(took));
    }

    /// Keeps a failure message (up to [`DISTINCT_FAILURES`] different ones).
    pub fn note_failure(&mut self, message: String) {
        if let Some(n) = self.failures.get_mut(&message) {
            *n += 1;
        } else if self.failures.len() < DISTINCT_FAILURES {
            self.failures.insert(message, 1);
        }
    }

    /// Adds another client's tally into this one.
    pub fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.done += other.done;
        self.refused += other.refused;
        self.failed += other.failed;
        for (message, n) in &other.failures {
            if let Some(mine) = self.failures.get_mut(message) {
                *mine += n;
            } else if self.failures.len() < DISTINCT_FAILURES {
                self.failures.insert(message.clone(), *n);
            }
        }
        self.latency.add(&other.latency)?;
        Ok(())
    }

    /// Completed (done) operations per second over the phase.
    pub fn done_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// A latency quantile in milliseconds, `None` with no answered request.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        quantile_ms(&self.latency, q)
    }

    /// The failure messages, most frequent first, as human lines.
    pub fn failure_lines(&self) -> Vec<String> {
        let mut failures: Vec<_> = self.failures.iter().collect();
        failures.sort_by(|a, b| b.1.cmp(a.1));
        failures
            .into_iter()
            .map(|(message, n)| format!("{n} × {message}"))
            .collect()
    }
}

/// A quantile of a microsecond histogram, in milliseconds.
pub fn quantile_ms(histogram: &Histogram<u64>, q: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64 / 1000.0)
}

/// A duration in whole microseconds, at least 1.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A closed-loop phase: `clients` tasks, each sending its next request when the last one
/// answered, until `duration` is over.
#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    /// Concurrent clients.
    pub clients: usize,
    /// How long clients keep starting requests.
    pub duration: Duration,
    /// A client stops at its first 409 (stock ran out and never comes back in the run).
    pub stop_at_first_refusal: bool,
}

/// Runs `op(client)` back to back in every client until the phase is over.
pub async fn closed_loop<Op, Fut>(plan: ClosedLoop, op: Op) -> anyhow::Result<Tally>
where
    Op: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut clients = Vec::with_capacity(plan.clients);
    for client in 0..plan.clients {
        let op = Arc::clone(&op);
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let outcome = op(client).await;
                let refused = outcome == Outcome::Refused;
                tally.record(outcome, sent.elapsed());
                if refused && plan.stop_at_first_refusal {
                    break;
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let mut total = Tally::new()?;
    for client in clients {
        total.merge(&client.await??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_loop_stops_by_itself_and_counts_every_outcome() -> anyhow::Result<()> {
        let plan = ClosedLoop {
            clients: 4,
            duration: Duration::from_millis(100),
            stop_at_first_refusal: false,
        };
        let tally = closed_loop(plan, |client| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match client {
                0 => Outcome::Refused,
                1 => Outcome::Failed("boom".into()),
                _ => Outcome::Done,
            }
        })
        .await?;
        assert!(tally.done > 0 && tally.refused > 0 && tally.failed > 0);
        assert_eq!(tally.failures.get("boom"), Some(&tally.failed));
        assert_eq!(tally.latency.len(), tally.done + tally.refused);
        assert!(tally.elapsed < Duration::from_secs(2));
        Ok(())
    }

    #[tokio::test]
    async fn clients_can_stop_at_their_first_refusal() -> anyhow::Result<()> {
        let plan = ClosedLoop {
            clients: 3,
            duration: Duration::from_secs(30),
            stop_at_first_refusal: true,
        };
        let tally = closed_loop(plan, |_| async { Outcome::Refused }).await?;
        assert_eq!(tally.refused, 3);
        assert!(tally.elapsed < Duration::from_secs(5));
        Ok(())
    }
}
