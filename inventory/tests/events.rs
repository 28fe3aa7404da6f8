//! What the service tells the others: every level change as `inventory.stock.changed`.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_stock_change_reaches_a_queue_bound_to_stock_changed_with_the_envelope_of_events_md() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    let queue = shared_queue(&app, "inventory.stock.changed").await;
    app.stock("S1", "A", 10).await;
    app.reserve(&customer("c1"), "S1", json!([{"sku": "A", "quantity": 9}]))
        .await;
    let first = next_event(&queue).await;
    let second = next_event(&queue).await;
    for (event, revision) in [(&first, 1), (&second, 2)] {
        assert_eq!(event["type"], "inventory.stock.changed");
        assert_eq!(event["version"], 1);
        assert_eq!(event["source"], "inventory");
        assert!(
            event["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()
                .get_version_num()
                == 7
        );
        assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
        assert!(event["correlation_id"].is_string());
        assert!(event.get("causation_id").is_some());
        assert_eq!(event["data"]["revision"], revision);
    }
    assert_eq!(
        (
            first["data"]["on_hand"].as_i64(),
            first["data"]["available"].as_i64(),
            first["data"]["status"].as_str()
        ),
        (Some(10), Some(10), Some("in_stock"))
    );
    assert_eq!(
        (
            second["data"]["reserved"].as_i64(),
            second["data"]["available"].as_i64(),
            second["data"]["status"].as_str()
        ),
        (Some(9), Some(1), Some("low_stock"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_reservation_for_an_order_publishes_its_confirmation_and_its_release() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    let queue = shared_queue(&app, "inventory.reservation.*").await;
    let order_id = uuid::Uuid::now_v7();
    let res: serde_json::Value = app
        .post(
            "/v1/reservations",
            &token("orders", shared::auth::Role::Service, &[]),
            json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 2}], "channel": "order",
                   "reference": order_id.to_string(), "ttl_seconds": 600, "order_id": order_id}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = res["id"].as_str().unwrap();
    app.post(
        &format!("/v1/reservations/{id}/release"),
        &token("orders", shared::auth::Role::Service, &[]),
        json!({}),
    )
    .await;
    let confirmed = next_event(&queue).await;
    assert_eq!(confirmed["type"], "inventory.reservation.confirmed");
    assert_eq!(confirmed["data"]["reservation_id"], id);
    assert_eq!(confirmed["data"]["order_id"], order_id.to_string());
    assert_eq!(
        confirmed["data"]["lines"],
        json!([{"sku": "A", "quantity": 2}])
    );
    let released = next_event(&queue).await;
    assert_eq!(released["type"], "inventory.reservation.released");
    assert_eq!(released["data"]["store_id"], "S1");
    app.stop().await;
}

#[tokio::test]
async fn a_change_made_over_http_carries_the_requests_trace_on_its_event() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    let queue = shared_queue(&app, "inventory.stock.changed").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = app
        .http
        .put(app.url("/v1/stores/S1/stock/A"))
        .bearer_auth(admin())
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"on_hand": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let answered = r.headers()["traceparent"].to_str().unwrap().to_owned();

    let event = next_delivery(&queue).await;
    let body: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
    assert_eq!(body["data"]["on_hand"], 4);
    let header = event
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent").cloned());
    let header = match header {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no traceparent header on the event: {other:?}"),
    };
    // The request's trace, as the service answered it (the span of its handling).
    assert_eq!(header, answered);
    assert!(header.starts_with(&format!("00-{trace_id}-")));
    app.stop().await;
}
