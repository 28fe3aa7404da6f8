//! Group commit for reservations made over HTTP.
//!
//! On this kind of disk a reservation made alone waits for its own WAL flush, and 64 of
//! them flushing one by one keep PostgreSQL busy on the WAL lock (BENCHMARKS.md). So one
//! task per replica collects the requests that arrive while earlier groups are committing
//! and hands each group to `reserve_batch`: one statement, one transaction, one flush,
//! and a fixed number of statements inside it whatever the group's size (`group.sql`).
//! Each request is still all or nothing and gets its own answer; the database locks the
//! group's rows in (store, SKU) order, so groups can't deadlock. A group that fails as a
//! whole is retried one request at a time; each keeps its reservation id, and one found
//! already stored (the group committed, then its answer was lost with the connection) is
//! answered as created instead of being reserved again. When the database is out of reach
//! the group fails at once instead of retrying its requests one by one. Requests naming an
//! order (the unique index per order could fail a whole group) and requests whose client
//! has gone away do not join a group.

use crate::store::{self, ReserveAnswer, ReserveCall};
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most requests in one group (`RESERVE_GROUP_MAX`).
const MAX_GROUP: usize = 64;
/// Groups committing at once: one fills while the other runs and flushes
/// (`RESERVE_GROUPS_IN_FLIGHT`). A group costs a fixed number of statements whatever its
/// size, so fewer, fuller groups cost less: 2 measured as fast as 3 or 4, with a lower p99.
const GROUPS_IN_FLIGHT: usize = 2;
/// Requests waiting for a group before senders wait too.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<ReserveAnswer, DbErr>>;

/// The handle the HTTP handlers reserve through.
pub struct Reserver {
    queue: mpsc::Sender<(ReserveCall, Reply)>,
    db: DatabaseConnection,
}

impl Reserver {
    /// Starts the collecting task on the current runtime; it ends when the handle is dropped.
    pub fn start(db: DatabaseConnection) -> Arc<Self> {
        let (queue, requests) = mpsc::channel(QUEUE);
        let max_group = tuning("RESERVE_GROUP_MAX", MAX_GROUP);
        let in_flight = tuning("RESERVE_GROUPS_IN_FLIGHT", GROUPS_IN_FLIGHT);
        tokio::spawn(collect(db.clone(), requests, max_group, in_flight));
        Arc::new(Self { queue, db })
    }

    /// Reserves all lines or none, in the next group to commit.
    pub async fn reserve(&self, call: ReserveCall) -> Result<ReserveAnswer, DbErr> {
        if call.order_id.is_some() {
            return store::reserve(&self.db, &call).await;
        }
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
    // Nobody waits for these any more: nothing is reserved for them.
    let (calls, replies): (Vec<ReserveCall>, Vec<Reply>) = group
        .into_iter()
        .filter(|(_, reply)| !reply.is_closed())
        .unzip();
    if calls.is_empty() {
        return;
    }
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
            Err(DbErr::ConnectionAcquire(e)) => {
                // Out of reach: one by one would only wait once per request.
                tracing::warn!(error = %e, requests = calls.len(), "reservation group failed: no database connection");
                for reply in replies {
                    let _ = reply.send(Err(DbErr::Custom(format!("no database connection: {e}"))));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = calls.len(), "reservation group failed; retrying one by one");
            }
        }
    }
    for (call, reply) in calls.iter().zip(replies) {
        let _ = reply.send(alone(db, call).await);
    }
}

/// One request on its own; one whose reservation is already stored (its group committed
/// but the answer was lost) is answered as created, not reserved again.
async fn alone(db: &DatabaseConnection, call: &ReserveCall) -> Result<ReserveAnswer, DbErr> {
    if let Some((body, _)) = store::get_reservation(db, call.id).await? {
        return Ok(ReserveAnswer {
            outcome: "created".into(),
            status: Some(201),
            body: Some(body.to_string()),
            // The view learns the levels from their stock.changed events.
            levels: Vec::new(),
        });
    }
    store::reserve(db, call).await
}
