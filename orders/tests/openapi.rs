//! The committed `orders/openapi.json` is what the code generates.
#![allow(clippy::unwrap_used)]

#[test]
fn the_committed_openapi_document_matches_the_code() {
    shared::testing::assert_openapi_current(
        &orders::api::openapi(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"),
        "orders",
    )
    .unwrap();
}

#[test]
fn every_orders_endpoint_of_the_contract_is_documented() {
    let doc = serde_json::to_value(orders::api::openapi()).unwrap();
    for path in [
        "/v1/orders",
        "/v1/orders/{id}",
        "/v1/orders/{id}/start-picking",
        "/v1/orders/{id}/ready",
        "/v1/orders/{id}/collect",
        "/v1/orders/{id}/cancel",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
}
