//! The `Idempotency-Key` store: replays the first response of a retried write.
//!
//! A key is scoped by the caller's identity. Within the write's own transaction,
//! `idem_begin` takes a transaction-scoped advisory lock on (caller, key): if another request
//! holds it, the first is still running (409); if a stored response exists, it is replayed
//! (or 422 when the body differs); otherwise the write proceeds and `idem_finish` stores
//! its response in the same transaction, so the key and the effect commit together. The
//! logic lives in SQL functions so that writes done in one SQL call (reservations) use the
//! very same rules.

use crate::auth::Caller;
use crate::problem::Body;
use crate::problem::Problem;
use actix_web::{HttpRequest, HttpResponse, http::StatusCode};
use sea_orm::TransactionTrait;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use sea_orm_migration::prelude::*;
use sha2::{Digest, Sha256};

/// The header name.
pub const HEADER: &str = "Idempotency-Key";

/// Creates the key table and the `idem_begin` / `idem_finish` functions.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0000_shared_idempotency"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE TABLE idempotency_keys (
    caller text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    status int NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- state: 'proceed' (new key, lock held until commit), 'replay' (same body: status and body
-- of the first response), 'mismatch' (same key, another body), 'running' (first still in flight).
CREATE FUNCTION idem_begin(p_caller text, p_key text, p_hash text,
                           OUT state text, OUT status int, OUT body jsonb) AS $$
DECLARE
    stored idempotency_keys%ROWTYPE;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(p_caller || chr(31) || p_key, 7)) THEN
        state := 'running';
        RETURN;
    END IF;
    SELECT * INTO stored FROM idempotency_keys k WHERE k.caller = p_caller AND k.key = p_key;
    IF NOT FOUND THEN
        state := 'proceed';
    ELSIF stored.request_hash <> p_hash THEN
        state := 'mismatch';
    ELSE
        state := 'replay';
        status := stored.status;
        body := stored.body;
    END IF;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION idem_finish(p_caller text, p_key text, p_hash text, p_status int, p_body jsonb)
RETURNS void AS $$
    INSERT INTO idempotency_keys (caller, key, request_hash, status, body)
    VALUES (p_caller, p_key, p_hash, p_status, p_body)
$$ LANGUAGE sql;
"#,
            )
            .await
            .map(|_| ())
    }
}

/// A validated `Idempotency-Key` with the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The caller's identity (`role:id`).
    pub caller: String,
    /// The key as sent.
    pub key: String,
    /// SHA-256 of method, path and body.
    pub request_hash: String,
}

impl IdempotencyKey {
    /// Reads the header, if present; 400 when it is not 1–255 visible ASCII characters.
    pub fn from_request(
        req: &HttpRequest,
        caller: &str,
        body: &[u8],
    ) -> Result<Option<Self>, Problem> {
        let Some(value) = req.headers().get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                Problem::bad_request("Idempotency-Key must be 1-255 visible ASCII characters")
            })?;
        let mut hasher = Sha256::new();
        hasher.update(req.method().as_str());
        hasher.update(b" ");
        hasher.update(req.path());
        hasher.update(b"\n");
        hasher.update(body);
        Ok(Some(Self {
            caller: caller.to_owned(),
            key: key.to_owned(),
            request_hash: hex::encode(hasher.finalize()),
        }))
    }
}

/// What to do with a request carrying a key.
#[derive(Debug)]
pub enum Begin {
    /// New key: do the work, then [`finish`] in the same transaction.
    Proceed,
    /// Answer with the first response again.
    Replay {
        /// Its status.
        status: u16,
        /// Its body.
        body: serde_json::Value,
    },
}

/// Checks the key inside the write's transaction; 409 while the first is running, 422 on
/// another body.
pub async fn begin(conn: &impl ConnectionTrait, key: &IdempotencyKey) -> Result<Begin, Problem> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT state, status, body FROM idem_begin($1, $2, $3)",
            [
                key.caller.clone().into(),
                key.key.clone().into(),
                key.request_hash.clone().into(),
            ],
        ))
        .await?
        .ok_or_else(Problem::internal)?;
    let state: String = row.try_get("", "state")?;
    interpret(
        &state,
        row.try_get::<Option<i32>>("", "status")?,
        row.try_get("", "body")?,
    )
}

