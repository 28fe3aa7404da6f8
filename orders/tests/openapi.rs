//! The committed `orders/openapi.json` is what the code generates.
#![allow(clippy::unwrap_used)]

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = shared::http::openapi_json(&orders::api::openapi());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "orders/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p orders --test openapi`"
    );
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
