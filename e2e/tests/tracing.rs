//! One customer action is one trace: the `traceparent` of a checkout request follows the
//! order through the orders outbox, RabbitMQ, inventory's reservation and its answer.
#![allow(clippy::unwrap_used)]

mod common;
use common::{Stack, customer};
use serde_json::json;
use shared::testing::Probe;
use std::time::Duration;

#[tokio::test]
async fn the_checkouts_traceparent_is_carried_by_every_event_it_causes() {
    let s = Stack::spawn().await;
    s.store("S1", "Store one").await;
    s.count("S1", "SKU-1", 3).await;
    let events = Probe::open(&s.prefix, "#").await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = s
        .http
        .post(format!("{}/v1/orders", s.orders[0].base))
        .bearer_auth(customer("alice"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"store_id": "S1", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}],
                      "contact": {"locale": "en"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answered = r.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")),
        "{answered}"
    );
    let order = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_status(&order, "confirmed").await;

    let seen = events.collect_traced(Duration::from_secs(2)).await.unwrap();
    let of_order: Vec<_> = seen
        .iter()
        .filter(|(e, _)| e["data"]["order_id"] == order.as_str())
        .collect();
    let types: Vec<&str> = of_order
        .iter()
        .map(|(e, _)| e["type"].as_str().unwrap())
        .collect();
    for wanted in [
        "orders.order.placed",
        "inventory.reservation.confirmed",
        "orders.order.confirmed",
    ] {
        assert!(types.contains(&wanted), "{wanted} missing from {types:?}");
    }
    for (event, trace) in &of_order {
        let trace = trace.as_deref().unwrap_or_default();
        assert!(
            trace.starts_with(&format!("00-{trace_id}-")) && trace != answered,
            "{} carries {trace:?}",
            event["type"]
        );
    }
    // The stock change the reservation made is part of the same trace too.
    let stock = seen
        .iter()
        .find(|(e, t)| {
            e["type"] == "inventory.stock.changed" && e["data"]["reserved"] == 1 && t.is_some()
        })
        .unwrap();
    assert!(stock.1.as_deref().unwrap().contains(trace_id));
    s.stop().await;
}