/// Turns `idem_begin`'s answer into a decision (shared with callers that run it in their own SQL).
pub fn interpret(
    state: &str,
    status: Option<i32>,
    body: Option<serde_json::Value>,
) -> Result<Begin, Problem> {
    match state {
        "proceed" => Ok(Begin::Proceed),
        "running" => Err(Problem::conflict(
            "idempotency-key-in-use",
            "a request with this Idempotency-Key is still being processed",
        )),
        "mismatch" => Err(Problem::unprocessable(
            "this Idempotency-Key was used with a different request body",
        )),
        _ => Ok(Begin::Replay {
            status: status
                .and_then(|s| <u16 as TryFrom<i32>>::try_from(s).ok())
                .unwrap_or(200),
            body: body.unwrap_or(serde_json::Value::Null),
        }),
    }
}

/// Stores the response of a new key, in the write's transaction.
pub async fn finish(
    conn: &impl ConnectionTrait,
    key: &IdempotencyKey,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT idem_finish($1, $2, $3, $4, $5)",
        [
            key.caller.clone().into(),
            key.key.clone().into(),
            key.request_hash.clone().into(),
            i32::from(status).into(),
            body.clone().into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// The replayed response, marked so clients can tell.
pub fn replay_response(status: u16, body: serde_json::Value) -> actix_web::HttpResponse {
    let status =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK);
    let mut builder = actix_web::HttpResponse::build(status);
    builder.insert_header(("Idempotent-Replayed", "true"));
    if status.is_client_error() || status.is_server_error() {
        builder.content_type(crate::problem::PROBLEM_JSON);
    }
    builder.json(body)
}

/// Deletes keys older than `older_than`, at most `limit` of them; returns how many.
/// A client retrying after that is treated as a new request.
pub async fn purge(
    conn: &impl ConnectionTrait,
    older_than: std::time::Duration,
    limit: u32,
) -> Result<u64, DbErr> {
    let seconds = <i64 as TryFrom<u64>>::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
    let deleted = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM idempotency_keys WHERE (caller, key) IN (
                 SELECT caller, key FROM idempotency_keys
                 WHERE created_at < now() - make_interval(secs => $1)
                 LIMIT $2)",
            [seconds.into(), i64::from(limit).into()],
        ))
        .await?;
    Ok(deleted.rows_affected())
}

/// Runs a write in one transaction with its `Idempotency-Key` (when sent): a retry replays
/// the first response and changes nothing; the key and the effect commit together.
/// The write's third output (levels to show at once, say) is handed back only after commit.
pub async fn idempotent_write<F, T>(
    db: &sea_orm::DatabaseConnection,
    req: &HttpRequest,
    caller: &Caller,
    body: &Body,
    write: F,
) -> Result<(HttpResponse, Option<T>), Problem>
where
    F: AsyncFnOnce(
        &sea_orm::DatabaseTransaction,
    ) -> Result<(StatusCode, serde_json::Value, T), Problem>,
{
    let key = IdempotencyKey::from_request(req, &caller.identity(), &body.0)?;
    let txn = db.begin().await?;
    // Every way out ends the transaction before answering: a dropped one is rolled back
    // only when its connection is next used, and until then it keeps the key's advisory
    // lock, so a retry landing on another connection would be told "still running".
    if let Some(key) = &key {
        match begin(&txn, key).await {
            Ok(Begin::Proceed) => {}
            Ok(Begin::Replay { status, body }) => {
                txn.rollback().await?;
                return Ok((replay_response(status, body), None));
            }
            Err(problem) => {
                txn.rollback().await?;
                return Err(problem);
            }
        }
    }
    let (status, value, after) = match write(&txn).await {
        Ok(done) => done,
        Err(problem) => {
            txn.rollback().await?;
            return Err(problem);
        }
    };
    if let Some(key) = &key {
        finish(&txn, key, status.as_u16(), &value).await?;
    }
    txn.commit().await?;
    crate::outbox::wake_local_relays();
    Ok((HttpResponse::build(status).json(value), Some(after)))
}
