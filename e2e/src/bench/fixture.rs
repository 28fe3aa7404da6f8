//! One scenario's world: a fresh database, a running inventory service on it with its own
//! broker prefix and JWT secret, and the clients to talk to it. Torn down on every path.

use crate::bench::api::{Api, http_client};
use crate::bench::auth::Tokens;
use crate::bench::broker;
use crate::bench::cli::{Options, Scenario};
use crate::bench::postgres::Database;
use crate::bench::report::ScenarioReport;
use crate::bench::service::{Service, ServiceConfig};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The broker every run uses (local only).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A running service on a fresh database. Fields drop in order: the service stops before
/// its database goes.
pub struct Fixture {
    /// The service under test.
    pub service: Service,
    /// Its database.
    pub database: Database,
    /// HTTP calls to it.
    pub api: Api,
    /// Token minting with the run's secret.
    pub tokens: Tokens,
    /// An admin token.
    pub admin: String,
    /// `AMQP_URL` given to the service.
    pub amqp_url: String,
    /// `AMQP_PREFIX` given to the service.
    pub amqp_prefix: String,
    /// `AUTH_JWT_SECRET` given to the service (and to any second service of the scenario).
    pub jwt_secret: String,
    /// Scripts and the service log.
    pub workdir: PathBuf,
    /// Leave database, broker objects and workdir behind.
    pub keep: bool,
}

impl Fixture {
    /// Creates the database and starts the service on it.
    pub async fn start(
        scenario: Scenario,
        options: &Options,
        binary: &Path,
    ) -> anyhow::Result<Fixture> {
        let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let db_name = format!("bench_{}_{run}", scenario.name().replace('-', "_"));
        let workdir = std::env::temp_dir().join(format!("loadgen-{db_name}"));
        std::fs::create_dir_all(&workdir)
            .with_context(|| format!("creating {}", workdir.display()))?;
        broker::wait_reachable(AMQP_URL, Duration::from_secs(120)).await?;
        let database = Database::create(&db_name, options.keep).await?;
        let amqp_prefix = format!("bench{run}.");
        let jwt_secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let config = ServiceConfig {
            binary: binary.to_owned(),
            database_url: database.url(),
            amqp_url: AMQP_URL.to_owned(),
            amqp_prefix: amqp_prefix.clone(),
            jwt_secret: jwt_secret.clone(),
            log_path: workdir.join("inventory.log"),
            extra_env: Vec::new(),
        };
        eprintln!(
            "[{}] database {db_name}, broker prefix {amqp_prefix}, starting inventory",
            scenario.name()
        );
        if !options.keep {
            broker::remember_prefix(&amqp_prefix);
        }
        let service = Service::start(&config).await?;
        let api = Api::new(http_client(options.clients * 2)?, &service.base_url);
        let tokens = Tokens::new(&jwt_secret)?;
        let admin = tokens.admin()?;
        Ok(Fixture {
            service,
            database,
            api,
            tokens,
            admin,
            amqp_url: AMQP_URL.to_owned(),
            amqp_prefix,
            jwt_secret,
            workdir,
            keep: options.keep,
        })
    }

