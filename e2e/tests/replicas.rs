//! Two replicas of every service on different ports, one database per service and one
//! broker: the whole journey, each step on another replica than the last.
#![allow(clippy::unwrap_used)]

mod common;
use common::{Options, Stack, admin, customer, eventually, scalar, staff};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const STORE: &str = "LYON-PRESQUILE";

async fn level(s: &Stack, replica: usize, sku: &str, field: &str) -> i64 {
    let r = s
        .inv(
            replica,
            Method::GET,
            &format!("/v1/availability?store_id={STORE}&sku={sku}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["items"][0][field].as_i64().unwrap()
}

#[tokio::test]
async fn the_whole_journey_runs_through_alternating_replicas_of_every_service() {
    let s = Stack::spawn_with(Options {
        inventory: 2,
        orders: 2,
        notifications: 2,
        ..Options::default()
    })
    .await;
    // Every replica serves the same VAPID key (generated once, kept in the database).
    let key = s.vapid_public_key().await;
    let other: Value = s
        .notif(1, Method::GET, "/v1/webpush/vapid-public-key", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["public_key"], key);

    s.store(STORE, "Lyon Presqu'île").await;
    // Stock counted through replica 1; both replicas answer from their view.
    let r = s
        .inv(
            1,
            Method::PUT,
            &format!("/v1/stores/{STORE}/stock/SKU-9"),
            Some(&admin()),
            Some(json!({"on_hand": 12})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    eventually("both inventory replicas see 12", || async {
        level(&s, 0, "SKU-9", "available").await == 12
            && level(&s, 1, "SKU-9", "available").await == 12
    })
    .await;

    // Ten customers, each with a browser registered through one replica or the other.
    let customers: Vec<String> = (0..10).map(|n| format!("cust-{n}")).collect();
    let mut subs = HashMap::new();
    for (n, who) in customers.iter().enumerate() {
        let sub = s.webpush.subscribe();
        let r = s
            .notif(
                n,
                Method::PUT,
                &format!("/v1/customers/{who}/devices/{}", uuid::Uuid::now_v7()),
                Some(&customer(who)),
                Some(json!({"kind": "webpush", "endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        subs.insert(who.clone(), sub.endpoint);
    }

    // Orders placed on alternating replicas, picked and readied on the others, collected
    // on yet another.
    let mut orders = Vec::new();
    for (n, who) in customers.iter().enumerate() {
        orders.push(
            s.place_on(
                n,
                who,
                STORE,
                &[("SKU-9", 1)],
                if n % 2 == 0 { "fr-FR" } else { "en" },
            )
            .await,
        );
    }
    for id in &orders {
        s.wait_status(id, "confirmed").await;
    }
    let mut codes = Vec::new();
    for (n, (who, id)) in customers.iter().zip(&orders).enumerate() {
        codes.push(s.make_ready_on(n + 1, id, STORE, who).await);
    }
    // Exactly one ready push per order, to the right browser, although both notifications
    // replicas consume and both workers send.
    let is_ready = |p: &notifications::receivers::Received| {
        p.data.get("event_type").map(String::as_str) == Some("ready_for_pickup")
    };
    for _ in 0..200 {
        if s.webpush.received().iter().filter(|p| is_ready(p)).count() >= orders.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.webpush.violations().is_empty(),
        "{:?}",
        s.webpush.violations()
    );
    let ready: Vec<_> = s.webpush.received().into_iter().filter(is_ready).collect();
    assert_eq!(ready.len(), orders.len(), "one ready push per order");
    for ((who, id), code) in customers.iter().zip(&orders).zip(&codes) {
        let push = ready.iter().find(|p| p.data["order_id"] == *id).unwrap();
        assert_eq!(push.path_or_token, subs[who]);
        assert!(push.body.contains(code));
    }

    // Collected through the other replica; the stock leaves on every inventory replica.
    for (n, (id, code)) in orders.iter().zip(&codes).enumerate() {
        let r = s
            .ord(
                n,
                Method::POST,
                &format!("/v1/orders/{id}/collect"),
                Some(&staff(&[STORE])),
                Some(json!({"pickup_code": code})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    eventually("both inventory replicas see the stock gone", || async {
        level(&s, 0, "SKU-9", "on_hand").await == 2 && level(&s, 1, "SKU-9", "on_hand").await == 2
    })
    .await;
    let sql =
        "SELECT count(*) FROM stock_levels WHERE sku = 'SKU-9' AND on_hand = 2 AND reserved = 0";
    assert_eq!(scalar(&s.inventory_db, sql).await, 1);
    let reservations = scalar(
        &s.inventory_db,
        "SELECT count(*) FROM reservations WHERE status = 'committed'",
    )
    .await;
    assert_eq!(
        reservations, 10,
        "one reservation per order, committed once"
    );
    // Each order has one history row per transition.
    let rows = scalar(&s.orders_db, "SELECT count(*) FROM order_history").await;
    assert_eq!(
        rows,
        10 * 5,
        "pending, confirmed, picking, ready, collected"
    );
    // The delivery log is the same from either replica.
    for replica in 0..2 {
        let log: Value = s
            .notif(
                replica,
                Method::GET,
                "/v1/notifications?status=sent&limit=500",
                Some(&admin()),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            log["items"].as_array().unwrap().len(),
            20,
            "confirmed and ready, per order"
        );
    }
    s.stop().await;
}
