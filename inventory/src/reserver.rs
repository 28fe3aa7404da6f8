//! Group commit for reservations made over HTTP.
//!
//! On this kind of disk a reservation made alone waits for its own WAL flush, and 64 of
//! them flushing one by one keep PostgreSQL busy on the WAL lock (BENCHMARKS.md). So one
//! task per replica collects the requests that arrive while earlier groups are committing
//! and hands each group to `reserve_batch`: one statement, one transaction, one flush.
//! Each request is still all or nothing and gets its own answer; the database locks the
//! group's rows in (store, SKU) order, so groups can't deadlock. A group that fails as a
//! whole is retried one request at a time (each keeps its reservation id, so a group that
//! did commit after all cannot be reserved twice: the retry hits the id's primary key).

use crate::store::{self, ReserveAnswer, ReserveCall};
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most requests in one group (`RESERVE_GROUP_MAX`).
const MAX_GROUP: usize = 64;
/// Groups committing at once: one fills while others run and flush
/// (`RESERVE_GROUPS_IN_FLIGHT`).
const GROUPS_IN_FLIGHT: usize = 4;
/// Requests waiting for a group before senders wait too.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<ReserveAnswer, DbErr>>;

/// The handle the HTTP handlers reserve through.
pub struct Reserver {
    queue: mpsc::Sender<(ReserveCall, Reply)>,
}

impl Reserver {
    /// Starts the collecting task on the current runtime; it ends when the handle is dropped.
    pub fn start(db: DatabaseConnection) -> Arc<Self> {
        let (queue, requests) = mpsc::channel(QUEUE);
        let max_group = tuning("RESERVE_GROUP_MAX", MAX_GROUP);
        let in_flight = tuning("RESERVE_GROUPS_IN_FLIGHT", GROUPS_IN_FLIGHT);
        tokio::spawn(collect(db, requests, max_group, in_flight));
        Arc::new(Self { queue })
    }

    /// Reserves all lines or none, in the next group to commit.
    pub async fn reserve(&self, call: ReserveCall) -> Result<ReserveAnswer, DbErr> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((call, reply))
            .await
            .map_err(|_| DbErr::Custom("the reservation queue has stopped".into()))?;
        answer
            .await
            .map_err(|_| DbErr::Custom("a reservation group ended without an answer".into()))?
    }
}

fn tuning(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

async fn collect(
    db: DatabaseConnection,
    mut requests: mpsc::Receiver<(ReserveCall, Reply)>,
    max_group: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Wait for one request, then take whatever else arrived meanwhile.
        let Some(first) = requests.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < max_group
            && let Ok(next) = requests.try_recv()
        {
            group.push(next);
        }
        let db = db.clone();
        tokio::spawn(async move {
            run(&db, group).await;
            drop(slot);
        });
    }
}

async fn run(db: &DatabaseConnection, group: Vec<(ReserveCall, Reply)>) {
    let (calls, replies): (Vec<ReserveCall>, Vec<Reply>) = group.into_iter().unzip();
    if calls.len() > 1 {
        match store::reserve_batch(db, &calls).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A request whose client went away: its reservation stands, like
                    // one made alone whose answer was lost.
                    let _ = reply.send(Ok(answer));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = calls.len(), "reservation group failed; retrying one by one");
            }
        }
    }
    for (call, reply) in calls.iter().zip(replies) {
        let _ = reply.send(store::reserve(db, call).await);
    }
}
