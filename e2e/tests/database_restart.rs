//! A PostgreSQL restart in the middle of the flow: every service reconnects by itself,
//! the outboxes drain, and nothing accepted is lost. Stops the machine's one database
//! server, so `deploy/local.sh test` runs it alone.
#![allow(clippy::unwrap_used)]

mod common;
use common::{Stack, customer, eventually};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

const STORE: &str = "PAR-LOUVRE";

async fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .unwrap();
    let arg = action.to_owned();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", &arg])
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Places an order, retrying while the database is away (same `Idempotency-Key`: one
/// order however many tries).
async fn place_retrying(s: &Stack, who: &str) -> String {
    let key = uuid::Uuid::now_v7().to_string();
    for _ in 0..200 {
        let r = s
            .http
            .post(format!("{}/v1/orders", s.orders[0].base))
            .bearer_auth(customer(who))
            .header("Idempotency-Key", &key)
            .json(&json!({"store_id": STORE, "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}],
                          "contact": {"locale": "en"}}))
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == StatusCode::ACCEPTED
        {
            let v: serde_json::Value = r.json().await.unwrap();
            return v["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the order was never taken");
}

#[tokio::test]
async fn database_restart_mid_flow_loses_no_order_and_every_service_recovers() {
    let s = Stack::spawn().await;
    s.store(STORE, "Paris Louvre").await;
    s.count(STORE, "SKU-1", 100).await;
    s.register_webpush("alice", Some("en")).await;
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(place_retrying(&s, "alice").await);
    }
    pg_ctl("stop").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // While it is away, readiness says so.
    let r = s
        .http
        .get(format!("{}/health/ready", s.orders[0].base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    pg_ctl("start").await;
    for _ in 0..5 {
        orders.push(place_retrying(&s, "alice").await);
    }
    for base in s
        .inventory
        .iter()
        .chain(&s.orders)
        .chain(&s.notifications)
        .map(|i| i.base.clone())
    {
        eventually(&format!("{base} is ready again"), || async {
            s.http
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
    }
    for id in &orders {
        s.wait_status(id, "confirmed").await;
    }
    // The push side recovered too: one confirmed push per order.
    let pushes = s
        .webpush
        .wait_for(orders.len(), Duration::from_secs(30))
        .await;
    for id in &orders {
        assert_eq!(
            pushes.iter().filter(|p| p.data["order_id"] == *id).count(),
            1,
            "order {id}"
        );
    }
    let r = s
        .inv(
            0,
            Method::GET,
            &format!("/v1/availability?store_id={STORE}&sku=SKU-1"),
            None,
            None,
        )
        .await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["items"][0]["reserved"], 10);
    s.stop().await;
}
