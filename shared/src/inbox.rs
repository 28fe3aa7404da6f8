//! The idempotent inbox: ids of the messages a consumer has handled, written in the same
//! transaction as the handler's effect, so a redelivered message has its effect once.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager, async_trait};
use std::time::Duration;
use uuid::Uuid;

/// Creates the `inbox` table. Run it before the service's own migrations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0001_shared_inbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE inbox (
                    consumer text NOT NULL,
                    message_id uuid NOT NULL,
                    handled_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (consumer, message_id)
                );
                -- For purging old ids; the primary key serves the hot path.
                CREATE INDEX inbox_handled_at ON inbox (handled_at);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE inbox")
            .await?;
        Ok(())
    }
}

/// Records that `consumer` handles `message_id`; `true` when new, `false` when it was
/// handled before (then the caller must apply nothing).
///
/// Call it inside the transaction of the effect: the id and the effect commit together
/// or not at all. A concurrent delivery of the same id waits on the first one's key and
/// sees `false` once it commits (or `true` if it rolled back).
pub async fn record(
    txn: &impl ConnectionTrait,
    consumer: &str,
    message_id: Uuid,
) -> Result<bool, DbErr> {
    // Guards "nothing twice": the primary key admits one row per (consumer, message).
    let inserted = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [consumer.into(), message_id.into()],
        ))
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Deletes ids handled longer ago than `older_than`; returns how many. Keep it far above
/// how long a message can sit in a queue or the outbox, or a late duplicate gets through.
pub async fn purge(conn: &impl ConnectionTrait, older_than: Duration) -> Result<u64, DbErr> {
    let seconds = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
    let deleted = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM inbox WHERE handled_at < now() - make_interval(secs => $1)",
            [seconds.into()],
        ))
        .await?;
    Ok(deleted.rows_affected())
}
