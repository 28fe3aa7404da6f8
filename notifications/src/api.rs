//! The HTTP API of api.md for notifications: the VAPID key, devices, back-in-stock alerts
//! and the delivery log.

use crate::push::Providers;
use crate::store::{self, AlertRow, DeliveryRow, DeviceRow, LogFilter, NewAlert, NewDevice};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde::{Deserialize, Serialize};
use shared::auth::{Caller, Role};
use shared::codes::{check_code, locale};
use shared::http::{BearerAuth, query_pairs};
use shared::problem::{Body, Problem, Validation};
use std::sync::Arc;
use utoipa::OpenApi;
use uuid::Uuid;

/// What every handler reaches through app data.
#[derive(Clone)]
pub struct AppState {
    /// The notifications database.
    pub db: DatabaseConnection,
    /// The push providers (for the VAPID public key).
    pub providers: Arc<Providers>,
    /// Whether Web Push endpoints may be plain `http://` or local addresses (local runs
    /// and tests only).
    pub allow_local_endpoints: bool,
}

/// The longest token or endpoint accepted.
const MAX_ADDRESS: usize = 2048;
/// The most devices one customer may have.
pub const MAX_DEVICES: usize = 20;
/// The most waiting alerts one customer may have.
pub const MAX_WAITING_ALERTS: usize = 200;

/// `GET /v1/webpush/vapid-public-key`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VapidKey {
    /// Base64url, uncompressed P-256 point: the `applicationServerKey` of
    /// `pushManager.subscribe`.
    pub public_key: String,
}

/// A Web Push subscription's keys.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebPushKeys {
    /// The browser's P-256 public key (base64url, 65 bytes uncompressed).
    pub p256dh: String,
    /// The 16-byte authentication secret (base64url).
    pub auth: String,
}

/// Body of `PUT /v1/customers/{customer_id}/devices/{device_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DeviceBody {
    /// A browser's push subscription (`PushSubscription.toJSON()`).
    Webpush {
        /// The push service URL.
        endpoint: String,
        /// Its keys.
        keys: WebPushKeys,
        /// The language to write in, e.g. `fr-FR`.
        locale: Option<String>,
    },
    /// An FCM registration token.
    Fcm {
        /// The token.
        token: String,
        /// The language to write in.
        locale: Option<String>,
    },
    /// An APNs device token (hex).
    Apns {
        /// The token.
        token: String,
        /// The language to write in.
        locale: Option<String>,
    },
}

/// A list of devices.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceList {
    /// Oldest first.
    pub items: Vec<DeviceRow>,
}

/// Body of `POST /v1/customers/{customer_id}/stock-alerts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertBody {
    /// The store.
    pub store_id: String,
    /// The SKU.
    pub sku: String,
    /// Units wanted available (default 1).
    pub quantity: Option<i64>,
    /// The product's name as the customer saw it (named in the push).
    pub product_name: Option<String>,
    /// The language to write in when the device has none.
    pub locale: Option<String>,
}

/// A list of alerts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Oldest first.
    pub items: Vec<AlertRow>,
}

/// The delivery log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryLog {
    /// Oldest first.
    pub items: Vec<DeliveryRow>,
}

/// Unknown and not-yours look the same (404); other roles than customer and admin may
/// not touch a customer's things at all (403).
fn own_customer(caller: &Caller, customer_id: &str, admin_too: bool) -> Result<(), Problem> {
    let roles: &[Role] = if admin_too {
        &[Role::Customer, Role::Admin]
    } else {
        &[Role::Customer]
    };
    caller.require(roles)?;
    if caller.role == Role::Customer && caller.id != customer_id {
        return Err(Problem::not_found(format!("no customer {customer_id}")));
    }
    Ok(())
}

fn path_uuid(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::not_found(format!("no {what} {raw}")))
}

fn decoded_len(v: &mut Validation, field: &str, value: &str, len: usize) -> Option<Vec<u8>> {
    match URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')) {
        Ok(bytes) if bytes.len() == len => Some(bytes),
        _ => {
            v.add(field, format!("must be {len} bytes, base64url"));
            None
        }
    }
}

