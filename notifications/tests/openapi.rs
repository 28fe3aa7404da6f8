//! The committed `notifications/openapi.json` is what the code generates.
#![allow(clippy::unwrap_used)]

#[test]
fn the_committed_openapi_document_matches_the_code() {
    shared::testing::assert_openapi_current(
        &notifications::api::openapi(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"),
        "notifications",
    )
    .unwrap();
}

#[test]
fn every_notifications_endpoint_of_the_contract_is_documented() {
    let doc = serde_json::to_value(notifications::api::openapi()).unwrap();
    for (path, method) in [
        ("/v1/webpush/vapid-public-key", "get"),
        ("/v1/customers/{customer_id}/devices/{device_id}", "put"),
        ("/v1/customers/{customer_id}/devices/{device_id}", "delete"),
        ("/v1/customers/{customer_id}/devices", "get"),
        ("/v1/customers/{customer_id}/stock-alerts", "post"),
        ("/v1/customers/{customer_id}/stock-alerts", "get"),
        ("/v1/customers/{customer_id}/stock-alerts/{id}", "delete"),
        ("/v1/notifications", "get"),
    ] {
        assert!(
            doc["paths"][path].get(method).is_some(),
            "{method} {path} is not documented"
        );
    }
}
