//! Reservations: all or nothing, idempotent, committed, released and expired once.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn a_reservation_holds_stock_until_it_is_committed() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    let r = app
        .reserve(&customer("c1"), "S1", json!([{"sku": "A", "quantity": 3}]))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let res: Value = r.json().await.unwrap();
    assert_eq!(res["status"], "active");
    assert_eq!(res["lines"], json!([{"sku": "A", "quantity": 3}]));
    let item = app.availability("S1", "A").await;
    assert_eq!(
        (
            item["on_hand"].as_i64(),
            item["reserved"].as_i64(),
            item["available"].as_i64()
        ),
        (Some(10), Some(3), Some(7))
    );

    let id = res["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/reservations/{id}/commit"),
            &staff(&["S1"]),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let item = app.availability("S1", "A").await;
    assert_eq!(
        (item["on_hand"].as_i64(), item["reserved"].as_i64()),
        (Some(7), Some(0))
    );
    let again = app
        .post(
            &format!("/v1/reservations/{id}/commit"),
            &staff(&["S1"]),
            json!({}),
        )
        .await;
    problem(again, StatusCode::CONFLICT).await;
    let seen: Value = app
        .get(&format!("/v1/reservations/{id}"), Some(&customer("c1")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["status"], "committed");
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn a_cart_short_on_one_line_reserves_nothing_and_says_which_line() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    app.stock("S1", "B", 1).await;
    let r = app
        .reserve(&customer("c1"), "S1",
                 json!([{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}, {"sku": "Z", "quantity": 1}]))
        .await;
    let body = problem(r, StatusCode::CONFLICT).await;
    assert_eq!(
        body["shortages"],
        json!([{"sku": "B", "requested": 3, "available": 1}, {"sku": "Z", "requested": 1, "available": 0}])
    );
    assert_eq!(app.availability("S1", "A").await["reserved"], 0);
    assert_eq!(app.scalar("SELECT count(*) FROM reservations").await, 0);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn two_lines_naming_one_sku_count_together() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 3).await;
    let r = app
        .reserve(
            &customer("c1"),
            "S1",
            json!([{"sku": "A", "quantity": 2}, {"sku": "A", "quantity": 2}]),
        )
        .await;
    let body = problem(r, StatusCode::CONFLICT).await;
    assert_eq!(
        body["shortages"],
        json!([{"sku": "A", "requested": 4, "available": 3}])
    );
    let r = app
        .reserve(
            &customer("c1"),
            "S1",
            json!([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["lines"], json!([{"sku": "A", "quantity": 3}]));
    assert_eq!(app.availability("S1", "A").await["available"], 0);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn an_idempotent_retry_replays_the_first_reservation_and_changes_nothing() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    let body = json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 2}], "channel": "app",
                      "reference": "cart-9", "ttl_seconds": 600});
    let first = app
        .post_keyed("/v1/reservations", &customer("c1"), "key-1", body.clone())
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let second = app
        .post_keyed("/v1/reservations", &customer("c1"), "key-1", body.clone())
        .await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(app.availability("S1", "A").await["reserved"], 2);
    assert_eq!(app.scalar("SELECT count(*) FROM reservations").await, 1);

    let mut other = body.clone();
    other["lines"][0]["quantity"] = json!(3);
    let r = app
        .post_keyed("/v1/reservations", &customer("c1"), "key-1", other)
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    // Another caller's same key is its own.
    let r = app
        .post_keyed("/v1/reservations", &customer("c2"), "key-1", body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.availability("S1", "A").await["reserved"], 4);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn a_released_reservation_returns_its_stock_once() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 5).await;
    let res: Value = app
        .reserve(&customer("c1"), "S1", json!([{"sku": "A", "quantity": 5}]))
        .await
        .json()
        .await
        .unwrap();
    let id = res["id"].as_str().unwrap();
    // Another customer can neither see nor release it.
    let r = app
        .get(&format!("/v1/reservations/{id}"), Some(&customer("c2")))
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = app
        .post(
            &format!("/v1/reservations/{id}/release"),
            &customer("c2"),
            json!({}),
        )
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    // A customer cannot commit.
    let r = app
        .post(
            &format!("/v1/reservations/{id}/commit"),
            &customer("c1"),
            json!({}),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = app
        .post(
            &format!("/v1/reservations/{id}/release"),
            &customer("c1"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            &format!("/v1/reservations/{id}/release"),
            &customer("c1"),
            json!({}),
        )
        .await;
    problem(r, StatusCode::CONFLICT).await;
    assert_eq!(app.availability("S1", "A").await["available"], 5);
    app.assert_invariants().await;
    app.stop().await;
}

#[tokio::test]
async fn an_expired_reservation_returns_stock_once_with_two_sweepers_running() {
    let first = spawn_app().await;
    let second = spawn_on(&first.database_url, &first.prefix, 4).await;
    first.store("S1", 48.85, 2.35).await;
    first.stock("S1", "A", 50).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = first
            .post(
                "/v1/reservations",
                &customer("c1"),
                json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 2}], "channel": "web",
                         "reference": format!("cart-{i}"), "ttl_seconds": 1}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut expired = 0;
    for _ in 0..100 {
        expired = first
            .scalar("SELECT count(*) FROM reservations WHERE status = 'expired'")
            .await;
        if expired == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(expired, 20);
    assert_eq!(
        first
            .scalar("SELECT count(*) FROM movements WHERE kind = 'expire'")
            .await,
        20
    );
    // The other replica learns of the sweep through the published events.
    let mut item = Value::Null;
    for _ in 0..50 {
        item = second.availability("S1", "A").await;
        if item["reserved"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (item["reserved"].as_i64(), item["available"].as_i64()),
        (Some(0), Some(50))
    );
    let r = first
        .post(
            &format!("/v1/reservations/{}/release", ids[0]),
            &customer("c1"),
            json!({}),
        )
        .await;
    problem(r, StatusCode::CONFLICT).await;
    first.assert_invariants().await;
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn staff_of_one_store_cannot_touch_another() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.store("S2", 48.86, 2.36).await;
    app.stock("S2", "A", 5).await;
    let other = staff(&["S1"]);
    let r = app
        .put("/v1/stores/S2/stock/A", &other, json!({"on_hand": 1}))
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = app
        .post(
            "/v1/stores/S2/stock/A/adjustments",
            &other,
            json!({"delta": -1, "reason": "x"}),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = app
        .post(
            "/v1/stores/S2/sales",
            &other,
            json!({"lines": [{"sku": "A", "quantity": 1}], "reference": "t"}),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = app
        .post(
            "/v1/stock/bulk",
            &other,
            json!({"items": [{"store_id": "S2", "sku": "A", "kind": "receipt", "quantity": 1}]}),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = app
        .reserve(&other, "S2", json!([{"sku": "A", "quantity": 1}]))
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let r = app
        .get("/v1/stores/S2/stock/A/movements", Some(&other))
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    let res: Value = app
        .reserve(&customer("c1"), "S2", json!([{"sku": "A", "quantity": 1}]))
        .await
        .json()
        .await
        .unwrap();
    let id = res["id"].as_str().unwrap();
    let r = app
        .post(&format!("/v1/reservations/{id}/commit"), &other, json!({}))
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    assert_eq!(app.availability("S2", "A").await["on_hand"], 5);
    assert_eq!(app.availability("S2", "A").await["reserved"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_while_the_first_request_is_still_running_is_a_conflict() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    // Stand in for a first request still in flight: hold its key's lock in an open transaction.
    let first = app.db.begin().await.unwrap();
    first
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT * FROM idem_begin('customer:c1', 'key-running', 'h')".to_owned(),
        ))
        .await
        .unwrap();
    let body = json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 1}], "channel": "web",
                      "reference": "cart-1", "ttl_seconds": 60});
    let r = app
        .post_keyed(
            "/v1/reservations",
            &customer("c1"),
            "key-running",
            body.clone(),
        )
        .await;
    problem(r, StatusCode::CONFLICT).await;
    assert_eq!(app.availability("S1", "A").await["reserved"], 0);
    first.rollback().await.unwrap();
    let r = app
        .post_keyed("/v1/reservations", &customer("c1"), "key-running", body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_past_its_retention_is_forgotten() {
    use std::time::Duration;
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    let body = json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 1}], "channel": "web",
                      "reference": "cart-1", "ttl_seconds": 60});
    let r = app
        .post_keyed("/v1/reservations", &customer("c1"), "old-key", body.clone())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let fresh = shared::idempotency::purge(&app.db, Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(fresh, 0, "a young key is kept");
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        "UPDATE idempotency_keys SET created_at = now() - interval '2 days'",
    )
    .await
    .unwrap();
    let old = shared::idempotency::purge(&app.db, Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(old, 1);
    let r = app
        .post_keyed("/v1/reservations", &customer("c1"), "old-key", body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.availability("S1", "A").await["reserved"], 2);
    app.stop().await;
}
