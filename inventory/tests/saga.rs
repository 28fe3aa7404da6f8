//! The order saga, inventory's half: `orders.order.*` events in, reservations and
//! `inventory.reservation.*` events out, once each, whatever the order of delivery.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::events::{Envelope, types};
use shared::messaging::{Broker, Publisher, Topology};
use std::time::Duration;
use uuid::Uuid;

/// Long enough for the consumer and the relay to have done anything they were going to.
const QUIET: Duration = Duration::from_millis(1500);

/// Plays the orders service: publishes its events on the test's exchange.
struct Orders {
    broker: Broker,
    publisher: Publisher,
    topology: Topology,
}

impl Orders {
    async fn new(app: &TestApp) -> Self {
        let topology = Topology::new(app.prefix.clone());
        let broker = Broker::connect(&shared::testing::amqp_url(), topology.clone())
            .await
            .unwrap();
        Self {
            publisher: Publisher::new(broker.clone()),
            broker,
            topology,
        }
    }

    async fn send(&self, envelope: &Envelope) {
        self.publisher.publish(envelope).await.unwrap();
    }

    /// Publishes `orders.order.placed` and returns its envelope.
    async fn place(
        &self,
        order_id: Uuid,
        customer: &str,
        store: &str,
        lines: Value,
        hold: Option<Uuid>,
    ) -> Envelope {
        let envelope = placed(order_id, customer, store, lines, hold);
        self.send(&envelope).await;
        envelope
    }

    /// Publishes an `orders.order.<status>` event and returns its envelope.
    async fn status(&self, status: &str, order_id: Uuid, customer: &str, store: &str) -> Envelope {
        let envelope = Envelope::new(
            &format!("orders.order.{status}"),
            "orders",
            json!({"order_id": order_id, "customer_id": customer, "store_id": store,
                   "status": status, "locale": "fr-FR"}),
            None,
        );
        self.send(&envelope).await;
        envelope
    }