fn check_locale(v: &mut Validation, field: &str, value: Option<&String>) -> Option<String> {
    let tag = value?;
    let parsed = locale(tag);
    if parsed.is_none() {
        v.add(field, "must be a language tag such as fr-FR or en");
    }
    parsed
}

impl DeviceBody {
    fn parse(self, allow_local: bool) -> Result<NewDevice, Problem> {
        let mut v = Validation::new();
        let device = match self {
            DeviceBody::Webpush {
                endpoint,
                keys,
                locale,
            } => {
                // A customer chooses this address and we will call it: outside local runs,
                // https to a public host only (the sender checks resolved addresses too).
                let endpoint_ok = match reqwest::Url::parse(&endpoint) {
                    Ok(url) => match url.host() {
                        Some(_) if allow_local => matches!(url.scheme(), "https" | "http"),
                        Some(host) => {
                            url.scheme() == "https" && crate::push::guard::host_allowed(&host)
                        }
                        None => false,
                    },
                    Err(_) => false,
                };
                if !endpoint_ok || endpoint.len() > MAX_ADDRESS {
                    v.add("endpoint", "must be an https URL of a public push service");
                }
                if let Some(point) = decoded_len(&mut v, "keys.p256dh", &keys.p256dh, 65)
                    && point[0] != 4
                {
                    v.add("keys.p256dh", "must be an uncompressed P-256 point");
                }
                decoded_len(&mut v, "keys.auth", &keys.auth, 16);
                NewDevice {
                    kind: "webpush",
                    endpoint: Some(endpoint),
                    p256dh: Some(keys.p256dh),
                    auth: Some(keys.auth),
                    token: None,
                    locale: check_locale(&mut v, "locale", locale.as_ref()),
                }
            }
            DeviceBody::Fcm { token, locale } => {
                if token.is_empty()
                    || token.len() > MAX_ADDRESS
                    || token.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    v.add("token", "must be an FCM registration token");
                }
                NewDevice {
                    kind: "fcm",
                    endpoint: None,
                    p256dh: None,
                    auth: None,
                    token: Some(token),
                    locale: check_locale(&mut v, "locale", locale.as_ref()),
                }
            }
            DeviceBody::Apns { token, locale } => {
                if !(32..=200).contains(&token.len())
                    || token.len() % 2 != 0
                    || !token.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    v.add("token", "must be an APNs device token (hex)");
                }
                NewDevice {
                    kind: "apns",
                    endpoint: None,
                    p256dh: None,
                    auth: None,
                    token: Some(token.to_ascii_lowercase()),
                    locale: check_locale(&mut v, "locale", locale.as_ref()),
                }
            }
        };
        v.finish()?;
        Ok(device)
    }
}

/// The VAPID public key browsers subscribe with. Anyone.
#[utoipa::path(tag = "webpush", responses((status = 200, body = VapidKey)))]
#[get("/v1/webpush/vapid-public-key")]
pub async fn vapid_public_key(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(VapidKey {
        public_key: state.providers.vapid_public_key().to_owned(),
    })
}

/// Registers (or replaces) a device of the customer: 201 when new, 200 when replaced.
/// That customer only.
#[utoipa::path(tag = "devices", params(("customer_id" = String, Path), ("device_id" = Uuid, Path)),
    request_body = DeviceBody,
    responses((status = 201, body = DeviceRow), (status = 200, body = DeviceRow),
              (status = 404, body = Problem), (status = 422, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
#[put("/v1/customers/{customer_id}/devices/{device_id}")]
pub async fn put_device(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    let (customer_id, device_id) = path.into_inner();
    own_customer(&caller, &customer_id, false)?;
    let device_id = Uuid::parse_str(&device_id).map_err(|_| {
        let mut v = Validation::new();
        v.add("device_id", "must be a UUID");
        v.finish().err().unwrap_or_else(Problem::internal)
    })?;
    let device = body
        .json::<DeviceBody>()?
        .parse(state.allow_local_endpoints)?;
    let (count, known) = store::device_count(&state.db, &customer_id, device_id).await?;
    if count >= MAX_DEVICES as i64 && !known {
        return Err(Problem::conflict(
            "too-many-devices",
            format!("a customer may register at most {MAX_DEVICES} devices; remove one first"),
        ));
    }
    let (row, created) = store::upsert_device(&state.db, &customer_id, device_id, &device).await?;
    Ok(if created {
        HttpResponse::Created().json(row)
    } else {
        HttpResponse::Ok().json(row)
    })
}

/// The customer's devices. That customer, admin.
#[utoipa::path(tag = "devices", params(("customer_id" = String, Path)),
    responses((status = 200, body = DeviceList), (status = 404, body = Problem)),
    security(("bearer" = [])))]
