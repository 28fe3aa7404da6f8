//! The transactional outbox: events written in the transaction of the change that caused
//! them, and the relay that publishes them to RabbitMQ after commit.
//!
//! A row is marked published only on a broker ack with no `basic.return`. Rows are
//! claimed with `FOR UPDATE SKIP LOCKED`, so any number of relay replicas share the work
//! and a relay that dies mid-batch (its transaction rolls back) leaves its rows to the
//! others. Delivery is at least once: a crash after the broker's ack and before the
//! commit publishes the row again, and the consumers' inbox absorbs the duplicate.
//!
//! Per-aggregate order: rows of one aggregate are published in `seq` order, across
//! replicas. Writers must insert an aggregate's rows after taking that aggregate's row
//! lock (after the guarded `UPDATE`), so that `seq` order is commit order.
//!
//! A row's `payload` is one envelope, or a JSON array of envelopes (a bundle: the events
//! of one transaction in one row, to save per-row inserts, locks and deletes). A bundle is
//! one row of its aggregate: its envelopes go out in array order, and it is marked
//! published only when every one was confirmed; otherwise all of it goes out again later
//! (duplicates, which inboxes absorb and revisions order).

use crate::{
    events::Envelope,
    messaging::{Backoff, PublishError, Publisher, RawMessage},
    shutdown::Shutdown,
};
use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, Statement,
    TransactionTrait, Value,
};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager, async_trait};
use serde::Serialize;
use std::{
    collections::HashSet,
    ops::Range,
    sync::{Arc, LazyLock},
    time::Duration,
};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// The `LISTEN` channel relays wake up on (see [`NotifyTrigger`]).
pub const NOTIFY_CHANNEL: &str = "clickcollect_outbox";
/// Rows claimed per relay transaction.
const DEFAULT_BATCH_SIZE: u32 = 256;
/// How often an idle relay looks for rows nobody woke it for.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often the relay deletes expired published rows, and at most how many at once.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);
const CLEANUP_LIMIT: u32 = 5000;
/// After a local enqueue, the relay looks again after 5, 10, 20 … ms until the writer's
/// transaction has committed, up to about this long.
const QUICK_LOOK_FIRST: Duration = Duration::from_millis(5);
const QUICK_LOOK_LAST: Duration = Duration::from_millis(160);
/// Pause when rows were held back because another relay holds earlier rows of them.
const DEFERRED_PAUSE: Duration = Duration::from_millis(20);
/// Rows inserted per statement by [`enqueue_many`] (4 parameters each, PostgreSQL allows
/// 65535).
const INSERT_CHUNK: usize = 1000;

