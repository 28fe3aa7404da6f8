//! Every SQL call of the notifications service, and its migrations.
//!
//! The delivery rows are the heart of it: one per (thing to tell, device), unique, written
//! in the consumer's transaction with its inbox row before anything is sent, then claimed
//! by the worker under `FOR UPDATE SKIP LOCKED` and settled with a conditional update.

use crate::domain::Context;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use sea_orm_migration::prelude::*;
use serde::Serialize;
use shared::events::{DeliveryFailed, Envelope, OrderStatusChanged, StockChanged, StoreUpserted};
use std::time::Duration;
use uuid::Uuid;

/// The migrations, the platform's first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        shared::db::platform_and(&[shared::db::SqlMigration {
            name: "m0100_notifications_schema",
            sql: include_str!("schema.sql"),
        }])
    }
}

/// Applies pending migrations; replicas starting together take turns on an advisory lock.
pub async fn migrate(database_url: &str) -> Result<(), DbErr> {
    shared::db::migrate::<Migrator>(database_url, 7261003).await
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The events' source.
const SOURCE: &str = "notifications";

/// Keeps the store's name and time zone for messages.
pub async fn upsert_store(conn: &impl ConnectionTrait, store: &StoreUpserted) -> Result<(), DbErr> {
    conn.execute_raw(stmt(
        "INSERT INTO stores (store_id, name, timezone) VALUES ($1, $2, $3)
         ON CONFLICT (store_id) DO UPDATE SET name = EXCLUDED.name,
             timezone = EXCLUDED.timezone, updated_at = now()",
        vec![
            store.store_id.clone().into(),
            store.name.clone().into(),
            store.timezone.clone().into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// A registered device.
#[derive(Debug, Clone, FromQueryResult, Serialize, utoipa::ToSchema)]
pub struct DeviceRow {
    /// Its owner.
    pub customer_id: String,
    /// The app's id for it.
    pub device_id: Uuid,
    /// `webpush`, `fcm` or `apns`.
    pub kind: String,
    /// Web Push: the push service URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Web Push: the browser's public key.
    #[serde(skip)]
    pub p256dh: Option<String>,
    /// Web Push: the authentication secret.
    #[serde(skip)]
    pub auth: Option<String>,
    /// FCM or APNs token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Its language, when given.
    pub locale: Option<String>,
    /// When it was first registered.
    pub created_at: DateTime<Utc>,
    /// Its last registration.
    pub updated_at: DateTime<Utc>,
}

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// `webpush`, `fcm` or `apns`.
    pub kind: &'static str,
    /// Web Push endpoint.
    pub endpoint: Option<String>,
    /// Web Push `p256dh`.
    pub p256dh: Option<String>,
    /// Web Push `auth`.
    pub auth: Option<String>,
    /// FCM / APNs token.
    pub token: Option<String>,
    /// Its language.
    pub locale: Option<String>,
}

const DEVICE_COLUMNS: &str =
    "customer_id, device_id, kind, endpoint, p256dh, auth, token, locale, created_at, updated_at";

/// Registers or replaces a device; `true` when it is new. The same browser subscription
/// or token registered by another customer before (a shared browser, a phone handed on)
/// is theirs no more: it moves here, so nobody gets pushes meant for someone else.
pub async fn upsert_device(
    conn: &impl ConnectionTrait,
    customer_id: &str,
    device_id: Uuid,
    device: &NewDevice,
) -> Result<(DeviceRow, bool), DbErr> {
    #[derive(FromQueryResult)]
    struct Inserted {
        inserted: bool,
    }
    let sql = format!(
        "WITH moved AS (
             DELETE FROM devices
             WHERE customer_id <> $1 AND kind = $3 AND (endpoint = $4 OR token = $7)
         )
         INSERT INTO devices (customer_id, device_id, kind, endpoint, p256dh, auth, token, locale)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (customer_id, device_id) DO UPDATE SET kind = EXCLUDED.kind,
             endpoint = EXCLUDED.endpoint, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
             token = EXCLUDED.token, locale = EXCLUDED.locale, updated_at = now()
         RETURNING {DEVICE_COLUMNS}, (xmax = 0) AS inserted"
    );
    let values = vec![
        customer_id.into(),
        device_id.into(),
        device.kind.into(),
        device.endpoint.clone().into(),
        device.p256dh.clone().into(),
        device.auth.clone().into(),
        device.token.clone().into(),
        device.locale.clone().into(),
    ];
    let row = conn
        .query_one_raw(stmt(&sql, values))
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?;
    let inserted = Inserted::from_query_result(&row, "")?.inserted;
    Ok((DeviceRow::from_query_result(&row, "")?, inserted))
}

/// A customer's devices, oldest first.
pub async fn devices(
    conn: &impl ConnectionTrait,
    customer_id: &str,
) -> Result<Vec<DeviceRow>, DbErr> {
    DeviceRow::find_by_statement(stmt(
        &format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE customer_id = $1 ORDER BY created_at, device_id"
        ),
        vec![customer_id.into()],
    ))
    .all(conn)
    .await
}

/// How many devices the customer has, and whether `device_id` is one of them.
pub async fn device_count(
    conn: &impl ConnectionTrait,
    customer_id: &str,
    device_id: Uuid,
) -> Result<(i64, bool), DbErr> {
    #[derive(FromQueryResult)]
    struct Count {
        devices: i64,
        known: bool,
    }
    let row = Count::find_by_statement(stmt(
        "SELECT count(*) AS devices, coalesce(bool_or(device_id = $2), false) AS known
         FROM devices WHERE customer_id = $1",
        vec![customer_id.into(), device_id.into()],
    ))
    .one(conn)
    .await?
    .ok_or_else(|| DbErr::Custom("no count".into()))?;
    Ok((row.devices, row.known))
}

/// Removes a device; `false` when there was none.
pub async fn delete_device(
    conn: &impl ConnectionTrait,
    customer_id: &str,
    device_id: Uuid,
) -> Result<bool, DbErr> {
    let done = conn
        .execute_raw(stmt(
            "DELETE FROM devices WHERE customer_id = $1 AND device_id = $2",
            vec![customer_id.into(), device_id.into()],
        ))
        .await?;
    Ok(done.rows_affected() > 0)
}

/// A back-in-stock alert.
#[derive(Debug, Clone, FromQueryResult, Serialize, utoipa::ToSchema)]
pub struct AlertRow {
    /// Its id.
    pub id: Uuid,
    /// Its customer.
    #[serde(skip)]
    pub customer_id: String,
    /// The store.
    pub store_id: String,
    /// The SKU.
    pub sku: String,
    /// Units the customer wants available.
    pub quantity: i64,
    /// The product's name, as the app gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// `waiting`, `fired` or `cancelled`.
    pub status: String,
    /// When it was asked.
    pub created_at: DateTime<Utc>,
    /// When it fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<DateTime<Utc>>,
}

const ALERT_COLUMNS: &str =
    "id, customer_id, store_id, sku, quantity, product_name, status, created_at, fired_at";

/// A new alert, `waiting`.
pub struct NewAlert<'a> {
    /// Its customer.
    pub customer_id: &'a str,
    /// The store.
    pub store_id: &'a str,
    /// The SKU.
    pub sku: &'a str,
    /// Units wanted.
    pub quantity: i64,
    /// The product's name.
    pub product_name: Option<&'a str>,
    /// The language to write in when the device has none.
    pub locale: Option<&'a str>,
}

/// Stores a waiting alert.
pub async fn create_alert(
    conn: &impl ConnectionTrait,
    alert: &NewAlert<'_>,
) -> Result<AlertRow, DbErr> {
    AlertRow::find_by_statement(stmt(
        &format!(
            "INSERT INTO stock_alerts (id, customer_id, store_id, sku, quantity, product_name, locale)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ALERT_COLUMNS}"
        ),
        vec![
            Uuid::now_v7().into(),
            alert.customer_id.into(),
            alert.store_id.into(),
            alert.sku.into(),
            alert.quantity.into(),
            alert.product_name.map(str::to_owned).into(),
            alert.locale.map(str::to_owned).into(),
        ],
    ))
    .one(conn)
    .await?
    .ok_or(DbErr::RecordNotInserted)
}

/// A customer's alerts, oldest first, optionally of one status.
pub async fn alerts(
    conn: &impl ConnectionTrait,
    customer_id: &str,
    status: Option<&str>,
) -> Result<Vec<AlertRow>, DbErr> {
    AlertRow::find_by_statement(stmt(
        &format!(
            "SELECT {ALERT_COLUMNS} FROM stock_alerts
             WHERE customer_id = $1 AND ($2::text IS NULL OR status = $2)
             ORDER BY created_at, id LIMIT 1000"
        ),
        vec![customer_id.into(), status.map(str::to_owned).into()],
    ))
    .all(conn)
    .await
}

/// How many alerts of the customer wait (over the partial index of waiting alerts).
pub async fn waiting_alerts(conn: &impl ConnectionTrait, customer_id: &str) -> Result<i64, DbErr> {
    #[derive(FromQueryResult)]
    struct Count {
        waiting: i64,
    }
    Ok(Count::find_by_statement(stmt(
        "SELECT count(*) AS waiting FROM stock_alerts WHERE customer_id = $1 AND status = 'waiting'",
        vec![customer_id.into()],
    ))
    .one(conn)
    .await?
    .map_or(0, |c| c.waiting))
}

/// One alert of a customer.
pub async fn alert(
    conn: &impl ConnectionTrait,
    customer_id: &str,
    id: Uuid,
) -> Result<Option<AlertRow>, DbErr> {
    AlertRow::find_by_statement(stmt(
        &format!("SELECT {ALERT_COLUMNS} FROM stock_alerts WHERE customer_id = $1 AND id = $2"),
        vec![customer_id.into(), id.into()],
    ))
    .one(conn)
    .await
}

/// Cancels a waiting alert (conditional on `waiting`: a fired one stays fired).
pub async fn cancel_alert(
    conn: &impl ConnectionTrait,
    customer_id: &str,
    id: Uuid,
) -> Result<Option<AlertRow>, DbErr> {
    AlertRow::find_by_statement(stmt(
        &format!(
            "UPDATE stock_alerts SET status = 'cancelled'
             WHERE customer_id = $1 AND id = $2 AND status = 'waiting' RETURNING {ALERT_COLUMNS}"
        ),
        vec![customer_id.into(), id.into()],
    ))
    .one(conn)
    .await
}

/// Writes one delivery per device of the order's customer for an order event (`event` is
/// its short name); a redelivered event adds nothing (unique key). Returns rows added.
pub async fn enqueue_order_event(
    conn: &impl ConnectionTrait,
    envelope: &Envelope,
    change: &OrderStatusChanged,
    event: &str,
) -> Result<u64, DbErr> {
    #[derive(FromQueryResult)]
    struct Store {
        name: String,
        timezone: String,
    }
    let known = Store::find_by_statement(stmt(
        "SELECT name, timezone FROM stores WHERE store_id = $1",
        vec![change.store_id.clone().into()],
    ))
    .one(conn)
    .await?;
    let context = Context::Order {
        order_id: change.order_id.to_string(),
        event: event.to_owned(),
        store_id: change.store_id.clone(),
        store_name: change
            .store_name
            .clone()
            .or_else(|| known.as_ref().map(|s| s.name.clone()))
            .unwrap_or_else(|| change.store_id.clone()),
        timezone: known.map_or_else(|| "UTC".to_owned(), |s| s.timezone),
        locale: Some(change.locale.clone()).filter(|l| !l.is_empty()),
        pickup_code: change.pickup_code.clone(),
        pickup_deadline: change.pickup_deadline,
    };
    let context = serde_json::to_value(&context).map_err(|e| DbErr::Custom(e.to_string()))?;
    // The key is the order and its event, not the message id: two envelopes of one
    // transition (an outbox row relayed twice) still push once.
    let done = conn
        .execute_raw(stmt(
            "INSERT INTO deliveries (id, dedupe_key, customer_id, device_id, kind, order_id,
                                     store_id, event_type, context)
             SELECT uuid_v7(), $1, customer_id, device_id, kind, $2, $3, $4, $5
             FROM devices WHERE customer_id = $6
             ON CONFLICT (dedupe_key, device_id) DO NOTHING",
            vec![
                format!("order:{}:{event}", change.order_id).into(),
                change.order_id.into(),
                change.store_id.clone().into(),
                envelope.event_type.clone().into(),
                context.into(),
                change.customer_id.clone().into(),
            ],
        ))
        .await?;
    Ok(done.rows_affected())
}

