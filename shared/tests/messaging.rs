//! The topology, publisher and consumer against the real RabbitMQ and PostgreSQL.

mod messaging_support;

use lapin::{BasicProperties, options::BasicPublishOptions};
use messaging_support::{Fail, Recorder, count, eventually, test_env};
use sea_orm::ConnectionTrait;
use serde_json::json;
use shared::{
    events::{Envelope, types},
    inbox,
    messaging::{Consumer, DELIVERY_LIMIT, PublishError, Publisher},
    shutdown::Shutdown,
};
use std::time::Duration;

const SERVICE: &str = "orders";
const WAIT: Duration = Duration::from_secs(15);

fn stock_changed(n: i64) -> Envelope {
    Envelope::new(
        types::STOCK_CHANGED,
        "inventory",
        json!({ "store_id": "S1", "sku": "SKU-1", "revision": n }),
        None,
    )
}

#[tokio::test]
async fn a_published_event_arrives_with_the_amqp_properties_of_events_md() {
    let env = test_env("msg_props").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let publisher = Publisher::new(env.broker.clone());
    let envelope = stock_changed(1);

    publisher.publish(&envelope).await.expect("published");

    let queue = env.topology.service_queue(SERVICE);
    let received = env.take(&queue, 1, WAIT).await;
    assert_eq!(received.len(), 1);
    let delivery = &received[0];
    assert_eq!(delivery.exchange.as_str(), env.topology.events_exchange());
    assert_eq!(delivery.routing_key.as_str(), types::STOCK_CHANGED);
    let properties = &delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.to_string()),
        Some(envelope.id.to_string())
    );
    assert_eq!(
        properties.kind().as_ref().map(|kind| kind.to_string()),
        Some(types::STOCK_CHANGED.to_owned())
    );
    assert_eq!(
        properties.content_type().as_ref().map(|ct| ct.to_string()),
        Some("application/json".to_owned())
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert_eq!(
        *properties.timestamp(),
        Some(u64::try_from(envelope.occurred_at.timestamp()).expect("after 1970"))
    );
    let body: Envelope = serde_json::from_slice(&delivery.data).expect("envelope body");
    assert_eq!(body, envelope);
    env.cleanup().await;
}

#[tokio::test]
async fn an_unroutable_mandatory_publish_is_an_error() {
    let env = test_env("msg_unroutable").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let publisher = Publisher::new(env.broker.clone());
    let nobody_listens = Envelope::new("test.nobody.listens", "inventory", json!({}), None);

    let result = publisher.publish(&nobody_listens).await;

    assert!(
        matches!(
            result,
            Err(PublishError::Unroutable {
                reply_code: 312,
                ..
            })
        ),
        "{result:?}"
    );
    // The channel stays usable after a return.
    publisher
        .publish(&stock_changed(1))
        .await
        .expect("a routable event still goes out");
    env.cleanup().await;
}

