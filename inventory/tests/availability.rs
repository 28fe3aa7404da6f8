//! Availability reads: single, batch, nearby, and the live stream across replicas.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn a_batch_lists_every_pair_asked_and_unknown_pairs_as_out_of_stock() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.store("S2", 48.86, 2.36).await;
    app.stock("S1", "A", 10).await;
    app.stock("S2", "B", 2).await;
    let r = app
        .get(
            "/v1/availability?store_id=S1&store_id=S2&store_id=S9&sku=A&sku=B",
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    let seen: Vec<(&str, &str, i64, &str)> = items
        .iter()
        .map(|i| {
            (
                i["store_id"].as_str().unwrap(),
                i["sku"].as_str().unwrap(),
                i["available"].as_i64().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("S1", "A", 10, "in_stock"),
            ("S1", "B", 0, "out_of_stock"),
            ("S2", "A", 0, "out_of_stock"),
            ("S2", "B", 2, "low_stock"),
            ("S9", "A", 0, "out_of_stock"),
            ("S9", "B", 0, "out_of_stock"),
        ]
    );
    assert!(items[0]["updated_at"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn a_batch_of_one_hundred_stores_by_one_hundred_skus_is_served() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    let stores: String = (0..100).map(|i| format!("store_id=S{i}&")).collect();
    let skus: String = (0..100).map(|i| format!("sku=K{i}&")).collect();
    let r = app
        .get(&format!("/v1/availability?{stores}{skus}"), None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 10_000);
    let r = app
        .get(
            &format!("/v1/availability?{stores}store_id=S100&sku=A"),
            None,
        )
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    app.stop().await;
}

#[tokio::test]
async fn nearby_lists_pickup_stores_within_the_radius_holding_the_quantity_nearest_first() {
    let app = spawn_app().await;
    // Around Paris: Louvre, Bastille (3 km), Versailles (~17 km), Lyon (far).
    app.store("LOUVRE", 48.8606, 2.3376).await;
    app.store("BASTILLE", 48.8532, 2.3692).await;
    app.store("VERSAILLES", 48.8049, 2.1204).await;
    app.store("LYON", 45.7640, 4.8357).await;
    let r = app.put("/v1/stores/NOPICKUP", &admin(), json!({"name": "Depot", "latitude": 48.86, "longitude": 2.34,
        "timezone": "Europe/Paris", "pickup_enabled": false, "low_stock_threshold": 2, "pickup_window_hours": 72})).await;
    assert_eq!(r.status(), StatusCode::OK);
    for s in ["LOUVRE", "BASTILLE", "VERSAILLES", "LYON", "NOPICKUP"] {
        app.stock(s, "A", 5).await;
    }
    app.stock("LOUVRE", "A", 1).await;
    let r = app
        .get(
            "/v1/availability/nearby?sku=A&lat=48.8566&lon=2.3522&radius_km=25&quantity=2",
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let names: Vec<&str> = body["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store_id"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["BASTILLE", "VERSAILLES"]);
    let d = body["stores"][0]["distance_km"].as_f64().unwrap();
    assert!(d > 1.0 && d < 2.5, "{d}");
    assert_eq!(body["stores"][0]["available"], 5);
    app.stop().await;
}

/// Reads SSE frames until one `availability` event arrives.
async fn next_availability(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
) -> Value {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if frame.starts_with("event: availability") {
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                return serde_json::from_str(data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn a_stream_client_sees_a_change_made_through_another_instance() {
    let first = spawn_app().await;
    let second = spawn_on(&first.database_url, &first.prefix, 4).await;
    first.store("S1", 48.85, 2.35).await;
    let r = second
        .get("/v1/availability/stream?store_id=S1&sku=A", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    // A change to another SKU is not sent; the one asked for is.
    first.stock("S1", "OTHER", 3).await;
    first.stock("S1", "A", 7).await;
    let item = next_availability(&mut stream, &mut buf).await;
    assert_eq!(
        (
            item["store_id"].as_str(),
            item["sku"].as_str(),
            item["on_hand"].as_i64(),
            item["available"].as_i64()
        ),
        (Some("S1"), Some("A"), Some(7), Some(7))
    );
    first
        .reserve(&customer("c1"), "S1", json!([{"sku": "A", "quantity": 6}]))
        .await;
    let item = next_availability(&mut stream, &mut buf).await;
    assert_eq!(
        (
            item["reserved"].as_i64(),
            item["available"].as_i64(),
            item["status"].as_str()
        ),
        (Some(6), Some(1), Some("low_stock"))
    );
    // And the other replica's cached read follows.
    assert_eq!(second.availability("S1", "A").await["available"], 1);
    drop(stream);
    second.stop().await;
    first.stop().await;
}
