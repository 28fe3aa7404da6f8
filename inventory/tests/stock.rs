//! Counts, adjustments, bulk imports, POS sales and returns, and the ledger.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_count_sets_on_hand_and_safety_stock_and_the_ledger_adds_up() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    let r = app
        .put(
            "/v1/stores/S1/stock/A",
            &staff(&["S1"]),
            json!({"on_hand": 10, "safety_stock": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let item: Value = r.json().await.unwrap();
    assert_eq!(
        (
            item["on_hand"].as_i64(),
            item["safety_stock"].as_i64(),
            item["available"].as_i64()
        ),
        (Some(10), Some(2), Some(8))
    );
    assert_eq!(item["status"], "in_stock");
    let r = app
        .put(
            "/v1/stores/S1/stock/A",
            &staff(&["S1"]),
            json!({"on_hand": 4}),
        )
        .await;
    let item: Value = r.json().await.unwrap();
    assert_eq!(
        (
            item["on_hand"].as_i64(),
            item["available"].as_i64(),
            item["status"].as_str()
        ),
        (Some(4), Some(2), Some("low_stock"))
    );
    let r = app
        .put(
            "/v1/stores/S1/stock/A",
            &staff(&["S1"]),
            json!({"on_hand": 0}),
        )
        .await;
    let item: Value = r.json().await.unwrap();
    assert_eq!(item["status"], "out_of_stock");
    let moves: Value = app
        .get("/v1/stores/S1/stock/A/movements", Some(&staff(&["S1"])))
        .await
        .json()
        .await
        .unwrap();
    let deltas: Vec<i64> = moves["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["on_hand_delta"].as_i64().unwrap())
        .collect();
    assert_eq!(deltas, vec![-4, -6, 10], "newest first");
    assert!(
        moves["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["kind"] == "count")
    );
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn an_adjustment_below_zero_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 3).await;
    let r = app
        .post(
            "/v1/stores/S1/stock/A/adjustments",
            &staff(&["S1"]),
            json!({"delta": -2, "reason": "damaged"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            "/v1/stores/S1/stock/A/adjustments",
            &staff(&["S1"]),
            json!({"delta": -2, "reason": "damaged"}),
        )
        .await;
    problem(r, StatusCode::CONFLICT).await;
    assert_eq!(app.availability("S1", "A").await["on_hand"], 1);
    assert_eq!(app.scalar("SELECT count(*) FROM movements").await, 2);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn a_bulk_import_of_thousands_of_lines_applies_all_of_them_in_one_call() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.store("S2", 48.80, 2.30).await;
    let items: Vec<Value> = (0..3000)
        .map(|i| json!({"store_id": if i % 2 == 0 { "S1" } else { "S2" }, "sku": format!("SKU-{i:05}"),
                        "kind": "count", "quantity": i % 7}))
        .chain((0..1000).map(|i| json!({"store_id": "S1", "sku": format!("SKU-{:05}", i * 2), "kind": "receipt", "quantity": 5})))
        .collect();
    let r = app
        .post(
            "/v1/stock/bulk",
            &admin(),
            json!({"items": items, "reference": "import-1"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["applied"], 4000);
    assert_eq!(app.scalar("SELECT count(*) FROM stock_levels").await, 3000);
    assert_eq!(app.scalar("SELECT count(*) FROM movements").await, 4000);
    // SKU-00002: count 2 then receipt 5, in the order sent. A bulk import reaches the
    // availability view through its 4,000 stock.changed events, so the view catches up.
    let mut on_hand = Value::Null;
    for _ in 0..200 {
        on_hand = app.availability("S1", "SKU-00002").await["on_hand"].clone();
        if on_hand == 7 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(on_hand, 7);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn a_bulk_import_with_one_bad_line_applies_none_and_names_the_line() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    let r = app
        .post(
            "/v1/stock/bulk",
            &admin(),
            json!({"items": [{"store_id": "S1", "sku": "A", "kind": "receipt", "quantity": 5},
                               {"store_id": "NOPE", "sku": "B", "kind": "receipt", "quantity": 5},
                               {"store_id": "S1", "sku": "C", "kind": "receipt", "quantity": 0}]}),
        )
        .await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["items[2].quantity", "items[1].store_id"]);
    assert_eq!(app.scalar("SELECT count(*) FROM movements").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_pos_sale_is_never_refused_and_flags_the_reservations_it_puts_at_risk() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 5).await;
    let queue = shared_queue(&app, "inventory.reservation.at_risk").await;
    let old: Value = app
        .reserve(&customer("c1"), "S1", json!([{"sku": "A", "quantity": 2}]))
        .await
        .json()
        .await
        .unwrap();
    let new: Value = app
        .reserve(&customer("c2"), "S1", json!([{"sku": "A", "quantity": 3}]))
        .await
        .json()
        .await
        .unwrap();
    // The till sells 4 of the 5 on the shelf although all 5 are promised.
    let r = app
        .post(
            "/v1/stores/S1/sales",
            &staff(&["S1"]),
            json!({"lines": [{"sku": "A", "quantity": 4}], "reference": "ticket-1"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let sold: Value = r.json().await.unwrap();
    assert_eq!(
        (
            sold["items"][0]["on_hand"].as_i64(),
            sold["items"][0]["reserved"].as_i64()
        ),
        (Some(1), Some(5))
    );
    // Short by 4: the newest reservation (3) and then 1 of the older one.
    let mut flagged = Vec::new();
    for _ in 0..2 {
        let event = next_event(&queue).await;
        assert_eq!(event["type"], "inventory.reservation.at_risk");
        flagged.push((
            event["data"]["reservation_id"].as_str().unwrap().to_owned(),
            event["data"]["short_by"].as_i64().unwrap(),
        ));
    }
    flagged.sort();
    let mut expected = vec![
        (old["id"].as_str().unwrap().to_owned(), 1),
        (new["id"].as_str().unwrap().to_owned(), 3),
    ];
    expected.sort();
    assert_eq!(flagged, expected);
    let seen: Value = app
        .get(
            &format!("/v1/reservations/{}", new["id"].as_str().unwrap()),
            Some(&customer("c2")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["at_risk"], true);
    // A return puts goods back on the shelf.
    let r = app
        .post(
            "/v1/stores/S1/returns",
            &staff(&["S1"]),
            json!({"lines": [{"sku": "A", "quantity": 4}], "reference": "ticket-2"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.availability("S1", "A").await["on_hand"], 5);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn the_ledger_pages_newest_first() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    for _ in 0..5 {
        app.post(
            "/v1/stores/S1/stock/A/adjustments",
            &admin(),
            json!({"delta": 1, "reason": "found"}),
        )
        .await;
    }
    let page: Value = app
        .get("/v1/stores/S1/stock/A/movements?limit=2", Some(&admin()))
        .await
        .json()
        .await
        .unwrap();
    let revs: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, vec![5, 4]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page: Value = app
        .get(
            &format!("/v1/stores/S1/stock/A/movements?limit=2&cursor={cursor}"),
            Some(&admin()),
        )
        .await
        .json()
        .await
        .unwrap();
    let revs: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, vec![3, 2]);
    app.stop().await;
}

#[tokio::test]
async fn committing_a_reservation_flags_the_one_it_leaves_short_and_a_growing_shortfall_is_flagged_again()
 {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "K", 5).await;
    let queue = shared_queue(&app, "inventory.reservation.at_risk").await;
    let older: Value = app
        .reserve(&customer("c1"), "S1", json!([{"sku": "K", "quantity": 2}]))
        .await
        .json()
        .await
        .unwrap();
    let newer: Value = app
        .reserve(&customer("c2"), "S1", json!([{"sku": "K", "quantity": 3}]))
        .await
        .json()
        .await
        .unwrap();
    let sale = |q: i64| json!({"lines": [{"sku": "K", "quantity": q}], "reference": "t"});
    // A sale of 1 leaves the newer reservation short by 1; another of 1, short by 2.
    app.post("/v1/stores/S1/sales", &staff(&["S1"]), sale(1))
        .await;
    let first = next_event(&queue).await;
    assert_eq!(
        (
            first["data"]["reservation_id"].as_str(),
            first["data"]["short_by"].as_i64()
        ),
        (newer["id"].as_str(), Some(1))
    );
    app.post("/v1/stores/S1/sales", &staff(&["S1"]), sale(1))
        .await;
    let grown = next_event(&queue).await;
    assert_eq!(
        (
            grown["data"]["reservation_id"].as_str(),
            grown["data"]["short_by"].as_i64()
        ),
        (newer["id"].as_str(), Some(2))
    );
    // Handing the newer one over takes the 3 left: the older one now has nothing.
    let id = newer["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/reservations/{id}/commit"),
            &staff(&["S1"]),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let flagged = next_event(&queue).await;
    assert_eq!(
        (
            flagged["data"]["reservation_id"].as_str(),
            flagged["data"]["short_by"].as_i64()
        ),
        (older["id"].as_str(), Some(2))
    );
    let seen: Value = app
        .get(
            &format!("/v1/reservations/{}", older["id"].as_str().unwrap()),
            Some(&customer("c1")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["at_risk"], true);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn only_a_service_may_reserve_on_behalf_of_an_order() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "K", 5).await;
    let body = json!({"store_id": "S1", "lines": [{"sku": "K", "quantity": 1}], "channel": "order",
                      "reference": "o-1", "ttl_seconds": 60, "order_id": uuid::Uuid::now_v7()});
    let r = app
        .post("/v1/reservations", &customer("c1"), body.clone())
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    assert_eq!(app.availability("S1", "K").await["reserved"], 0);
    let r = app
        .post(
            "/v1/reservations",
            &token("orders", shared::auth::Role::Service, &[]),
            body,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.stop().await;
}