/// What a stock change did to the alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fired {
    /// The change was at or below a revision already seen: nothing fired.
    pub stale: bool,
    /// Alerts retired.
    pub alerts: u64,
    /// Deliveries written for them.
    pub deliveries: u64,
}

/// Applies a stock change: drops it if stale, else fires every waiting alert on that
/// (store, SKU) whose quantity is now available, in one pass over the partial index.
///
/// Two statements on purpose: the revision guard takes the `stock_seen` row lock, and the
/// second statement's snapshot, taken after it, sees every alert whose creation committed
/// before (an alert's creation holds that row `FOR SHARE`, see [`create_alert_checked`]).
pub async fn on_stock_changed(
    conn: &impl ConnectionTrait,
    change: &StockChanged,
) -> Result<Fired, DbErr> {
    // Only a newer revision is recorded; a stale or repeated change updates no row.
    let fresh = conn
        .execute_raw(stmt(
            "INSERT INTO stock_seen AS s (store_id, sku, revision, available)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (store_id, sku) DO UPDATE
                 SET revision = EXCLUDED.revision, available = EXCLUDED.available
                 WHERE s.revision < EXCLUDED.revision",
            vec![
                change.store_id.clone().into(),
                change.sku.clone().into(),
                change.revision.into(),
                change.available.into(),
            ],
        ))
        .await?
        .rows_affected()
        > 0;
    if !fresh {
        return Ok(Fired {
            stale: true,
            ..Fired::default()
        });
    }
    fire(
        conn,
        &change.store_id,
        &change.sku,
        change.available,
        change.revision,
        None,
    )
    .await
}

