//! The committed `inventory/openapi.json` is what the code generates.
#![allow(clippy::unwrap_used)]

#[test]
fn the_committed_openapi_document_matches_the_code() {
    shared::testing::assert_openapi_current(
        &inventory::api::openapi(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"),
        "inventory",
    )
    .unwrap();
}

#[test]
fn every_endpoint_of_the_contract_is_documented() {
    let doc = serde_json::to_value(inventory::api::openapi()).unwrap();
    for path in [
        "/v1/stores/{store_id}",
        "/v1/stores",
        "/v1/stores/{store_id}/stock/{sku}",
        "/v1/stores/{store_id}/stock/{sku}/adjustments",
        "/v1/stock/bulk",
        "/v1/stores/{store_id}/stock/{sku}/movements",
        "/v1/availability",
        "/v1/availability/nearby",
        "/v1/availability/stream",
        "/v1/reservations",
        "/v1/reservations/{id}",
        "/v1/reservations/{id}/commit",
        "/v1/reservations/{id}/release",
        "/v1/stores/{store_id}/sales",
        "/v1/stores/{store_id}/returns",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
}