/// Claims up to `$1` rows and hands out one line per message: what the broker carries and
/// the fields of its AMQP properties, so the relay never parses or re-encodes an envelope.
///
/// A single envelope is its own message, not wrapped into an array (`jsonb_build_array`
/// rebuilds it: a fifth more CPU per message for the whole query). Its lines come before
/// the bundles' (the two branches of the `UNION`); the relay puts them back in `seq`
/// order. An empty bundle gives one line without a message.
///
/// SKIP LOCKED: rows another relay is publishing are its business; a relay that died
/// released its locks with its connection, so its rows come back here.
///
/// `gap`, per aggregate of the batch: the first unpublished row of that aggregate outside
/// the batch that precedes one of its rows in it (a row another relay holds); the rows
/// after it must wait for it. Not only rows before the aggregate's first row in the batch:
/// a relay that held back a row and let go of it can claim it again together with later
/// rows, while another relay holds one in between. Columns by position: see [`line`].
const CLAIM: &str = "
    WITH claimed AS (
        SELECT seq, aggregate, attempts, payload, jsonb_typeof(payload) = 'array' AS bundle
        FROM outbox
        WHERE published_at IS NULL
        ORDER BY seq
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ),
    gaps AS (
        SELECT b.aggregate, min(o.seq) AS gap
        FROM (SELECT aggregate, max(seq) AS last_seq FROM claimed GROUP BY aggregate) b
        JOIN outbox o ON o.aggregate = b.aggregate
                     AND o.published_at IS NULL
                     AND o.seq < b.last_seq
        WHERE o.seq NOT IN (SELECT seq FROM claimed)
        GROUP BY b.aggregate
    )
    SELECT m.seq, m.aggregate, m.attempts, m.ord, g.gap,
           m.msg ->> 'id', m.msg ->> 'type', m.msg ->> 'occurred_at', m.msg ->> 'source',
           m.msg ->> 'correlation_id', m.msg ->> 'traceparent',
           CASE jsonb_typeof(m.msg) WHEN 'object' THEN (m.msg - 'traceparent')::text END
    FROM (
        SELECT seq, aggregate, attempts, 1::bigint AS ord, payload AS msg
        FROM claimed WHERE NOT bundle
        UNION ALL
        SELECT c.seq, c.aggregate, c.attempts, e.ord, e.msg
        FROM claimed c
        -- The CASE as well as the WHERE: nothing promises the filter runs first, and
        -- jsonb_array_elements of an object would fail the whole claim.
        LEFT JOIN LATERAL jsonb_array_elements(CASE WHEN c.bundle THEN c.payload ELSE '[]' END)
            WITH ORDINALITY AS e (msg, ord) ON true
        WHERE c.bundle
    ) m
    LEFT JOIN gaps g ON g.aggregate = m.aggregate";

/// The columns of a [`CLAIM`] line.
mod line {
    pub const SEQ: usize = 0;
    pub const AGGREGATE: usize = 1;
    pub const ATTEMPTS: usize = 2;
    /// The message's position in its row from 1; `NULL` for an empty bundle.
    pub const ORD: usize = 3;
    /// The same on every line of an aggregate; `NULL` when nothing precedes it.
    pub const GAP: usize = 4;
    pub const ID: usize = 5;
    pub const TYPE: usize = 6;
    pub const OCCURRED_AT: usize = 7;
    pub const SOURCE: usize = 8;
    pub const CORRELATION_ID: usize = 9;
    pub const TRACEPARENT: usize = 10;
    /// The envelope without its `traceparent`; `NULL` when it is no JSON object.
    pub const BODY: usize = 11;
}

/// Bumped by every enqueue in this process, so a relay here looks right after the
/// writer's commit instead of at its next poll.
static LOCAL_ENQUEUES: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Creates the `outbox` table. Run it after [`crate::inbox::Migration`] and before the
/// service's own migrations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0002_shared_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE outbox (
                    seq bigserial PRIMARY KEY,
                    -- The message id (UUID v7, unique by construction; an index here would
                    -- only cost WAL on every write).
                    id uuid NOT NULL,
                    aggregate text NOT NULL,
                    routing_key text NOT NULL,
                    payload jsonb NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    published_at timestamptz,
                    -- Failed publish attempts, and why the last one failed.
                    attempts integer NOT NULL DEFAULT 0,
                    last_error text
                );
                -- The relay claims unpublished rows in seq order through the primary key:
                -- with the default (no retention) published rows are deleted at once.
                -- The per-aggregate order check: earlier unpublished rows of an aggregate.
                CREATE INDEX outbox_unpublished_by_aggregate ON outbox (aggregate, seq)
                    WHERE published_at IS NULL;
                -- Deleting published rows past their retention.
                CREATE INDEX outbox_published_at ON outbox (published_at)
                    WHERE published_at IS NOT NULL;",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE outbox")
            .await?;
        Ok(())
    }
}

/// Optional: a statement-level trigger that `NOTIFY`s [`NOTIFY_CHANNEL`] on every insert
/// into `outbox`, waking relays in *other* processes at commit.
///
/// Not part of the default set, on purpose: PostgreSQL serializes the commits of all
/// transactions that sent a `NOTIFY` (one cluster-wide lock held through the commit's
/// flush), which on this machine cut insert throughput from about 14,000 to 3,300
/// commits/s at 32 clients. Relays in the writer's own process are woken without it
/// (see [`enqueue`]), and the others poll. Add it to a service whose writes are rare.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotifyTrigger;