/// Retires the waiting alerts of (store, SKU) that `available` satisfies (only `alert`
/// when given) and writes their deliveries, in one statement.
async fn fire(
    conn: &impl ConnectionTrait,
    store_id: &str,
    sku: &str,
    available: i64,
    revision: i64,
    alert: Option<Uuid>,
) -> Result<Fired, DbErr> {
    #[derive(FromQueryResult)]
    struct Counts {
        alerts: i64,
        deliveries: i64,
    }
    // The retirement is conditional on `waiting`, so an alert fires once.
    let row = Counts::find_by_statement(stmt(
        "WITH fired AS (
             UPDATE stock_alerts a
             SET status = 'fired', fired_at = now(), fired_revision = $4
             WHERE a.store_id = $1 AND a.sku = $2 AND a.status = 'waiting'
               AND a.quantity <= $3 AND ($5::uuid IS NULL OR a.id = $5)
             RETURNING a.id, a.customer_id, a.store_id, a.sku, a.product_name, a.locale
         ), queued AS (
             INSERT INTO deliveries (id, dedupe_key, customer_id, device_id, kind, alert_id,
                                     store_id, event_type, context)
             SELECT uuid_v7(), 'alert:' || f.id, f.customer_id, d.device_id, d.kind, f.id,
                    f.store_id, 'notifications.stock_alert.fired',
                    jsonb_build_object('about', 'back_in_stock', 'alert_id', f.id::text,
                        'store_id', f.store_id, 'store_name', coalesce(st.name, f.store_id),
                        'sku', f.sku, 'product_name', f.product_name, 'available', $3::bigint,
                        'locale', f.locale)
             FROM fired f
             JOIN devices d ON d.customer_id = f.customer_id
             LEFT JOIN stores st ON st.store_id = f.store_id
             ON CONFLICT (dedupe_key, device_id) DO NOTHING
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM fired) AS alerts, (SELECT count(*) FROM queued) AS deliveries",
        vec![
            store_id.into(),
            sku.into(),
            available.into(),
            revision.into(),
            alert.into(),
        ],
    ))
    .one(conn)
    .await?
    .ok_or_else(|| DbErr::Custom("no counts".into()))?;
    Ok(Fired {
        stale: false,
        alerts: <u64 as TryFrom<i64>>::try_from(row.alerts).unwrap_or(0),
        deliveries: <u64 as TryFrom<i64>>::try_from(row.deliveries).unwrap_or(0),
    })
}

