//! The delivery worker: claims due deliveries, makes one attempt each, records the
//! outcome. Safe with any number of replicas (rows are claimed `FOR UPDATE SKIP LOCKED`
//! and settled conditionally on the attempt they were claimed for).

use crate::domain::{Context, next_delay};
use crate::push::{Outcome, Providers, Target};
use crate::store::{self, Claimed, Settle};
use chrono::Utc;
use futures::StreamExt;
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use shared::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// When and how often to try again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The first retry's delay (doubled each time, with jitter).
    pub base: Duration,
    /// The longest delay between two attempts.
    pub max: Duration,
    /// Attempts before a delivery is `dead`.
    pub max_attempts: u32,
}

/// How long settled deliveries and retired alerts stay in the log.
pub const LOG_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Sends what the consumer and the alert matcher queued.
pub struct DeliveryWorker {
    /// The notifications database.
    pub db: DatabaseConnection,
    /// The push providers.
    pub providers: Arc<Providers>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Deliveries claimed per round.
    pub batch: u32,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// How often to look when nothing woke us (other replicas' deliveries, retries due).
    pub poll_interval: Duration,
    /// How long a claimed attempt may take before another worker may take it over.
    pub lease: Duration,
}

impl DeliveryWorker {
    /// Runs until `stop`: a round whenever this process commits new deliveries, at every
    /// poll otherwise. Attempts in flight finish before it returns.
    pub async fn run(self, stop: Shutdown) {
        let mut local = shared::outbox::local_commits();
        let mut failures = 0u32;
        let mut last_purge = tokio::time::Instant::now();
        while !stop.is_cancelled() {
            if last_purge.elapsed() >= Duration::from_secs(600) {
                last_purge = tokio::time::Instant::now();
                match store::purge_settled(&self.db, LOG_RETENTION).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "old deliveries and alerts purged"),
                    Err(err) => tracing::warn!(%err, "purging old deliveries failed"),
                }
            }
            let pause = match self.round().await {
                Ok(claimed) if claimed >= self.batch as usize => {
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    self.poll_interval
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%err, "delivery round failed");
                    Duration::from_millis(200 * u64::from(failures.min(25)))
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                _ = local.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Claims due deliveries and makes one attempt each; returns how many it claimed.
    pub async fn round(&self) -> Result<usize, DbErr> {
        let claimed = store::claim_due(&self.db, self.batch, self.lease).await?;
        let count = claimed.len();
        futures::stream::iter(claimed)
            .for_each_concurrent(self.concurrency, |c| self.attempt(c))
            .await;
        Ok(count)
    }

    async fn attempt(&self, claimed: Claimed) {
        let Some(target) = target(&claimed) else {
            // Removed, or registered again as another kind, since the delivery was
            // written: nothing to send, and nothing to remove (a new registration stays).
            let settle = Settle::Failed {
                error: "the device was removed or registered again".into(),
            };
            self.record(&claimed, &settle, false).await;
            return;
        };
        let outcome = match serde_json::from_value::<Context>(claimed.context.clone()) {
            Ok(context) => {
                let message = context.render(claimed.locale.as_deref(), Utc::now());
                self.providers.send(&target, &message).await
            }
            Err(err) => Outcome::Rejected {
                reason: format!("unreadable delivery context: {err}"),
            },
        };
        let attempts = u32::try_from(claimed.attempts).unwrap_or(u32::MAX);
        let (settle, gone) = match &outcome {
            Outcome::Sent => (Settle::Sent, false),
            Outcome::Retry { reason, .. } if attempts >= self.retry.max_attempts => (
                Settle::Dead {
                    error: format!("gave up after {attempts} attempts: {reason}"),
                },
                false,
            ),
            Outcome::Retry {
                reason,
                retry_after,
            } => {
                let delay = next_delay(attempts, self.retry.base, self.retry.max, *retry_after);
                let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                (
                    Settle::Retry {
                        error: reason.clone(),
                        at,
                    },
                    false,
                )
            }
            Outcome::Gone { reason } => (
                Settle::Failed {
                    error: format!("device gone: {reason}"),
                },
                true,
            ),
            Outcome::Rejected { reason } => (
                Settle::Dead {
                    error: format!("refused: {reason}"),
                },
                false,
            ),
            Outcome::Disabled { reason } => (
                Settle::Failed {
                    error: format!("provider disabled: {reason}"),
                },
                false,
            ),
        };
        self.record(&claimed, &settle, gone).await;
    }

    /// Writes the outcome (and removes a gone device) in one transaction. A failure to
    /// write is retried a few times: an unrecorded success would be sent again when the
    /// lease ends.
    async fn record(&self, claimed: &Claimed, settle: &Settle, gone: bool) {
        for attempt in 1..=5u64 {
            let result = self.record_once(claimed, settle, gone).await;
            match result {
                Ok(recorded) => {
                    log_outcome(claimed, settle, recorded);
                    return;
                }
                Err(err) => {
                    tracing::warn!(delivery_id = %claimed.id, %err, attempt, "recording a push outcome failed");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        }
        tracing::error!(delivery_id = %claimed.id, "push outcome not recorded; the delivery is tried again after its lease");
    }
}

impl DeliveryWorker {
    async fn record_once(
        &self,
        claimed: &Claimed,
        settle: &Settle,
        gone: bool,
    ) -> Result<bool, DbErr> {
        let txn = self.db.begin().await?;
        let recorded = store::settle(&txn, claimed, settle).await?;
        if recorded && gone {
            store::remove_gone_device(&txn, claimed).await?;
        }
        txn.commit().await?;
        Ok(recorded)
    }
}

fn log_outcome(claimed: &Claimed, settle: &Settle, recorded: bool) {
    let (id, order, device, kind, attempts) = (
        claimed.id,
        claimed.order_id.map(|o| o.to_string()).unwrap_or_default(),
        claimed.device_id,
        claimed.kind.as_str(),
        claimed.attempts,
    );
    if !recorded {
        tracing::info!(delivery_id = %id, "attempt outcome superseded (lease taken over)");
        return;
    }
    match settle {
        Settle::Sent => {
            tracing::debug!(delivery_id = %id, order_id = %order, %device, kind, attempts, "push sent")
        }
        Settle::Retry { error, at } => {
            tracing::info!(delivery_id = %id, order_id = %order, %device, kind,
            attempts, error, retry_at = %at, "push failed; retrying")
        }
        Settle::Failed { error } => {
            tracing::warn!(delivery_id = %id, order_id = %order, %device, kind,
            attempts, error, "push not deliverable")
        }
        Settle::Dead { error } => {
            tracing::error!(delivery_id = %id, order_id = %order, %device, kind,
            attempts, error, event_type = %claimed.event_type,
            "push delivery dead; notifications.delivery.failed published")
        }
    }
}

/// Where the device is now; `None` when it was removed (or changed kind) since the
/// delivery was written.
fn target(claimed: &Claimed) -> Option<Target> {
    if claimed.device_kind.as_deref() != Some(claimed.kind.as_str()) {
        return None;
    }
    match claimed.kind.as_str() {
        "webpush" => Some(Target::WebPush {
            endpoint: claimed.endpoint.clone()?,
            p256dh: claimed.p256dh.clone()?,
            auth: claimed.auth.clone()?,
        }),
        "fcm" => Some(Target::Fcm {
            token: claimed.token.clone()?,
        }),
        "apns" => Some(Target::Apns {
            token: claimed.token.clone()?,
        }),
        _ => None,
    }
}