    /// Publishes bytes as they are, under `routing_key`.
    async fn raw(&self, routing_key: &str, body: &[u8]) {
        let channel = self.broker.channel().await.unwrap();
        channel
            .basic_publish(
                self.topology.events_exchange().as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let _ = channel.close(0, "done".into()).await;
    }

    /// The next message parked by the inventory consumer (waits up to 10 s).
    async fn parked(&self) -> Vec<u8> {
        let channel = self.broker.channel().await.unwrap();
        let queue = self.topology.parking_queue("inventory");
        for _ in 0..200 {
            if let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                let _ = channel.close(0, "done".into()).await;
                return message.delivery.data.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nothing was parked");
    }

    async fn close(self) {
        self.broker.close().await;
    }
}

fn placed(
    order_id: Uuid,
    customer: &str,
    store: &str,
    lines: Value,
    hold: Option<Uuid>,
) -> Envelope {
    Envelope::new(
        types::ORDER_PLACED,
        "orders",
        json!({"order_id": order_id, "customer_id": customer, "store_id": store,
               "lines": lines, "reservation_id": hold}),
        None,
    )
}

/// A probe on every reservation event, and a running app with store S1.
async fn setup() -> (TestApp, Orders, lapin::Channel) {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    let probe = shared_queue(&app, "inventory.reservation.*").await;
    let orders = Orders::new(&app).await;
    (app, orders, probe)
}

async fn teardown(app: TestApp, orders: Orders) {
    orders.close().await;
    app.assert_invariants().await;
    app.stop().await;
}

/// Waits until the consumer has committed the message `id`.
async fn handled(app: &TestApp, id: Uuid) {
    for _ in 0..200 {
        if app
            .scalar(&format!(
                "SELECT count(*) FROM inbox WHERE consumer = 'inventory' AND message_id = '{id}'"
            ))
            .await
            == 1
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("message {id} was never handled");
}

/// Waits until the availability view shows `(on_hand, reserved)` for S1/`sku`.
async fn shows(app: &TestApp, sku: &str, on_hand: i64, reserved: i64) {
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = app.availability("S1", sku).await;
        if seen["on_hand"] == on_hand && seen["reserved"] == reserved {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("availability of {sku} never reached ({on_hand}, {reserved}): {seen}");
}

async fn reservations_of(app: &TestApp, order_id: Uuid) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM reservations WHERE order_id = '{order_id}'"
    ))
    .await
}

async fn reserved(app: &TestApp, sku: &str) -> i64 {
    app.scalar(&format!(
        "SELECT coalesce(sum(reserved), 0)::bigint FROM stock_levels WHERE store_id = 'S1' AND sku = '{sku}'"
    ))
    .await
}

/// Places an order for `quantity` of A by customer c1 and returns its reservation id.
async fn placed_and_confirmed(
    orders: &Orders,
    probe: &lapin::Channel,
    order_id: Uuid,
    quantity: i64,
) -> String {
    orders
        .place(
            order_id,
            "c1",
            "S1",
            json!([{"sku": "A", "quantity": quantity}]),
            None,
        )
        .await;
    let confirmed = next_event(probe).await;
    assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
    confirmed["data"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_order_placed_is_reserved_for_its_customer_and_confirmed() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    app.stock("S1", "B", 5).await;
    let order_id = Uuid::now_v7();
    let cause = orders
        .place(
            order_id,
            "c1",
            "S1",
            json!([{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 3}]),
            None,
        )
        .await;

    let confirmed = next_event(&probe).await;
    assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
    assert_eq!(confirmed["source"], "inventory");
    assert_eq!(
        confirmed["correlation_id"],
        cause.correlation_id.to_string()
    );
    assert_eq!(confirmed["causation_id"], cause.id.to_string());
    let data = &confirmed["data"];
    assert_eq!(data["order_id"], order_id.to_string());
    assert_eq!(data["store_id"], "S1");
    assert_eq!(
        data["lines"],
        json!([{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 1}])
    );
    let id = data["reservation_id"].as_str().unwrap();
    // The customer reads it: the owner is the customer's identity.
    let r = app
        .get(&format!("/v1/reservations/{id}"), Some(&customer("c1")))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let res: Value = r.json().await.unwrap();
    assert_eq!(res["status"], "active");
    assert_eq!(res["channel"], "order");
    assert_eq!(res["reference"], order_id.to_string());
    assert_eq!(res["order_id"], order_id.to_string());
    assert_eq!(res["expires_at"], data["expires_at"]);
    let expires: chrono::DateTime<chrono::Utc> =
        res["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires > chrono::Utc::now() + chrono::Duration::days(13));
    let other = app
        .get(&format!("/v1/reservations/{id}"), Some(&customer("c2")))
        .await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    // The view follows the consumer's changes too.
    shows(&app, "A", 10, 3).await;
    shows(&app, "B", 5, 1).await;
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_order_short_of_stock_is_rejected_with_its_shortages_and_reserves_nothing() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    app.stock("S1", "B", 1).await;
    let order_id = Uuid::now_v7();
    let cause = orders
        .place(order_id, "c1", "S1",
               json!([{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}, {"sku": "Z", "quantity": 1}]),
               None)
        .await;
    let rejected = next_event(&probe).await;
    assert_eq!(rejected["type"], "inventory.reservation.rejected");
    assert_eq!(rejected["causation_id"], cause.id.to_string());
    assert_eq!(
        rejected["data"],
        json!({"order_id": order_id, "store_id": "S1", "shortages": [
            {"sku": "B", "requested": 3, "available": 1},
            {"sku": "Z", "requested": 1, "available": 0}]})
    );
    assert_eq!(reservations_of(&app, order_id).await, 0);
    assert_eq!(reserved(&app, "A").await, 0);
    assert_eq!(reserved(&app, "B").await, 0);
    assert!(event_within(&probe, QUIET).await.is_none());
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_order_naming_one_sku_twice_counts_its_lines_together() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 4).await;
    let short = Uuid::now_v7();
    orders
        .place(
            short,
            "c1",
            "S1",
            json!([{"sku": "A", "quantity": 2}, {"sku": "A", "quantity": 3}]),
            None,
        )
        .await;
    let rejected = next_event(&probe).await;
    assert_eq!(rejected["type"], "inventory.reservation.rejected");
    assert_eq!(
        rejected["data"]["shortages"],
        json!([{"sku": "A", "requested": 5, "available": 4}])
    );
    let fits = Uuid::now_v7();
    orders
        .place(
            fits,
            "c1",
            "S1",
            json!([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 3}]),
            None,
        )
        .await;
    let confirmed = next_event(&probe).await;
    assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
    assert_eq!(
        confirmed["data"]["lines"],
        json!([{"sku": "A", "quantity": 4}])
    );
    assert_eq!(reserved(&app, "A").await, 4);
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_order_adopts_its_matching_checkout_hold_instead_of_reserving_again() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let hold: Value = app
        .reserve(&customer("c1"), "S1", json!([{"sku": "A", "quantity": 2}]))
        .await
        .json()
        .await
        .unwrap();
    let hold_id: Uuid = hold["id"].as_str().unwrap().parse().unwrap();
    let order_id = Uuid::now_v7();
    // Two lines of one SKU match the hold's single line once merged.
    orders
        .place(
            order_id,
            "c1",
            "S1",
            json!([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}]),
            Some(hold_id),
        )
        .await;
    let confirmed = next_event(&probe).await;
    assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
    assert_eq!(confirmed["data"]["reservation_id"], hold_id.to_string());
    assert_eq!(confirmed["data"]["order_id"], order_id.to_string());
    assert_eq!(
        confirmed["data"]["lines"],
        json!([{"sku": "A", "quantity": 2}])
    );

