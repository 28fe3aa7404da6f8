//! The outbox and its relay against the real PostgreSQL and RabbitMQ.

mod messaging_support;

use lapin::types::AMQPValue;
use messaging_support::{TestEnv, count, eventually, test_env};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::{MigrationTrait, SchemaManager};
use serde_json::json;
use shared::{
    events::{Envelope, types},
    messaging::Publisher,
    outbox::{self, OutboxRelay},
    shutdown::Shutdown,
};
use std::{collections::HashMap, time::Duration};

const SERVICE: &str = "orders";
const WAIT: Duration = Duration::from_secs(15);
/// So long that a relay in these tests only moves when something wakes it.
const NEVER_POLL: Duration = Duration::from_secs(3600);

fn stock_changed(aggregate: &str, n: i64) -> Envelope {
    Envelope::new(
        types::STOCK_CHANGED,
        "inventory",
        json!({ "aggregate": aggregate, "n": n }),
        None,
    )
}

/// `envelope` with a `traceparent`, which travels as a header.
fn traced(mut envelope: Envelope, span: u8) -> Envelope {
    envelope.traceparent = Some(format!(
        "00-0af7651916cd43dd8448eb211c80319c-00000000000000{span:02x}-01"
    ));
    envelope
}

/// The envelope as the outbox stores it: its `traceparent` beside the other fields.
fn stored(envelope: &Envelope) -> serde_json::Value {
    let mut payload = serde_json::to_value(envelope).expect("json");
    if let Some(trace) = &envelope.traceparent {
        payload["traceparent"] = trace.clone().into();
    }
    payload
}

/// Writes one outbox row of `payload`, as a writer that bundles a transaction's events
/// does.
async fn insert_row(db: &DatabaseConnection, aggregate: &str, payload: serde_json::Value) {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO outbox (id, aggregate, routing_key, payload) VALUES ($1, $2, $3, $4)",
        [
            uuid::Uuid::now_v7().into(),
            aggregate.into(),
            types::STOCK_CHANGED.into(),
            payload.into(),
        ],
    ))
    .await
    .expect("insert");
}

/// One row holding all of `envelopes`.
async fn enqueue_bundle(db: &DatabaseConnection, aggregate: &str, envelopes: &[&Envelope]) {
    let payload = envelopes.iter().map(|envelope| stored(envelope)).collect();
    insert_row(db, aggregate, serde_json::Value::Array(payload)).await;
}

/// The ids of `deliveries`' bodies, in order.
fn ids(deliveries: &[lapin::message::Delivery]) -> Vec<uuid::Uuid> {
    deliveries
        .iter()
        .map(|delivery| {
            serde_json::from_slice::<Envelope>(&delivery.data)
                .expect("envelope")
                .id
        })
        .collect()
}

fn relay(env: &messaging_support::TestEnv) -> OutboxRelay {
    OutboxRelay::new(env.db.clone(), Publisher::new(env.broker.clone()), &env.url)
        .with_pipelined_aggregates(&["stock:"])
}