/// Stores a waiting alert and, when the newest change seen already makes the quantity
/// available, fires it at once. Run it in a transaction: it holds the level's
/// `stock_seen` row `FOR SHARE` until the commit, so a stock change handled at the same
/// time either sees the alert or is seen by it (never neither).
pub async fn create_alert_checked(
    conn: &impl ConnectionTrait,
    alert: &NewAlert<'_>,
) -> Result<(AlertRow, Fired), DbErr> {
    #[derive(FromQueryResult)]
    struct Seen {
        revision: i64,
        available: i64,
    }
    let row = create_alert(conn, alert).await?;
    // A placeholder below every real revision, so there is always a row to hold.
    conn.execute_raw(stmt(
        "INSERT INTO stock_seen (store_id, sku, revision, available) VALUES ($1, $2, -1, 0)
         ON CONFLICT (store_id, sku) DO NOTHING",
        vec![alert.store_id.into(), alert.sku.into()],
    ))
    .await?;
    let seen = Seen::find_by_statement(stmt(
        "SELECT revision, available FROM stock_seen WHERE store_id = $1 AND sku = $2 FOR SHARE",
        vec![alert.store_id.into(), alert.sku.into()],
    ))
    .one(conn)
    .await?;
    match seen {
        Some(s) if s.revision >= 0 && s.available >= alert.quantity => {
            let fired = fire(
                conn,
                alert.store_id,
                alert.sku,
                s.available,
                s.revision,
                Some(row.id),
            )
            .await?;
            let row = self::alert(conn, alert.customer_id, row.id)
                .await?
                .unwrap_or(row);
            Ok((row, fired))
        }
        _ => Ok((row, Fired::default())),
    }
}