#[tokio::test]
async fn in_a_pipelined_batch_exactly_the_unroutable_envelopes_fail() {
    let env = test_env("msg_batch").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let publisher = Publisher::new(env.broker.clone());
    let batch: Vec<Envelope> = (0..200)
        .map(|n| {
            if n % 7 == 3 {
                Envelope::new("test.nobody.listens", "inventory", json!({ "n": n }), None)
            } else {
                stock_changed(n)
            }
        })
        .collect();

    let results = publisher.publish_batch(&batch).await;

    assert_eq!(results.len(), batch.len());
    for (n, result) in results.iter().enumerate() {
        if n % 7 == 3 {
            assert!(
                matches!(result, Err(PublishError::Unroutable { .. })),
                "{n}: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "{n}: {result:?}");
        }
    }
    let routable = batch.len() - batch.len().div_ceil(7);
    let queue = env.topology.service_queue(SERVICE);
    assert_eq!(
        env.take(&queue, routable + 1, Duration::from_secs(1))
            .await
            .len(),
        routable
    );
    env.cleanup().await;
}

#[tokio::test]
async fn consumed_events_are_handled_once_each_with_their_inbox_rows() {
    let env = test_env("msg_consume").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let publisher = Publisher::new(env.broker.clone());
    let recorder = Recorder::default();
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(
        env.broker.clone(),
        env.db.clone(),
        SERVICE,
        &[types::STOCK_CHANGED],
        recorder.clone(),
    );
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let events: Vec<Envelope> = (0..20).map(stock_changed).collect();

    for result in publisher.publish_batch(&events).await {
        result.expect("published");
    }

    assert!(eventually(WAIT, || async { env.effects().await == 20 }).await);
    for event in &events {
        assert_eq!(env.effects_of(event.id).await, 1);
    }
    let inbox_rows = count(
        &env.db,
        "SELECT count(*) AS n FROM inbox WHERE consumer = 'orders'",
    )
    .await;
    assert_eq!(inbox_rows, 20);
    shutdown.cancel();
    running.await.expect("consumer task");
    env.cleanup().await;
}

#[tokio::test]
async fn an_event_delivered_three_times_has_one_effect() {
    let env = test_env("msg_thrice").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let publisher = Publisher::new(env.broker.clone());
    let recorder = Recorder::default();
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(
        env.broker.clone(),
        env.db.clone(),
        SERVICE,
        &[types::STOCK_CHANGED],
        recorder.clone(),
    )
    // Concurrent deliveries of one id race on the inbox key: still one effect.
    .with_concurrency(4);
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let event = stock_changed(1);
    let after = stock_changed(2);

    for result in publisher
        .publish_batch(&[event.clone(), event.clone(), event.clone(), after.clone()])
        .await
    {
        result.expect("published");
    }

    assert!(eventually(WAIT, || async { env.effects_of(after.id).await == 1 }).await);
    let queue = env.topology.service_queue(SERVICE);
    assert!(eventually(WAIT, || async { env.queue_len(&queue).await == 0 }).await);
    assert_eq!(env.effects_of(event.id).await, 1);
    assert_eq!(
        recorder.calls(event.id),
        1,
        "duplicates never reach the handler"
    );
    shutdown.cancel();
    running.await.expect("consumer task");
    env.cleanup().await;
}

#[tokio::test]
async fn a_poison_message_is_parked_and_the_next_message_is_still_handled() {
    let env = test_env("msg_poison").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let recorder = Recorder::default();
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(
        env.broker.clone(),
        env.db.clone(),
        SERVICE,
        &[types::STOCK_CHANGED],
        recorder.clone(),
    );
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let channel = env.broker.channel().await.expect("channel");
    channel
        .basic_publish(
            env.topology.events_exchange().as_str().into(),
            types::STOCK_CHANGED.into(),
            BasicPublishOptions::default(),
            b"{not json at all",
            BasicProperties::default(),
        )
        .await
        .expect("raw publish");
    let good = stock_changed(1);

    Publisher::new(env.broker.clone())
        .publish(&good)
        .await
        .expect("published");

    assert!(eventually(WAIT, || async { env.effects_of(good.id).await == 1 }).await);
    let parked = env
        .take(&env.topology.parking_queue(SERVICE), 1, WAIT)
        .await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].data, b"{not json at all");
    assert_eq!(recorder.total(), 1, "the poison never reached the handler");
    shutdown.cancel();
    running.await.expect("consumer task");
    env.cleanup().await;
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_it_succeeds() {
    let env = test_env("msg_retry").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let recorder = Recorder::default();
    let event = stock_changed(1);
    recorder.fail(event.id, Fail::Transient(2));
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(
        env.broker.clone(),
        env.db.clone(),
        SERVICE,
        &[types::STOCK_CHANGED],
        recorder.clone(),
    )
    .with_retry_delay(Duration::from_millis(10));
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    Publisher::new(env.broker.clone())
        .publish(&event)
        .await
        .expect("published");

    assert!(eventually(WAIT, || async { env.effects_of(event.id).await == 1 }).await);
    assert_eq!(recorder.calls(event.id), 3);
    let inbox_rows = count(&env.db, "SELECT count(*) AS n FROM inbox").await;
    assert_eq!(inbox_rows, 1, "failed attempts rolled their inbox row back");
    shutdown.cancel();
    running.await.expect("consumer task");
    env.cleanup().await;
}

#[tokio::test]
async fn a_transient_failure_past_the_delivery_limit_ends_in_the_parking_queue() {
    let env = test_env("msg_limit").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let recorder = Recorder::default();
    let doomed = stock_changed(1);
    recorder.fail(doomed.id, Fail::AlwaysTransient);
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(
        env.broker.clone(),
        env.db.clone(),
        SERVICE,
        &[types::STOCK_CHANGED],
        recorder.clone(),
    )
    .with_retry_delay(Duration::from_millis(10));
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let publisher = Publisher::new(env.broker.clone());

    publisher.publish(&doomed).await.expect("published");

    let parked = env
        .take(&env.topology.parking_queue(SERVICE), 1, WAIT)
        .await;
    assert_eq!(parked.len(), 1);
    let body: Envelope = serde_json::from_slice(&parked[0].data).expect("envelope");
    assert_eq!(body.id, doomed.id);
    // The first delivery and DELIVERY_LIMIT redeliveries.
    let expected_calls = usize::try_from(DELIVERY_LIMIT).expect("small") + 1;
    assert_eq!(recorder.calls(doomed.id), expected_calls);
    assert_eq!(env.effects_of(doomed.id).await, 0);
    let next = stock_changed(2);
    publisher.publish(&next).await.expect("published");
    assert!(eventually(WAIT, || async { env.effects_of(next.id).await == 1 }).await);
    shutdown.cancel();
    running.await.expect("consumer task");
    env.cleanup().await;
}

