//! Notifications through the three services, against the real PostgreSQL and RabbitMQ,
//! with stand-in push services that check what the real ones check (the Web Push one
//! verifies the VAPID JWT and decrypts the payload; FCM checks the OAuth token it issued;
//! APNs checks the ES256 provider token and headers over HTTP/2).
#![allow(clippy::unwrap_used)]

mod common;
use common::{Options, Stack, admin, customer, eventually, problem, scalar, staff};
use notifications::receivers::Reply;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::testing::Probe;
use std::time::Duration;
use uuid::Uuid;

const STORE: &str = "PAR-LOUVRE";
const STORE_NAME: &str = "Paris Louvre";

async fn stack_with_store() -> Stack {
    let s = Stack::spawn().await;
    s.store(STORE, STORE_NAME).await;
    s
}

/// Places an order for `customer_id` and waits for it to be confirmed.
async fn confirmed_order(s: &Stack, customer_id: &str, locale: &str) -> String {
    let id = s
        .place_on(0, customer_id, STORE, &[("SKU-1", 1)], locale)
        .await;
    s.wait_status(&id, "confirmed").await;
    id
}

fn of_event<'a>(
    pushes: &'a [notifications::receivers::Received],
    event: &str,
) -> Vec<&'a notifications::receivers::Received> {
    pushes
        .iter()
        .filter(|p| p.data.get("event_type").map(String::as_str) == Some(event))
        .collect()
}