impl MigrationName for NotifyTrigger {
    fn name(&self) -> &str {
        "m0003_shared_outbox_notify"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NotifyTrigger {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     -- Delivered at commit; identical notifications of one transaction fold.
                     PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
                     RETURN NULL;
                 END $$;
                 CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
                     FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TRIGGER outbox_notify ON outbox; DROP FUNCTION outbox_notify();",
            )
            .await?;
        Ok(())
    }
}

/// Writes `envelope` to the outbox inside the caller's transaction `conn`; it is
/// published after that transaction commits, and never if it rolls back.
///
/// `aggregate` names what the event is about (e.g. `stock:S1:SKU-1`): events of one
/// aggregate are published in the order they were enqueued.
pub async fn enqueue<T: Serialize>(
    conn: &impl ConnectionTrait,
    aggregate: &str,
    envelope: &Envelope<T>,
) -> Result<(), DbErr> {
    enqueue_many(conn, [(aggregate, envelope)]).await
}

/// [`enqueue`] for many events, in few statements; they keep their order.
pub async fn enqueue_many<'a, T: Serialize + 'a>(
    conn: &impl ConnectionTrait,
    events: impl IntoIterator<Item = (&'a str, &'a Envelope<T>)>,
) -> Result<(), DbErr> {
    let rows = events
        .into_iter()
        .map(|(aggregate, envelope)| {
            let mut payload = serde_json::to_value(envelope)
                .map_err(|err| DbErr::Custom(format!("cannot encode the event: {err}")))?;
            // Kept beside the body (the relay turns it into the AMQP header).
            if let (Some(trace), Some(object)) = (&envelope.traceparent, payload.as_object_mut()) {
                object.insert("traceparent".into(), trace.clone().into());
            }
            Ok([
                Value::from(envelope.id),
                Value::from(aggregate),
                Value::from(envelope.event_type.as_str()),
                Value::from(payload),
            ])
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|row| {
                let first = row * 4 + 1;
                format!(
                    "(${}, ${}, ${}, ${})",
                    first,
                    first + 1,
                    first + 2,
                    first + 3
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO outbox (id, aggregate, routing_key, payload) VALUES {}",
            placeholders.join(", ")
        );
        let values = chunk.iter().flat_map(|row| row.iter().cloned());
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    }
    wake_local_relays();
    Ok(())
}

/// Tells the relays of this process that rows are (about to be) committed.
///
/// [`enqueue`] calls it already; calling it again after the commit saves a few
/// milliseconds of latency.
pub fn wake_local_relays() {
    LOCAL_ENQUEUES.send_modify(|count| *count = count.wrapping_add(1));
}

/// Ticks whenever [`wake_local_relays`] is called in this process: other workers that act
/// on rows committed by this process's writers (a push sender, say) wait on it too.
pub fn local_commits() -> watch::Receiver<u64> {
    LOCAL_ENQUEUES.subscribe()
}

/// Rows not published yet (a gauge for metrics and alerts).
pub async fn pending_count(conn: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS pending FROM outbox WHERE published_at IS NULL",
        ))
        .await?;
    let pending: i64 = match row {
        Some(row) => row.try_get("", "pending")?,
        None => 0,
    };
    Ok(u64::try_from(pending).unwrap_or(0))
}

/// Why a relay round did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking rows failed; the transaction rolled back and nothing is lost.
    #[error("outbox database error: {0}")]
    Database(#[from] DbErr),
    /// The broker is down: rows are left alone rather than locked while we wait.
    #[error("the broker is not connected")]
    BrokerUnavailable,
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Rows locked by this round.
    pub claimed: usize,
    /// Rows confirmed by the broker and marked published.
    pub published: usize,
    /// Rows whose publish failed (counted in their `attempts`).
    pub failed: usize,
    /// Messages of the published rows (a bundle row holds several).
    pub messages: usize,
    /// Rows left for a later round to keep their aggregate's order.
    pub held_back: usize,
    /// Of `held_back`, rows waiting on earlier rows another relay holds.
    pub deferred: usize,
}

