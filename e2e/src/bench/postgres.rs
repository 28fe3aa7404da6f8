//! PostgreSQL through its own tools: `psql` for fresh databases and checks, `pgbench` for
//! the baselines.

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The PostgreSQL host every benchmark database lives on.
pub const HOST: &str = "127.0.0.1";
/// Its port.
pub const PORT: &str = "5432";
/// The (trusted) role the benchmark connects as.
pub const USER: &str = "postgres";

/// The longest any one `psql` call may take.
const PSQL_TIMEOUT: Duration = Duration::from_secs(300);

/// A database created for one scenario, dropped when the guard goes (unless kept).
#[derive(Debug)]
pub struct Database {
    /// The database name, `bench_<scenario>_<random>`.
    pub name: String,
    /// Leave it behind for inspection.
    keep: bool,
    /// Already dropped through [`Database::drop_now`].
    dropped: bool,
}

impl Database {
    /// Creates a fresh, empty database.
    pub async fn create(name: &str, keep: bool) -> anyhow::Result<Database> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("unsupported database name {name:?}");
        }
        psql("postgres", &format!("CREATE DATABASE \"{name}\"")).await?;
        Ok(Database {
            name: name.to_owned(),
            keep,
            dropped: false,
        })
    }

    /// The `DATABASE_URL` of the service under test.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@{HOST}:{PORT}/{}", self.name)
    }

    /// Runs SQL in this database and returns psql's unaligned, tuples-only output.
    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        psql(&self.name, sql).await
    }

    /// Drops the database now (forcing out any connection left), unless it is to be kept.
    pub async fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        if self.keep {
            return Ok(());
        }
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        )
        .await
        .map(|_| ())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.dropped || self.keep {
            return;
        }
        // The error path: nothing async is left to run us, so block briefly.
        let _ = std::process::Command::new("psql")
            .args(connection_args("postgres"))
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn connection_args(database: &str) -> Vec<String> {
    [
        "-h",
        HOST,
        "-p",
        PORT,
        "-U",
        USER,
        "-d",
        database,
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs `sql` through `psql` in `database`; unaligned, tuples only, trimmed.
pub async fn psql(database: &str, sql: &str) -> anyhow::Result<String> {
    let run = Command::new("psql")
        .args(connection_args(database))
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PSQL_TIMEOUT, run)
        .await
        .with_context(|| format!("psql took over {PSQL_TIMEOUT:?}"))?
        .context("running psql (is it on PATH?)")?;
    if !output.status.success() {
        bail!(
            "psql failed on `{}`: {}",
            sql.lines().next().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// What one pgbench run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PgbenchRun {
    /// `tps = N (without initial connection time)`.
    pub tps: f64,
    /// `number of transactions actually processed`.
    pub transactions: u64,
    /// `number of failed transactions` (PostgreSQL 15 reports it).
    pub failed: u64,
    /// `latency average = N ms`.
    pub latency_avg_ms: Option<f64>,
    /// Where the cores went while it ran (pgbench counts as the load generator).
    pub cpu: Option<crate::bench::cpu::Use>,
}

/// Runs `pgbench -n -M prepared -c clients -j 2 -T secs -f script` on `database`.
pub async fn pgbench(
    database: &str,
    script: &Path,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<PgbenchRun> {
    let threads = clients.clamp(1, 2);
    let output = Command::new("pgbench")
        .args(["-h", HOST, "-p", PORT, "-U", USER, "-n", "-M", "prepared"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(threads.to_string())
        .arg("-T")
        .arg(duration.as_secs().max(1).to_string())
        .arg("-f")
        .arg(script)
        .arg(database)
        .kill_on_drop(true)
        .output();
    // -T bounds the run; this bounds a pgbench stuck connecting.
    let limit = duration + Duration::from_secs(120);
    let before = crate::bench::cpu::Sample::now(None);
    let output = tokio::time::timeout(limit, output)
        .await
        .with_context(|| format!("pgbench took over {limit:?}"))?
        .context("running pgbench (is it on PATH?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "pgbench exited with {}: {}",
            output.status,
            stderr
                .trim()
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let cpu = before.until(&crate::bench::cpu::Sample::now(None));
    let run = parse_pgbench(&stdout)
        .with_context(|| format!("unexpected pgbench output:\n{stdout}{stderr}"))?;
    Ok(PgbenchRun {
        cpu: Some(cpu),
        ..run
    })
}

/// Reads the figures out of pgbench's summary.
pub fn parse_pgbench(stdout: &str) -> Option<PgbenchRun> {
    let mut tps = None;
    let mut transactions = 0;
    let mut failed = 0;
    let mut latency_avg_ms = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            // PostgreSQL 14+ prints one tps line; older ones print "including/excluding".
            if rest.contains("without initial connection time")
                || rest.contains("excluding connections establishing")
            {
                tps = rest.split_whitespace().next()?.parse().ok();
            }
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ")
        {
            transactions = rest.split('/').next()?.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
            failed = rest.split_whitespace().next()?.parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency_avg_ms = rest.split_whitespace().next()?.parse().ok();
        }
    }
    Some(PgbenchRun {
        tps: tps?,
        transactions,
        failed,
        latency_avg_ms,
        cpu: None,
    })
}

/// The read baseline: one stock row by primary key, random store and SKU.
pub fn read_script(stores: usize, skus: usize) -> String {
    format!(
        "\\set s random(1, {stores})\n\\set k random(1, {skus})\n\
         SELECT on_hand, reserved, safety_stock, updated_at FROM stock_levels \
         WHERE store_id = 'S' || lpad(:s::text, 3, '0') AND sku = 'SKU-' || lpad(:k::text, 5, '0');\n"
    )
}

/// The write baseline: the conditional reservation `UPDATE` of one random row, on the copy.
pub fn write_script(stores: usize, skus: usize) -> String {
    format!(
        "\\set s random(1, {stores})\n\\set k random(1, {skus})\n\
         UPDATE {BASELINE_TABLE} SET reserved = reserved + 1 \
         WHERE store_id = 'S' || lpad(:s::text, 3, '0') AND sku = 'SKU-' || lpad(:k::text, 5, '0') \
         AND on_hand - reserved - safety_stock >= 1;\n"
    )
}

/// One call of the service's `reserve_batch` with `size` one-unit requests on random
/// levels of the catalogue, as the service encodes them (pgbench scripts take no ':' in
/// literals, hence `chr(58)`).
pub fn group_script(stores: usize, skus: usize, size: usize) -> String {
    let fields: Vec<String> = group_fields(stores, skus)
        .into_iter()
        .map(|(name, value)| format!("'{name}', {value}"))
        .collect();
    format!(
        "SELECT count(*) FROM reserve_batch((SELECT jsonb_agg(jsonb_build_object({})) \
         FROM generate_series(1, {size}) AS g));\n",
        fields.join(", ")
    )
}

/// Each field of one request of [`group_script`] and the SQL that makes it (request `g`).
fn group_fields(stores: usize, skus: usize) -> Vec<(&'static str, String)> {
    let owner = "'customer' || chr(58) || 'bench-' || g".to_string();
    vec![
        ("id", "uuid_v7()".into()),
        (
            "store_id",
            format!("'S' || lpad((1 + floor(random() * {stores}))::int::text, 3, '0')"),
        ),
        (
            "skus",
            format!(
                "jsonb_build_array('SKU-' || lpad((1 + floor(random() * {skus}))::int::text, 5, '0'))"
            ),
        ),
        ("quantities", "jsonb_build_array(1)".into()),
        ("channel", "'web'".into()),
        ("reference", "'bench-cart'".into()),
        ("owner", owner.clone()),
        ("order_id", "NULL".into()),
        ("ttl_seconds", "900".into()),
        ("correlation", "uuid_v7()".into()),
        ("causation", "NULL".into()),
        ("idem_caller", owner),
        ("idem_key", "gen_random_uuid()::text".into()),
        (
            "idem_hash",
            "md5(random()::text) || md5(random()::text)".into(),
        ),
    ]
}

/// The hot baseline: the same `UPDATE`, always on one row of the copy.
pub fn hot_script(store_id: &str, sku: &str) -> String {
    format!(
        "UPDATE {BASELINE_TABLE} SET reserved = reserved + 1 \
         WHERE store_id = '{store_id}' AND sku = '{sku}' \
         AND on_hand - reserved - safety_stock >= 1;\n"
    )
}

/// The copy of `stock_levels` the write baselines change, so the service's ledger stays true.
pub const BASELINE_TABLE: &str = "stock_levels_baseline";

/// Copies `stock_levels` (columns, defaults, constraints, indexes, rows) into
/// [`BASELINE_TABLE`] and analyzes both.
pub async fn copy_stock_levels(db: &Database) -> anyhow::Result<u64> {
    db.query(&format!(
        "CREATE TABLE {BASELINE_TABLE} (LIKE stock_levels INCLUDING ALL)"
    ))
    .await?;
    db.query(&format!(
        "INSERT INTO {BASELINE_TABLE} SELECT * FROM stock_levels"
    ))
    .await?;
    db.query(&format!("ANALYZE {BASELINE_TABLE}")).await?;
    db.query("ANALYZE stock_levels").await?;
    let rows = db
        .query(&format!("SELECT count(*) FROM {BASELINE_TABLE}"))
        .await?;
    rows.parse().context("counting the baseline copy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_15_summary_is_parsed() {
        let out = "pgbench (15.20 (Debian 15.20-0+deb12u1))\n\
            transaction type: read.sql\n\
            scaling factor: 1\n\
            query mode: prepared\n\
            number of clients: 64\n\
            number of threads: 2\n\
            maximum number of tries: 1\n\
            duration: 10 s\n\
            number of transactions actually processed: 123456\n\
            number of failed transactions: 3 (0.002%)\n\
            latency average = 5.123 ms\n\
            initial connection time = 40.1 ms\n\
            tps = 12345.678901 (without initial connection time)\n";
        assert_eq!(
            parse_pgbench(out),
            Some(PgbenchRun {
                tps: 12345.678901,
                transactions: 123456,
                failed: 3,
                latency_avg_ms: Some(5.123),
                cpu: None,
            })
        );
    }

    #[test]
    fn the_group_script_names_exactly_the_fields_the_service_sends()
    -> Result<(), Box<dyn std::error::Error>> {
        let call = inventory::store::ReserveCall {
            id: uuid::Uuid::now_v7(),
            store_id: "S001".into(),
            lines: vec![("SKU-00001".into(), 1)],
            channel: "web".into(),
            reference: "cart".into(),
            owner: "customer:c".into(),
            order_id: None,
            ttl_seconds: 900,
            correlation: uuid::Uuid::now_v7(),
            causation: None,
            idempotency: Some(shared::idempotency::IdempotencyKey {
                caller: "customer:c".into(),
                key: "k".into(),
                request_hash: "h".into(),
            }),
        };
        let sent: serde_json::Value =
            serde_json::from_str(&inventory::store::encode_group(&[call])?)?;
        let mut sent: Vec<String> = sent[0]
            .as_object()
            .ok_or("a request is a JSON object")?
            .keys()
            .cloned()
            .collect();
        sent.sort();
        let mut named: Vec<String> = group_fields(20, 500)
            .into_iter()
            .map(|(name, _)| name.to_string())
            .collect();
        named.sort();
        assert_eq!(named, sent);
        Ok(())
    }

    #[test]
    fn a_summary_without_tps_is_not_a_figure() {
        assert_eq!(parse_pgbench("number of clients: 64\n"), None);
    }
}
