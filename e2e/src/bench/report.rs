//! What a scenario reports: human lines first, then one JSON line per scenario.

use serde::Serialize;

/// The JSON line of one scenario (quality.md fixes its fields; `None` prints as `null`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figure {
    /// The scenario name.
    pub scenario: String,
    /// Our operations per second.
    pub ours_per_s: Option<f64>,
    /// The pgbench baseline's transactions per second, measured in the same run.
    pub baseline_per_s: Option<f64>,
    /// `ours_per_s / baseline_per_s`.
    pub ratio: Option<f64>,
    /// Median latency of our operation.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of our operation.
    pub p99_ms: Option<f64>,
    /// Failed operations and broken checks (409 on stock is an outcome, not an error).
    pub errors: Option<u64>,
    /// Units promised beyond stock (0 expected), where the scenario reserves.
    pub oversold: Option<u64>,
}

impl Figure {
    /// A figure with every measure `null`.
    pub fn empty(scenario: &str) -> Figure {
        Figure {
            scenario: scenario.to_owned(),
            ours_per_s: None,
            baseline_per_s: None,
            ratio: None,
            p50_ms: None,
            p99_ms: None,
            errors: None,
            oversold: None,
        }
    }

    /// Fills `ratio` from ours and the baseline, rounding the rates for print.
    pub fn with_ratio(mut self) -> Figure {
        self.ratio = match (self.ours_per_s, self.baseline_per_s) {
            (Some(ours), Some(base)) if base > 0.0 => Some(round(ours / base, 3)),
            _ => None,
        };
        self.ours_per_s = self.ours_per_s.map(|v| round(v, 1));
        self.baseline_per_s = self.baseline_per_s.map(|v| round(v, 1));
        self.p50_ms = self.p50_ms.map(|v| round(v, 3));
        self.p99_ms = self.p99_ms.map(|v| round(v, 3));
        self
    }

    /// The JSON line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
    }

    /// The human line: `reserve: ours 1234/s, baseline 2345/s (pgbench write), ratio 0.53, …`.
    pub fn headline(&self, baseline_name: Option<&str>) -> String {
        let mut parts = vec![format!("ours {}", per_s(self.ours_per_s))];
        if let Some(base) = self.baseline_per_s {
            let name = baseline_name.map(|n| format!(" ({n})")).unwrap_or_default();
            parts.push(format!("baseline {}{name}", per_s(Some(base))));
        }
        if let Some(ratio) = self.ratio {
            parts.push(format!("ratio {ratio:.2}"));
        }
        parts.push(format!("p50 {}", ms(self.p50_ms)));
        parts.push(format!("p99 {}", ms(self.p99_ms)));
        parts.push(format!(
            "errors {}",
            self.errors.map_or("n/a".to_owned(), |e| e.to_string())
        ));
        if let Some(oversold) = self.oversold {
            parts.push(format!("oversold {oversold}"));
        }
        format!("{}: {}", self.scenario, parts.join(", "))
    }
}

/// A scenario's outcome: its figure and the human lines that explain it.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The JSON figure.
    pub figure: Figure,
    /// Which baseline the figure is compared with, for the human line.
    pub baseline_name: Option<String>,
    /// Indented detail lines: baselines, checks, targets, service warnings.
    pub notes: Vec<String>,
    /// The scenario could not run to the end (its figure is all `null`).
    pub failed: bool,
}

impl ScenarioReport {
    /// The human lines of this scenario.
    pub fn human_lines(&self) -> Vec<String> {
        let mut lines = vec![self.figure.headline(self.baseline_name.as_deref())];
        lines.extend(self.notes.iter().map(|n| format!("  {n}")));
        lines
    }
}

/// Writes report lines to stdout (the benchmark's product; progress goes to stderr).
#[allow(
    clippy::print_stdout,
    reason = "the report is what the benchmark prints"
)]
pub fn say(line: &str) {
    println!("{line}");
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn per_s(value: Option<f64>) -> String {
    value.map_or("n/a".to_owned(), |v| format!("{v:.0}/s"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or("n/a".to_owned(), |v| format!("{v:.2} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_figure_prints_nulls_in_the_fixed_field_order() {
        assert_eq!(
            Figure::empty("orders").json(),
            r#"{"scenario":"orders","ours_per_s":null,"baseline_per_s":null,"ratio":null,"p50_ms":null,"p99_ms":null,"errors":null,"oversold":null}"#
        );
    }

    #[test]
    fn the_ratio_is_ours_over_the_baseline() {
        let figure = Figure {
            ours_per_s: Some(1000.0),
            baseline_per_s: Some(4000.0),
            ..Figure::empty("reserve")
        }
        .with_ratio();
        assert_eq!(figure.ratio, Some(0.25));
        assert!(
            figure
                .headline(Some("pgbench write"))
                .contains("ratio 0.25")
        );
    }
}