/// The relay worker: publishes committed outbox rows, in order per aggregate.
pub struct OutboxRelay {
    /// Where the outbox lives.
    db: DatabaseConnection,
    /// Publishes with confirms.
    publisher: Publisher,
    /// For the `LISTEN` connection, which cannot come from the pool.
    database_url: String,
    /// Rows per round.
    batch_size: u32,
    /// Idle polling period.
    poll_interval: Duration,
    /// How long published rows are kept; `None` keeps them forever.
    retention: Option<Duration>,
    /// Aggregate name prefixes whose events carry their own order (a revision readers
    /// compare), so several rows of one such aggregate may be in flight at once.
    pipelined: Vec<String>,
}

/// One claimed row.
struct Row {
    /// Position in the outbox.
    seq: i64,
    /// What it is about.
    aggregate: String,
    /// Failed attempts so far.
    attempts: i32,
    /// The first row of its aggregate before it that another relay holds (see [`CLAIM`]).
    gap: Option<i64>,
    /// Its messages: these claim lines, in order (none for an empty bundle).
    lines: Range<usize>,
}

/// One line of the claim.
struct Line {
    /// Its row's `seq`.
    seq: i64,
    /// Its position in the row (0 for an empty bundle's line).
    ord: i64,
    /// The columns of [`line`].
    result: QueryResult,
}

impl OutboxRelay {
    /// A relay publishing `db`'s outbox through `publisher`; `database_url` is used for
    /// `LISTEN`.
    pub fn new(db: DatabaseConnection, publisher: Publisher, database_url: &str) -> Self {
        Self {
            db,
            publisher,
            database_url: database_url.to_owned(),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            retention: None,
            pipelined: Vec::new(),
        }
    }

