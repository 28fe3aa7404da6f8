//! Where the two cores went during a phase: PostgreSQL, RabbitMQ, the service, the load
//! generator (with the pgbench it ran) and the machine as a whole, from `/proc`.
//!
//! On a machine this small every part of an operation competes for the same cores, so
//! CPU per operation is what bounds a ratio: when both phases keep the machine busy,
//! ours ÷ baseline is about the baseline's CPU per transaction ÷ ours per operation.

use std::time::Instant;

/// Clock ticks a second (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU used so far, in clock ticks, by part.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    machine_busy: u64,
    postgres: u64,
    broker: u64,
    service: Option<u64>,
    loadgen: u64,
}

/// Cores kept busy over a window, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Use {
    /// Every core's busy time (user, system, interrupts, steal), all processes.
    pub machine: f64,
    /// Every `postgres` process, with the backends that ended in the window.
    pub postgres: f64,
    /// RabbitMQ's Erlang VM (`beam.smp`).
    pub broker: f64,
    /// The inventory process, when one was sampled.
    pub service: Option<f64>,
    /// This process with the children it waited for (pgbench, psql).
    pub loadgen: f64,
}

impl Sample {
    /// Now; `service` is the inventory process to count apart, if any.
    pub fn now(service: Option<u32>) -> Sample {
        let (mut postgres, mut broker) = (0, 0);
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                match process(pid) {
                    Some((comm, ticks)) if comm == "postgres" => postgres += ticks.with_children,
                    Some((comm, ticks)) if comm == "beam.smp" => broker += ticks.own,
                    _ => {}
                }
            }
        }
        Sample {
            at: Instant::now(),
            machine_busy: machine_busy().unwrap_or(0),
            postgres,
            broker,
            service: service.and_then(|pid| own_ticks(&pid.to_string())),
            loadgen: process("self").map(|(_, t)| t.with_children).unwrap_or(0),
        }
    }

    /// What was used from this sample to `later`.
    pub fn until(&self, later: &Sample) -> Use {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS / secs;
        Use {
            machine: cores(self.machine_busy, later.machine_busy),
            postgres: cores(self.postgres, later.postgres),
            broker: cores(self.broker, later.broker),
            service: self.service.zip(later.service).map(|(a, b)| cores(a, b)),
            loadgen: cores(self.loadgen, later.loadgen),
        }
    }
}

/// Microseconds of CPU per operation that `cores` kept busy at `per_s` operations a second.
pub fn micros_per_op(cores: f64, per_s: f64) -> f64 {
    if per_s > 0.0 {
        cores * 1e6 / per_s
    } else {
        0.0
    }
}

impl Use {
    /// The parts as a line: cores each, then microseconds of CPU per operation at `per_s`.
    pub fn describe(&self, per_s: f64, operation: &str) -> String {
        let micros = |cores: f64| micros_per_op(cores, per_s);
        let mut parts = vec![("PostgreSQL", self.postgres)];
        if self.broker > 0.0 {
            parts.push(("RabbitMQ", self.broker));
        }
        if let Some(service) = self.service {
            parts.push(("service", service));
        }
        parts.push(("loadgen", self.loadgen));
        let counted: f64 = parts.iter().map(|(_, c)| c).sum();
        parts.push(("other", (self.machine - counted).max(0.0)));
        let cores: Vec<String> = parts.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        let each: Vec<String> = parts
            .iter()
            .map(|(n, c)| format!("{n} {:.0}", micros(*c)))
            .collect();
        format!(
            "CPU: {} cores, machine {:.2} of 2 busy; per {operation}: {:.0} µs ({})",
            cores.join(", "),
            self.machine,
            micros(self.machine),
            each.join(", ")
        )
    }
}

/// CPU ticks process `pid` (or `self`) has used itself.
pub fn own_ticks(pid: &str) -> Option<u64> {
    process(pid).map(|(_, t)| t.own)
}

/// A process's CPU ticks: its own, and with the children it has waited for.
struct Ticks {
    own: u64,
    with_children: u64,
}

/// The command name and ticks of process `pid` (`/proc/<pid>/stat`).
fn process(pid: &str) -> Option<(String, Ticks)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    // After the command: state is field 3; utime, stime, cutime, cstime are 14 to 17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let own = field(14)? + field(15)?;
    let children = field(16)? + field(17)?;
    Some((
        comm,
        Ticks {
            own,
            with_children: own + children,
        },
    ))
}

/// Busy ticks of all cores (`/proc/stat`'s `cpu` line without idle and iowait).
fn machine_busy() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is inside user).
    Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_from_proc() {
        let read = process("self");
        assert!(read.as_ref().is_some_and(|(comm, _)| !comm.is_empty()));
        assert!(read.is_some_and(|(_, t)| t.with_children >= t.own));
        assert!(machine_busy().is_some());
    }

    #[test]
    fn a_window_is_described_in_cores_and_micros_per_operation() {
        let u = Use {
            machine: 1.9,
            postgres: 0.9,
            broker: 0.4,
            service: Some(0.4),
            loadgen: 0.2,
        };
        assert_eq!(
            u.describe(5000.0, "reservation"),
            "CPU: PostgreSQL 0.90, RabbitMQ 0.40, service 0.40, loadgen 0.20, other 0.00 cores, \
             machine 1.90 of 2 busy; per reservation: 380 µs (PostgreSQL 180, RabbitMQ 80, \
             service 80, loadgen 40, other 0)"
        );
    }
}