    assert_eq!(app.scalar("SELECT count(*) FROM reservations").await, 1);
    assert_eq!(reserved(&app, "A").await, 2);
    let res: Value = app
        .get(
            &format!("/v1/reservations/{hold_id}"),
            Some(&customer("c1")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(res["order_id"], order_id.to_string());
    assert_eq!(res["channel"], "web");
    assert_eq!(res["status"], "active");
    let before: chrono::DateTime<chrono::Utc> =
        hold["expires_at"].as_str().unwrap().parse().unwrap();
    let after: chrono::DateTime<chrono::Utc> = res["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(before < chrono::Utc::now() + chrono::Duration::hours(1));
    assert!(after > chrono::Utc::now() + chrono::Duration::days(13));
    assert_eq!(res["expires_at"], confirmed["data"]["expires_at"]);
    // Adopting moves no stock: no ledger row beyond the hold's own.
    assert_eq!(
        app.scalar("SELECT count(*) FROM movements WHERE kind = 'reserve'")
            .await,
        1
    );
    teardown(app, orders).await;
}

#[tokio::test]
async fn a_checkout_hold_that_does_not_match_the_order_is_not_adopted() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 20).await;
    app.store("S2", 48.86, 2.36).await;
    app.stock("S2", "A", 20).await;
    let hold_of = async |who: &str, store: &str, quantity: i64| -> Uuid {
        let hold: Value = app
            .reserve(
                &customer(who),
                store,
                json!([{"sku": "A", "quantity": quantity}]),
            )
            .await
            .json()
            .await
            .unwrap();
        hold["id"].as_str().unwrap().parse().unwrap()
    };
    let other_lines = hold_of("c1", "S1", 2).await;
    let other_customer = hold_of("c2", "S1", 3).await;
    let other_store = hold_of("c1", "S2", 3).await;
    let unknown = Uuid::now_v7();
    for hold in [other_lines, other_customer, other_store, unknown] {
        let order_id = Uuid::now_v7();
        orders
            .place(
                order_id,
                "c1",
                "S1",
                json!([{"sku": "A", "quantity": 3}]),
                Some(hold),
            )
            .await;
        let confirmed = next_event(&probe).await;
        assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
        assert_ne!(confirmed["data"]["reservation_id"], hold.to_string());
        assert_eq!(confirmed["data"]["order_id"], order_id.to_string());
        assert_eq!(reservations_of(&app, order_id).await, 1);
    }
    // The holds are untouched: still active, serving no order.
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM reservations WHERE order_id IS NULL AND status = 'active'"
        )
        .await,
        3
    );
    assert_eq!(reserved(&app, "A").await, 2 + 3 + 4 * 3);
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_adopted_hold_is_not_adopted_again_by_another_order() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let hold: Value = app
        .reserve(&customer("c1"), "S1", json!([{"sku": "A", "quantity": 2}]))
        .await
        .json()
        .await
        .unwrap();
    let hold_id: Uuid = hold["id"].as_str().unwrap().parse().unwrap();
    let first = Uuid::now_v7();
    let second = Uuid::now_v7();
    for order_id in [first, second] {
        orders
            .place(
                order_id,
                "c1",
                "S1",
                json!([{"sku": "A", "quantity": 2}]),
                Some(hold_id),
            )
            .await;
    }
    // The consumer handles orders concurrently: either may take the hold, not both.
    let mut confirmed = [next_event(&probe).await, next_event(&probe).await];
    confirmed.sort_by_key(|c| c["data"]["reservation_id"] != hold_id.to_string());
    let [adopting, afresh] = confirmed;
    assert_eq!(adopting["data"]["reservation_id"], hold_id.to_string());
    assert_ne!(afresh["data"]["reservation_id"], hold_id.to_string());
    let mut served = [
        adopting["data"]["order_id"].as_str().unwrap().to_owned(),
        afresh["data"]["order_id"].as_str().unwrap().to_owned(),
    ];
    served.sort();
    let mut placed = [first.to_string(), second.to_string()];
    placed.sort();
    assert_eq!(served, placed);
    assert_eq!(reserved(&app, "A").await, 4);
    teardown(app, orders).await;
}