    /// Claims up to `batch_size` rows per round (at least 1).
    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Looks for rows every `poll_interval` when nothing woke it.
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Lets rows of aggregates named with one of `prefixes` go out several per round
    /// (their events carry a revision, so readers can order them). Every other aggregate
    /// sends one row per round: a failure in the middle of a pipelined batch could
    /// otherwise deliver a later event of it before an earlier one.
    pub fn with_pipelined_aggregates(mut self, prefixes: &[&str]) -> Self {
        self.pipelined = prefixes.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Keeps published rows for `retention` (for forensics), then deletes them; `None`
    /// (the default) deletes each row as soon as it is published.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Rows not published yet.
    pub async fn pending_count(&self) -> Result<u64, DbErr> {
        pending_count(&self.db).await
    }

    /// One round: claim a batch, publish what may go now, mark the confirmed rows, commit.
    pub async fn drain_once(&self) -> Result<DrainReport, RelayError> {
        if !self.publisher.broker().is_connected() {
            return Err(RelayError::BrokerUnavailable);
        }
        let txn = self.db.begin().await?;
        let (claimed, lines) = self.claim(&txn).await?;
        let mut report = DrainReport {
            claimed: claimed.len(),
            ..DrainReport::default()
        };
        if claimed.is_empty() {
            txn.commit().await?;
            return Ok(report);
        }

        let mut seen: HashSet<&str> = HashSet::new();
        let mut probing: HashSet<&str> = HashSet::new();
        let mut to_send: Vec<RawMessage> = Vec::new();
        // Each row sent, and its messages' places in `to_send`.
        let mut sending: Vec<(&Row, Range<usize>)> = Vec::new();
        let mut failures: Vec<(i64, String)> = Vec::new();
        let mut broken: HashSet<&str> = HashSet::new();
        for row in &claimed {
            let aggregate = row.aggregate.as_str();
            let first_of_aggregate = seen.insert(aggregate);
            if row.gap.is_some_and(|gap| row.seq > gap) {
                report.held_back += 1;
                report.deferred += 1;
                continue;
            }
            // An aggregate whose head failed before sends only its head until that one
            // goes through: its later rows would otherwise be resent every round.
            if first_of_aggregate && row.attempts > 0 {
                probing.insert(aggregate);
            } else if probing.contains(aggregate) || broken.contains(aggregate) {
                report.held_back += 1;
                continue;
            }
            if !first_of_aggregate && !self.pipelined.iter().any(|p| aggregate.starts_with(p)) {
                // One row of this aggregate per round: it is published before the next
                // one is sent.
                report.held_back += 1;
                continue;
            }
            let start = to_send.len();
            let mut unreadable = None;
            for (index, line) in lines[row.lines.clone()].iter().enumerate() {
                match message(&line.result)? {
                    Ok(message) => to_send.push(message),
                    Err(reason) => {
                        unreadable = Some(in_row(index, row.lines.len(), reason));
                        break;
                    }
                }
            }
            match unreadable {
                None => sending.push((row, start..to_send.len())),
                Some(reason) => {
                    to_send.truncate(start);
                    failures.push((row.seq, format!("unreadable payload: {reason}")));
                    broken.insert(aggregate);
                }
            }
        }

        let results = self.publisher.publish_raw_batch(to_send).await;
        let mut published: Vec<i64> = Vec::new();
        for (row, messages) in &sending {
            let aggregate = row.aggregate.as_str();
            if broken.contains(aggregate) {
                // Sent after an earlier row of its aggregate failed: leave it unpublished
                // so it goes out again after that one (a duplicate, absorbed by inboxes).
                report.held_back += 1;
                continue;
            }
            let first_failure = results[messages.clone()]
                .iter()
                .enumerate()
                .find_map(|(index, result)| result.as_ref().err().map(|err| (index, err)));
            match first_failure {
                None => {
                    published.push(row.seq);
                    report.messages += messages.len();
                }
                Some((index, err)) => {
                    log_failure(row, err);
                    failures.push((row.seq, in_row(index, messages.len(), err)));
                    broken.insert(aggregate);
                }
            }
        }
        report.published = published.len();
        report.failed = failures.len();

        if !published.is_empty() {
            // Only rows the broker acked without a return get here. Without a retention
            // they are deleted: a small WAL record each, where marking them would write
            // every row (and its index entries) a second time.
            let sql = if self.retention.is_some() {
                "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])"
            } else {
                "DELETE FROM outbox WHERE seq = ANY($1::bigint[])"
            };
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [Value::from(published)],
            ))
            .await?;
        }
        if !failures.is_empty() {
            let (seqs, errors): (Vec<i64>, Vec<String>) = failures.into_iter().unzip();
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error
                 FROM unnest($1::bigint[], $2::text[]) AS f (seq, error)
                 WHERE o.seq = f.seq",
                [Value::from(seqs), Value::from(errors)],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(report)
    }

