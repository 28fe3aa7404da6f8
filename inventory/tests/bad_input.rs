//! Bad input on every inventory endpoint (quality.md, "Every endpoint"): malformed JSON,
//! missing fields, wrong types, zero, negative and huge numbers, unknown ids, oversized
//! batches and bodies, bad tokens and wrong roles. Each gets its documented status and a
//! problem+json body, and changes nothing: levels, the ledger, reservations, stores, the
//! outbox, idempotency keys and the public reads are compared after every request.
//!
//! A test sends all its cases and then fails once, listing every case that went wrong, so
//! one mismatch does not hide the next. Cases marked `// BUG:` are where the service
//! answered something other than api.md / quality.md when this file was written.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use shared::auth::{Role, mint_for};

const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;
const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
const CONFLICT: StatusCode = StatusCode::CONFLICT;
const TOO_LARGE: StatusCode = StatusCode::PAYLOAD_TOO_LARGE;
const INVALID: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

/// The largest quantity accepted (api: huge quantities, over 1e9, are 422).
const MAX_QUANTITY: i64 = 1_000_000_000;
/// The body limit of the test configuration (2 MiB).
const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Fourteen days, the longest hold.
const MAX_TTL: i64 = 14 * 24 * 3600;

/// Bodies that are not JSON (400), each with why. They break before their first complete
/// key, so no decoder can object to a field first.
const MALFORMED: [(&str, &[u8]); 6] = [
    ("an object that never ends", b"{"),
    ("unquoted keys", b"{a: 1}"),
    ("single quotes", b"{'a': 1}"),
    ("plain text", b"not json"),
    ("an empty body", b""),
    ("invalid UTF-8", b"{\"\xff\xfe\": 1}"),
];

// ---------------------------------------------------------------------------------------
// Requests, checks and snapshots.
// ---------------------------------------------------------------------------------------

/// One request, built up and sent by [`Checks::refused`].
#[derive(Clone)]
struct Req {
    method: Method,
    path: String,
    authorization: Option<String>,
    body: Option<Vec<u8>>,
    idempotency_key: Option<String>,
}

impl Req {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            authorization: None,
            body: None,
            idempotency_key: None,
        }
    }

    fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }

    fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    /// `Authorization: Bearer <token>`.
    fn token(mut self, token: &str) -> Self {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    /// The raw `Authorization` header, or none.
    fn authorization(mut self, value: Option<&str>) -> Self {
        self.authorization = value.map(str::to_owned);
        self
    }

    fn json(self, body: &Value) -> Self {
        self.raw(serde_json::to_vec(body).unwrap())
    }

    fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn key(mut self, key: &str) -> Self {
        self.idempotency_key = Some(key.to_owned());
        self
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    async fn send(self, app: &TestApp) -> reqwest::Result<Response> {
        let mut builder = app.http.request(self.method, app.url(&self.path));
        if let Some(value) = self.authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        if let Some(key) = self.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(body) = self.body {
            builder = builder.header(CONTENT_TYPE, "application/json").body(body);
        }
        builder.send().await
    }
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    levels: String,
    movements: i64,
    reservations: i64,
    reservation_states: String,
    reservation_lines: i64,
    stores: String,
    outbox: i64,
    idempotency_keys: i64,
    /// The public batch read (served from memory), for every pair the tests touch.
    availability: Value,
    /// The public store list (served from memory).
    store_list: Value,
}

async fn text(app: &TestApp, sql: &str) -> String {
    let row = app
        .db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<Option<String>>(0)
        .unwrap()
        .unwrap_or_default()
}

impl Snapshot {
    async fn take(app: &TestApp) -> Self {
        let availability = app
            .get(
                "/v1/availability?store_id=S1&store_id=S2&store_id=S3&store_id=S9\
                 &sku=A&sku=B&sku=C&sku=Z",
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        let store_list = app.get("/v1/stores", None).await.json().await.unwrap();
        Self {
            levels: text(
                app,
                "SELECT string_agg(concat_ws(':', store_id, sku, on_hand, reserved, safety_stock,
                                             revision, updated_at), ';' ORDER BY store_id, sku)
                 FROM stock_levels",
            )
            .await,
            movements: app.scalar("SELECT count(*) FROM movements").await,
            reservations: app.scalar("SELECT count(*) FROM reservations").await,
            reservation_states: text(
                app,
                "SELECT string_agg(concat_ws(':', id, status, expires_at, ended_at), ';' ORDER BY id)
                 FROM reservations",
            )
            .await,
            reservation_lines: app.scalar("SELECT count(*) FROM reservation_lines").await,
            stores: text(
                app,
                "SELECT string_agg(concat_ws(':', store_id, name, latitude, longitude, timezone,
                                             pickup_enabled, low_stock_threshold,
                                             pickup_window_hours, updated_at), ';' ORDER BY store_id)
                 FROM stores",
            )
            .await,
            // Events ever enqueued: the relay deletes published rows, so a row count would
            // fall on its own; the sequence only moves when an event is written.
            outbox: app
                .scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_seq_seq")
                .await,
            idempotency_keys: app.scalar("SELECT count(*) FROM idempotency_keys").await,
            availability,
            store_list,
        }
    }

    /// The fields that differ, before → after.
    fn diff(&self, after: &Self) -> String {
        let mut out = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} -> {b}"));
            }
        };
        field("levels", self.levels.clone(), after.levels.clone());
        field(
            "movements",
            self.movements.to_string(),
            after.movements.to_string(),
        );
        field(
            "reservations",
            self.reservations.to_string(),
            after.reservations.to_string(),
        );
        field(
            "reservation states",
            self.reservation_states.clone(),
            after.reservation_states.clone(),
        );
        field(
            "reservation lines",
            self.reservation_lines.to_string(),
            after.reservation_lines.to_string(),
        );
        field("stores", self.stores.clone(), after.stores.clone());
        field("outbox", self.outbox.to_string(), after.outbox.to_string());
        field(
            "idempotency keys",
            self.idempotency_keys.to_string(),
            after.idempotency_keys.to_string(),
        );
        field(
            "availability",
            self.availability.to_string(),
            after.availability.to_string(),
        );
        field(
            "store list",
            self.store_list.to_string(),
            after.store_list.to_string(),
        );
        out.join("\n      ")
    }
}

