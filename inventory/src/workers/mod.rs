//! Background loops of the inventory service, each stopped by the shutdown token.

use crate::store;
use crate::view::AvailabilityView;
use sea_orm::DatabaseConnection;
use shared::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// Expires due reservations until shutdown. Any number of replicas may run it: each due
/// reservation is taken by one sweeper (`SKIP LOCKED`) and ended once (conditional update).
pub async fn expiry_sweeper(
    db: DatabaseConnection,
    view: Arc<AvailabilityView>,
    interval: Duration,
    shutdown: Shutdown,
) {
    loop {
        // Drain everything due, one reservation per transaction (no lock-order cycles).
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let mark = view.mark();
            match store::expire_one_due(&db).await {
                Ok(Some(ended)) => {
                    shared::outbox::wake_local_relays();
                    tracing::info!(reservation_id = %ended.reservation["id"], "reservation expired");
                    view.applied(mark, (), Some(ended.levels));
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "expiry sweep failed; will retry");
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