#[tokio::test]
async fn the_same_placed_message_delivered_three_times_reserves_once_and_confirms_once() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let envelope = placed(
        order_id,
        "c1",
        "S1",
        json!([{"sku": "A", "quantity": 3}]),
        None,
    );
    for _ in 0..3 {
        orders.send(&envelope).await;
    }
    let confirmed = next_event(&probe).await;
    assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
    assert!(
        event_within(&probe, QUIET).await.is_none(),
        "one confirmation only"
    );
    assert_eq!(reservations_of(&app, order_id).await, 1);
    assert_eq!(reserved(&app, "A").await, 3);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM inbox WHERE message_id = '{}'",
            envelope.id
        ))
        .await,
        1
    );
    teardown(app, orders).await;
}

#[tokio::test]
async fn two_placed_messages_for_one_order_reserve_once() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let lines = json!([{"sku": "A", "quantity": 3}]);
    let first = orders
        .place(order_id, "c1", "S1", lines.clone(), None)
        .await;
    let second = orders.place(order_id, "c1", "S1", lines, None).await;
    assert_ne!(first.id, second.id);
    let confirmed = next_event(&probe).await;
    assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
    handled(&app, second.id).await;
    assert!(
        event_within(&probe, QUIET).await.is_none(),
        "one confirmation only"
    );
    assert_eq!(reservations_of(&app, order_id).await, 1);
    assert_eq!(reserved(&app, "A").await, 3);
    teardown(app, orders).await;
}

#[tokio::test]
async fn a_collected_order_commits_its_reservation_and_the_goods_leave_the_ledger() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let id = placed_and_confirmed(&orders, &probe, order_id, 3).await;
    orders.status("collected", order_id, "c1", "S1").await;
    let committed = next_event(&probe).await;
    assert_eq!(committed["type"], "inventory.reservation.committed");
    assert_eq!(committed["data"]["reservation_id"], id);
    assert_eq!(committed["data"]["order_id"], order_id.to_string());
    assert_eq!(
        committed["data"]["lines"],
        json!([{"sku": "A", "quantity": 3}])
    );
    let res: Value = app
        .get(&format!("/v1/reservations/{id}"), Some(&customer("c1")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(res["status"], "committed");
    assert_eq!(
        app.scalar("SELECT on_hand FROM stock_levels WHERE store_id = 'S1' AND sku = 'A'")
            .await,
        7
    );
    assert_eq!(reserved(&app, "A").await, 0);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM movements WHERE kind = 'commit' AND reference = '{order_id}' \
             AND on_hand_delta = -3 AND reserved_delta = -3 AND actor = 'service:orders'"
        ))
        .await,
        1
    );
    shows(&app, "A", 7, 0).await;
    // A second collected (another envelope) changes nothing.
    let again = orders.status("collected", order_id, "c1", "S1").await;
    handled(&app, again.id).await;
    assert!(event_within(&probe, QUIET).await.is_none());
    teardown(app, orders).await;
}