#[get("/v1/customers/{customer_id}/devices")]
pub async fn list_devices(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    own_customer(&caller, &path, true)?;
    let items = store::devices(&state.db, &path).await?;
    Ok(HttpResponse::Ok().json(DeviceList { items }))
}

/// Removes a device: it gets no more pushes. That customer, admin.
#[utoipa::path(tag = "devices", params(("customer_id" = String, Path), ("device_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem)),
    security(("bearer" = [])))]
#[delete("/v1/customers/{customer_id}/devices/{device_id}")]
pub async fn delete_device(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (customer_id, device_id) = path.into_inner();
    own_customer(&caller, &customer_id, true)?;
    let id = path_uuid(&device_id, "device")?;
    if store::delete_device(&state.db, &customer_id, id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Problem::not_found(format!("no device {device_id}")))
    }
}

/// Asks to be told when `quantity` units of a SKU are available at a store; the alert
/// fires once, then is retired. That customer.
#[utoipa::path(tag = "stock-alerts", params(("customer_id" = String, Path)), request_body = AlertBody,
    responses((status = 201, body = AlertRow), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
#[post("/v1/customers/{customer_id}/stock-alerts")]
pub async fn post_alert(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, Problem> {
    own_customer(&caller, &path, false)?;
    let ask = body.json::<AlertBody>()?;
    let mut v = Validation::new();
    check_code(&mut v, "store_id", &ask.store_id);
    check_code(&mut v, "sku", &ask.sku);
    let quantity = ask.quantity.unwrap_or(1);
    if !(1..=1_000_000).contains(&quantity) {
        v.add("quantity", "must be 1..=1000000");
    }
    let product_name = ask.product_name.as_deref().map(str::trim);
    if product_name.is_some_and(|n| n.is_empty() || n.chars().count() > 200) {
        v.add("product_name", "must be 1-200 characters");
    }
    let locale = check_locale(&mut v, "locale", ask.locale.as_ref());
    v.finish()?;
    if store::waiting_alerts(&state.db, &path).await? >= MAX_WAITING_ALERTS as i64 {
        return Err(Problem::conflict(
            "too-many-alerts",
            format!("at most {MAX_WAITING_ALERTS} alerts may wait at once"),
        ));
    }
    let txn = state.db.begin().await?;
    let (row, fired) = store::create_alert_checked(
        &txn,
        &NewAlert {
            customer_id: &path,
            store_id: &ask.store_id,
            sku: &ask.sku,
            quantity,
            product_name,
            locale: locale.as_deref(),
        },
    )
    .await?;
    txn.commit().await?;
    if fired.deliveries > 0 {
        // Already on the shelf: its push goes out now.
        shared::outbox::wake_local_relays();
    }
    Ok(HttpResponse::Created().json(row))
}

/// The customer's alerts, optionally `?status=waiting|fired|cancelled`. That customer,
/// admin.
#[utoipa::path(tag = "stock-alerts", params(("customer_id" = String, Path), ("status" = Option<String>, Query)),
    responses((status = 200, body = AlertList), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
#[get("/v1/customers/{customer_id}/stock-alerts")]
pub async fn list_alerts(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    own_customer(&caller, &path, true)?;
    let mut status = None;
    let mut v = Validation::new();
    for (key, value) in query_pairs(&req)? {
        match key.as_str() {
            "status" if ["waiting", "fired", "cancelled"].contains(&value.as_str()) => {
                status = Some(value);
            }
            "status" => v.add("status", "must be waiting, fired or cancelled"),
            other => v.add(other, "unknown parameter"),
        }
    }
    v.finish()?;
    let items = store::alerts(&state.db, &path, status.as_deref()).await?;
    Ok(HttpResponse::Ok().json(AlertList { items }))
}

/// Cancels a waiting alert (a fired one is 409). That customer, admin.
#[utoipa::path(tag = "stock-alerts", params(("customer_id" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = AlertRow), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
#[delete("/v1/customers/{customer_id}/stock-alerts/{id}")]
pub async fn cancel_alert(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (customer_id, id) = path.into_inner();
    own_customer(&caller, &customer_id, true)?;
    let id = path_uuid(&id, "alert")?;
    if let Some(row) = store::cancel_alert(&state.db, &customer_id, id).await? {
        return Ok(HttpResponse::Ok().json(row));
    }
    match store::alert(&state.db, &customer_id, id).await? {
        Some(row) => Err(Problem::conflict(
            "alert-not-waiting",
            format!(
                "alert {id} is {}: only a waiting alert can be cancelled",
                row.status
            ),
        )
        .with("alert_status", &row.status)),
        None => Err(Problem::not_found(format!("no alert {id}"))),
    }
}

/// The delivery log: `?order_id=`, `?status=`, `?limit=` (1–500, default 100). Staff see
/// their stores' deliveries, a customer their own, admin everything; an order with nothing
/// the caller may see is 404.
#[utoipa::path(tag = "notifications",
    params(("order_id" = Option<Uuid>, Query), ("status" = Option<String>, Query), ("limit" = Option<u64>, Query)),
    responses((status = 200, body = DeliveryLog), (status = 404, body = Problem), (status = 422, body = Problem),
              (status = 401, body = Problem)),
    security(("bearer" = [])))]
#[get("/v1/notifications")]
pub async fn delivery_log(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Customer, Role::Staff, Role::Admin])?;
    let mut filter = LogFilter {
        limit: 100,
        ..LogFilter::default()
    };
    let mut v = Validation::new();
    for (key, value) in query_pairs(&req)? {
        match key.as_str() {
            "order_id" => match Uuid::parse_str(&value) {
                Ok(id) => filter.order_id = Some(id),
                Err(_) => v.add("order_id", "must be a UUID"),
            },
            "status" => {
                if ["pending", "retrying", "sent", "failed", "dead"].contains(&value.as_str()) {
                    filter.status = Some(value);
                } else {
                    v.add("status", "must be pending, retrying, sent, failed or dead");
                }
            }
            "limit" => match value.parse::<u64>() {
                Ok(n @ 1..=500) => filter.limit = n,
                _ => v.add("limit", "must be 1..=500"),
            },
            other => v.add(other, "unknown parameter"),
        }
    }
    v.finish()?;
    match caller.role {
        Role::Customer => filter.customer_id = Some(caller.id.clone()),
        Role::Staff => filter.stores = Some(caller.stores.clone()),
        _ => {}
    }
    let items = store::deliveries(&state.db, &filter).await?;
    // Another customer's order (or another store's) looks like an unknown one.
    if let Some(order) = filter.order_id
        && items.is_empty()
        && caller.role != Role::Admin
    {
        return Err(Problem::not_found(format!(
            "no deliveries of order {order}"
        )));
    }
    Ok(HttpResponse::Ok().json(DeliveryLog { items }))
}

/// The OpenAPI document's top, completed by the handlers registered in [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "clickcollect notifications",
        description = "Push notifications: devices, back-in-stock alerts, the delivery log, the VAPID key."
    ),
    modifiers(&BearerAuth),
    components(schemas(shared::problem::Problem, shared::problem::FieldError))
)]
pub struct ApiDoc;

/// Registers every documented handler.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(vapid_public_key)
        .service(put_device)
        .service(list_devices)
        .service(delete_device)
        .service(post_alert)
        .service(list_alerts)
        .service(cancel_alert)
        .service(delivery_log);
}

/// The OpenAPI document the code generates (committed as `notifications/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    shared::http::generated_openapi(ApiDoc::openapi(), routes)
}
