//! The core promise under load: no channel ever reserves more than there is.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::auth::Role;
use std::sync::Arc;

/// A web, app or POS caller, by client number.
fn caller(n: usize) -> (String, &'static str) {
    match n % 3 {
        0 => (customer(&format!("web-{n}")), "web"),
        1 => (customer(&format!("app-{n}")), "app"),
        _ => (token(&format!("till-{n}"), Role::Staff, &["S1"]), "pos"),
    }
}

async fn reserve_as(app: &TestApp, n: usize, lines: Value) -> StatusCode {
    let (token, channel) = caller(n);
    app.post(
        "/v1/reservations",
        &token,
        json!({"store_id": "S1", "lines": lines, "channel": channel,
                    "reference": format!("cart-{n}"), "ttl_seconds": 600}),
    )
    .await
    .status()
}

#[tokio::test]
async fn sixty_four_clients_on_one_hot_sku_get_exactly_the_stock_there_is() {
    let app = Arc::new(spawn_app_with_pool(16).await);
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "HOT", 100).await;
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut won = 0;
                for _ in 0..4 {
                    match reserve_as(&app, n, json!([{"sku": "HOT", "quantity": 1}])).await {
                        StatusCode::CREATED => won += 1,
                        StatusCode::CONFLICT => {}
                        other => panic!("unexpected {other}"),
                    }
                }
                won
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap();
    }
    assert_eq!(won, 100, "256 attempts on 100 units");
    let item = app.availability("S1", "HOT").await;
    assert_eq!(
        (item["reserved"].as_i64(), item["available"].as_i64()),
        (Some(100), Some(0))
    );
    app.assert_invariants().await;
    stop(app).await;
}

#[tokio::test]
async fn sixty_four_clients_on_many_skus_with_multi_line_carts_never_oversell_or_deadlock() {
    let app = Arc::new(spawn_app_with_pool(16).await);
    app.store("S1", 48.85, 2.35).await;
    for k in 0..8 {
        app.stock("S1", &format!("K{k}"), 40).await;
    }
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut won = [0i64; 8];
                for round in 0..5 {
                    // Carts of three SKUs in varying order, so rows are asked for in every order.
                    let ks = [(n + round) % 8, (n * 3 + 1) % 8, (n * 5 + round + 2) % 8];
                    let lines: Vec<Value> = ks
                        .iter()
                        .map(|k| json!({"sku": format!("K{k}"), "quantity": 1}))
                        .collect();
                    match reserve_as(&app, n, Value::Array(lines)).await {
                        StatusCode::CREATED => {
                            for k in ks {
                                won[k] += 1;
                            }
                        }
                        StatusCode::CONFLICT => {}
                        other => panic!("unexpected {other}"),
                    }
                }
                won
            })
        })
        .collect();
    let mut won = [0i64; 8];
    for t in tasks {
        for (k, w) in t.await.unwrap().into_iter().enumerate() {
            won[k] += w;
        }
    }
    for (k, units) in won.iter().enumerate() {
        let item = app.availability("S1", &format!("K{k}")).await;
        assert_eq!(item["reserved"].as_i64(), Some(*units), "K{k}");
        assert!(*units <= 40, "K{k} oversold: {units}");
    }
    app.assert_invariants().await;
    stop(app).await;
}

#[tokio::test]
async fn concurrent_carts_naming_one_sku_twice_count_both_lines() {
    let app = Arc::new(spawn_app_with_pool(16).await);
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 63).await;
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                reserve_as(
                    &app,
                    n,
                    json!([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}]),
                )
                .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::CREATED {
            won += 1;
        }
    }
    assert_eq!(won, 31, "63 units hold 31 carts of two");
    assert_eq!(app.availability("S1", "A").await["reserved"], 62);
    app.assert_invariants().await;
    stop(app).await;
}

#[tokio::test]
async fn reserving_releasing_and_selling_at_once_keeps_every_invariant() {
    let app = Arc::new(spawn_app_with_pool(16).await);
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 200).await;
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                for i in 0..6 {
                    let (token, _) = caller(n);
                    if n % 8 == 7 && i % 2 == 0 {
                        let r = app.post("/v1/stores/S1/sales", &staff(&["S1"]),
                                         json!({"lines": [{"sku": "A", "quantity": 1}], "reference": format!("t-{n}-{i}")})).await;
                        assert_eq!(r.status(), StatusCode::OK);
                        continue;
                    }
                    let r = app.post("/v1/reservations", &token,
                                     json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 2}], "channel": "web",
                                            "reference": format!("c-{n}-{i}"), "ttl_seconds": 600})).await;
                    if r.status() == StatusCode::CREATED && i % 2 == 1 {
                        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                        let r = app.post(&format!("/v1/reservations/{id}/release"), &token, json!({})).await;
                        assert_eq!(r.status(), StatusCode::OK);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    app.assert_invariants().await;
    let over = app
        .scalar("SELECT count(*) FROM stock_levels WHERE reserved > on_hand")
        .await;
    if over > 0 {
        // Only a POS sale may leave less on hand than reserved, and then it says so.
        assert!(app.scalar("SELECT count(*) FROM reservation_risks").await > 0);
    }
    stop(app).await;
}

async fn stop(app: Arc<TestApp>) {
    Arc::into_inner(app)
        .expect("every client is done")
        .stop()
        .await;
}