/// Reads a problem+json answer of `status` (the common `problem` helper, without panicking).
async fn read_problem(r: Response, status: StatusCode) -> Result<Value, String> {
    let got = r.status();
    let content_type = r
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // A stream answered by mistake would never end: read what comes within a moment.
    let text = tokio::time::timeout(std::time::Duration::from_secs(2), r.text())
        .await
        .map(|t| t.unwrap_or_default())
        .unwrap_or_else(|_| "(a body that did not end)".into());
    let shown: String = text.chars().take(300).collect();
    if got != status {
        return Err(format!("expected {status}, got {got}: {shown}"));
    }
    if !content_type.starts_with("application/problem+json") {
        return Err(format!(
            "{got} with content-type {content_type:?}, not application/problem+json: {shown}"
        ));
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{got}: body is not JSON ({e}): {shown}"))?;
    if body["status"] != status.as_u16() {
        return Err(format!("{got}: the body's status is {}", body["status"]));
    }
    if !(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string()) {
        return Err(format!(
            "{got}: type, title and detail must be strings: {shown}"
        ));
    }
    Ok(body)
}

/// Sends bad requests against one app, collecting every mismatch; [`Checks::finish`] fails
/// the test once with all of them.
struct Checks<'a> {
    app: &'a TestApp,
    baseline: Snapshot,
    failures: Vec<String>,
    sent: usize,
}

impl<'a> Checks<'a> {
    async fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            baseline: Snapshot::take(app).await,
            failures: Vec::new(),
            sent: 0,
        }
    }

    /// Sends `req`: it must be refused with `status` and a problem+json body, and change
    /// nothing. Returns the body (`null` when it was not a problem of `status`).
    async fn refused(&mut self, case: &str, req: Req, status: StatusCode) -> Value {
        self.sent += 1;
        let what = format!("{case} [{}]", req.describe());
        let body = match req.send(self.app).await {
            Ok(r) => read_problem(r, status).await.unwrap_or_else(|e| {
                self.failures.push(format!("{what}: {e}"));
                Value::Null
            }),
            Err(e) => {
                self.failures.push(format!(
                    "{what}: expected {status}, the request failed: {e}"
                ));
                Value::Null
            }
        };
        self.unchanged(&what).await;
        body
    }

    /// Records a failure unless `ok`.
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// Records a failure when anything changed since the last check, then moves on from
    /// the new state (one change is reported once).
    async fn unchanged(&mut self, what: &str) {
        let now = Snapshot::take(self.app).await;
        if now != self.baseline {
            self.failures.push(format!(
                "{what}: changed state\n      {}",
                self.baseline.diff(&now)
            ));
            self.baseline = now;
        }
    }

    /// Every case of `MALFORMED`, and `valid` cut short or followed by more, as the body
    /// of `req`: 400.
    async fn malformed(&mut self, req: &Req, valid: &Value) {
        let valid = valid.to_string().into_bytes();
        let cut = valid[..valid.len() / 2].to_vec();
        let doubled = [valid.as_slice(), b"}"].concat();
        let followed = [valid.as_slice(), b" {}"].concat();
        let derived: [(&str, &[u8]); 3] = [
            ("a valid body cut in half", &cut),
            ("a valid body and a stray brace", &doubled),
            ("a valid body and a second value", &followed),
        ];
        for (why, body) in MALFORMED.into_iter().chain(derived) {
            self.refused(
                &format!("malformed JSON: {why}"),
                req.clone().raw(body),
                BAD_REQUEST,
            )
            .await;
        }
    }

    /// The body without each of `required` (422), and with each of `wrong` (422).
    async fn shape(
        &mut self,
        req: &Req,
        valid: &Value,
        required: &[&str],
        wrong: &[(&str, Value)],
    ) {
        for pointer in required {
            self.refused(
                &format!("missing {pointer}"),
                req.clone().json(&without(valid, pointer)),
                INVALID,
            )
            .await;
        }
        for (pointer, value) in wrong {
            let at = if pointer.is_empty() {
                "the body"
            } else {
                pointer
            };
            self.refused(
                &format!("{at} = {value}"),
                req.clone().json(&with(valid, pointer, value.clone())),
                INVALID,
            )
            .await;
        }
    }

    /// The integer at `pointer` replaced by numbers JSON can carry but i64 cannot (422).
    async fn beyond_i64(&mut self, req: &Req, valid: &Value, pointer: &str) {
        self.refused(
            &format!("{pointer} = i64::MAX + 1"),
            req.clone()
                .json(&with(valid, pointer, json!(i64::MAX as u64 + 1))),
            INVALID,
        )
        .await;
        self.refused(
            &format!("{pointer} = 10^20 (beyond u64)"),
            req.clone()
                .raw(literal(valid, pointer, "100000000000000000000")),
            INVALID,
        )
        .await;
        self.refused(
            &format!("{pointer} = -10^20"),
            req.clone()
                .raw(literal(valid, pointer, "-100000000000000000000")),
            INVALID,
        )
        .await;
    }

    /// Each caller of `who` is refused with 403.
    async fn forbidden(&mut self, req: &Req, who: &[(&str, String)]) {
        for (name, token) in who {
            self.refused(&format!("as {name}"), req.clone().token(token), FORBIDDEN)
                .await;
        }
    }

    async fn finish(self) {
        self.app.assert_invariants().await;
        assert!(
            self.failures.is_empty(),
            "{} of {} bad requests were not refused as documented:\n  - {}",
            self.failures.len(),
            self.sent,
            self.failures.join("\n  - ")
        );
    }
}

