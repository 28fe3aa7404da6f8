//! A broker restart in the middle of a burst of orders loses none: every order ends
//! confirmed or rejected, and stock went to exactly what was confirmed. Runs alone (CI
//! runs `test(broker_restart)` after everything else): it stops the machine's one broker.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::StatusCode;
use std::time::Duration;

#[tokio::test]
async fn broker_restart_in_a_burst_of_orders_loses_none() {
    let s = std::sync::Arc::new(spawn().await);
    s.store("S1").await;
    s.stock("S1", "A", 40).await;
    let burst = |from: usize, to: usize| {
        let s = s.clone();
        tokio::spawn(async move {
            for i in from..to {
                let r = s
                    .post(
                        "/v1/orders",
                        &customer(&format!("c{i}")),
                        order_body("S1", &[("A", 1)], None),
                    )
                    .await;
                assert_eq!(r.status(), StatusCode::ACCEPTED);
            }
        })
    };
    let first = burst(0, 30);
    tokio::time::sleep(Duration::from_millis(150)).await;
    shared::testing::rabbitmqctl(&["stop_app"]).await.unwrap();
    // Orders keep being taken while the broker is away (they wait in the outbox).
    burst(30, 45).await.unwrap();
    first.await.unwrap();
    shared::testing::rabbitmqctl(&["start_app"]).await.unwrap();
    burst(45, 60).await.unwrap();
    let mut pending = i64::MAX;
    for _ in 0..240 {
        pending = s
            .orders_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .await;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(pending, 0, "orders left pending after the broker came back");
    assert_eq!(s.orders_scalar("SELECT count(*) FROM orders").await, 60);
    assert_eq!(
        s.orders_scalar("SELECT count(*) FROM orders WHERE status = 'confirmed'")
            .await,
        40
    );
    assert_eq!(
        s.orders_scalar("SELECT count(*) FROM orders WHERE status = 'rejected'")
            .await,
        20
    );
    // One reservation per confirmed order, none for the rejected.
    assert_eq!(
        s.inventory_scalar("SELECT count(*) FROM reservations WHERE order_id IS NOT NULL")
            .await,
        40
    );
    assert_eq!(s.level("S1", "A").await, (40, 40));
    s.assert_inventory_invariants().await;
    std::sync::Arc::into_inner(s).unwrap().stop().await;
}