/// A delivery claimed for one attempt, with its device as it is now.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Claimed {
    /// The delivery.
    pub id: Uuid,
    /// Its customer.
    pub customer_id: String,
    /// Its device.
    pub device_id: Uuid,
    /// The device's kind when the delivery was written.
    pub kind: String,
    /// The order, for order events.
    pub order_id: Option<Uuid>,
    /// The event type.
    pub event_type: String,
    /// What to say.
    pub context: serde_json::Value,
    /// Attempts including this one.
    pub attempts: i32,
    /// The device's kind now (`None`: the device was removed).
    pub device_kind: Option<String>,
    /// Web Push endpoint.
    pub endpoint: Option<String>,
    /// Web Push `p256dh`.
    pub p256dh: Option<String>,
    /// Web Push `auth`.
    pub auth: Option<String>,
    /// FCM / APNs token.
    pub token: Option<String>,
    /// The device's language.
    pub locale: Option<String>,
}

/// Claims up to `limit` due deliveries for one attempt each: counts the attempt and moves
/// `next_attempt_at` a `lease` ahead, so a worker that dies mid-send leaves the row to be
/// tried again then; other replicas skip the locked rows.
pub async fn claim_due(
    conn: &impl ConnectionTrait,
    limit: u32,
    lease: Duration,
) -> Result<Vec<Claimed>, DbErr> {
    Claimed::find_by_statement(stmt(
        "WITH due AS (
             SELECT id FROM deliveries
             WHERE status IN ('pending', 'retrying') AND next_attempt_at <= now()
             ORDER BY next_attempt_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE deliveries d
             SET attempts = d.attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $2)
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.customer_id, d.device_id, d.kind, d.order_id, d.event_type,
                       d.context, d.attempts
         )
         SELECT c.*, v.kind AS device_kind, v.endpoint, v.p256dh, v.auth, v.token, v.locale
         FROM claimed c
         LEFT JOIN devices v ON v.customer_id = c.customer_id AND v.device_id = c.device_id",
        vec![i64::from(limit).into(), lease.as_secs_f64().into()],
    ))
    .all(conn)
    .await
}

/// How an attempt ends a delivery, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Accepted by the push service.
    Sent,
    /// Tried again at `at`.
    Retry {
        /// Why.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Not deliverable (device gone, provider disabled); no event.
    Failed {
        /// Why.
        error: String,
    },
    /// Given up: `notifications.delivery.failed` is published in the same transaction.
    Dead {
        /// Why.
        error: String,
    },
}

/// Records the outcome of the attempt numbered `attempts`; conditional on that attempt
/// still being the delivery's latest and the delivery being open, so an attempt whose
/// lease ran out (and was taken over) cannot overwrite a newer outcome. `false` when it
/// recorded nothing.
pub async fn settle(
    conn: &impl ConnectionTrait,
    claimed: &Claimed,
    outcome: &Settle,
) -> Result<bool, DbErr> {
    let (status, error, next): (&str, Option<&str>, Option<DateTime<Utc>>) = match outcome {
        Settle::Sent => ("sent", None, None),
        Settle::Retry { error, at } => ("retrying", Some(error.as_str()), Some(*at)),
        Settle::Failed { error } => ("failed", Some(error.as_str()), None),
        Settle::Dead { error } => ("dead", Some(error.as_str()), None),
    };
    let done = conn
        .execute_raw(stmt(
            "UPDATE deliveries
             SET status = $3, last_error = $4,
                 next_attempt_at = coalesce($5, next_attempt_at),
                 sent_at = CASE WHEN $3 = 'sent' THEN now() END
             WHERE id = $1 AND attempts = $2 AND status IN ('pending', 'retrying')",
            vec![
                claimed.id.into(),
                claimed.attempts.into(),
                status.into(),
                error.map(|e| truncate(e, 500)).into(),
                next.into(),
            ],
        ))
        .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    if let Settle::Dead { error } = outcome {
        let event = Envelope::new(
            shared::events::types::DELIVERY_FAILED,
            SOURCE,
            DeliveryFailed {
                order_id: claimed.order_id,
                device_id: claimed.device_id.to_string(),
                event_type: claimed.event_type.clone(),
                reason: truncate(error, 500),
            },
            None,
        );
        shared::outbox::enqueue(conn, &format!("delivery:{}", claimed.id), &event).await?;
    }
    Ok(true)
}

