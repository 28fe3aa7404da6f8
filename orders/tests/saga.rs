//! The click-and-collect journey through both services, over the real broker.
#![allow(clippy::unwrap_used)]

mod common;
use shared::testing::Probe;

use common::*;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn an_order_goes_from_checkout_to_the_counter_and_its_goods_leave_the_store() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 10).await;
    let probe = Probe::open(&s.prefix, "orders.order.*").await.unwrap();
    let id = s.place("alice", "S1", &[("A", 2), ("A", 1)]).await;
    s.wait_status(&id, "confirmed").await;
    assert_eq!(s.level("S1", "A").await, (10, 3));
    let order = s.order(&id, &customer("alice")).await;
    assert!(order["reservation_id"].is_string());
    assert_eq!(order["total_cents"], 750);

    let code = s.make_ready(&id, "S1", "alice").await;
    assert_eq!(code.len(), 6);
    let order = s.order(&id, &customer("alice")).await;
    assert_eq!(order["status"], "ready_for_pickup");
    assert!(order["pickup_deadline"].is_string());
    // Staff never see the code.
    let seen_by_staff = s.order(&id, &staff(&["S1"])).await;
    assert!(seen_by_staff.get("pickup_code").is_none());

    let r = s
        .post(
            &format!("/v1/orders/{id}/collect"),
            &staff(&["S1"]),
            json!({"pickup_code": code}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    eventually("stock left the store", || async {
        s.level("S1", "A").await == (7, 0)
    })
    .await;
    let order = s.order(&id, &customer("alice")).await;
    let steps: Vec<(Value, Value)> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["from"].clone(), h["to"].clone()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (Value::Null, json!("pending")),
            (json!("pending"), json!("confirmed")),
            (json!("confirmed"), json!("picking")),
            (json!("picking"), json!("ready_for_pickup")),
            (json!("ready_for_pickup"), json!("collected")),
        ]
    );
    let events = probe.collect(Duration::from_millis(800)).await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "orders.order.placed",
            "orders.order.confirmed",
            "orders.order.picking",
            "orders.order.ready_for_pickup",
            "orders.order.collected"
        ]
    );
    let ready = &events[3]["data"];
    assert_eq!(ready["pickup_code"], code.as_str());
    assert_eq!(ready["store_name"], "Magasin S1");
    assert_eq!(ready["locale"], "fr-FR");
    assert!(ready["pickup_deadline"].is_string());
    s.assert_inventory_invariants().await;
    s.stop().await;
}

#[tokio::test]
async fn an_order_short_of_stock_is_rejected_naming_the_lines_and_by_how_much() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 1).await;
    s.stock("S1", "B", 5).await;
    let id = s.place("alice", "S1", &[("A", 3), ("B", 2)]).await;
    s.wait_status(&id, "rejected").await;
    let order = s.order(&id, &customer("alice")).await;
    assert_eq!(
        order["shortages"],
        json!([{"sku": "A", "requested": 3, "available": 1}])
    );
    assert_eq!(s.level("S1", "B").await, (5, 0));
    s.stop().await;
}

#[tokio::test]
async fn an_order_adopts_the_checkout_hold_it_names() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 2).await;
    let r = s
        .inv(
            reqwest::Method::POST,
            "/v1/reservations",
            Some(&customer("alice")),
            Some(
                json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 2}], "channel": "web",
                         "reference": "cart-9", "ttl_seconds": 600}),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let hold = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // All the stock is held: only adopting the hold can confirm this order.
    let r = s
        .post(
            "/v1/orders",
            &customer("alice"),
            order_body("S1", &[("A", 2)], Some(&hold)),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_status(&id, "confirmed").await;
    assert_eq!(
        s.order(&id, &customer("alice")).await["reservation_id"],
        hold.as_str()
    );
    assert_eq!(s.level("S1", "A").await, (2, 2));
    assert_eq!(
        s.inventory_scalar("SELECT count(*) FROM reservations")
            .await,
        1
    );
    s.stop().await;
}