/// `body` with the value at the JSON pointer replaced (or added to its object).
fn with(body: &Value, pointer: &str, value: Value) -> Value {
    let mut changed = body.clone();
    if let Some(slot) = changed.pointer_mut(pointer) {
        *slot = value;
        return changed;
    }
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    changed
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {parent:?} in {body}"))
        .insert(key.to_owned(), value);
    changed
}

/// `body` without the member at the JSON pointer.
fn without(body: &Value, pointer: &str) -> Value {
    let mut body = body.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let removed = if parent.is_empty() {
        body.as_object_mut()
    } else {
        body.pointer_mut(parent).and_then(Value::as_object_mut)
    }
    .and_then(|o| o.remove(key));
    assert!(removed.is_some(), "no {pointer} in the body");
    body
}

/// `body` serialized with a number literal (that `Value` cannot hold) at the pointer.
fn literal(body: &Value, pointer: &str, number: &str) -> Vec<u8> {
    const MARK: &str = "__number_literal__";
    with(body, pointer, json!(MARK))
        .to_string()
        .replace(&format!("\"{MARK}\""), number)
        .into_bytes()
}

/// The `field` names of a 422's `errors`.
fn error_fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A store body that `PUT /v1/stores/{id}` accepts.
fn store_body() -> Value {
    json!({"name": "Store 3", "latitude": 43.3, "longitude": 5.37, "timezone": "Europe/Paris",
           "pickup_enabled": true, "low_stock_threshold": 2, "pickup_window_hours": 72})
}

/// A reservation body that `POST /v1/reservations` accepts (S1, two of A).
fn reservation_body() -> Value {
    json!({"store_id": "S1", "lines": [{"sku": "A", "quantity": 2}], "channel": "web",
           "reference": "cart-1", "ttl_seconds": 600})
}

/// A POS body that sales and returns accept (one of A).
fn pos_body() -> Value {
    json!({"lines": [{"sku": "A", "quantity": 1}], "reference": "ticket-1"})
}

/// A bulk body that `POST /v1/stock/bulk` accepts.
fn bulk_body() -> Value {
    json!({"items": [{"store_id": "S1", "sku": "A", "kind": "count", "quantity": 4},
                     {"store_id": "S2", "sku": "C", "kind": "receipt", "quantity": 5}]})
}

fn service() -> String {
    token("svc-orders", Role::Service, &[])
}

/// Stores S1 (Paris) and S2 (Lyon); S1/A = 10, S1/B = 5, S2/A = 3.
async fn stocked_app() -> TestApp {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.store("S2", 45.76, 4.84).await;
    app.stock("S1", "A", 10).await;
    app.stock("S1", "B", 5).await;
    app.stock("S2", "A", 3).await;
    app
}