#[tokio::test]
async fn committed_outbox_rows_reach_a_bound_queue_and_rolled_back_ones_do_not() {
    let env = test_env("outbox_commit").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let kept = stock_changed("stock:S1:A", 1);
    let dropped = stock_changed("stock:S1:B", 1);

    let txn = env.db.begin().await.expect("begin");
    outbox::enqueue(&txn, "stock:S1:A", &kept)
        .await
        .expect("enqueue");
    txn.commit().await.expect("commit");
    let txn = env.db.begin().await.expect("begin");
    outbox::enqueue(&txn, "stock:S1:B", &dropped)
        .await
        .expect("enqueue");
    txn.rollback().await.expect("rollback");
    let report = relay(&env).drain_once().await.expect("drain");

    assert_eq!(report.claimed, 1);
    assert_eq!(report.published, 1);
    let queue = env.topology.service_queue(SERVICE);
    let received = env.take(&queue, 2, Duration::from_secs(1)).await;
    assert_eq!(received.len(), 1);
    let body: Envelope = serde_json::from_slice(&received[0].data).expect("envelope");
    assert_eq!(body, kept);
    assert_eq!(outbox::pending_count(&env.db).await.expect("pending"), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn an_unroutable_event_is_not_marked_published() {
    let env = test_env("outbox_unroutable").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let nobody_listens = Envelope::new("test.nobody.listens", "inventory", json!({}), None);
    outbox::enqueue(&env.db, "store:S1", &nobody_listens)
        .await
        .expect("enqueue");

    let report = relay(&env).drain_once().await.expect("drain");

    assert_eq!((report.published, report.failed), (0, 1));
    assert_eq!(outbox::pending_count(&env.db).await.expect("pending"), 1);
    let failed = count(
        &env.db,
        "SELECT count(*) AS n FROM outbox
         WHERE published_at IS NULL AND attempts = 1 AND last_error LIKE '%no queue is bound%'",
    )
    .await;
    assert_eq!(failed, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn later_rows_of_an_aggregate_wait_until_its_failed_row_goes_through() {
    let env = test_env("outbox_head").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let head = Envelope::new("test.bound.later", "inventory", json!({ "n": 1 }), None);
    let tail = stock_changed("store:S1", 2);
    let other = stock_changed("store:S2", 1);
    outbox::enqueue_many(
        &env.db,
        [
            ("store:S1", &head),
            ("store:S1", &tail),
            ("store:S2", &other),
        ],
    )
    .await
    .expect("enqueue");
    let relay = relay(&env);

    let first = relay.drain_once().await.expect("drain");
    // The tail waits for the next round (one row per round for an aggregate without a
    // revision), so it can never overtake the head. Other aggregates are not held up.
    assert_eq!((first.published, first.failed, first.held_back), (1, 1, 1));
    let second = relay.drain_once().await.expect("drain");
    assert_eq!(
        (second.published, second.failed, second.held_back),
        (0, 1, 1),
        "only the failed head is tried again"
    );
    env.declare(SERVICE, &["test.bound.later"]).await;
    let third = relay.drain_once().await.expect("drain");
    assert_eq!((third.published, third.held_back), (1, 1));
    let fourth = relay.drain_once().await.expect("drain");
    assert_eq!(fourth.published, 1);
    assert_eq!(relay.pending_count().await.expect("pending"), 0);

    let queue = env.topology.service_queue(SERVICE);
    let order: Vec<String> = env
        .take(&queue, 3, WAIT)
        .await
        .iter()
        .map(|delivery| {
            let body: Envelope = serde_json::from_slice(&delivery.data).expect("envelope");
            body.id.to_string()
        })
        .collect();
    let (head, tail, other) = (
        head.id.to_string(),
        tail.id.to_string(),
        other.id.to_string(),
    );
    assert_eq!(order, [other, head, tail]);
    env.cleanup().await;
}

#[tokio::test]
async fn per_aggregate_order_is_kept_with_three_relays_running() {
    let env = test_env("outbox_order").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let shutdown = Shutdown::new();
    // Small, uneven batches so the relays hold interleaved parts of the same aggregates
    // (the case that once published row 13 of an aggregate before row 12).
    let relays = [16, 7, 5].map(|batch_size| {
        tokio::spawn(
            relay(&env)
                .with_batch_size(batch_size)
                .run(shutdown.clone()),
        )
    });
    let aggregates = 12;
    let per_aggregate = 40;

    for round in 0..per_aggregate {
        let events: Vec<(String, Envelope)> = (0..aggregates)
            .map(|a| {
                let aggregate = format!("stock:S1:{a}");
                let event = stock_changed(&aggregate, round);
                (aggregate, event)
            })
            .collect();
        let txn = env.db.begin().await.expect("begin");
        outbox::enqueue_many(&txn, events.iter().map(|(a, e)| (a.as_str(), e)))
            .await
            .expect("enqueue");
        txn.commit().await.expect("commit");
    }

    let total = usize::try_from(aggregates * per_aggregate).expect("small");
    let queue = env.topology.service_queue(SERVICE);
    assert!(
        eventually(Duration::from_secs(30), || async {
            outbox::pending_count(&env.db).await.expect("pending") == 0
        })
        .await,
        "the relays drained the outbox"
    );
    let received = env.take(&queue, total + 1, Duration::from_secs(2)).await;
    assert_eq!(received.len(), total, "every row once, no duplicates");
    let mut last: HashMap<String, i64> = HashMap::new();
    for delivery in &received {
        let body: Envelope = serde_json::from_slice(&delivery.data).expect("envelope");
        let aggregate = body.data["aggregate"]
            .as_str()
            .expect("aggregate")
            .to_owned();
        let n = body.data["n"].as_i64().expect("n");
        let previous = last.insert(aggregate.clone(), n).unwrap_or(-1);
        assert_eq!(n, previous + 1, "{aggregate}: {n} after {previous}");
    }
    assert_eq!(outbox::pending_count(&env.db).await.expect("pending"), 0);
    shutdown.cancel();
    for relay in relays {
        relay.await.expect("relay task");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_running_relay_publishes_a_commit_of_its_own_process_without_polling() {
    let env = test_env("outbox_wake").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(
        relay(&env)
            .with_poll_interval(NEVER_POLL)
            .run(shutdown.clone()),
    );
    // Let the relay reach its idle wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = stock_changed("stock:S1:A", 1);

    let txn = env.db.begin().await.expect("begin");
    outbox::enqueue(&txn, "stock:S1:A", &event)
        .await
        .expect("enqueue");
    // A writer that takes its time between enqueue and commit.
    tokio::time::sleep(Duration::from_millis(50)).await;
    txn.commit().await.expect("commit");

    let queue = env.topology.service_queue(SERVICE);
    assert_eq!(env.take(&queue, 1, Duration::from_secs(5)).await.len(), 1);
    shutdown.cancel();
    running.await.expect("relay task");
    env.cleanup().await;
}

#[tokio::test]
async fn with_the_notify_trigger_a_relay_wakes_on_another_process_commit() {
    let env = test_env("outbox_notify").await;
    outbox::NotifyTrigger
        .up(&SchemaManager::new(&env.db))
        .await
        .expect("trigger");
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(
        relay(&env)
            .with_poll_interval(NEVER_POLL)
            .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let event = stock_changed("stock:S1:A", 1);

    // A plain INSERT, as another process would commit it: no in-process wake.
    env.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO outbox (id, aggregate, routing_key, payload) VALUES ($1, $2, $3, $4)",
            [
                event.id.into(),
                "stock:S1:A".into(),
                types::STOCK_CHANGED.into(),
                serde_json::to_value(&event).expect("json").into(),
            ],
        ))
        .await
        .expect("insert");

    let queue = env.topology.service_queue(SERVICE);
    assert_eq!(env.take(&queue, 1, Duration::from_secs(5)).await.len(), 1);
    shutdown.cancel();
    running.await.expect("relay task");
    env.cleanup().await;
}

#[tokio::test]
async fn rows_locked_by_a_relay_that_dies_are_published_by_another() {
    let env = test_env("outbox_crash").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let events: Vec<Envelope> = (0..10).map(|n| stock_changed("stock:S1:A", n)).collect();
    outbox::enqueue_many(&env.db, events.iter().map(|e| ("stock:S1:A", e)))
        .await
        .expect("enqueue");
    // A relay that claimed the rows and then hangs or dies before committing.
    let dying = holding_unpublished_rows(&env, "ALL").await;
    let survivor = relay(&env);

    let while_locked = survivor.drain_once().await.expect("drain");
    assert_eq!(
        while_locked.claimed, 0,
        "locked rows are skipped, not waited on"
    );
    drop(dying); // its connection ends the transaction: rollback, locks released
    assert!(
        eventually(WAIT, || async {
            survivor.drain_once().await.is_ok_and(|r| r.published > 0)
        })
        .await
    );

    assert_eq!(survivor.pending_count().await.expect("pending"), 0);
    let queue = env.topology.service_queue(SERVICE);
    assert_eq!(env.take(&queue, 11, Duration::from_secs(2)).await.len(), 10);
    env.cleanup().await;
}

#[tokio::test]
async fn pending_count_counts_unpublished_rows_only() {
    let env = test_env("outbox_pending").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let events: Vec<Envelope> = (0..5).map(|n| stock_changed("stock:S1:A", n)).collect();
    outbox::enqueue_many(&env.db, events.iter().map(|e| ("stock:S1:A", e)))
        .await
        .expect("enqueue");
    let relay = relay(&env).with_batch_size(3);

    assert_eq!(relay.pending_count().await.expect("pending"), 5);
    relay.drain_once().await.expect("drain");
    assert_eq!(relay.pending_count().await.expect("pending"), 2);
    relay.drain_once().await.expect("drain");
    assert_eq!(relay.pending_count().await.expect("pending"), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn published_rows_past_their_retention_are_deleted_and_pending_ones_kept() {
    let env = test_env("outbox_retention").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let events: Vec<Envelope> = (0..3).map(|n| stock_changed("stock:S1:A", n)).collect();
    outbox::enqueue_many(&env.db, events.iter().map(|e| ("stock:S1:A", e)))
        .await
        .expect("enqueue");
    let relay = relay(&env).with_retention(Some(Duration::from_secs(3600)));
    relay.drain_once().await.expect("drain");
    let late = stock_changed("stock:S1:A", 3);
    outbox::enqueue(&env.db, "stock:S1:A", &late)
        .await
        .expect("enqueue");
    // Two of the published rows are old enough to go.
    env.db
        .execute_unprepared(
            "UPDATE outbox SET published_at = now() - interval '2 hours'
             WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT 2)",
        )
        .await
        .expect("age rows");

    assert_eq!(relay.delete_expired().await.expect("delete"), 2);

    let left = count(&env.db, "SELECT count(*) AS n FROM outbox").await;
    assert_eq!(left, 2, "the recent published row and the pending one stay");
    assert_eq!(relay.pending_count().await.expect("pending"), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn rows_of_an_aggregate_without_a_revision_go_out_one_per_round_in_order() {
    let env = test_env("outbox_one_per_round").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let events: Vec<Envelope> = (0..3).map(|n| stock_changed("reservation:R1", n)).collect();
    outbox::enqueue_many(&env.db, events.iter().map(|e| ("reservation:R1", e)))
        .await
        .expect("enqueue");
    let relay = relay(&env);
    for round in 0..3 {
        let report = relay.drain_once().await.expect("round");
        assert_eq!(
            report.published, 1,
            "round {round}: one row of the aggregate"
        );
    }
    assert_eq!(relay.pending_count().await.expect("count"), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_bundle_row_reaches_a_bound_queue_as_one_message_per_envelope_in_order() {
    let env = test_env("outbox_bundle").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED, types::STORE_UPSERTED])
        .await;
    let bundle: Vec<Envelope> = (0..5)
        .map(|n| {
            let event_type = if n == 2 {
                types::STORE_UPSERTED
            } else {
                types::STOCK_CHANGED
            };
            let event = Envelope::new(event_type, "inventory", json!({ "n": n }), None);
            // Some with a trace, some without.
            if n % 2 == 0 { traced(event, n) } else { event }
        })
        .collect();
    enqueue_bundle(&env.db, "store:S1", &bundle.iter().collect::<Vec<_>>()).await;

    let report = relay(&env).drain_once().await.expect("drain");

    assert_eq!(
        (report.claimed, report.published, report.messages),
        (1, 1, 5)
    );
    assert_eq!(outbox::pending_count(&env.db).await.expect("pending"), 0);
    let queue = env.topology.service_queue(SERVICE);
    let received = env.take(&queue, 6, Duration::from_secs(1)).await;
    assert_eq!(received.len(), 5);
    for (delivery, sent) in received.iter().zip(&bundle) {
        assert_eq!(delivery.routing_key.as_str(), sent.event_type);
        let properties = &delivery.properties;
        let text = |value: &Option<lapin::types::ShortString>| {
            value.as_ref().map(|value| value.to_string())
        };
        assert_eq!(text(properties.message_id()), Some(sent.id.to_string()));
        assert_eq!(text(properties.kind()), Some(sent.event_type.clone()));
        assert_eq!(
            text(properties.content_type()).as_deref(),
            Some("application/json")
        );
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(
            *properties.timestamp(),
            Some(u64::try_from(sent.occurred_at.timestamp()).expect("after 1970"))
        );
        assert_eq!(
            text(properties.correlation_id()),
            Some(sent.correlation_id.to_string())
        );
        assert_eq!(text(properties.app_id()), Some(sent.source.clone()));
        let header = properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get("traceparent").cloned());
        let header = match header {
            Some(AMQPValue::LongString(trace)) => Some(trace.to_string()),
            None => None,
            Some(other) => panic!("traceparent header {other:?}"),
        };
        assert_eq!(header, sent.traceparent);
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        assert!(body.get("traceparent").is_none(), "stripped from the body");
        assert_eq!(body, serde_json::to_value(sent).expect("json"));
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_bundle_with_an_unroutable_envelope_stays_unpublished_and_goes_out_whole_later() {
    let env = test_env("outbox_bundle_unroutable").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let before = stock_changed("store:S1", 1);
    let nobody_listens = Envelope::new("test.bound.later", "inventory", json!({}), None);
    let after = stock_changed("store:S1", 2);
    enqueue_bundle(&env.db, "store:S1", &[&before, &nobody_listens, &after]).await;
    let relay = relay(&env);

    let first = relay.drain_once().await.expect("drain");

    assert_eq!((first.published, first.failed, first.messages), (0, 1, 0));
    assert_eq!(relay.pending_count().await.expect("pending"), 1);
    let failed = count(
        &env.db,
        "SELECT count(*) AS n FROM outbox
         WHERE published_at IS NULL AND attempts = 1
           AND last_error LIKE 'message 2 of 3: no queue is bound%'",
    )
    .await;
    assert_eq!(
        failed, 1,
        "the row counts the attempt and names the message"
    );
    let queue = env.topology.service_queue(SERVICE);
    // The routable ones went out; they go again with the rest (inboxes absorb them).
    let partial = env.take(&queue, 3, Duration::from_secs(1)).await;
    assert_eq!(ids(&partial), [before.id, after.id]);

    env.declare(SERVICE, &["test.bound.later"]).await;
    let second = relay.drain_once().await.expect("drain");

    assert_eq!((second.published, second.messages), (1, 3));
    assert_eq!(relay.pending_count().await.expect("pending"), 0);
    let whole = env.take(&queue, 4, Duration::from_secs(1)).await;
    assert_eq!(ids(&whole), [before.id, nobody_listens.id, after.id]);
    env.cleanup().await;
}

#[tokio::test]
async fn bundles_and_single_rows_of_an_aggregate_go_out_in_seq_order() {
    let env = test_env("outbox_bundle_order").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let events: Vec<Envelope> = (0..7).map(|n| stock_changed("stock:S1:A", n)).collect();
    let [e0, e1, e2, e3, e4, e5, e6] = &events[..] else {
        unreachable!("seven events")
    };
    outbox::enqueue(&env.db, "stock:S1:A", e0)
        .await
        .expect("enqueue");
    enqueue_bundle(&env.db, "stock:S1:A", &[e1, e2, e3]).await;
    outbox::enqueue(&env.db, "stock:S1:A", e4)
        .await
        .expect("enqueue");
    enqueue_bundle(&env.db, "stock:S1:A", &[e5]).await;
    outbox::enqueue(&env.db, "stock:S1:A", e6)
        .await
        .expect("enqueue");

    // A pipelined aggregate: every row in one round.
    let report = relay(&env).drain_once().await.expect("drain");

    assert_eq!(
        (report.claimed, report.published, report.messages),
        (5, 5, 7)
    );
    let queue = env.topology.service_queue(SERVICE);
    let received = env.take(&queue, 8, Duration::from_secs(1)).await;
    let sent: Vec<uuid::Uuid> = events.iter().map(|event| event.id).collect();
    assert_eq!(ids(&received), sent);
    env.cleanup().await;
}

#[tokio::test]
async fn a_bundle_is_one_row_of_an_aggregate_without_a_revision() {
    let env = test_env("outbox_bundle_one_per_round").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let first: Vec<Envelope> = (0..3).map(|n| stock_changed("reservation:R1", n)).collect();
    let second = stock_changed("reservation:R1", 3);
    enqueue_bundle(&env.db, "reservation:R1", &first.iter().collect::<Vec<_>>()).await;
    outbox::enqueue(&env.db, "reservation:R1", &second)
        .await
        .expect("enqueue");
    let relay = relay(&env);

    let round = relay.drain_once().await.expect("drain");
    assert_eq!(
        (round.published, round.messages, round.held_back),
        (1, 3, 1)
    );
    let round = relay.drain_once().await.expect("drain");
    assert_eq!((round.published, round.messages), (1, 1));
    env.cleanup().await;
}

#[tokio::test]
async fn a_bundle_with_an_unreadable_envelope_sends_nothing_and_holds_its_aggregate() {
    let env = test_env("outbox_bundle_unreadable").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let good = stock_changed("stock:S1:A", 1);
    let later = stock_changed("stock:S1:A", 2);
    let mut no_id = stored(&stock_changed("stock:S1:A", 0));
    no_id["id"] = "not-a-uuid".into();
    insert_row(
        &env.db,
        "stock:S1:A",
        serde_json::Value::Array(vec![stored(&good), no_id]),
    )
    .await;
    outbox::enqueue(&env.db, "stock:S1:A", &later)
        .await
        .expect("enqueue");

    let report = relay(&env).drain_once().await.expect("drain");

    assert_eq!(
        (report.published, report.failed, report.held_back),
        (0, 1, 1)
    );
    let failed = count(
        &env.db,
        r#"SELECT count(*) AS n FROM outbox
           WHERE attempts = 1
             AND last_error = 'unreadable payload: message 2 of 2: "id" is no UUID'"#,
    )
    .await;
    assert_eq!(failed, 1);
    let queue = env.topology.service_queue(SERVICE);
    assert!(
        env.take(&queue, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_empty_bundle_is_published_without_a_message() {
    let env = test_env("outbox_bundle_empty").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    insert_row(&env.db, "store:S1", json!([])).await;
    let next = stock_changed("store:S1", 1);
    outbox::enqueue(&env.db, "store:S1", &next)
        .await
        .expect("enqueue");
    let relay = relay(&env);

    let first = relay.drain_once().await.expect("drain");
    assert_eq!(
        (first.published, first.messages, first.held_back),
        (1, 0, 1)
    );
    let second = relay.drain_once().await.expect("drain");
    assert_eq!((second.published, second.messages), (1, 1));
    let queue = env.topology.service_queue(SERVICE);
    assert_eq!(
        ids(&env.take(&queue, 2, Duration::from_secs(1)).await),
        [next.id]
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_published_bundle_is_marked_when_rows_are_retained() {
    let env = test_env("outbox_bundle_retained").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let events: Vec<Envelope> = (0..2).map(|n| stock_changed("stock:S1:A", n)).collect();
    enqueue_bundle(&env.db, "stock:S1:A", &events.iter().collect::<Vec<_>>()).await;
    let relay = relay(&env).with_retention(Some(Duration::from_secs(3600)));

    let report = relay.drain_once().await.expect("drain");

    assert_eq!((report.published, report.messages), (1, 2));
    let marked = count(
        &env.db,
        "SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL AND attempts = 0",
    )
    .await;
    assert_eq!(marked, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_row_waits_while_another_relay_holds_an_earlier_row_of_its_aggregate() {
    let env = test_env("outbox_gap").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let held = stock_changed("stock:S1:A", 0);
    let waiting = stock_changed("stock:S1:A", 1);
    let other = stock_changed("stock:S1:B", 0);
    outbox::enqueue_many(
        &env.db,
        [
            ("stock:S1:A", &held),
            ("stock:S1:A", &waiting),
            ("stock:S1:B", &other),
        ],
    )
    .await
    .expect("enqueue");
    // Another relay in the middle of publishing the first row.
    let other_relay = holding_unpublished_rows(&env, "1").await;
    let relay = relay(&env);

    let report = relay.drain_once().await.expect("drain");

    assert_eq!(
        (report.claimed, report.published, report.deferred),
        (2, 1, 1)
    );
    other_relay.rollback().await.expect("rollback");
    let rest = relay.drain_once().await.expect("drain");
    assert_eq!(rest.published, 2);
    let queue = env.topology.service_queue(SERVICE);
    let received = ids(&env.take(&queue, 4, Duration::from_secs(1)).await);
    assert_eq!(received, [other.id, held.id, waiting.id]);
    env.cleanup().await;
}

/// A transaction holding the first `limit` unpublished rows locked, as a relay in the
/// middle of a round does (until it is dropped: its connection then rolls back).
async fn holding_unpublished_rows(env: &TestEnv, limit: &str) -> sea_orm::DatabaseTransaction {
    let txn = env.db.begin().await.expect("begin");
    txn.execute_unprepared(&format!(
        "SELECT seq FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT {limit} FOR UPDATE"
    ))
    .await
    .expect("lock");
    txn
}
