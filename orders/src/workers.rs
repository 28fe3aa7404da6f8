//! Background loops of the orders service, each stopped by the shutdown token.

use crate::store;
use sea_orm::DatabaseConnection;
use shared::shutdown::Shutdown;
use std::time::Duration;

/// Expires ready orders past their deadline (no-shows) and sends each pickup reminder once,
/// until shutdown. Any number of replicas may run it: each due order is taken by one
/// sweeper (`SKIP LOCKED`) and moved once (conditional update).
pub async fn deadline_sweeper(
    db: DatabaseConnection,
    interval: Duration,
    reminder_before: Duration,
    shutdown: Shutdown,
) {
    let before = i64::try_from(reminder_before.as_secs()).unwrap_or(i64::MAX / 2);
    loop {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match sweep_one(&db, before).await {
                Ok(true) => shared::outbox::wake_local_relays(),
                Ok(false) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "deadline sweep failed; will retry");
                    break;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {},
        }
    }
}

/// One expiry or one reminder, in its own transaction; `false` when nothing was due.
async fn sweep_one(db: &DatabaseConnection, before: i64) -> Result<bool, sea_orm::DbErr> {
    use sea_orm::TransactionTrait;
    let txn = db.begin().await?;
    if let Some(row) = store::expire_one_due(&txn).await? {
        txn.commit().await?;
        tracing::info!(order_id = %row.id, "order expired: not collected in time");
        return Ok(true);
    }
    if let Some(row) = store::remind_one_due(&txn, before).await? {
        txn.commit().await?;
        tracing::info!(order_id = %row.id, "pickup reminder sent");
        return Ok(true);
    }
    txn.commit().await?;
    Ok(false)
}