    /// Runs [`CLAIM`]: the rows in `seq` order, and their lines.
    async fn claim(&self, txn: &impl ConnectionTrait) -> Result<(Vec<Row>, Vec<Line>), DbErr> {
        let mut lines = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                CLAIM,
                [i64::from(self.batch_size).into()],
            ))
            .await?
            .into_iter()
            .map(|result| {
                Ok(Line {
                    seq: result.try_get_by_index(line::SEQ)?,
                    ord: result
                        .try_get_by_index::<Option<i64>>(line::ORD)?
                        .unwrap_or(0),
                    result,
                })
            })
            .collect::<Result<Vec<Line>, DbErr>>()?;
        if !lines.is_sorted_by_key(|line| (line.seq, line.ord)) {
            lines.sort_unstable_by_key(|line| (line.seq, line.ord));
        }
        let mut rows: Vec<Row> = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            if let Some(row) = rows.last_mut()
                && row.seq == line.seq
            {
                row.lines.end = index + 1;
                continue;
            }
            let messages = if line.ord == 0 { 0 } else { 1 };
            rows.push(Row {
                seq: line.seq,
                aggregate: line.result.try_get_by_index(line::AGGREGATE)?,
                attempts: line.result.try_get_by_index(line::ATTEMPTS)?,
                gap: line.result.try_get_by_index(line::GAP)?,
                lines: index..index + messages,
            });
        }
        Ok((rows, lines))
    }

    /// Deletes published rows older than the retention (at most a few thousand per
    /// call); returns how many. [`OutboxRelay::run`] calls it every minute.
    pub async fn delete_expired(&self) -> Result<u64, DbErr> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let deleted = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM outbox WHERE seq IN (
                     SELECT seq FROM outbox
                     WHERE published_at < now() - make_interval(secs => $1)
                     LIMIT $2)",
                [seconds.into(), i64::from(CLEANUP_LIMIT).into()],
            ))
            .await?;
        Ok(deleted.rows_affected())
    }

    /// Publishes until `shutdown` is cancelled, woken by local enqueues, `LISTEN`, or the
    /// poll; then finishes the round in progress, tries one last round, and returns.
    pub async fn run(self, shutdown: Shutdown) {
        let notified = Arc::new(Notify::new());
        let listener_stop = shutdown.child_token();
        let listener = tokio::spawn(listen(
            self.database_url.clone(),
            notified.clone(),
            listener_stop.clone(),
        ));
        let mut local = LOCAL_ENQUEUES.subscribe();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut quick_look: Option<Duration> = None;
        let mut last_cleanup = tokio::time::Instant::now();

        while !shutdown.is_cancelled() {
            let pause = match self.drain_once().await {
                Ok(report) => {
                    backoff.reset();
                    if report.published > 0 {
                        quick_look = None;
                    }
                    let more_now = report.claimed >= self.batch_size as usize
                        || report.held_back > report.deferred;
                    if report.published > 0 && more_now {
                        Duration::ZERO
                    } else if report.deferred > 0 {
                        DEFERRED_PAUSE
                    } else if let Some(delay) = quick_look {
                        let next = delay * 2;
                        quick_look = (next <= QUICK_LOOK_LAST).then_some(next);
                        delay
                    } else {
                        self.poll_interval
                    }
                }
                Err(RelayError::BrokerUnavailable) => {
                    tracing::debug!("broker down; outbox rows wait");
                    backoff.next_delay()
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%err, ?delay, "outbox relay round failed");
                    delay
                }
            };

            if last_cleanup.elapsed() >= CLEANUP_EVERY {
                last_cleanup = tokio::time::Instant::now();
                match self.delete_expired().await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(deleted, "deleted old outbox rows"),
                    Err(err) => tracing::warn!(%err, "deleting old outbox rows"),
                }
            }

            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
                () = notified.notified() => {}
                changed = local.changed() => {
                    if changed.is_ok() {
                        // The writer has not committed yet, most likely: look now and
                        // again shortly after.
                        quick_look = Some(QUICK_LOOK_FIRST);
                    }
                }
            }
        }

        // Flush what was committed up to now, bounded: the process is going away.
        match tokio::time::timeout(Duration::from_secs(5), self.drain_once()).await {
            Ok(Ok(report)) if report.published > 0 => {
                tracing::info!(published = report.published, "flushed the outbox");
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::info!(%err, "could not flush the outbox; rows stay pending"),
            Err(_) => tracing::warn!("flushing the outbox timed out; rows stay pending"),
        }
        listener_stop.cancel();
        if let Err(err) = listener.await {
            tracing::debug!(%err, "outbox listener task");
        }
        tracing::info!("outbox relay stopped");
    }
}