async fn delivery_statuses(s: &Stack, order_id: &str, event_type: &str) -> Vec<(String, i64)> {
    s.deliveries_of(order_id)
        .await
        .into_iter()
        .filter(|d| d["event_type"] == event_type)
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_owned(),
                d["attempts"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_ready_order_reaches_the_customers_browser_once_in_french_naming_the_store_and_the_code()
{
    let s = stack_with_store().await;
    s.count(STORE, "SKU-1", 5).await;
    let (_, sub) = s.register_webpush("alice", None).await;
    let order = confirmed_order(&s, "alice", "fr-FR").await;
    let code = s.make_ready_on(0, &order, STORE, "alice").await;

    s.webpush.wait_for(2, Duration::from_secs(20)).await;
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushes = s.webpush.received();
    assert!(
        s.webpush.violations().is_empty(),
        "{:?}",
        s.webpush.violations()
    );
    let ready = of_event(&pushes, "ready_for_pickup");
    assert_eq!(ready.len(), 1, "exactly one ready push");
    let ready = ready[0];
    assert_eq!(ready.path_or_token, sub.endpoint);
    assert_eq!(ready.title, "Votre commande est prête");
    assert!(ready.body.contains(STORE_NAME), "{}", ready.body);
    assert!(ready.body.contains(&code), "{}", ready.body);
    assert!(ready.body.contains("avant le"), "{}", ready.body);
    assert_eq!(ready.data["order_id"], order);
    assert_eq!(
        ready.headers.get("urgency").map(String::as_str),
        Some("high")
    );
    assert!(ready.headers.contains_key("ttl"));
    assert_eq!(of_event(&pushes, "confirmed").len(), 1);
    assert_eq!(
        of_event(&pushes, "confirmed")[0].title,
        "Commande confirmée"
    );

    // The delivery log tells the same story, to the order's customer and its staff.
    let log = s
        .notif(
            0,
            Method::GET,
            &format!("/v1/notifications?order_id={order}"),
            Some(&customer("alice")),
            None,
        )
        .await;
    let log: Value = log.json().await.unwrap();
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|d| d["status"] == "sent" && d["attempts"] == 1 && d["kind"] == "webpush")
    );
    // Another customer, another store's staff: as if the order did not exist.
    for token in [customer("bob"), staff(&["LYON"])] {
        let r = s
            .notif(
                0,
                Method::GET,
                &format!("/v1/notifications?order_id={order}"),
                Some(&token),
                None,
            )
            .await;
        problem(r, StatusCode::NOT_FOUND).await;
    }
    let own_store: Value = s
        .notif(
            0,
            Method::GET,
            &format!("/v1/notifications?order_id={order}"),
            Some(&staff(&[STORE])),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own_store["items"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn the_ready_event_delivered_three_times_pushes_once() {
    let s = stack_with_store().await;
    let probe = Probe::open(&s.prefix, "orders.order.ready_for_pickup")
        .await
        .unwrap();
    s.count(STORE, "SKU-1", 5).await;
    s.register_webpush("alice", Some("en")).await;
    let order = confirmed_order(&s, "alice", "en").await;
    s.make_ready_on(0, &order, STORE, "alice").await;
    let events = probe.collect(Duration::from_secs(2)).await.unwrap();
    assert_eq!(events.len(), 1);
    let ready = &events[0];
    // The same message twice more, and once under a new message id (an outbox row relayed
    // again after a lost confirm looks like that).
    probe.publish(&s.prefix, ready).await.unwrap();
    probe.publish(&s.prefix, ready).await.unwrap();
    let mut copy = ready.clone();
    copy["id"] = json!(Uuid::now_v7());
    probe.publish(&s.prefix, &copy).await.unwrap();
    let inbox = format!(
        "SELECT count(*) FROM inbox WHERE message_id = '{}'",
        copy["id"].as_str().unwrap()
    );
    eventually("the copy is handled", || async {
        scalar(&s.notifications_db, &inbox).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushes = s.webpush.received();
    assert_eq!(of_event(&pushes, "ready_for_pickup").len(), 1);
    assert_eq!(
        delivery_statuses(&s, &order, "orders.order.ready_for_pickup").await,
        vec![("sent".into(), 1)]
    );
    s.stop().await;
}

#[tokio::test]
async fn a_push_service_answering_500_twice_then_201_gets_one_push_after_retries() {
    let s = stack_with_store().await;
    s.count(STORE, "SKU-1", 5).await;
    let (_, sub) = s.register_webpush("alice", None).await;
    let order = confirmed_order(&s, "alice", "en").await;
    s.webpush.wait_for(1, Duration::from_secs(20)).await;
    s.webpush.script(
        &sub.endpoint,
        vec![Reply::Status(500), Reply::StatusWithRetryAfter(503, 0)],
    );
    s.make_ready_on(0, &order, STORE, "alice").await;
    eventually("the ready push is sent after retries", || async {
        delivery_statuses(&s, &order, "orders.order.ready_for_pickup").await
            == vec![("sent".into(), 3)]
    })
    .await;
    let pushes = s.webpush.received();
    assert_eq!(of_event(&pushes, "ready_for_pickup").len(), 1);
    assert_eq!(
        s.webpush.attempts(&sub.endpoint),
        4,
        "confirmed once, ready three times"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_subscription_answering_410_is_removed_and_not_tried_again() {
    let s = stack_with_store().await;
    s.count(STORE, "SKU-1", 5).await;
    let (device, sub) = s.register_webpush("alice", None).await;
    s.webpush.always(&sub.endpoint, Reply::Gone);
    let order = confirmed_order(&s, "alice", "en").await;
    eventually("the delivery fails", || async {
        delivery_statuses(&s, &order, "orders.order.confirmed")
            .await
            .first()
            .map(|d| d.0.clone())
            == Some("failed".into())
    })
    .await;
    let devices: Value = s
        .notif(
            0,
            Method::GET,
            "/v1/customers/alice/devices",
            Some(&customer("alice")),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        devices["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["device_id"] != json!(device)),
        "the gone device is removed"
    );
    let log = s.deliveries_of(&order).await;
    assert!(
        log[0]["last_error"].as_str().unwrap().contains("gone"),
        "{log:?}"
    );
    s.make_ready_on(0, &order, STORE, "alice").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.webpush.attempts(&sub.endpoint), 1, "never tried again");
    s.stop().await;
}

/// Log lines of this test process (nextest runs each test in a process of its own).
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Installs itself as the process's JSON log output (before the stack logs anything).
    fn install() -> Self {
        let logs = Self::default();
        let writer = logs.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .try_init();
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_push_service_that_always_fails_ends_dead_and_delivery_failed_is_published() {
    let logs = CapturedLogs::install();
    let s = stack_with_store().await;
    let failed = Probe::open(&s.prefix, "notifications.delivery.failed")
        .await
        .unwrap();
    s.count(STORE, "SKU-1", 5).await;
    let (device, sub) = s.register_webpush("alice", None).await;
    s.webpush.always(&sub.endpoint, Reply::Status(500));
    let order = confirmed_order(&s, "alice", "en").await;
    let max = i64::from(Options::default().retry.max_attempts);
    eventually("the delivery is dead", || async {
        delivery_statuses(&s, &order, "orders.order.confirmed").await == vec![("dead".into(), max)]
    })
    .await;
    let events = failed.collect(Duration::from_secs(3)).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["source"], "notifications");
    assert_eq!(events[0]["data"]["order_id"], order);
    assert_eq!(events[0]["data"]["device_id"], device.to_string());
    assert_eq!(events[0]["data"]["event_type"], "orders.order.confirmed");
    assert!(
        events[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    let dead: Value = s
        .notif(
            0,
            Method::GET,
            "/v1/notifications?status=dead",
            Some(&admin()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dead["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.webpush.attempts(&sub.endpoint),
        usize::try_from(max).unwrap()
    );
    // The log says so, with what an operator needs to find it.
    let dead_line = logs
        .text()
        .lines()
        .find(|l| l.contains("push delivery dead"))
        .map(str::to_owned)
        .expect("an error line for the dead delivery");
    assert!(dead_line.contains("\"level\":\"ERROR\""), "{dead_line}");
    assert!(dead_line.contains(&order), "{dead_line}");
    assert!(dead_line.contains(&device.to_string()), "{dead_line}");
    s.stop().await;
}

#[tokio::test]
async fn fcm_and_apns_devices_get_the_ready_push_with_tokens_their_services_accept() {
    let s = stack_with_store().await;
    s.count(STORE, "SKU-1", 5).await;
    let apns_token = "ab".repeat(32);
    for (kind, token) in [("fcm", "fcm-token-of-alice"), ("apns", apns_token.as_str())] {
        let r = s
            .notif(
                0,
                Method::PUT,
                &format!("/v1/customers/alice/devices/{}", Uuid::now_v7()),
                Some(&customer("alice")),
                Some(json!({"kind": kind, "token": token, "locale": "fr"})),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }
    let order = confirmed_order(&s, "alice", "en").await;
    let code = s.make_ready_on(0, &order, STORE, "alice").await;
    for received in [
        s.fcm.wait_for(2, Duration::from_secs(20)).await,
        s.apns.wait_for(2, Duration::from_secs(20)).await,
    ] {
        let ready = of_event(&received, "ready_for_pickup");
        assert_eq!(ready.len(), 1);
        assert_eq!(
            ready[0].title, "Votre commande est prête",
            "the device's locale wins"
        );
        assert!(ready[0].body.contains(&code));
    }
    assert!(s.fcm.violations().is_empty(), "{:?}", s.fcm.violations());
    assert!(s.apns.violations().is_empty(), "{:?}", s.apns.violations());
    assert_eq!(s.fcm.tokens_issued(), 1, "one OAuth token for both pushes");
    let apns = s.apns.received();
    assert_eq!(apns[0].path_or_token, apns_token);
    assert_eq!(apns[0].headers["apns-topic"], common::APNS_TOPIC);
    assert_eq!(
        of_event(&apns, "ready_for_pickup")[0].headers["apns-priority"],
        "10"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_provider_that_is_not_configured_fails_its_deliveries_and_the_rest_still_go_out() {
    let s = Stack::spawn_with(Options {
        fcm: false,
        ..Options::default()
    })
    .await;
    s.store(STORE, STORE_NAME).await;
    s.count(STORE, "SKU-1", 5).await;
    let r = s
        .notif(
            0,
            Method::PUT,
            &format!("/v1/customers/alice/devices/{}", Uuid::now_v7()),
            Some(&customer("alice")),
            Some(json!({"kind": "fcm", "token": "fcm-token"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.register_webpush("alice", None).await;
    let order = confirmed_order(&s, "alice", "en").await;
    eventually("both deliveries are settled", || async {
        let log = s.deliveries_of(&order).await;
        log.len() == 2
            && log
                .iter()
                .all(|d| d["status"] != "pending" && d["status"] != "retrying")
    })
    .await;
    let log = s.deliveries_of(&order).await;
    let fcm = log.iter().find(|d| d["kind"] == "fcm").unwrap();
    assert_eq!(fcm["status"], "failed");
    assert!(
        fcm["last_error"].as_str().unwrap().contains("disabled"),
        "{fcm}"
    );
    let web = log.iter().find(|d| d["kind"] == "webpush").unwrap();
    assert_eq!(web["status"], "sent");
    assert_eq!(s.fcm.attempts("fcm-token"), 0);
    let r = s.notif(0, Method::GET, "/health/ready", None, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn rejected_cancelled_and_reminded_orders_are_pushed_in_the_customers_language() {
    let s = stack_with_store().await;
    // A store whose pickup window (1 h) is within the reminder lead (1 h in the stack):
    // the reminder is due as soon as the order is ready.
    let r = s
        .inv(
            0,
            Method::PUT,
            "/v1/stores/QUICK",
            Some(&admin()),
            Some(
                json!({"name": "Quick Store", "latitude": 48.85, "longitude": 2.35,
                         "timezone": "Europe/Paris", "pickup_enabled": true,
                         "low_stock_threshold": 2, "pickup_window_hours": 1}),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let known = "SELECT count(*) FROM stores WHERE store_id = 'QUICK'";
    eventually("orders and notifications know QUICK", || async {
        scalar(&s.orders_db, known).await == 1 && scalar(&s.notifications_db, known).await == 1
    })
    .await;
    s.count(STORE, "SKU-1", 1).await;
    s.count("QUICK", "SKU-1", 1).await;
    s.register_webpush("alice", Some("fr")).await;
    let rejected = s.place_on(0, "alice", STORE, &[("SKU-1", 5)], "fr").await;
    s.wait_status(&rejected, "rejected").await;
    let cancelled = confirmed_order(&s, "alice", "fr").await;
    let r = s
        .ord(
            0,
            Method::POST,
            &format!("/v1/orders/{cancelled}/cancel"),
            Some(&customer("alice")),
            Some(json!({"reason": "changed my mind"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let reminded = s.place_on(0, "alice", "QUICK", &[("SKU-1", 1)], "fr").await;
    s.wait_status(&reminded, "confirmed").await;
    s.make_ready_on(0, &reminded, "QUICK", "alice").await;
    // rejected; confirmed + cancelled; confirmed + ready + reminder.
    let pushes = s.webpush.wait_for(6, Duration::from_secs(20)).await;
    let title_of = |order: &str, event: &str| {
        pushes
            .iter()
            .filter(|p| p.data["order_id"] == order && p.data["event_type"] == event)
            .map(|p| p.title.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(title_of(&rejected, "rejected"), ["Commande non acceptée"]);
    assert_eq!(title_of(&cancelled, "cancelled"), ["Commande annulée"]);
    assert_eq!(
        title_of(&reminded, "pickup_reminder"),
        ["Votre commande vous attend"]
    );
    let reminder = pushes
        .iter()
        .find(|p| p.data["event_type"] == "pickup_reminder")
        .unwrap();
    assert!(reminder.body.contains("Quick Store"), "{}", reminder.body);
    s.stop().await;
}

/// The next stock.changed of a level as notifications saw it: `(revision, available)`.
async fn seen(s: &Stack, sku: &str) -> Option<(i64, i64)> {
    let sql =
        format!("SELECT count(*) FROM stock_seen WHERE store_id = '{STORE}' AND sku = '{sku}'");
    if scalar(&s.notifications_db, &sql).await == 0 {
        return None;
    }
    let rev = scalar(
        &s.notifications_db,
        &format!("SELECT revision FROM stock_seen WHERE store_id = '{STORE}' AND sku = '{sku}'"),
    )
    .await;
    let avail = scalar(
        &s.notifications_db,
        &format!("SELECT available FROM stock_seen WHERE store_id = '{STORE}' AND sku = '{sku}'"),
    )
    .await;
    Some((rev, avail))
}

fn stock_changed(sku: &str, revision: i64, available: i64) -> Value {
    json!({"id": Uuid::now_v7(), "type": "inventory.stock.changed", "version": 1,
           "occurred_at": chrono::Utc::now(), "source": "inventory",
           "correlation_id": Uuid::now_v7(), "causation_id": null,
           "data": {"store_id": STORE, "sku": sku, "on_hand": available, "reserved": 0,
                    "safety_stock": 0, "available": available, "status": "in_stock",
                    "revision": revision}})
}

#[tokio::test]
async fn a_back_in_stock_alert_fires_once_when_a_receipt_makes_it_available_and_never_on_a_stale_change()
 {
    let s = stack_with_store().await;
    let probe = Probe::open(&s.prefix, "nothing.bound.here").await.unwrap();
    s.count(STORE, "DOLI-1000", 0).await;
    eventually("notifications saw the empty level", || async {
        seen(&s, "DOLI-1000").await.is_some()
    })
    .await;
    let (revision, _) = seen(&s, "DOLI-1000").await.unwrap();
    s.register_webpush("chloe", Some("fr-FR")).await;
    let r = s
        .notif(
            0,
            Method::POST,
            "/v1/customers/chloe/stock-alerts",
            Some(&customer("chloe")),
            Some(json!({"store_id": STORE, "sku": "DOLI-1000", "quantity": 2, "product_name": "Doliprane 1000 mg"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let alert: Value = r.json().await.unwrap();
    assert_eq!(alert["status"], "waiting");
    assert_eq!(alert["quantity"], 2);

    // A stale change (the same and a lower revision) that claims plenty fires nothing.
    for rev in [revision, revision - 1] {
        let stale = stock_changed("DOLI-1000", rev, 50);
        probe.publish(&s.prefix, &stale).await.unwrap();
        let inbox = format!(
            "SELECT count(*) FROM inbox WHERE message_id = '{}'",
            stale["id"].as_str().unwrap()
        );
        eventually("the stale change is handled", || async {
            scalar(&s.notifications_db, &inbox).await == 1
        })
        .await;
        assert_eq!(
            seen(&s, "DOLI-1000").await,
            Some((revision, 0)),
            "a stale change is not recorded"
        );
        let waiting = scalar(
            &s.notifications_db,
            "SELECT count(*) FROM stock_alerts WHERE status = 'waiting'",
        )
        .await;
        assert_eq!(waiting, 1, "a stale change fires nothing");
        assert_eq!(
            scalar(&s.notifications_db, "SELECT count(*) FROM deliveries").await,
            0
        );
    }
    // Not enough yet.
    s.receipt(STORE, "DOLI-1000", 1).await;
    eventually("the receipt is seen", || async {
        seen(&s, "DOLI-1000").await.map(|x| x.1) == Some(1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.webpush.received().is_empty(),
        "no push on a stale or short change"
    );

    s.receipt(STORE, "DOLI-1000", 4).await;
    let pushes = s.webpush.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].title, "De retour en stock");
    assert_eq!(
        pushes[0].body,
        "Doliprane 1000 mg est de nouveau disponible chez Paris Louvre."
    );
    assert_eq!(pushes[0].data["sku"], "DOLI-1000");

    // Retired: the next change pushes nothing.
    s.receipt(STORE, "DOLI-1000", 3).await;
    eventually("the next receipt is seen", || async {
        seen(&s, "DOLI-1000").await.map(|x| x.1) == Some(8)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.webpush.received().len(), 1);
    let alerts: Value = s
        .notif(
            0,
            Method::GET,
            "/v1/customers/chloe/stock-alerts?status=fired",
            Some(&customer("chloe")),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alerts["items"][0]["id"], alert["id"]);
    // A fired alert cannot be cancelled; a waiting one can.
    let r = s
        .notif(
            0,
            Method::DELETE,
            &format!(
                "/v1/customers/chloe/stock-alerts/{}",
                alert["id"].as_str().unwrap()
            ),
            Some(&customer("chloe")),
            None,
        )
        .await;
    assert_eq!(
        problem(r, StatusCode::CONFLICT).await["alert_status"],
        "fired"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_alert_asked_for_stock_already_on_the_shelf_fires_at_once() {
    let s = stack_with_store().await;
    s.count(STORE, "SOAP-1", 4).await;
    eventually("notifications saw the level", || async {
        seen(&s, "SOAP-1").await.map(|x| x.1) == Some(4)
    })
    .await;
    s.register_webpush("dan", Some("en")).await;
    let r = s
        .notif(
            0,
            Method::POST,
            "/v1/customers/dan/stock-alerts",
            Some(&customer("dan")),
            Some(json!({"store_id": STORE, "sku": "SOAP-1", "quantity": 3})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let alert: Value = r.json().await.unwrap();
    assert_eq!(alert["status"], "fired");
    let pushes = s.webpush.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].body, "SOAP-1 is available again at Paris Louvre.");
    // More than is there waits.
    let r = s
        .notif(
            0,
            Method::POST,
            "/v1/customers/dan/stock-alerts",
            Some(&customer("dan")),
            Some(json!({"store_id": STORE, "sku": "SOAP-1", "quantity": 5})),
        )
        .await;
    let waiting: Value = r.json().await.unwrap();
    assert_eq!(waiting["status"], "waiting");
    s.stop().await;
}

#[tokio::test]
async fn a_subscription_registered_again_by_another_customer_is_theirs_alone() {
    let s = stack_with_store().await;
    s.count(STORE, "SKU-1", 5).await;
    let (_, sub) = s.register_webpush("alice", None).await;
    // Bob signs in on the same browser: the same subscription, another customer.
    let r = s
        .notif(0, Method::PUT, &format!("/v1/customers/bob/devices/{}", Uuid::now_v7()), Some(&customer("bob")),
               Some(json!({"kind": "webpush", "endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}})))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let alices: Value = s
        .notif(
            0,
            Method::GET,
            "/v1/customers/alice/devices",
            Some(&customer("alice")),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        alices["items"].as_array().unwrap().len(),
        0,
        "Alice's pushes no longer reach Bob's screen"
    );
    let order = confirmed_order(&s, "alice", "en").await;
    s.make_ready_on(0, &order, STORE, "alice").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        s.webpush.received().is_empty(),
        "Alice's code is not shown to Bob"
    );
    s.stop().await;
}

#[tokio::test]
async fn five_thousand_alerts_on_one_sku_all_fire_once() {
    let s = stack_with_store().await;
    s.count(STORE, "HOT-1", 0).await;
    eventually("notifications saw the empty level", || async {
        seen(&s, "HOT-1").await.is_some()
    })
    .await;
    // 5,000 customers, each with an FCM device and an alert (written straight to the
    // database: the API is tested elsewhere, the volume is the point here).
    use sea_orm::ConnectionTrait;
    s.notifications_db
        .execute_unprepared(&format!(
            "INSERT INTO devices (customer_id, device_id, kind, token, locale)
             SELECT 'c' || n, uuid_v7(), 'fcm', 'tok-' || n, CASE WHEN n % 2 = 0 THEN 'fr' ELSE 'en' END
             FROM generate_series(1, 5000) n;
             INSERT INTO stock_alerts (id, customer_id, store_id, sku, quantity, created_at)
             SELECT uuid_v7(), 'c' || n, '{STORE}', 'HOT-1', 1 + n % 3, now() - interval '1 minute'
             FROM generate_series(1, 5000) n;"
        ))
        .await
        .unwrap();
    s.receipt(STORE, "HOT-1", 3).await;
    let received = s.fcm.wait_for(5000, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = if received.len() < 5000 {
        received
    } else {
        s.fcm.received()
    };
    assert_eq!(received.len(), 5000);
    let tokens: std::collections::HashSet<&str> =
        received.iter().map(|r| r.path_or_token.as_str()).collect();
    assert_eq!(tokens.len(), 5000, "each device once");
    assert!(s.fcm.violations().is_empty(), "{:?}", s.fcm.violations());
    let waiting = scalar(
        &s.notifications_db,
        "SELECT count(*) FROM stock_alerts WHERE status = 'waiting'",
    )
    .await;
    assert_eq!(waiting, 0);
    s.stop().await;
}

#[tokio::test]
async fn devices_belong_to_their_customer_and_bad_registrations_change_nothing() {
    let s = Stack::spawn().await;
    let (device, _) = s.register_webpush("alice", Some("fr-FR")).await;
    let path = format!("/v1/customers/alice/devices/{device}");
    // Another customer: 404 as if it did not exist; staff and service: 403.
    let r = s
        .notif(
            0,
            Method::GET,
            "/v1/customers/alice/devices",
            Some(&customer("bob")),
            None,
        )
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = s
        .notif(0, Method::DELETE, &path, Some(&customer("bob")), None)
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = s
        .notif(
            0,
            Method::GET,
            "/v1/customers/alice/devices",
            Some(&staff(&[STORE])),
            None,
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = s
        .notif(0, Method::GET, "/v1/customers/alice/devices", None, None)
        .await;
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = s
        .notif(
            0,
            Method::PUT,
            &format!("/v1/customers/bob/devices/{}", Uuid::now_v7()),
            Some(&customer("alice")),
            Some(json!({"kind": "fcm", "token": "x"})),
        )
        .await;
    problem(r, StatusCode::NOT_FOUND).await;

    let bad = [
        json!({"kind": "webpush", "endpoint": "ftp://push.example/x", "keys": {"p256dh": "AAAA", "auth": "AAAA"}}),
        json!({"kind": "webpush", "endpoint": "https://push.example/x"}),
        json!({"kind": "fcm", "token": ""}),
        json!({"kind": "apns", "token": "not-hex"}),
        json!({"kind": "sms", "token": "x"}),
        json!({"kind": "fcm", "token": "t", "locale": "no such locale"}),
        json!({"kind": "fcm", "token": "t", "extra": 1}),
    ];
    for body in bad {
        let r = s
            .notif(
                0,
                Method::PUT,
                &format!("/v1/customers/alice/devices/{}", Uuid::now_v7()),
                Some(&customer("alice")),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let r = s
        .http
        .put(format!(
            "{}/v1/customers/alice/devices/{}",
            s.notifications[0].base,
            Uuid::now_v7()
        ))
        .bearer_auth(customer("alice"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;
    let r = s
        .notif(
            0,
            Method::PUT,
            "/v1/customers/alice/devices/not-a-uuid",
            Some(&customer("alice")),
            Some(json!({"kind": "fcm", "token": "t"})),
        )
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        scalar(&s.notifications_db, "SELECT count(*) FROM devices").await,
        1,
        "nothing stored"
    );

    // Re-registering replaces (200); admin may list and delete; then it is gone (404).
    let r = s
        .notif(
            0,
            Method::PUT,
            &path,
            Some(&customer("alice")),
            Some(json!({"kind": "fcm", "token": "new-token"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = s
        .notif(
            0,
            Method::GET,
            "/v1/customers/alice/devices",
            Some(&admin()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["kind"], "fcm");
    assert_eq!(list["items"][0]["token"], "new-token");
    let r = s
        .notif(0, Method::DELETE, &path, Some(&customer("alice")), None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s
        .notif(0, Method::DELETE, &path, Some(&admin()), None)
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    s.stop().await;
}

#[tokio::test]
async fn stock_alert_requests_are_checked_and_belong_to_their_customer() {
    let s = Stack::spawn().await;
    let url = "/v1/customers/alice/stock-alerts";
    for body in [
        json!({"store_id": "bad store", "sku": "A"}),
        json!({"store_id": STORE, "sku": "A", "quantity": 0}),
        json!({"store_id": STORE, "sku": "A", "quantity": -3}),
        json!({"store_id": STORE, "sku": "A", "quantity": 9_999_999_999_i64}),
        json!({"store_id": STORE}),
        json!({"store_id": STORE, "sku": "A", "product_name": ""}),
    ] {
        let r = s
            .notif(
                0,
                Method::POST,
                url,
                Some(&customer("alice")),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let r = s
        .notif(
            0,
            Method::POST,
            url,
            Some(&customer("bob")),
            Some(json!({"store_id": STORE, "sku": "A"})),
        )
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = s
        .notif(
            0,
            Method::POST,
            url,
            Some(&staff(&[STORE])),
            Some(json!({"store_id": STORE, "sku": "A"})),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    assert_eq!(
        scalar(&s.notifications_db, "SELECT count(*) FROM stock_alerts").await,
        0
    );

    let r = s
        .notif(
            0,
            Method::POST,
            url,
            Some(&customer("alice")),
            Some(json!({"store_id": STORE, "sku": "A"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let alert: Value = r.json().await.unwrap();
    assert_eq!(alert["quantity"], 1, "one by default");
    let id = alert["id"].as_str().unwrap();
    let r = s
        .notif(
            0,
            Method::DELETE,
            &format!("{url}/{id}"),
            Some(&customer("bob")),
            None,
        )
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = s
        .notif(
            0,
            Method::DELETE,
            &format!("{url}/{id}"),
            Some(&customer("alice")),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");
    let r = s
        .notif(
            0,
            Method::GET,
            &format!("{url}?status=bogus"),
            Some(&customer("alice")),
            None,
        )
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = s
        .notif(
            0,
            Method::GET,
            "/v1/notifications?order_id=nope",
            Some(&admin()),
            None,
        )
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = s
        .notif(
            0,
            Method::GET,
            "/v1/notifications",
            Some(&common::token("svc", shared::auth::Role::Service, &[])),
            None,
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    s.stop().await;
}

#[tokio::test]
async fn broker_restart_in_a_burst_of_ready_orders_pushes_each_once() {
    let s = std::sync::Arc::new(stack_with_store().await);
    s.count(STORE, "SKU-1", 100).await;
    let mut orders = Vec::new();
    for n in 0..16 {
        let who = format!("cust-{n}");
        s.register_webpush(&who, Some("en")).await;
        orders.push((
            who.clone(),
            s.place_on(n, &who, STORE, &[("SKU-1", 1)], "en").await,
        ));
    }
    for (_, id) in &orders {
        s.wait_status(id, "confirmed").await;
    }
    let ready = |range: std::ops::Range<usize>| {
        let s = s.clone();
        let batch: Vec<(String, String)> = orders[range].to_vec();
        tokio::spawn(async move {
            for (who, id) in batch {
                s.make_ready_on(0, &id, STORE, &who).await;
            }
        })
    };
    ready(0..6).await.unwrap();
    shared::testing::rabbitmqctl(&["stop_app"]).await.unwrap();
    ready(6..11).await.unwrap();
    shared::testing::rabbitmqctl(&["start_app"]).await.unwrap();
    ready(11..16).await.unwrap();
    let want = orders.len();
    for _ in 0..240 {
        if of_event(&s.webpush.received(), "ready_for_pickup").len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = s.webpush.received();
    let ready_pushes = of_event(&got, "ready_for_pickup");
    let mut per_order = std::collections::HashMap::<String, usize>::new();
    for p in &ready_pushes {
        *per_order.entry(p.data["order_id"].clone()).or_default() += 1;
    }
    let lost = orders
        .iter()
        .filter(|(_, id)| !per_order.contains_key(id))
        .count();
    let duplicated = per_order.values().filter(|&&n| n > 1).count();
    let unexpected = per_order
        .keys()
        .filter(|k| !orders.iter().any(|(_, id)| id == *k))
        .count();
    assert_eq!(
        (lost, duplicated, unexpected),
        (0, 0, 0),
        "lost, duplicated, unexpected"
    );
    match std::sync::Arc::try_unwrap(s) {
        Ok(s) => s.stop().await,
        Err(_) => panic!("stack still shared"),
    }
}

#[tokio::test]
async fn settled_deliveries_and_retired_alerts_past_retention_are_purged_and_open_ones_kept() {
    use sea_orm::ConnectionTrait;
    let s = Stack::spawn().await;
    s.notifications_db
        .execute_unprepared(
            "INSERT INTO deliveries (id, dedupe_key, customer_id, device_id, kind, store_id, event_type, context, status, created_at)
             VALUES (uuid_v7(), 'old-sent', 'c', uuid_v7(), 'fcm', 'S', 't', '{}', 'sent', now() - interval '40 days'),
                    (uuid_v7(), 'old-open', 'c', uuid_v7(), 'fcm', 'S', 't', '{}', 'retrying', now() - interval '40 days'),
                    (uuid_v7(), 'new-sent', 'c', uuid_v7(), 'fcm', 'S', 't', '{}', 'sent', now());
             INSERT INTO stock_alerts (id, customer_id, store_id, sku, quantity, status, created_at)
             VALUES (uuid_v7(), 'c', 'S', 'A', 1, 'fired', now() - interval '40 days'),
                    (uuid_v7(), 'c', 'S', 'B', 1, 'waiting', now() - interval '40 days');",
        )
        .await
        .unwrap();
    let purged = notifications::store::purge_settled(
        &s.notifications_db,
        notifications::worker::LOG_RETENTION,
    )
    .await
    .unwrap();
    assert_eq!(purged, 2);
    let left = scalar(
        &s.notifications_db,
        "SELECT count(*) FROM deliveries WHERE dedupe_key IN ('old-open', 'new-sent')",
    )
    .await;
    assert_eq!(left, 2, "open and recent deliveries stay");
    assert_eq!(
        scalar(
            &s.notifications_db,
            "SELECT count(*) FROM stock_alerts WHERE status = 'waiting'"
        )
        .await,
        1
    );
    s.stop().await;
}