#[tokio::test]
async fn cancelling_at_each_state_before_pickup_releases_the_stock() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 10).await;
    let staff_s1 = staff(&["S1"]);
    for stage in ["confirmed", "picking", "ready_for_pickup"] {
        let id = s.place("alice", "S1", &[("A", 2)]).await;
        s.wait_status(&id, "confirmed").await;
        if stage != "confirmed" {
            let r = s
                .post(
                    &format!("/v1/orders/{id}/start-picking"),
                    &staff_s1,
                    json!({}),
                )
                .await;
            assert_eq!(r.status(), StatusCode::OK);
        }
        if stage == "ready_for_pickup" {
            let r = s
                .post(&format!("/v1/orders/{id}/ready"), &staff_s1, json!({}))
                .await;
            assert_eq!(r.status(), StatusCode::OK);
        }
        assert_eq!(s.level("S1", "A").await, (10, 2));
        // The customer cancels the first two, staff the last.
        let who = if stage == "ready_for_pickup" {
            staff_s1.clone()
        } else {
            customer("alice")
        };
        let r = s
            .post(
                &format!("/v1/orders/{id}/cancel"),
                &who,
                json!({"reason": "changed my mind"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{stage}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "cancelled");
        assert_eq!(v["cancel_reason"], "changed my mind");
        eventually("stock released", || async {
            s.level("S1", "A").await == (10, 0)
        })
        .await;
    }
    // Cancelled while still pending: inventory ends up holding nothing either way.
    let id = s.place("alice", "S1", &[("A", 2)]).await;
    let r = s
        .post(
            &format!("/v1/orders/{id}/cancel"),
            &customer("alice"),
            json!({"reason": "oops"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually("nothing held", || async {
        s.level("S1", "A").await == (10, 0)
    })
    .await;
    assert_eq!(
        s.order(&id, &customer("alice")).await["status"],
        "cancelled"
    );
    s.assert_inventory_invariants().await;
    s.stop().await;
}

#[tokio::test]
async fn a_no_show_is_reminded_once_then_expires_once_with_two_sweepers_and_its_stock_returns() {
    let s = spawn_with(2, inventory::config::DEFAULT_ORDER_HOLD_SECONDS).await;
    s.store("S1").await;
    s.stock("S1", "A", 5).await;
    let probe = Probe::open(&s.prefix, "orders.order.*").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let customer_id = format!("c{i}");
        let id = s.place(&customer_id, "S1", &[("A", 1)]).await;
        s.wait_status(&id, "confirmed").await;
        s.make_ready(&id, "S1", &customer_id).await;
        ids.push(id);
    }
    assert_eq!(s.level("S1", "A").await, (5, 4));
    // The deadline comes near (inside the one-hour reminder lead): one reminder each.
    s.orders_db
        .execute_unprepared("UPDATE orders SET pickup_deadline = now() + interval '30 minutes'")
        .await
        .unwrap();
    eventually("reminders sent", || async {
        s.orders_scalar("SELECT count(*) FROM orders WHERE reminder_sent_at IS NOT NULL")
            .await
            == 4
    })
    .await;
    // Then it passes: both replicas' sweepers race for the no-shows.
    s.orders_db
        .execute_unprepared("UPDATE orders SET pickup_deadline = now() - interval '1 second'")
        .await
        .unwrap();
    for id in &ids {
        s.wait_status(id, "expired").await;
    }
    eventually("stock returned", || async {
        s.level("S1", "A").await == (5, 0)
    })
    .await;
    let events = probe.collect(Duration::from_millis(1000)).await.unwrap();
    for id in &ids {
        let of = |t: &str| {
            events
                .iter()
                .filter(|e| e["type"] == t && e["data"]["order_id"] == id.as_str())
                .count()
        };
        assert_eq!(of("orders.order.pickup_reminder"), 1, "{id}");
        assert_eq!(of("orders.order.expired"), 1, "{id}");
        let reminder = events
            .iter()
            .find(|e| {
                e["type"] == "orders.order.pickup_reminder" && e["data"]["order_id"] == id.as_str()
            })
            .unwrap();
        assert!(reminder["data"]["pickup_code"].is_string());
    }
    assert_eq!(
        s.orders_scalar("SELECT count(*) FROM order_history WHERE to_status = 'expired'")
            .await,
        4
    );
    s.assert_inventory_invariants().await;
    s.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_orders_for_twenty_units_confirm_exactly_twenty_units() {
    let s = spawn_with(2, inventory::config::DEFAULT_ORDER_HOLD_SECONDS).await;
    s.store("S1").await;
    s.stock("S1", "A", 20).await;
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let quantity = if i % 5 == 0 { 2 } else { 1 };
            let r = s
                .post_on(
                    i,
                    "/v1/orders",
                    &customer(&format!("c{i}")),
                    order_body("S1", &[("A", quantity)], None),
                )
                .await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            (
                r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                quantity,
            )
        }));
    }
    let placed: Vec<(String, i64)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    eventually("every order answered", || async {
        s.orders_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .await
            == 0
    })
    .await;
    let confirmed_units = s
        .orders_scalar(
            "SELECT coalesce(sum((l->>'quantity')::bigint), 0)::bigint FROM orders, jsonb_array_elements(lines) l
             WHERE status = 'confirmed'",
        )
        .await;
    assert_eq!(placed.len(), 50);
    assert_eq!(confirmed_units, 20);
    assert_eq!(
        s.orders_scalar(
            "SELECT count(*) FROM orders WHERE status NOT IN ('confirmed', 'rejected')"
        )
        .await,
        0
    );
    assert_eq!(s.level("S1", "A").await, (20, 20));
    s.assert_inventory_invariants().await;
    std::sync::Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test]
