//! Command-line options and scenario names.

use anyhow::{Context, bail};
use std::time::Duration;

/// How to call the benchmark, printed on a usage error.
pub const USAGE: &str = "\
usage: loadgen SCENARIO [--duration-secs N] [--clients N] [--keep]

SCENARIO: availability | availability-batch | reserve | reserve-hot | events | orders | push | all
  --duration-secs N  length of each measured phase, baseline and ours alike (default 10)
  --clients N        concurrent clients, for pgbench and for us alike (default 64)
  --keep             leave the benchmark databases (and broker objects) behind for inspection";

/// One benchmark scenario of quality.md's speed table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One store × one SKU availability read over HTTP, against the pgbench read baseline.
    Availability,
    /// 20 stores × 20 SKUs in one availability call, against the pgbench read baseline.
    AvailabilityBatch,
    /// Reservations on random SKUs, against the pgbench write baseline.
    Reserve,
    /// Reservations on one hot SKU, against the pgbench hot-row baseline; never oversold.
    ReserveHot,
    /// Stock change → `inventory.stock.changed` received, at 200 changes/s.
    Events,
    /// Order placed → confirmed (the orders service; not built yet).
    Orders,
    /// Order ready → push received by a local Web Push service (three services).
    Push,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 7] = [
        Scenario::Availability,
        Scenario::AvailabilityBatch,
        Scenario::Reserve,
        Scenario::ReserveHot,
        Scenario::Events,
        Scenario::Orders,
        Scenario::Push,
    ];

    /// The name used on the command line and in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Availability => "availability",
            Scenario::AvailabilityBatch => "availability-batch",
            Scenario::Reserve => "reserve",
            Scenario::ReserveHot => "reserve-hot",
            Scenario::Events => "events",
            Scenario::Orders => "orders",
            Scenario::Push => "push",
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scenarios to run, in order.
    pub scenarios: Vec<Scenario>,
    /// Length of each measured phase (baseline and ours alike).
    pub duration: Duration,
    /// Concurrent clients (pgbench `-c` and our tasks alike).
    pub clients: usize,
    /// Leave databases and broker objects behind.
    pub keep: bool,
}

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Options> {
        let mut scenarios = None;
        let mut duration_secs: u64 = 10;
        let mut clients: usize = 64;
        let mut keep = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> anyhow::Result<String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => args.next().with_context(|| format!("{name} needs a value")),
                }
            };
            match flag.as_str() {
                "--duration-secs" => {
                    duration_secs = value("--duration-secs")?
                        .parse()
                        .context("--duration-secs must be a whole number of seconds")?;
                }
                "--clients" => {
                    clients = value("--clients")?
                        .parse()
                        .context("--clients must be a whole number")?;
                }
                "--keep" => keep = true,
                "-h" | "--help" => bail!("help requested"),
                name if name.starts_with('-') => bail!("unknown option {name}"),
                "all" if scenarios.is_none() => scenarios = Some(Scenario::ALL.to_vec()),
                name if scenarios.is_none() => {
                    let scenario = Scenario::parse(name)
                        .with_context(|| format!("unknown scenario {name}"))?;
                    scenarios = Some(vec![scenario]);
                }
                name => bail!("unexpected argument {name}: give one scenario"),
            }
        }
        if !(1..=3600).contains(&duration_secs) {
            bail!("--duration-secs must be between 1 and 3600");
        }
        if !(1..=1000).contains(&clients) {
            bail!("--clients must be between 1 and 1000");
        }
        Ok(Options {
            scenarios: scenarios.context("no scenario given")?,
            duration: Duration::from_secs(duration_secs),
            clients,
            keep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Options> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn all_expands_to_every_scenario_with_the_defaults() -> anyhow::Result<()> {
        let options = parse(&["all"])?;
        assert_eq!(options.scenarios, Scenario::ALL.to_vec());
        assert_eq!(options.duration, Duration::from_secs(10));
        assert_eq!(options.clients, 64);
        assert!(!options.keep);
        Ok(())
    }

    #[test]
    fn options_are_read_in_both_spellings() -> anyhow::Result<()> {
        let options = parse(&[
            "reserve-hot",
            "--duration-secs",
            "3",
            "--clients=8",
            "--keep",
        ])?;
        assert_eq!(options.scenarios, vec![Scenario::ReserveHot]);
        assert_eq!(options.duration, Duration::from_secs(3));
        assert_eq!(options.clients, 8);
        assert!(options.keep);
        Ok(())
    }

    #[test]
    fn unknown_scenarios_and_zero_durations_are_refused() {
        assert!(parse(&["nope"]).is_err());
        assert!(parse(&["reserve", "--duration-secs", "0"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