/// The message on a claim line, or why it cannot be sent.
fn message(line: &QueryResult) -> Result<Result<RawMessage, &'static str>, DbErr> {
    let text = |column| line.try_get_by_index::<Option<String>>(column);
    let Some(body) = text(line::BODY)? else {
        return Ok(Err("not a JSON object"));
    };
    let Some(message_id) = text(line::ID)?.and_then(canonical_uuid) else {
        return Ok(Err("\"id\" is no UUID"));
    };
    let Some(event_type) = text(line::TYPE)? else {
        return Ok(Err("no \"type\""));
    };
    let Some(correlation_id) = text(line::CORRELATION_ID)?.and_then(canonical_uuid) else {
        return Ok(Err("\"correlation_id\" is no UUID"));
    };
    let Some(source) = text(line::SOURCE)? else {
        return Ok(Err("no \"source\""));
    };
    // How the envelope's deserializer reads it.
    let Some(occurred_at) =
        text(line::OCCURRED_AT)?.and_then(|at| at.parse::<DateTime<Utc>>().ok())
    else {
        return Ok(Err("\"occurred_at\" is no timestamp"));
    };
    Ok(Ok(RawMessage {
        event_type,
        message_id,
        correlation_id,
        source,
        timestamp: u64::try_from(occurred_at.timestamp()).unwrap_or(0),
        traceparent: text(line::TRACEPARENT)?,
        body: body.into_bytes(),
    }))
}

/// `text` in the form `Uuid::to_string` writes (as the envelope's id and correlation id
/// always were on the wire), or `None` when it is no UUID.
fn canonical_uuid(text: String) -> Option<String> {
    let uuid = Uuid::try_parse(&text).ok()?;
    // 36 characters that parse are the hyphenated form; serde wrote it in lower case.
    if text.len() == 36 && !text.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Some(text)
    } else {
        Some(uuid.to_string())
    }
}

/// `what` about message `index` of a row of `count`; a single message needs no number.
fn in_row(index: usize, count: usize, what: impl std::fmt::Display) -> String {
    if count > 1 {
        format!("message {} of {count}: {what}", index + 1)
    } else {
        what.to_string()
    }
}

/// Logs a failed row on its 1st, 2nd, 4th, 8th… attempt: a stuck row is retried every
/// round, and one line per round would drown everything else.
fn log_failure(row: &Row, err: &PublishError) {
    let attempt = row.attempts.saturating_add(1);
    if attempt.count_ones() != 1 {
        return;
    }
    if matches!(err, PublishError::Unroutable { .. }) {
        // A topology mistake (no queue bound), not an outage: say so loudly.
        tracing::error!(seq = row.seq, aggregate = %row.aggregate, attempt, %err, "outbox row unroutable");
    } else {
        tracing::warn!(seq = row.seq, aggregate = %row.aggregate, attempt, %err, "outbox row not published");
    }
}

/// `LISTEN`s on [`NOTIFY_CHANNEL`] and forwards each notification (and each reconnect,
/// which may have lost some) to `notified`, until `stop`.
async fn listen(database_url: String, notified: Arc<Notify>, stop: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !stop.is_cancelled() {
        let (err, was_listening) = tokio::select! {
            () = stop.cancelled() => return,
            failure = listen_until_error(&database_url, &notified) => failure,
        };
        if was_listening {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(%err, ?delay, "outbox LISTEN failed; relying on polling meanwhile");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One `LISTEN` session; returns its error, and whether it got as far as listening.
async fn listen_until_error(database_url: &str, notified: &Notify) -> (sqlx::Error, bool) {
    let mut listener = match sqlx::postgres::PgListener::connect(database_url).await {
        Ok(listener) => listener,
        Err(err) => return (err, false),
    };
    if let Err(err) = listener.listen(NOTIFY_CHANNEL).await {
        return (err, false);
    }
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => notified.notify_one(),
            // The connection dropped (sqlx reconnects on the next call), and notifications
            // sent meanwhile are lost: look at the table.
            Ok(None) => notified.notify_one(),
            Err(err) => return (err, true),
        }
    }
}