/// An active reservation of two A at S1 by customer c1; its id.
async fn reservation_of_c1(app: &TestApp) -> String {
    let r = app
        .post("/v1/reservations", &customer("c1"), reservation_body())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------
// The tests, one per endpoint family.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_invalid_foreign_and_expired_tokens_are_refused_with_401_everywhere() {
    let app = stocked_app().await;
    let id = reservation_of_c1(&app).await;
    let foreign = mint_for("another-secret", "admin-1", Role::Admin, &[], 3600).unwrap();
    let expired = mint_for(SECRET, "admin-1", Role::Admin, &[], -3600).unwrap();
    let no_subject = mint_for(SECRET, "", Role::Admin, &[], 3600).unwrap();
    // {"alg":"none"} with an admin payload and no signature.
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbi0xIiwicm9sZSI6ImFkbWluIiwic3RvcmVzIjpbXSwiZXhwIjo0MTAyNDQ0ODAwfQ.";
    let bad_auth: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("a garbage token", Some("Bearer not-a-jwt".into())),
        ("an empty bearer", Some("Bearer ".into())),
        ("another scheme", Some(format!("Basic {}", admin()))),
        (
            "a token signed with another secret",
            Some(format!("Bearer {foreign}")),
        ),
        ("an expired token", Some(format!("Bearer {expired}"))),
        (
            "a token without subject",
            Some(format!("Bearer {no_subject}")),
        ),
        (
            "an unsigned alg=none token",
            Some(format!("Bearer {unsigned}")),
        ),
    ];
    // Every private endpoint, each with a body it would accept from an admin.
    let endpoints = [
        Req::put("/v1/stores/S3").json(&store_body()),
        Req::put("/v1/stores/S1/stock/A").json(&json!({"on_hand": 7})),
        Req::post("/v1/stores/S1/stock/A/adjustments")
            .json(&json!({"delta": 1, "reason": "found"})),
        Req::post("/v1/stock/bulk").json(&bulk_body()),
        Req::get("/v1/stores/S1/stock/A/movements"),
        Req::post("/v1/stores/S1/sales").json(&pos_body()),
        Req::post("/v1/stores/S1/returns").json(&pos_body()),
        Req::post("/v1/reservations").json(&reservation_body()),
        Req::get(format!("/v1/reservations/{id}")),
        Req::post(format!("/v1/reservations/{id}/commit")).json(&json!({})),
        Req::post(format!("/v1/reservations/{id}/release")).json(&json!({})),
    ];
    let mut checks = Checks::new(&app).await;
    for endpoint in &endpoints {
        for (why, authorization) in &bad_auth {
            checks
                .refused(
                    why,
                    endpoint.clone().authorization(authorization.as_deref()),
                    UNAUTHORIZED,
                )
                .await;
        }
    }
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn store_writes_refuse_bad_input_and_wrong_roles_and_change_nothing() {
    let app = stocked_app().await;
    let mut checks = Checks::new(&app).await;
    let valid = store_body();
    for path in ["/v1/stores/S3", "/v1/stores/S1"] {
        let req = Req::put(path).token(&admin());
        checks.malformed(&req, &valid).await;
        checks
            .shape(
                &req,
                &valid,
                &[
                    "/name",
                    "/latitude",
                    "/longitude",
                    "/timezone",
                    "/pickup_enabled",
                ],
                &[
                    ("", json!([])),
                    ("", json!("a store")),
                    ("", json!(null)),
                    ("/name", json!(3)),
                    ("/name", json!("")),
                    ("/name", json!(" ")),
                    ("/name", json!("n".repeat(201))),
                    ("/latitude", json!("north")),
                    ("/latitude", json!(null)),
                    ("/latitude", json!(90.5)),
                    ("/latitude", json!(-91)),
                    ("/longitude", json!(180.01)),
                    ("/longitude", json!(-181)),
                    ("/timezone", json!("")),
                    ("/timezone", json!("Europe/Paris; DROP")),
                    ("/pickup_enabled", json!("yes")),
                    ("/pickup_enabled", json!(1)),
                    ("/low_stock_threshold", json!(-1)),
                    ("/low_stock_threshold", json!(MAX_QUANTITY + 1)),
                    ("/low_stock_threshold", json!(i64::MAX)),
                    ("/low_stock_threshold", json!(2.5)),
                    ("/low_stock_threshold", json!("2")),
                    ("/pickup_window_hours", json!(0)),
                    ("/pickup_window_hours", json!(-72)),
                    ("/pickup_window_hours", json!(i64::MAX)),
                ],
            )
            .await;
        checks
            .beyond_i64(&req, &valid, "/low_stock_threshold")
            .await;
        checks
            .beyond_i64(&req, &valid, "/pickup_window_hours")
            .await;
        checks
            .forbidden(
                &Req::put(path).json(&valid),
                &[
                    ("staff of the store", staff(&["S1", "S3"])),
                    ("a customer", customer("c1")),
                    ("a service", service()),
                ],
            )
            .await;
    }
    // A store id in the path that is no store code: invalid for a create.
    for bad in ["bad%20id", "S1%3BDROP", "%C3%A9", &"x".repeat(65)] {
        checks
            .refused(
                "a store id with bad characters",
                Req::put(format!("/v1/stores/{bad}"))
                    .token(&admin())
                    .json(&valid),
                INVALID,
            )
            .await;
    }
    // Public reads of unknown stores.
    for unknown in ["S9", "bad%20id", &"x".repeat(65)] {
        checks
            .refused(
                "an unknown store",
                Req::get(format!("/v1/stores/{unknown}")),
                NOT_FOUND,
            )
            .await;
    }
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn stock_counts_adjustments_and_the_ledger_refuse_bad_input_and_change_nothing() {
    let app = stocked_app().await;
    let mut checks = Checks::new(&app).await;
    let others = [
        ("a customer", customer("c1")),
        ("staff of another store", staff(&["S2"])),
        ("a service", service()),
    ];

    // PUT /v1/stores/{store_id}/stock/{sku}: a count.
    let count = json!({"on_hand": 7, "safety_stock": 1});
    let req = Req::put("/v1/stores/S1/stock/A").token(&staff(&["S1"]));
    checks.malformed(&req, &count).await;
    checks
        .shape(
            &req,
            &count,
            &["/on_hand"],
            &[
                ("", json!([])),
                ("", json!(7)),
                ("/on_hand", json!("7")),
                ("/on_hand", json!(7.5)),
                ("/on_hand", json!(null)),
                ("/on_hand", json!(true)),
                ("/on_hand", json!(-1)),
                ("/on_hand", json!(MAX_QUANTITY + 1)),
                ("/on_hand", json!(i64::MAX)),
                ("/on_hand", json!(i64::MIN)),
                ("/safety_stock", json!(-1)),
                ("/safety_stock", json!(MAX_QUANTITY + 1)),
                ("/safety_stock", json!("1")),
            ],
        )
        .await;
    checks.beyond_i64(&req, &count, "/on_hand").await;
    checks.beyond_i64(&req, &count, "/safety_stock").await;
    checks
        .forbidden(&Req::put("/v1/stores/S1/stock/A").json(&count), &others)
        .await;
    for path in ["/v1/stores/S9/stock/A", "/v1/stores/S%201/stock/A"] {
        checks
            .refused(
                "an unknown store",
                Req::put(path).token(&admin()).json(&count),
                NOT_FOUND,
            )
            .await;
    }

    // POST …/adjustments: a signed delta and a reason.
    let adjustment = json!({"delta": 2, "reason": "found"});
    let req = Req::post("/v1/stores/S1/stock/A/adjustments").token(&staff(&["S1"]));
    checks.malformed(&req, &adjustment).await;
    checks
        .shape(
            &req,
            &adjustment,
            &["/delta", "/reason"],
            &[
                ("", json!([])),
                ("/delta", json!("2")),
                ("/delta", json!(2.5)),
                ("/delta", json!(null)),
                ("/delta", json!(0)),
                ("/delta", json!(MAX_QUANTITY + 1)),
                ("/delta", json!(-MAX_QUANTITY - 1)),
                ("/delta", json!(i64::MAX)),
                // BUG: `adj.delta.abs()` overflows on i64::MIN: the handler panics (debug
                // builds drop the connection) or lets it through (release).
                ("/delta", json!(i64::MIN)),
                ("/reason", json!("")),
                ("/reason", json!("  ")),
                ("/reason", json!("r".repeat(201))),
                ("/reason", json!(7)),
            ],
        )
        .await;
    checks.beyond_i64(&req, &adjustment, "/delta").await;
    checks
        .forbidden(
            &Req::post("/v1/stores/S1/stock/A/adjustments").json(&adjustment),
            &others,
        )
        .await;
    for path in [
        "/v1/stores/S9/stock/A/adjustments",
        "/v1/stores/S%201/stock/A/adjustments",
        "/v1/stores/S1/stock/A%20B/adjustments",
    ] {
        checks
            .refused(
                "an unknown store or SKU",
                Req::post(path).token(&admin()).json(&adjustment),
                NOT_FOUND,
            )
            .await;
    }
    // Below zero: 409, and the level (and a row for a never-stocked SKU) stays as it was.
    let body = checks
        .refused(
            "an adjustment making on_hand negative",
            req.clone()
                .json(&json!({"delta": -11, "reason": "damaged"})),
            CONFLICT,
        )
        .await;
    checks.check(
        body.is_null()
            || body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("negative"),
        format!("the 409 of a negative adjustment says why: {body}"),
    );
    checks
        .refused(
            "a negative adjustment of a never-stocked SKU",
            Req::post("/v1/stores/S1/stock/Z/adjustments")
                .token(&admin())
                .json(&json!({"delta": -1, "reason": "damaged"})),
            CONFLICT,
        )
        .await;
    // With an Idempotency-Key the refusal is not stored as the key's answer either.
    checks
        .refused(
            "an adjustment making on_hand negative, with a key",
            req.clone()
                .key("adj-1")
                .json(&json!({"delta": -11, "reason": "damaged"})),
            CONFLICT,
        )
        .await;

    // GET …/movements: the ledger.
    let ledger = Req::get("/v1/stores/S1/stock/A/movements");
    checks.forbidden(&ledger, &others).await;
    for path in [
        "/v1/stores/S9/stock/A/movements",
        "/v1/stores/S%201/stock/A/movements",
        "/v1/stores/S1/stock/A%20B/movements",
    ] {
        checks
            .refused(
                "an unknown store or SKU",
                Req::get(path).token(&admin()),
                NOT_FOUND,
            )
            .await;
    }
    for query in ["limit=abc", "limit=", "cursor=abc", "cursor=1.5"] {
        checks
            .refused(
                "an unparseable page parameter",
                Req::get(format!("/v1/stores/S1/stock/A/movements?{query}")).token(&admin()),
                BAD_REQUEST,
            )
            .await;
    }
    // BUG: a well-formed limit out of 1..=500 is "well-formed but invalid" (api.md: 422);
    // the service answers 400.
    for query in [
        "limit=0",
        "limit=-1",
        "limit=501",
        "limit=100000000000000000000",
    ] {
        checks
            .refused(
                "a page size out of range",
                Req::get(format!("/v1/stores/S1/stock/A/movements?{query}")).token(&admin()),
                INVALID,
            )
            .await;
    }
    // Spec ambiguity, kept as the service answers: the ledger of a SKU the store never
    // stocked is an empty page, not a 404 (availability lists such a pair with 0 too).
    let r = app
        .get("/v1/stores/S1/stock/Z/movements", Some(&admin()))
        .await;
    let status = r.status();
    let page: Value = r.json().await.unwrap_or_default();
    checks.check(
        status == StatusCode::OK && page["items"] == json!([]),
        format!("the ledger of a never-stocked SKU: {status} {page}"),
    );
    checks.unchanged("the ledger of a never-stocked SKU").await;

    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn a_bulk_import_with_any_bad_line_applies_none_and_lists_the_bad_lines() {
    let app = stocked_app().await;
    let mut checks = Checks::new(&app).await;
    let req = Req::post("/v1/stock/bulk").token(&admin());
    let valid = bulk_body();
    checks.malformed(&req, &valid).await;
    checks
        .shape(
            &req,
            &valid,
            &[
                "/items",
                "/items/1/store_id",
                "/items/1/sku",
                "/items/1/kind",
                "/items/1/quantity",
            ],
            &[
                ("", json!([])),
                ("/items", json!({})),
                ("/items", json!(null)),
                ("/items", json!([])),
                ("/items/1", json!("S2,C,receipt,5")),
                ("/items/1/quantity", json!("5")),
                ("/items/1/quantity", json!(5.5)),
                ("/items/1/store_id", json!(2)),
            ],
        )
        .await;
    checks.beyond_i64(&req, &valid, "/items/1/quantity").await;

    // One bad line among good ones: 422, the line's index in `errors`, nothing applied.
    let good = json!({"store_id": "S1", "sku": "B", "kind": "receipt", "quantity": 3});
    let bad_lines = [
        (
            "a negative count",
            json!({"store_id": "S1", "sku": "A", "kind": "count", "quantity": -1}),
            "quantity",
        ),
        (
            "a zero receipt",
            json!({"store_id": "S1", "sku": "A", "kind": "receipt", "quantity": 0}),
            "quantity",
        ),
        (
            "a negative receipt",
            json!({"store_id": "S1", "sku": "A", "kind": "receipt", "quantity": -4}),
            "quantity",
        ),
        (
            "a huge receipt",
            json!({"store_id": "S1", "sku": "A", "kind": "receipt", "quantity": MAX_QUANTITY + 1}),
            "quantity",
        ),
        (
            "a huge count",
            json!({"store_id": "S1", "sku": "A", "kind": "count", "quantity": i64::MAX}),
            "quantity",
        ),
        (
            "an unknown kind",
            json!({"store_id": "S1", "sku": "A", "kind": "sale", "quantity": 1}),
            "kind",
        ),
        (
            "an unknown store",
            json!({"store_id": "S9", "sku": "A", "kind": "count", "quantity": 1}),
            "store_id",
        ),
        (
            "a store id with bad characters",
            json!({"store_id": "S 1", "sku": "A", "kind": "count", "quantity": 1}),
            "store_id",
        ),
        (
            "a SKU with bad characters",
            json!({"store_id": "S1", "sku": "A/B", "kind": "count", "quantity": 1}),
            "sku",
        ),
        (
            "an empty SKU",
            json!({"store_id": "S1", "sku": "", "kind": "count", "quantity": 1}),
            "sku",
        ),
    ];
    for (why, line, field) in bad_lines {
        let body = json!({"items": [good.clone(), line, good.clone()]});
        let problem = checks
            .refused(
                &format!("one bad line: {why}"),
                req.clone().json(&body),
                INVALID,
            )
            .await;
        let fields = error_fields(&problem);
        checks.check(
            problem.is_null() || fields == [format!("items[1].{field}")],
            format!("one bad line ({why}): errors should name items[1].{field} only: {fields:?}"),
        );
    }
    // Every bad line is listed, not only the first.
    let body = json!({"items": [
        {"store_id": "S1", "sku": "A", "kind": "count", "quantity": -1},
        good.clone(),
        {"store_id": "S9", "sku": "B", "kind": "receipt", "quantity": 0}]});
    let problem = checks
        .refused(
            "two bad lines among good ones",
            req.clone().json(&body),
            INVALID,
        )
        .await;
    let fields = error_fields(&problem);
    for expected in [
        "items[0].quantity",
        "items[2].store_id",
        "items[2].quantity",
    ] {
        checks.check(
            problem.is_null() || fields.iter().any(|f| f == expected),
            format!("two bad lines: errors should name {expected}: {fields:?}"),
        );
    }
    // BUG: a line of the wrong shape is a bad line too, but the 422 comes from the JSON
    // decoder and has no `errors` naming it.
    let body = json!({"items": [good.clone(), {"store_id": "S1", "sku": "A", "kind": "count", "quantity": "4"}]});
    let problem = checks
        .refused(
            "one line of the wrong type",
            req.clone().json(&body),
            INVALID,
        )
        .await;
    let fields = error_fields(&problem);
    checks.check(
        problem.is_null() || fields.iter().any(|f| f.starts_with("items[1]")),
        format!("one line of the wrong type: errors should name items[1]: {problem}"),
    );

    // Over 10,000 lines (about 0.6 MB, under the body limit).
    let items: Vec<Value> = (0..10_001)
        .map(|i| json!({"store_id": "S1", "sku": format!("K{i}"), "kind": "count", "quantity": 1}))
        .collect();
    let problem = checks
        .refused(
            "10,001 lines",
            req.clone().json(&json!({"items": items})),
            INVALID,
        )
        .await;
    checks.check(
        problem.is_null() || error_fields(&problem) == ["items"],
        format!(
            "10,001 lines: errors should name items: {}",
            problem["errors"]
        ),
    );

    // Roles: stock writes are staff and admin, and staff only on their stores.
    checks
        .forbidden(
            &Req::post("/v1/stock/bulk").json(&valid),
            &[
                ("a customer", customer("c1")),
                ("a service", service()),
                ("staff of one of the two stores", staff(&["S1"])),
                ("staff of other stores", staff(&["S3"])),
            ],
        )
        .await;
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn pos_sales_and_returns_refuse_bad_input_and_change_nothing() {
    let app = stocked_app().await;
    let mut checks = Checks::new(&app).await;
    let valid = pos_body();
    for kind in ["sales", "returns"] {
        let path = format!("/v1/stores/S1/{kind}");
        let req = Req::post(&path).token(&staff(&["S1"]));
        checks.malformed(&req, &valid).await;
        let many: Vec<Value> = (0..101)
            .map(|i| json!({"sku": format!("K{i}"), "quantity": 1}))
            .collect();
        checks
            .shape(
                &req,
                &valid,
                &["/lines", "/reference", "/lines/0/sku", "/lines/0/quantity"],
                &[
                    ("", json!([])),
                    ("/lines", json!({})),
                    ("/lines", json!([])),
                    ("/lines", json!(many)),
                    ("/lines/0/quantity", json!("1")),
                    ("/lines/0/quantity", json!(1.5)),
                    ("/lines/0/quantity", json!(0)),
                    ("/lines/0/quantity", json!(-1)),
                    ("/lines/0/quantity", json!(MAX_QUANTITY + 1)),
                    ("/lines/0/quantity", json!(i64::MAX)),
                    ("/lines/0/sku", json!("A B")),
                    ("/lines/0/sku", json!("")),
                    ("/lines/0/sku", json!("k".repeat(65))),
                    ("/reference", json!("")),
                    ("/reference", json!("t".repeat(201))),
                    ("/reference", json!(null)),
                ],
            )
            .await;
        checks.beyond_i64(&req, &valid, "/lines/0/quantity").await;
        checks
            .forbidden(
                &Req::post(&path).json(&valid),
                &[
                    ("a customer", customer("c1")),
                    ("staff of another store", staff(&["S2"])),
                    ("a service", service()),
                ],
            )
            .await;
        for store in ["S9", "S%201"] {
            checks
                .refused(
                    "an unknown store",
                    Req::post(format!("/v1/stores/{store}/{kind}"))
                        .token(&admin())
                        .json(&valid),
                    NOT_FOUND,
                )
                .await;
        }
    }
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn availability_reads_refuse_bad_queries_and_oversized_batches() {
    let app = stocked_app().await;
    let mut checks = Checks::new(&app).await;
    let stores_101: String = (0..101).map(|i| format!("&store_id=X{i}")).collect();
    let skus_101: String = (0..101).map(|i| format!("&sku=K{i}")).collect();

    // GET /v1/availability: store_id and sku repeat, up to 100 × 100.
    for query in ["", "store_id=S1", "sku=A"] {
        checks
            .refused(
                "a missing or unparseable parameter",
                Req::get(format!("/v1/availability?{query}")),
                BAD_REQUEST,
            )
            .await;
    }
    checks
        .refused(
            "101 stores",
            Req::get(format!("/v1/availability?sku=A{stores_101}")),
            INVALID,
        )
        .await;
    checks
        .refused(
            "101 SKUs",
            Req::get(format!("/v1/availability?store_id=S1{skus_101}")),
            INVALID,
        )
        .await;
    // BUG: a store id or SKU with bad characters is well-formed but invalid (api.md: 422,
    // as in bodies); the service answers 400.
    for query in ["store_id=S%201&sku=A", "store_id=S1&sku=A%2FB"] {
        checks
            .refused(
                "a code with bad characters",
                Req::get(format!("/v1/availability?{query}")),
                INVALID,
            )
            .await;
    }

    // GET /v1/availability/nearby.
    let nearby = "/v1/availability/nearby";
    for query in [
        "sku=A&lon=2.35",
        "sku=A&lat=48.85",
        "lat=48.85&lon=2.35",
        "sku=A&sku=B&lat=48.85&lon=2.35",
        "sku=A&lat=north&lon=2.35",
        "sku=A&lat=48.85&lon=2.35&radius_km=far",
        "sku=A&lat=48.85&lon=2.35&quantity=two",
    ] {
        checks
            .refused(
                "a missing or unparseable parameter",
                Req::get(format!("{nearby}?{query}")),
                BAD_REQUEST,
            )
            .await;
    }
    // BUG: parameters that parse but break the rules are well-formed but invalid (api.md:
    // 422; quality.md: zero, negative and huge quantities); the service answers 400.
    for query in [
        "sku=A&lat=90.5&lon=2.35",
        "sku=A&lat=48.85&lon=-181",
        "sku=A&lat=48.85&lon=2.35&radius_km=0",
        "sku=A&lat=48.85&lon=2.35&radius_km=-5",
        "sku=A&lat=48.85&lon=2.35&radius_km=1000.5",
        "sku=A&lat=48.85&lon=2.35&quantity=0",
        "sku=A&lat=48.85&lon=2.35&quantity=-1",
        "sku=A&lat=48.85&lon=2.35&quantity=1000000001",
        "sku=A&lat=48.85&lon=2.35&quantity=100000000000000000000",
        "sku=A%20B&lat=48.85&lon=2.35",
    ] {
        checks
            .refused(
                "a parameter out of range",
                Req::get(format!("{nearby}?{query}")),
                INVALID,
            )
            .await;
    }

    // GET /v1/availability/stream: the same caps before the stream starts.
    checks
        .refused(
            "a stream of 101 stores",
            Req::get(format!("/v1/availability/stream?sku=A{stores_101}")),
            INVALID,
        )
        .await;
    checks
        .refused(
            "a stream of 101 SKUs",
            Req::get(format!("/v1/availability/stream?store_id=S1{skus_101}")),
            INVALID,
        )
        .await;
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn a_reservation_request_with_bad_input_reserves_nothing() {
    let app = stocked_app().await;
    let mut checks = Checks::new(&app).await;
    let valid = reservation_body();
    let req = Req::post("/v1/reservations").token(&customer("c1"));
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"sku": format!("K{i}"), "quantity": 1}))
        .collect();
    checks.malformed(&req, &valid).await;
    checks
        .shape(
            &req,
            &valid,
            &[
                "/store_id",
                "/lines",
                "/channel",
                "/reference",
                "/ttl_seconds",
                "/lines/0/sku",
                "/lines/0/quantity",
            ],
            &[
                ("", json!([])),
                ("", json!(null)),
                ("/store_id", json!(1)),
                ("/store_id", json!("S 1")),
                ("/store_id", json!("S1;DROP TABLE stores")),
                ("/store_id", json!("")),
                ("/store_id", json!("s".repeat(65))),
                ("/lines", json!({"sku": "A", "quantity": 2})),
                ("/lines", json!([])),
                ("/lines", json!(many)),
                ("/lines/0/sku", json!("A/B")),
                ("/lines/0/sku", json!("")),
                ("/lines/0/quantity", json!("2")),
                ("/lines/0/quantity", json!(2.5)),
                ("/lines/0/quantity", json!(null)),
                ("/lines/0/quantity", json!(0)),
                ("/lines/0/quantity", json!(-1)),
                ("/lines/0/quantity", json!(MAX_QUANTITY + 1)),
                ("/lines/0/quantity", json!(i64::MAX)),
                ("/lines/0/quantity", json!(i64::MIN)),
                ("/channel", json!("fax")),
                ("/channel", json!("WEB")),
                ("/channel", json!("")),
                ("/channel", json!(1)),
                ("/reference", json!("")),
                ("/reference", json!("r".repeat(201))),
                ("/ttl_seconds", json!(0)),
                ("/ttl_seconds", json!(-1)),
                ("/ttl_seconds", json!(MAX_TTL + 1)),
                ("/ttl_seconds", json!(i64::MAX)),
                ("/ttl_seconds", json!("600")),
                ("/ttl_seconds", json!(600.5)),
                ("/order_id", json!("not-a-uuid")),
                ("/order_id", json!(42)),
            ],
        )
        .await;
    checks.beyond_i64(&req, &valid, "/lines/0/quantity").await;
    checks.beyond_i64(&req, &valid, "/ttl_seconds").await;
    // Spec ambiguity, kept as the service answers: an unknown store named in the body is a
    // well-formed body that refers to nothing, 422 as for bulk lines (404 is for the
    // resource a path names).
    checks
        .refused(
            "an unknown store in the body",
            req.clone().json(&with(&valid, "/store_id", json!("S9"))),
            INVALID,
        )
        .await;
    // An unknown SKU is a shortage (api.md: 409 with shortages, nothing reserved).
    let cart = with(
        &valid,
        "/lines",
        json!([{"sku": "A", "quantity": 1}, {"sku": "Z", "quantity": 1}]),
    );
    let problem = checks
        .refused("an unknown SKU", req.clone().json(&cart), CONFLICT)
        .await;
    checks.check(
        problem.is_null()
            || problem["shortages"] == json!([{"sku": "Z", "requested": 1, "available": 0}]),
        format!("an unknown SKU is listed as a shortage: {problem}"),
    );
    // Lines naming one SKU add up past the stock: 409 too.
    let cart = with(
        &valid,
        "/lines",
        json!([{"sku": "B", "quantity": 3}, {"sku": "B", "quantity": 3}]),
    );
    checks
        .refused(
            "two lines of one SKU over the stock",
            req.clone().json(&cart),
            CONFLICT,
        )
        .await;

    // Roles: customer, staff (of the store), service.
    checks
        .forbidden(
            &Req::post("/v1/reservations").json(&valid),
            &[("staff of another store", staff(&["S2"]))],
        )
        .await;
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn reservation_reads_commits_and_releases_refuse_unknown_ids_and_wrong_callers() {
    let app = stocked_app().await;
    let active = reservation_of_c1(&app).await;
    let released = reservation_of_c1(&app).await;
    let r = app
        .post(
            &format!("/v1/reservations/{released}/release"),
            &customer("c1"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut checks = Checks::new(&app).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let not_ids = [
        "not-a-uuid",
        "1",
        "00000000-0000-0000-0000-00000000000g",
        &format!("{active}x"),
    ];

    for (action, tok) in [
        ("", staff(&["S1"])),
        ("/commit", staff(&["S1"])),
        ("/release", customer("c1")),
    ] {
        let method = if action.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let req = |id: &str| {
            let r = Req::new(method.clone(), format!("/v1/reservations/{id}{action}")).token(&tok);
            if action.is_empty() {
                r
            } else {
                r.json(&json!({}))
            }
        };
        checks
            .refused("an unknown id", req(&unknown), NOT_FOUND)
            .await;
        for id in not_ids {
            checks
                .refused("a path id that is no UUID", req(id), NOT_FOUND)
                .await;
        }
        // Another customer's reservation looks unknown (BOLA).
        let as_c2 = req(&active).token(&customer("c2"));
        checks
            .refused("another customer's reservation", as_c2, NOT_FOUND)
            .await;
        // Spec ambiguity, kept as the service answers: staff of another store get the
        // same 404 as for an unknown id (the id alone must not reveal another store's
        // reservations), rather than a 403.
        let as_s2 = req(&active).token(&staff(&["S2"]));
        checks
            .refused("staff of another store", as_s2, NOT_FOUND)
            .await;
    }
    // Commit is staff and service: the owner may not hand goods over to themself.
    checks
        .refused(
            "the owning customer commits",
            Req::post(format!("/v1/reservations/{active}/commit"))
                .token(&customer("c1"))
                .json(&json!({})),
            FORBIDDEN,
        )
        .await;
    // A transition from an ended state: 409, nothing changes.
    for action in ["commit", "release"] {
        checks
            .refused(
                "a released reservation",
                Req::post(format!("/v1/reservations/{released}/{action}"))
                    .token(&staff(&["S1"]))
                    .json(&json!({})),
                CONFLICT,
            )
            .await;
    }
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_two_mib_and_bad_idempotency_keys_are_refused_on_every_write() {
    let app = stocked_app().await;
    let id = reservation_of_c1(&app).await;
    let mut checks = Checks::new(&app).await;
    // Every write, with a caller and a body it would accept.
    let writes = [
        Req::put("/v1/stores/S3")
            .token(&admin())
            .json(&store_body()),
        Req::put("/v1/stores/S1/stock/A")
            .token(&staff(&["S1"]))
            .json(&json!({"on_hand": 7})),
        Req::post("/v1/stores/S1/stock/A/adjustments")
            .token(&staff(&["S1"]))
            .json(&json!({"delta": 1, "reason": "found"})),
        Req::post("/v1/stock/bulk")
            .token(&admin())
            .json(&bulk_body()),
        Req::post("/v1/stores/S1/sales")
            .token(&staff(&["S1"]))
            .json(&pos_body()),
        Req::post("/v1/stores/S1/returns")
            .token(&staff(&["S1"]))
            .json(&pos_body()),
        Req::post("/v1/reservations")
            .token(&customer("c1"))
            .json(&reservation_body()),
        Req::post(format!("/v1/reservations/{id}/commit"))
            .token(&staff(&["S1"]))
            .json(&json!({})),
        Req::post(format!("/v1/reservations/{id}/release"))
            .token(&customer("c1"))
            .json(&json!({})),
    ];
    // A JSON body one byte over the limit.
    let padding = "x".repeat(BODY_LIMIT - r#"{"pad":""}"#.len() + 1);
    let oversized = format!(r#"{{"pad":"{padding}"}}"#);
    assert_eq!(oversized.len(), BODY_LIMIT + 1);
    let overlong_key = "k".repeat(256);
    for write in &writes {
        // BUG: `shared::problem::Body` maps an over-limit payload to 413 only when the
        // error text says "overflow" or "too large"; actix-http 3.20 says "payload reached
        // size limit", so every write answers 400.
        checks
            .refused(
                "a body one byte over 2 MiB",
                write.clone().raw(oversized.clone()),
                TOO_LARGE,
            )
            .await;
        checks
            .refused(
                "a body of 8 MiB",
                write.clone().raw(oversized.repeat(4)),
                TOO_LARGE,
            )
            .await;
        for (why, key) in [
            (
                "an Idempotency-Key of 256 characters",
                overlong_key.as_str(),
            ),
            ("an empty Idempotency-Key", ""),
            ("an Idempotency-Key with a space", "key 1"),
        ] {
            checks
                .refused(why, write.clone().key(key), BAD_REQUEST)
                .await;
        }
    }
    // A body of exactly the limit is read (and refused for what it says, not its size).
    let mut exact = br#"{"on_hand": -1}"#.to_vec();
    exact.resize(BODY_LIMIT, b' ');
    checks
        .refused(
            "a body of exactly 2 MiB",
            Req::put("/v1/stores/S1/stock/A").token(&admin()).raw(exact),
            INVALID,
        )
        .await;
    checks.finish().await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() {
    let app = stocked_app().await;
    let mut checks = Checks::new(&app).await;
    for (method, path) in [
        (Method::GET, "/v1/nope"),
        (Method::GET, "/"),
        (Method::POST, "/v1/nope"),
        (Method::GET, "/v2/stores"),
        (Method::GET, "/v1/stores/S1/stock"),
        (Method::GET, "/v1/stores/S1/stock/A/adjustments/1"),
        (Method::POST, "/v1/reservations/a/b/c"),
    ] {
        checks
            .refused(
                "an unknown route",
                Req::new(method, path).token(&admin()),
                NOT_FOUND,
            )
            .await;
    }
    for (method, path) in [
        (Method::DELETE, "/v1/stores/S1"),
        (Method::POST, "/v1/stores/S1"),
        (Method::PATCH, "/v1/stores/S1/stock/A"),
        (Method::GET, "/v1/stock/bulk"),
        (Method::DELETE, "/v1/reservations"),
    ] {
        checks
            .refused(
                "a method a route does not serve",
                Req::new(method, path).token(&admin()).json(&json!({})),
                NOT_FOUND,
            )
            .await;
    }
    checks.finish().await;
    app.stop().await;
}