async fn a_retried_checkout_with_the_same_idempotency_key_creates_one_order() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 5).await;
    let body = order_body("S1", &[("A", 1)], None);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = s
            .http
            .post(format!("{}/v1/orders", s.orders_url))
            .bearer_auth(customer("alice"))
            .header("Idempotency-Key", "checkout-42")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        ids.push(r.json::<Value>().await.unwrap()["id"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let other = s
        .http
        .post(format!("{}/v1/orders", s.orders_url))
        .bearer_auth(customer("alice"))
        .header("Idempotency-Key", "checkout-42")
        .json(&order_body("S1", &[("A", 2)], None))
        .send()
        .await
        .unwrap();
    problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(s.orders_scalar("SELECT count(*) FROM orders").await, 1);
    s.wait_status(ids[0].as_str().unwrap(), "confirmed").await;
    assert_eq!(s.level("S1", "A").await, (5, 1));
    s.stop().await;
}

#[tokio::test]
async fn wrong_pickup_codes_are_refused_and_five_lock_the_order_until_staff_lift_it() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 5).await;
    let id = s.place("alice", "S1", &[("A", 1)]).await;
    s.wait_status(&id, "confirmed").await;
    let code = s.make_ready(&id, "S1", "alice").await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let st = staff(&["S1"]);
    let collect = |c: &str| {
        let body = json!({"pickup_code": c});
        let path = format!("/v1/orders/{id}/collect");
        let st = st.clone();
        let s = &s;
        async move { s.post(&path, &st, body).await }
    };
    for left in (0..5).rev() {
        let p = problem(collect(wrong).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(p["attempts_left"], left);
    }
    // Locked: even the right code is refused now.
    problem(collect(&code).await, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        s.order(&id, &customer("alice")).await["pickup_locked"],
        true
    );
    // Another store's staff can't lift it; this store's can.
    let r = s
        .post(
            &format!("/v1/orders/{id}/unlock-pickup"),
            &staff(&["S2"]),
            json!({}),
        )
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = s
        .post(&format!("/v1/orders/{id}/unlock-pickup"), &st, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = collect(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "collected");
    eventually("goods left", || async {
        s.level("S1", "A").await == (4, 0)
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn every_illegal_transition_is_refused_and_changes_nothing() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 5).await;
    let st = staff(&["S1"]);
    let id = s.place("alice", "S1", &[("A", 1)]).await;
    s.wait_status(&id, "confirmed").await;
    // confirmed: neither ready nor collect.
    for (path, body) in [
        ("ready", json!({})),
        ("collect", json!({"pickup_code": "123456"})),
        ("unlock-pickup", json!({})),
    ] {
        let p = problem(
            s.post(&format!("/v1/orders/{id}/{path}"), &st, body).await,
            StatusCode::CONFLICT,
        )
        .await;
        assert_eq!(p["status"], 409);
    }
    assert_eq!(history_len(&s, &id).await, 2);
    let r = s
        .post(&format!("/v1/orders/{id}/start-picking"), &st, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Twice is once.
    problem(
        s.post(&format!("/v1/orders/{id}/start-picking"), &st, json!({}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    let r = s
        .post(
            &format!("/v1/orders/{id}/cancel"),
            &st,
            json!({"reason": "damaged"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A cancelled order stays cancelled.
    for (path, body) in [
        ("start-picking", json!({})),
        ("ready", json!({})),
        ("collect", json!({"pickup_code": "123456"})),
        ("cancel", json!({"reason": "again"})),
    ] {
        problem(
            s.post(&format!("/v1/orders/{id}/{path}"), &st, body).await,
            StatusCode::CONFLICT,
        )
        .await;
    }
    assert_eq!(history_len(&s, &id).await, 4);
    assert_eq!(
        s.order(&id, &customer("alice")).await["status"],
        "cancelled"
    );
    s.stop().await;
}

#[tokio::test]
async fn customers_see_only_their_orders_and_staff_only_their_stores() {
    let s = spawn().await;
    s.store("S1").await;
    s.store("S2").await;
    s.stock("S1", "A", 5).await;
    let id = s.place("alice", "S1", &[("A", 1)]).await;
    s.wait_status(&id, "confirmed").await;
    // Another customer: 404 on read and cancel, nothing in their list.
    problem(
        s.get(&format!("/v1/orders/{id}"), &customer("bob")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        s.post(
            &format!("/v1/orders/{id}/cancel"),
            &customer("bob"),
            json!({"reason": "x"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let mine: Value = s
        .get("/v1/orders", &customer("bob"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["items"], json!([]));
    problem(
        s.get("/v1/orders?customer_id=alice", &customer("bob"))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // Staff of another store: 404 on the order, 403 on its store's queue.
    let other = staff(&["S2"]);
    problem(
        s.get(&format!("/v1/orders/{id}"), &other).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        s.post(&format!("/v1/orders/{id}/start-picking"), &other, json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        s.get("/v1/orders?store_id=S1", &other).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // Roles: a customer can't run the staff flow; staff can't place orders.
    problem(
        s.post(
            &format!("/v1/orders/{id}/start-picking"),
            &customer("alice"),
            json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    problem(
        s.post(
            "/v1/orders",
            &staff(&["S1"]),
            order_body("S1", &[("A", 1)], None),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // No token, or a bad one.
    let r = s
        .http
        .get(format!("{}/v1/orders/{id}", s.orders_url))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;
    problem(
        s.get(&format!("/v1/orders/{id}"), "not-a-token").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // The owner and the store's staff do see it.
    assert_eq!(s.order(&id, &customer("alice")).await["id"], id.as_str());
    let queue: Value = s
        .get("/v1/orders?store_id=S1&status=confirmed", &staff(&["S1"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["items"][0]["id"], id.as_str());
    assert!(
        s.post(
            &format!("/v1/orders/{id}/cancel"),
            &staff(&["S1"]),
            json!({"reason": "no"})
        )
        .await
        .status()
        .is_success()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_store_queue_lists_oldest_first_in_pages() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 50).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.place(&format!("c{i}"), "S1", &[("A", 1)]).await);
    }
    for id in &ids {
        s.wait_status(id, "confirmed").await;
    }
    let st = staff(&["S1"]);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/orders?store_id=S1&status=confirmed&limit=2&cursor={c}"),
            None => "/v1/orders?store_id=S1&status=confirmed&limit=2".to_owned(),
        };
        let page: Value = s.get(&path, &st).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    problem(
        s.get("/v1/orders?store_id=S1&status=lost", &st).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        s.get("/v1/orders?store_id=S1&limit=0", &st).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn bad_orders_get_their_problem_and_change_nothing() {
    let s = spawn().await;
    s.store("S1").await;
    let alice = customer("alice");
    let cases = [
        json!({"store_id": "S1", "lines": [], "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 0, "unit_price_cents": 1}], "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": -1, "unit_price_cents": 1}], "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": -5}], "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": [{"sku": "A b", "quantity": 1, "unit_price_cents": 1}], "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": (0..10).map(|i| json!({"sku": format!("A{i}"), "quantity": 1_000_000_000, "unit_price_cents": 1_000_000_000})).collect::<Vec<_>>(), "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}], "contact": {"locale": "?"}}),
        json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}], "contact": {"locale": "fr", "email": "nope"}}),
        json!({"store_id": "NOPE", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}], "contact": {"locale": "fr"}}),
    ];
    for body in cases {
        let p = problem(
            s.post("/v1/orders", &alice, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert!(p["errors"].is_array(), "{body}: {p}");
    }
    // Shape errors: missing fields, wrong types, unknown fields, huge numbers.
    for body in [
        json!({"store_id": "S1"}),
        json!({"store_id": "S1", "lines": "A", "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 1e30, "unit_price_cents": 1}], "contact": {"locale": "fr"}}),
        json!({"store_id": "S1", "lines": [], "contact": {"locale": "fr"}, "status": "collected"}),
    ] {
        problem(
            s.post("/v1/orders", &alice, body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let broken = s
        .http
        .post(format!("{}/v1/orders", s.orders_url))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"store_id\":")
        .send()
        .await
        .unwrap();
    problem(broken, StatusCode::BAD_REQUEST).await;
    problem(
        s.get("/v1/orders/not-a-uuid", &alice).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        s.get(&format!("/v1/orders/{}", uuid::Uuid::now_v7()), &alice)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let expired =
        shared::auth::mint_for(SECRET, "alice", shared::auth::Role::Customer, &[], -120).unwrap();
    problem(
        s.get("/v1/orders", &expired).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(s.orders_scalar("SELECT count(*) FROM orders").await, 0);
    assert_eq!(s.orders_scalar("SELECT count(*) FROM outbox").await, 0);
    s.stop().await;
}

#[tokio::test]
async fn an_order_whose_reservation_ends_in_inventory_is_cancelled_with_the_reason() {
    // Order reservations hold 2 s here: the order is forgotten in the store.
    let s = spawn_with(1, 2).await;
    s.store("S1").await;
    s.stock("S1", "A", 5).await;
    let id = s.place("alice", "S1", &[("A", 1)]).await;
    s.wait_status(&id, "confirmed").await;
    s.wait_status(&id, "cancelled").await;
    let order = s.order(&id, &customer("alice")).await;
    assert_eq!(order["cancel_reason"], "reservation_expired");
    assert_eq!(
        order["history"].as_array().unwrap().last().unwrap()["actor"],
        "service:inventory"
    );
    assert_eq!(s.level("S1", "A").await, (5, 0));
    s.stop().await;
}

async fn history_len(s: &Stack, id: &str) -> i64 {
    s.orders_scalar(&format!(
        "SELECT count(*) FROM order_history WHERE order_id = '{id}'"
    ))
    .await
}

#[tokio::test]
async fn inventorys_answer_delivered_three_times_moves_the_order_once() {
    let mut s = spawn().await;
    s.store("S1").await;
    // Inventory is away: the answer is ours to send, as often as a broker might.
    s.inventory.shutdown.cancel();
    s.inventory.task.take().unwrap().await.unwrap().unwrap();
    let probe = Probe::open(&s.prefix, "orders.order.confirmed")
        .await
        .unwrap();
    let id = s.place("alice", "S1", &[("A", 1)]).await;
    let broker = shared::messaging::Broker::connect(
        &shared::testing::amqp_url(),
        shared::messaging::Topology::new(s.prefix.clone()),
    )
    .await
    .unwrap();
    let publisher = shared::messaging::Publisher::new(broker.clone());
    let reservation_id = uuid::Uuid::now_v7();
    let answer = shared::events::Envelope::new(
        shared::events::types::RESERVATION_CONFIRMED,
        "inventory",
        shared::events::ReservationConfirmed {
            reservation_id,
            order_id: Some(id.parse().unwrap()),
            store_id: "S1".into(),
            lines: vec![shared::events::Line {
                sku: "A".into(),
                quantity: 1,
            }],
            expires_at: chrono::Utc::now() + chrono::Duration::days(14),
        },
        None,
    )
    .into_json()
    .unwrap();
    for _ in 0..3 {
        publisher.publish(&answer).await.unwrap();
    }
    // And a second envelope of the same answer (a duplicate from the publisher's side).
    let mut again = answer.clone();
    again.id = uuid::Uuid::now_v7();
    publisher.publish(&again).await.unwrap();
    s.wait_status(&id, "confirmed").await;
    let events = probe.collect(Duration::from_millis(1500)).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(history_len(&s, &id).await, 2);
    assert_eq!(
        s.order(&id, &customer("alice")).await["reservation_id"],
        reservation_id.to_string()
    );
    broker.close().await;
    for o in &mut s.orders {
        o.shutdown.cancel();
        o.task.take().unwrap().await.unwrap().unwrap();
    }
    shared::testing::delete_queues(&s.prefix).await;
}

#[tokio::test]
async fn an_order_that_is_over_refuses_every_step() {
    let s = spawn().await;
    s.store("S1").await;
    s.stock("S1", "A", 1).await;
    let st = staff(&["S1"]);
    let collected = s.place("alice", "S1", &[("A", 1)]).await;
    s.wait_status(&collected, "confirmed").await;
    let code = s.make_ready(&collected, "S1", "alice").await;
    let r = s
        .post(
            &format!("/v1/orders/{collected}/collect"),
            &st,
            json!({"pickup_code": code}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let rejected = s.place("alice", "S1", &[("A", 5)]).await;
    s.wait_status(&rejected, "rejected").await;
    for (id, status) in [(&collected, "collected"), (&rejected, "rejected")] {
        let before = history_len(&s, id).await;
        for (path, body) in [
            ("start-picking", json!({})),
            ("ready", json!({})),
            ("collect", json!({"pickup_code": "123456"})),
            ("unlock-pickup", json!({})),
            ("cancel", json!({"reason": "too late"})),
        ] {
            let p = problem(
                s.post(&format!("/v1/orders/{id}/{path}"), &st, body).await,
                StatusCode::CONFLICT,
            )
            .await;
            assert_eq!(p["order_status"], status, "{path}");
        }
        assert_eq!(history_len(&s, id).await, before);
        assert_eq!(s.order(id, &customer("alice")).await["status"], status);
    }
    s.stop().await;
}