    /// Writes a pgbench script into the workdir.
    pub fn script(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.workdir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Waits until the service is idle (its relay done with what loading produced) and says
    /// how long that took.
    pub async fn settle(&self) -> String {
        let limit = Duration::from_secs(90);
        match self.service.wait_idle(limit).await {
            Some(took) => format!("service idle {:.1} s after loading", took.as_secs_f64()),
            None => format!("service still busy {limit:?} after loading; measuring anyway"),
        }
    }

    /// Stops the service (SIGTERM), reports what it logged and how it exited, removes the
    /// broker objects of the prefix and the database (unless kept). Returns human notes.
    pub async fn finish(self) -> Vec<String> {
        let Fixture {
            mut service,
            database,
            amqp_url,
            amqp_prefix,
            workdir,
            keep,
            ..
        } = self;
        let mut notes = Vec::new();
        let (problems, messages) = service.log_problems(8);
        if problems > 0 {
            notes.push(format!(
                "service logged {problems} warning/error line(s) (log: {}):",
                service.log_path.display()
            ));
            notes.extend(messages.into_iter().map(|m| format!("  {m}")));
        }
        match service.stop().await {
            Ok(status) if status.success() => {}
            Ok(status) => notes.push(format!(
                "service ended with {status} on SIGTERM (expected exit 0); log tail:\n{}",
                indent(&service.log_tail(10))
            )),
            Err(err) => notes.push(format!("stopping the service: {err:#}")),
        }
        drop(service);
        if keep {
            notes.push(format!(
                "kept database {} and broker prefix {amqp_prefix}; files in {}",
                database.name,
                workdir.display()
            ));
        } else {
            if let Err(err) = clean_broker(&amqp_url, &amqp_prefix).await {
                notes.push(format!(
                    "broker clean-up of {amqp_prefix} failed, its queues and exchanges are left: {err:#}"
                ));
            }
            broker::forget_prefix(&amqp_prefix);
            if let Err(err) = database.drop_now().await {
                notes.push(format!("dropping the database: {err:#}"));
            }
            if problems == 0 {
                remove_dir(&workdir);
            }
        }
        notes
    }
}

/// Deletes the prefix's broker objects; when the broker is away (mid-restart, say), waits
/// for it and tries once more.
async fn clean_broker(amqp_url: &str, prefix: &str) -> anyhow::Result<()> {
    let limit = Duration::from_secs(90);
    let first = tokio::time::timeout(limit, broker::delete_prefixed(amqp_url, prefix)).await;
    if let Ok(Ok(_)) = first {
        return Ok(());
    }
    eprintln!("broker clean-up of {prefix} failed; waiting for the broker to try again");
    broker::wait_reachable(amqp_url, Duration::from_secs(120)).await?;
    tokio::time::timeout(limit, broker::delete_prefixed(amqp_url, prefix))
        .await
        .map_err(|_| anyhow::anyhow!("took over {limit:?}"))?
        .map(|_| ())
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Fixture {
    /// Starts another service (`orders`, `notifications`) on a fresh database of its own,
    /// beside the fixture's inventory, on the same broker prefix and secret.
    pub async fn start_beside(
        &self,
        name: &str,
        options: &Options,
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<(Service, Database)> {
        let binary = crate::bench::service::binary(name)?;
        let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let database = Database::create(&format!("bench_{name}_svc_{run}"), options.keep).await?;
        let service = Service::start(&ServiceConfig {
            binary,
            database_url: database.url(),
            amqp_url: self.amqp_url.clone(),
            amqp_prefix: self.amqp_prefix.clone(),
            jwt_secret: self.jwt_secret.clone(),
            log_path: self.workdir.join(format!("{name}.log")),
            extra_env,
        })
        .await?;
        Ok((service, database))
    }

    /// Stops a service of [`Fixture::start_beside`], noting in `report` what it logged
    /// amiss and how it exited, and drops its database.
    pub async fn stop_beside(
        &self,
        name: &str,
        mut service: Service,
        database: Database,
        report: &mut ScenarioReport,
    ) -> anyhow::Result<()> {
        let (problems, messages) = service.log_problems(5);
        if problems > 0 {
            report
                .notes
                .push(format!("{name} logged {problems} warning/error line(s):"));
            report
                .notes
                .extend(messages.into_iter().map(|m| format!("  {m}")));
        }
        match service.stop().await {
            Ok(status) if status.success() => {}
            Ok(status) => report.notes.push(format!(
                "{name} ended with {status} on SIGTERM (expected 0)"
            )),
            Err(err) => report.notes.push(format!("stopping {name}: {err:#}")),
        }
        drop(service);
        database.drop_now().await
    }
}