#[tokio::test]
async fn a_cancelled_order_releases_its_reservation() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let id = placed_and_confirmed(&orders, &probe, order_id, 4).await;
    shows(&app, "A", 10, 4).await;
    orders.status("cancelled", order_id, "c1", "S1").await;
    let released = next_event(&probe).await;
    assert_eq!(released["type"], "inventory.reservation.released");
    assert_eq!(released["data"]["reservation_id"], id);
    assert_eq!(released["data"]["order_id"], order_id.to_string());
    assert_eq!(reserved(&app, "A").await, 0);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM movements WHERE kind = 'release' AND reference = '{order_id}'"
        ))
        .await,
        1
    );
    shows(&app, "A", 10, 0).await;
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_expired_order_releases_its_reservation() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let id = placed_and_confirmed(&orders, &probe, order_id, 2).await;
    orders.status("expired", order_id, "c1", "S1").await;
    let released = next_event(&probe).await;
    assert_eq!(released["type"], "inventory.reservation.released");
    assert_eq!(released["data"]["reservation_id"], id);
    let res: Value = app
        .get(&format!("/v1/reservations/{id}"), Some(&customer("c1")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(res["status"], "released");
    assert_eq!(reserved(&app, "A").await, 0);
    shows(&app, "A", 10, 0).await;
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_order_cancelled_before_its_placed_arrives_reserves_nothing() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let cancel = orders.status("cancelled", order_id, "c1", "S1").await;
    handled(&app, cancel.id).await;
    let place = orders
        .place(
            order_id,
            "c1",
            "S1",
            json!([{"sku": "A", "quantity": 3}]),
            None,
        )
        .await;
    handled(&app, place.id).await;
    assert_eq!(reservations_of(&app, order_id).await, 0);
    assert_eq!(reserved(&app, "A").await, 0);
    assert!(
        event_within(&probe, QUIET).await.is_none(),
        "nothing published"
    );
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_order_expired_before_its_placed_arrives_reserves_nothing() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let expire = orders.status("expired", order_id, "c1", "S1").await;
    handled(&app, expire.id).await;
    let place = orders
        .place(
            order_id,
            "c1",
            "S1",
            json!([{"sku": "A", "quantity": 3}]),
            None,
        )
        .await;
    handled(&app, place.id).await;
    assert_eq!(reservations_of(&app, order_id).await, 0);
    assert!(
        event_within(&probe, QUIET).await.is_none(),
        "nothing published"
    );
    teardown(app, orders).await;
}

#[tokio::test]
async fn a_collected_order_without_a_reservation_changes_nothing() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let order_id = Uuid::now_v7();
    let collected = orders.status("collected", order_id, "c1", "S1").await;
    handled(&app, collected.id).await;
    assert!(event_within(&probe, QUIET).await.is_none());
    assert_eq!(
        app.scalar("SELECT on_hand FROM stock_levels WHERE store_id = 'S1' AND sku = 'A'")
            .await,
        10
    );
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_unreadable_order_event_is_parked_and_the_next_one_is_handled() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    orders.raw(types::ORDER_PLACED, b"{not json").await;
    let garbage = orders.parked().await;
    assert_eq!(garbage, b"{not json");
    // A readable envelope whose data is not an order: the saga handler parks it.
    let bad = Envelope::new(
        types::ORDER_PLACED,
        "orders",
        json!({"order_id": "nope"}),
        None,
    );
    orders.send(&bad).await;
    let parked: Envelope = serde_json::from_slice(&orders.parked().await).unwrap();
    assert_eq!(parked.id, bad.id);

    let order_id = Uuid::now_v7();
    placed_and_confirmed(&orders, &probe, order_id, 1).await;
    assert_eq!(reservations_of(&app, order_id).await, 1);
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_order_with_invalid_lines_is_rejected_rather_than_parked() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    for lines in [
        json!([{"sku": "A", "quantity": 0}]),
        json!([{"sku": "A", "quantity": -2}, {"sku": "B", "quantity": 1}]),
        json!([{"sku": "bad sku", "quantity": 1}]),
        json!([]),
    ] {
        let order_id = Uuid::now_v7();
        orders
            .place(order_id, "c1", "S1", lines.clone(), None)
            .await;
        let rejected = next_event(&probe).await;
        assert_eq!(
            rejected["type"], "inventory.reservation.rejected",
            "{lines}"
        );
        assert_eq!(rejected["data"]["order_id"], order_id.to_string());
        for shortage in rejected["data"]["shortages"].as_array().unwrap() {
            assert_eq!(shortage["available"], 0);
        }
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM reservations").await,
        0,
        "nothing was reserved for invalid orders"
    );
    teardown(app, orders).await;
}