/// Removes a device the push service says is gone, unless it was registered again with
/// another address since the attempt (then the new registration stays).
pub async fn remove_gone_device(
    conn: &impl ConnectionTrait,
    claimed: &Claimed,
) -> Result<bool, DbErr> {
    let done = conn
        .execute_raw(stmt(
            "DELETE FROM devices WHERE customer_id = $1 AND device_id = $2
               AND endpoint IS NOT DISTINCT FROM $3 AND token IS NOT DISTINCT FROM $4",
            vec![
                claimed.customer_id.clone().into(),
                claimed.device_id.into(),
                claimed.endpoint.clone().into(),
                claimed.token.clone().into(),
            ],
        ))
        .await?;
    Ok(done.rows_affected() > 0)
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// One line of the delivery log.
#[derive(Debug, Clone, FromQueryResult, Serialize, utoipa::ToSchema)]
pub struct DeliveryRow {
    /// The delivery.
    pub id: Uuid,
    /// The order, for order events.
    pub order_id: Option<Uuid>,
    /// The alert, for back-in-stock pushes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<Uuid>,
    /// The event it tells of.
    pub event_type: String,
    /// The device.
    pub device_id: Uuid,
    /// `webpush`, `fcm` or `apns`.
    pub kind: String,
    /// `pending`, `retrying`, `sent`, `failed` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the push service accepted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Its customer.
    #[serde(skip)]
    pub customer_id: String,
    /// The store concerned.
    #[serde(skip)]
    pub store_id: String,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Of one order.
    pub order_id: Option<Uuid>,
    /// Of one customer.
    pub customer_id: Option<String>,
    /// Of these stores (staff).
    pub stores: Option<Vec<String>>,
    /// Of one status.
    pub status: Option<String>,
    /// At most this many.
    pub limit: u64,
}

/// The delivery log, oldest first.
pub async fn deliveries(
    conn: &impl ConnectionTrait,
    filter: &LogFilter,
) -> Result<Vec<DeliveryRow>, DbErr> {
    DeliveryRow::find_by_statement(stmt(
        "SELECT id, order_id, alert_id, event_type, device_id, kind, status, attempts,
                last_error, sent_at, created_at, customer_id, store_id
         FROM deliveries
         WHERE ($1::uuid IS NULL OR order_id = $1)
           AND ($2::text IS NULL OR customer_id = $2)
           AND ($3::text[] IS NULL OR store_id = ANY($3))
           AND ($4::text IS NULL OR status = $4)
         ORDER BY created_at, id
         LIMIT $5",
        vec![
            filter.order_id.into(),
            filter.customer_id.clone().into(),
            filter.stores.clone().into(),
            filter.status.clone().into(),
            <i64 as TryFrom<u64>>::try_from(filter.limit)
                .unwrap_or(100)
                .into(),
        ],
    ))
    .all(conn)
    .await
}

/// Deletes settled deliveries (sent, failed, dead) and retired alerts older than
/// `older_than`: the log answers questions about recent pushes, not history.
pub async fn purge_settled(
    conn: &impl ConnectionTrait,
    older_than: Duration,
) -> Result<u64, DbErr> {
    let seconds = older_than.as_secs_f64();
    let deliveries = conn
        .execute_raw(stmt(
            "DELETE FROM deliveries WHERE status IN ('sent', 'failed', 'dead')
               AND created_at < now() - make_interval(secs => $1)",
            vec![seconds.into()],
        ))
        .await?
        .rows_affected();
    let alerts = conn
        .execute_raw(stmt(
            "DELETE FROM stock_alerts WHERE status IN ('fired', 'cancelled')
               AND created_at < now() - make_interval(secs => $1)",
            vec![seconds.into()],
        ))
        .await?
        .rows_affected();
    Ok(deliveries + alerts)
}