#[tokio::test]
async fn a_permanent_failure_is_parked_at_once() {
    let env = test_env("msg_permanent").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let recorder = Recorder::default();
    let bad = stock_changed(1);
    recorder.fail(bad.id, Fail::Permanent);
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(
        env.broker.clone(),
        env.db.clone(),
        SERVICE,
        &[types::STOCK_CHANGED],
        recorder.clone(),
    );
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    Publisher::new(env.broker.clone())
        .publish(&bad)
        .await
        .expect("published");

    let parked = env
        .take(&env.topology.parking_queue(SERVICE), 1, WAIT)
        .await;
    assert_eq!(parked.len(), 1);
    assert_eq!(recorder.calls(bad.id), 1);
    shutdown.cancel();
    running.await.expect("consumer task");
    env.cleanup().await;
}

#[tokio::test]
async fn at_shutdown_the_consumer_finishes_the_deliveries_it_holds_and_returns() {
    let env = test_env("msg_shutdown").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    let recorder = Recorder::default();
    recorder.pause_each_call(Duration::from_millis(100));
    let shutdown = Shutdown::new();
    let consumer = Consumer::new(
        env.broker.clone(),
        env.db.clone(),
        SERVICE,
        &[types::STOCK_CHANGED],
        recorder.clone(),
    );
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let events: Vec<Envelope> = (0..8).map(stock_changed).collect();
    for result in Publisher::new(env.broker.clone())
        .publish_batch(&events)
        .await
    {
        result.expect("published");
    }
    assert!(eventually(WAIT, || async { recorder.total() >= 1 }).await);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the consumer returns")
        .expect("consumer task");

    // Every delivery it had been sent was handled and acked, none went back to the queue.
    let handled = env.effects().await;
    let queue = env.topology.service_queue(SERVICE);
    let left = i64::from(env.queue_len(&queue).await);
    assert_eq!(handled + left, 8);
    assert_eq!(
        handled, 8,
        "all eight were prefetched, so all eight were finished"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn declaring_the_topology_twice_changes_nothing() {
    let env = test_env("msg_declare").await;
    env.declare(SERVICE, &[types::STOCK_CHANGED]).await;
    env.declare(SERVICE, &[types::STOCK_CHANGED, types::STORE_UPSERTED])
        .await;
    let publisher = Publisher::new(env.broker.clone());

    publisher
        .publish(&stock_changed(1))
        .await
        .expect("published");
    publisher
        .publish(&Envelope::new(
            types::STORE_UPSERTED,
            "inventory",
            json!({}),
            None,
        ))
        .await
        .expect("the added binding routes");

    let queue = env.topology.service_queue(SERVICE);
    assert_eq!(env.take(&queue, 2, WAIT).await.len(), 2);
    assert!(env.broker.is_connected());
    env.cleanup().await;
}

#[tokio::test]
async fn the_inbox_records_an_id_once_per_consumer_and_purges_old_ids() {
    let env = test_env("msg_inbox").await;
    let id = uuid::Uuid::now_v7();
    let old = uuid::Uuid::now_v7();

    assert!(inbox::record(&env.db, "orders", id).await.expect("record"));
    assert!(!inbox::record(&env.db, "orders", id).await.expect("record"));
    assert!(
        inbox::record(&env.db, "notifications", id)
            .await
            .expect("record"),
        "each consumer has its own record of an id"
    );
    assert!(inbox::record(&env.db, "orders", old).await.expect("record"));
    env.db
        .execute_unprepared(&format!(
            "UPDATE inbox SET handled_at = now() - interval '8 days' WHERE message_id = '{old}'"
        ))
        .await
        .expect("age the row");

    let purged = inbox::purge(&env.db, Duration::from_secs(7 * 24 * 3600))
        .await
        .expect("purge");

    assert_eq!(purged, 1);
    assert_eq!(count(&env.db, "SELECT count(*) AS n FROM inbox").await, 2);
    env.cleanup().await;
}
