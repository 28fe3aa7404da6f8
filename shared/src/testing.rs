//! Helpers for tests: a fresh database and a unique broker prefix per test.

use sea_orm::{DatabaseConnection, DbErr};

/// The PostgreSQL server tests run against (`TEST_DATABASE_SERVER` overrides it).
pub fn database_server() -> String {
    std::env::var("TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The RabbitMQ tests run against (`TEST_AMQP_URL` overrides it).
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A URL naming a database that does not exist yet, unique to the caller.
pub fn fresh_database_url(label: &str) -> String {
    format!(
        "{}/t_{}_{}",
        database_server(),
        label,
        uuid::Uuid::new_v4().simple()
    )
}

/// A fresh, empty database (created now) and a small pool on it.
pub async fn fresh_database(label: &str) -> Result<(String, DatabaseConnection), DbErr> {
    let url = fresh_database_url(label);
    let db = crate::db::connect(&url, 5).await?;
    Ok((url, db))
}

/// A prefix for exchange and queue names, unique to one test.
pub fn unique_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// An error of a test helper, with its cause.
pub type TestError = Box<dyn std::error::Error + Send + Sync>;

/// The probe queues this process declared, deleted with their prefix's queues.
static PROBES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A queue bound to one routing key on a prefix's events exchange: it collects what is
/// published there, for a test to read (deleted by [`delete_queues`] of its prefix).
pub struct Probe {
    channel: lapin::Channel,
    queue: String,
    _conn: lapin::Connection,
}

impl Probe {
    /// Declares the queue and binds it to `routing_key` on `prefix`'s events exchange.
    pub async fn open(prefix: &str, routing_key: &str) -> Result<Self, TestError> {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let conn =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let queue = format!("{prefix}probe.{}", uuid::Uuid::new_v4().simple());
        let exchange = crate::messaging::Topology::new(prefix).events_exchange();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        PROBES
            .lock()
            .map_err(|_| "the probe registry is poisoned")?
            .push(queue.clone());
        Ok(Self {
            channel,
            queue,
            _conn: conn,
        })
    }

    /// Every event that arrives within `wait`.
    pub async fn collect(
        &self,
        wait: std::time::Duration,
    ) -> Result<Vec<serde_json::Value>, TestError> {
        Ok(self
            .collect_traced(wait)
            .await?
            .into_iter()
            .map(|(event, _)| event)
            .collect())
    }

    /// Every event that arrives within `wait`, with its `traceparent` header.
    pub async fn collect_traced(
        &self,
        wait: std::time::Duration,
    ) -> Result<Vec<(serde_json::Value, Option<String>)>, TestError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let got = self
                .channel
                .basic_get(
                    self.queue.as_str().into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await?;
            match got {
                Some(m) => {
                    let trace = m
                        .delivery
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get("traceparent").cloned())
                        .and_then(|v| match v {
                            lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                            _ => None,
                        });
                    out.push((serde_json::from_slice(&m.delivery.data)?, trace));
                }
                None if tokio::time::Instant::now() >= deadline => return Ok(out),
                None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Publishes a raw envelope to `prefix`'s events exchange under its type (for stale or
    /// duplicated events), and waits for the broker's confirmation.
    pub async fn publish(
        &self,
        prefix: &str,
        envelope: &serde_json::Value,
    ) -> Result<(), TestError> {
        let kind = envelope["type"]
            .as_str()
            .ok_or("the envelope has no type")?;
        let id = envelope["id"].as_str().ok_or("the envelope has no id")?;
        let exchange = crate::messaging::Topology::new(prefix).events_exchange();
        self.channel
            .basic_publish(
                exchange.as_str().into(),
                kind.into(),
                lapin::options::BasicPublishOptions::default(),
                &serde_json::to_vec(envelope)?,
                lapin::BasicProperties::default()
                    .with_message_id(id.into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
        Ok(())
    }
}

/// Deletes every service's and parking queue named with `prefix` (quorum queues are not
/// free: each holds file handles) and the probes opened on it.
pub async fn delete_queues(prefix: &str) {
    let probes: Vec<String> = PROBES
        .lock()
        .map(|p| {
            p.iter()
                .filter(|q| q.starts_with(prefix))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let Ok(conn) =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        let topology = crate::messaging::Topology::new(prefix);
        let named = crate::messaging::BINDINGS.iter().flat_map(|(service, _)| {
            [
                topology.service_queue(service),
                topology.parking_queue(service),
            ]
        });
        for queue in named.chain(probes) {
            let _ = channel
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
    }
    let _ = conn.close(0, "done".into()).await;
}

/// Fails when the committed OpenAPI document at `path` differs from `generated`; with
/// `UPDATE_OPENAPI` set, writes it first (an error when it cannot).
pub fn assert_openapi_current(
    generated: &utoipa::openapi::OpenApi,
    path: &str,
    package: &str,
) -> std::io::Result<()> {
    let generated = crate::http::openapi_json(generated);
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated)?;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} is out of date: run `UPDATE_OPENAPI=1 cargo test -p {package} --test openapi`"
    );
    Ok(())
}

/// Runs `rabbitmqctl ARGS` (the broker-restart tests stop and start the machine's broker);
/// an error when it cannot run or exits unsuccessfully.
pub async fn rabbitmqctl(args: &[&str]) -> std::io::Result<()> {
    let status = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "rabbitmqctl {} exited with {status}",
            args.join(" ")
        )))
    }
}

/// Polls `check` every 50 ms for up to 20 s; panics naming `what` if it never holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

/// The first column of the first row of `sql`, as an `i64` (counts, sums).
pub async fn scalar(db: &DatabaseConnection, sql: &str) -> Result<i64, DbErr> {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            sql.to_owned(),
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("no row from {sql}")))?;
    row.try_get_by_index::<i64>(0)
}

/// Waits until `base` answers `/health/ready` with 200 (10 s at most); panics otherwise.
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await
            && r.status() == reqwest::StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{base} never became ready");
}

/// Asserts an RFC 9457 problem+json answer of `status` (content type, `type`, `title`,
/// `detail`, the same `status` in the body) and returns its body.
pub async fn problem(r: reqwest::Response, status: reqwest::StatusCode) -> serde_json::Value {
    assert_eq!(r.status(), status);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type}"
    );
    // A body that is no JSON reads as null and fails the checks below.
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(body["status"], status.as_u16(), "problem body {body}");
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}
