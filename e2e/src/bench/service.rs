//! The inventory service under test: built if needed, started as a child process, stopped by
//! a guard (SIGTERM, then SIGKILL) on every path out, errors and Ctrl-C included.

use anyhow::{Context, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How the service is configured (the fixed variables of api.md, "Running a service").
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The `inventory` executable (see [`binary`]).
    pub binary: PathBuf,
    /// `DATABASE_URL`: the scenario's fresh database.
    pub database_url: String,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `AMQP_PREFIX`: keeps this run's exchanges and queues apart from everyone else's.
    pub amqp_prefix: String,
    /// `AUTH_JWT_SECRET`: random per run.
    pub jwt_secret: String,
    /// Where the service's stdout and stderr go.
    pub log_path: PathBuf,
    /// Further variables (a service's own settings).
    pub extra_env: Vec<(String, String)>,
}

/// A running service; dropping it stops the process.
#[derive(Debug)]
pub struct Service {
    /// The child process, `None` once stopped.
    child: Option<Child>,
    /// Its pid, for signals and `/proc`.
    pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The file holding its log.
    pub log_path: PathBuf,
}

/// How long start-up may take before `/health/ready` answers 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGTERM may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

impl Service {
    /// Starts the `inventory` binary and waits until it is ready.
    pub async fn start(config: &ServiceConfig) -> anyhow::Result<Service> {
        let binary = &config.binary;
        let port = free_port()?;
        let log = File::create(&config.log_path)
            .with_context(|| format!("creating {}", config.log_path.display()))?;
        let child = Command::new(binary)
            .env("DATABASE_URL", &config.database_url)
            .env("AMQP_URL", &config.amqp_url)
            .env("AMQP_PREFIX", &config.amqp_prefix)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("AUTH_JWT_SECRET", &config.jwt_secret)
            .env("RUST_LOG", "warn")
            .envs(config.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut service = Service {
            pid: child.id(),
            child: Some(child),
            base_url: format!("http://127.0.0.1:{port}"),
            log_path: config.log_path.clone(),
        };
        service.wait_ready().await?;
        Ok(service)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/health/ready", self.base_url);
        let started = Instant::now();
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "inventory exited during start-up ({status}); its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            match http.get(&url).send().await {
                Ok(resp) if resp.status().as_u16() == 200 => return Ok(()),
                Ok(resp) => last = format!("HTTP {}", resp.status()),
                Err(err) => last = err.to_string(),
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "inventory not ready after {READY_TIMEOUT:?} (last: {last}); its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its pid, for counting its CPU apart.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU time the process has used so far, in clock ticks (`/proc/<pid>/stat`).
    fn cpu_ticks(&self) -> Option<u64> {
        crate::bench::cpu::own_ticks(&self.pid.to_string())
    }

    /// Waits until the service is idle (under 3 % of a core over one second), for instance
    /// while its outbox relay publishes what loading the data produced. Returns how long it
    /// took, or `None` when it was still busy after `limit`.
    pub async fn wait_idle(&self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let window = Duration::from_secs(1);
        while started.elapsed() < limit {
            let before = self.cpu_ticks()?;
            tokio::time::sleep(window).await;
            let after = self.cpu_ticks()?;
            // 100 ticks a second on Linux: 3 ticks in one second is 3 %.
            if after.saturating_sub(before) <= 3 {
                return Some(started.elapsed());
            }
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the service with SIGTERM (SIGKILL after a grace period) and returns how it ended.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("inventory was already stopped");
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        terminate(self.pid);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > STOP_TIMEOUT {
                child.kill()?;
                let status = child.wait()?;
                bail!("inventory ignored SIGTERM for {STOP_TIMEOUT:?}; killed ({status})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of the service's log, without anyhow's backtrace.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text
            .lines()
            .take_while(|l| !l.starts_with("Stack backtrace:"))
            .filter(|l| !l.trim().is_empty())
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Warnings, errors and anything else non-trivial the service logged: (count, the first
    /// few distinct messages).
    pub fn log_problems(&self, distinct: usize) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        summarize_log(&text, distinct)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // The error path: stop it the same way, blocking, since nothing async runs here.
        terminate(self.pid);
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends SIGTERM (through `kill`, as the crate forbids `unsafe`).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The service binary, next to this one in the same target directory. When run through
/// cargo, it is (re)built first so it matches the sources; a failed rebuild falls back to the
/// binary already there.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    let through_cargo = std::env::var_os("CARGO").is_some();
    if path.exists() && !through_cargo {
        return Ok(path);
    }
    match build(name, &exe) {
        Ok(()) => Ok(path),
        Err(err) if path.exists() => {
            eprintln!("warning: rebuilding {name} failed ({err:#}); using the existing binary");
            Ok(path)
        }
        Err(err) => Err(err),
    }
}

fn build(name: &str, exe: &Path) -> anyhow::Result<()> {
    let profile_dir = exe.parent().context("loadgen has no directory")?;
    let target_dir = profile_dir
        .parent()
        .context("loadgen is not inside a target directory")?;
    let release = profile_dir.file_name().is_some_and(|d| d == "release");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("e2e has no workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "-p", name, "--bin", name, "--target-dir"])
        .arg(target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if release {
        command.arg("--release");
    }
    eprintln!(
        "building {name} ({})",
        if release { "release" } else { "debug" }
    );
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p {name} failed ({status})");
    }
    Ok(())
}

/// Counts the WARN/ERROR JSON log lines and the lines that are not JSON at all (a panic,
/// say), and keeps the first `distinct` different messages.
pub fn summarize_log(text: &str, distinct: usize) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut messages: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let message = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(json) => {
                let level = json["level"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                if level != "WARN" && level != "ERROR" {
                    continue;
                }
                let text = json["fields"]["message"]
                    .as_str()
                    .or_else(|| json["message"].as_str())
                    .unwrap_or(line);
                let detail = ["error", "err"]
                    .iter()
                    .find_map(|k| json["fields"][*k].as_str().or_else(|| json[*k].as_str()))
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                format!("{level} {text}{detail}")
            }
            Err(_) => line.to_owned(),
        };
        count += 1;
        if messages.len() < distinct && !messages.contains(&message) {
            messages.push(message);
        }
    }
    (count, messages)
}

#[cfg(test)]
mod tests {
    use super::summarize_log;

    #[test]
    fn warnings_errors_and_raw_lines_are_counted_and_info_is_not() {
        let log = r#"{"level":"INFO","fields":{"message":"listening"}}
{"level":"WARN","fields":{"message":"broker unreachable","error":"connection refused"}}
{"level":"WARN","message":"outbox row not published","err":"AMQP error"}
{"level":"WARN","fields":{"message":"broker unreachable","error":"connection refused"}}
thread 'main' panicked at src/main.rs:1:1
"#;
        let (count, messages) = summarize_log(log, 5);
        assert_eq!(count, 4);
        assert_eq!(
            messages,
            vec![
                "WARN broker unreachable: connection refused".to_owned(),
                "WARN outbox row not published: AMQP error".to_owned(),
                "thread 'main' panicked at src/main.rs:1:1".to_owned()
            ]
        );
    }
}
