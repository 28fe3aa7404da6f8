//! What every service serves besides its API: health, metrics, OpenAPI and Swagger UI.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn health_metrics_and_docs_are_served_and_the_service_stops_cleanly() {
    let app = spawn_app().await;
    let live = app.get("/health/live", None).await;
    assert_eq!(live.status(), StatusCode::OK);
    let ready: serde_json::Value = app.get("/health/ready", None).await.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], true);
    assert_eq!(ready["checks"]["broker"], true);
    app.store("S1", 48.85, 2.35).await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("clickcollect_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/v1/stores/{store_id}\""));
    // The platform gauges: the outbox backlog, the broker and the database.
    for gauge in [
        "clickcollect_outbox_pending",
        "clickcollect_broker_up{service=\"inventory\"} 1",
        "clickcollect_database_up{service=\"inventory\"} 1",
    ] {
        assert!(metrics.contains(gauge), "{gauge} missing from {metrics}");
    }
    let doc: serde_json::Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert!(doc["paths"]["/v1/reservations"].is_object());
    let docs = app.get("/docs/", None).await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
    let missing = app.get("/v1/nothing-here", None).await;
    problem(missing, StatusCode::NOT_FOUND).await;
    app.stop().await;
}
