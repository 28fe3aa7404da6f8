//! A broker restart in the middle of stock changes loses no `inventory.stock.changed`.
//! Runs alone (the CI runs `test(broker_restart)` after everything else): it stops the
//! one broker of the machine.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

async fn probe_channel() -> lapin::Channel {
    for _ in 0..60 {
        if let Ok(conn) = lapin::Connection::connect(
            &shared::testing::amqp_url(),
            lapin::ConnectionProperties::default(),
        )
        .await
        {
            let channel = conn.create_channel().await.unwrap();
            std::mem::forget(conn);
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the broker did not come back");
}

async fn adjust(app: &TestApp, n: usize) {
    for _ in 0..n {
        let r = app
            .post(
                "/v1/stores/S1/stock/A/adjustments",
                &admin(),
                json!({"delta": 1, "reason": "count"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn broker_restart_mid_flow_loses_no_stock_event() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    // A durable quorum probe queue survives the restart, like the services' own queues.
    let queue = format!("{}probe.durable", app.prefix);
    let channel = probe_channel().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            format!("{}clickcollect.events", app.prefix).as_str().into(),
            "inventory.stock.changed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    adjust(&app, 10).await;
    shared::testing::rabbitmqctl(&["stop_app"]).await.unwrap();
    // Writes go on while the broker is away; their events wait in the outbox.
    adjust(&app, 10).await;
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Reads fall back to the database and stay exact.
    assert_eq!(app.availability("S1", "A").await["on_hand"], 20);
    shared::testing::rabbitmqctl(&["start_app"]).await.unwrap();
    shared::testing::rabbitmqctl(&["await_startup"])
        .await
        .unwrap();
    adjust(&app, 10).await;

    let channel = probe_channel().await;
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut unexpected = 0;
    for _ in 0..600 {
        if seen.len() == 30 {
            break;
        }
        match channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => {
                let event: Value = serde_json::from_slice(&m.delivery.data).unwrap();
                let rev = event["data"]["revision"].as_i64().unwrap();
                if (1..=30).contains(&rev) && event["data"]["on_hand"] == rev {
                    *seen.entry(rev).or_default() += 1;
                } else {
                    unexpected += 1;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let lost = 30 - seen.len();
    let duplicated: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("lost {lost}, duplicated {duplicated}, unexpected {unexpected}");
    assert_eq!((lost, unexpected), (0, 0));
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // The service is whole again: ready, and its view live.
    for _ in 0..100 {
        if app.get("/health/ready", None).await.status() == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.get("/health/ready", None).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.availability("S1", "A").await["on_hand"], 30);
    app.stop().await;
}