#[tokio::test]
async fn an_order_for_an_unknown_store_or_one_without_pickup_is_rejected_with_every_line_short() {
    let (app, orders, probe) = setup().await;
    app.stock("S1", "A", 10).await;
    let r = app
        .put(
            "/v1/stores/S9",
            &admin(),
            json!({"name": "No pickup", "latitude": 48.0, "longitude": 2.0,
                   "timezone": "Europe/Paris", "pickup_enabled": false,
                   "low_stock_threshold": 2, "pickup_window_hours": 72}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stock("S9", "A", 10).await;
    for store in ["NOWHERE", "S9"] {
        let order_id = Uuid::now_v7();
        orders
            .place(
                order_id,
                "c1",
                store,
                json!([{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 2}]),
                None,
            )
            .await;
        let rejected = next_event(&probe).await;
        assert_eq!(rejected["type"], "inventory.reservation.rejected");
        assert_eq!(
            rejected["data"],
            json!({"order_id": order_id, "store_id": store, "shortages": [
                {"sku": "A", "requested": 2, "available": 0},
                {"sku": "B", "requested": 1, "available": 0}]})
        );
        assert_eq!(reservations_of(&app, order_id).await, 0);
    }
    teardown(app, orders).await;
}

#[tokio::test]
async fn fifty_orders_placed_at_once_on_two_replicas_confirm_exactly_the_twenty_units_in_stock() {
    let (app, orders, probe) = setup().await;
    let replica = spawn_on(&app.database_url, &app.prefix, 6).await;
    app.stock("S1", "A", 20).await;
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let customers: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    futures::future::join_all(
        ids.iter().zip(&customers).map(|(id, who)| {
            orders.place(*id, who, "S1", json!([{"sku": "A", "quantity": 1}]), None)
        }),
    )
    .await;
    let (mut confirmed, mut rejected) = (0, 0);
    for _ in 0..50 {
        let event = next_event(&probe).await;
        match event["type"].as_str().unwrap() {
            "inventory.reservation.confirmed" => confirmed += 1,
            "inventory.reservation.rejected" => {
                assert_eq!(
                    event["data"]["shortages"],
                    json!([{"sku": "A", "requested": 1, "available": 0}])
                );
                rejected += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((confirmed, rejected), (20, 30));
    assert!(event_within(&probe, QUIET).await.is_none());
    assert_eq!(reserved(&app, "A").await, 20);
    assert_eq!(
        app.scalar(
            "SELECT coalesce(sum(l.quantity), 0)::bigint FROM reservation_lines l \
             JOIN reservations r ON r.id = l.reservation_id WHERE r.status = 'active'"
        )
        .await,
        20
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM ended_orders WHERE outcome = 'rejected'")
            .await,
        30
    );
    shows(&app, "A", 20, 20).await;
    replica.stop().await;
    teardown(app, orders).await;
}
