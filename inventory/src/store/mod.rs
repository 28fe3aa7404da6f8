//! Every SQL call of the inventory service, and its migrations.
//!
//! The rules that guard stock (no oversell, all-or-nothing carts, one transition each) run
//! inside PostgreSQL functions (`schema.sql`), one statement per operation: the guard sits
//! in the database, next to the row locks, and a reservation costs one round trip.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, Statement, Value,
};
use sea_orm_migration::prelude::*;
use serde::Serialize;
use uuid::Uuid;

pub mod saga;

/// The migrations, the platform's first: the tables and the functions that guard stock
/// (`schema.sql`), the order saga's index, tombstones and hold adoption (`saga.sql`),
/// reservations in groups, one commit for many (`batch.sql`), the trace on events
/// written in SQL (`trace.sql`), and groups decided in a fixed number of statements
/// (`group.sql`).
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        shared::db::platform_and(&[
            shared::db::SqlMigration {
                name: "m0100_inventory_schema",
                sql: include_str!("schema.sql"),
            },
            shared::db::SqlMigration {
                name: "m0101_inventory_order_saga",
                sql: include_str!("saga.sql"),
            },
            shared::db::SqlMigration {
                name: "m0102_inventory_reserve_batch",
                sql: include_str!("batch.sql"),
            },
            shared::db::SqlMigration {
                name: "m0103_inventory_event_trace",
                sql: include_str!("trace.sql"),
            },
            shared::db::SqlMigration {
                name: "m0104_inventory_reserve_group",
                sql: include_str!("group.sql"),
            },
        ])
    }
}

/// Applies pending migrations; replicas starting together take turns on an advisory lock.
pub async fn migrate(database_url: &str) -> Result<(), DbErr> {
    shared::db::migrate::<Migrator>(database_url, 7261001).await
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A store as kept in the database.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Store {
    /// The retailer's store code.
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// WGS84 latitude.
    pub latitude: f64,
    /// WGS84 longitude.
    pub longitude: f64,
    /// IANA time zone.
    pub timezone: String,
    /// Whether online orders may be collected here.
    pub pickup_enabled: bool,
    /// Available at or under this shows `low_stock`.
    pub low_stock_threshold: i64,
    /// Hours a ready order waits at the counter.
    pub pickup_window_hours: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Store {
    fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            store_id: row.try_get("", "store_id")?,
            name: row.try_get("", "name")?,
            latitude: row.try_get("", "latitude")?,
            longitude: row.try_get("", "longitude")?,
            timezone: row.try_get("", "timezone")?,
            pickup_enabled: row.try_get("", "pickup_enabled")?,
            low_stock_threshold: row.try_get("", "low_stock_threshold")?,
            pickup_window_hours: row.try_get("", "pickup_window_hours")?,
            updated_at: row.try_get("", "updated_at")?,
        })
    }
}

/// The fields of a store write.
#[derive(Debug, Clone)]
pub struct StoreWrite {
    /// Store code.
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// WGS84 latitude.
    pub latitude: f64,
    /// WGS84 longitude.
    pub longitude: f64,
    /// IANA time zone.
    pub timezone: String,
    /// Pickup allowed.
    pub pickup_enabled: bool,
    /// Low-stock threshold.
    pub low_stock_threshold: i64,
    /// Pickup window in hours.
    pub pickup_window_hours: i64,
}

/// Creates or updates a store and publishes `inventory.store.upserted`.
pub async fn upsert_store(
    db: &impl ConnectionTrait,
    s: &StoreWrite,
    correlation: Uuid,
) -> Result<Store, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT * FROM upsert_store($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            vec![
                s.store_id.clone().into(),
                s.name.clone().into(),
                s.latitude.into(),
                s.longitude.into(),
                s.timezone.clone().into(),
                s.pickup_enabled.into(),
                s.low_stock_threshold.into(),
                s.pickup_window_hours.into(),
                correlation.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("upsert_store returned nothing".into()))?;
    Store::from_row(&row)
}

/// Every store, by id.
pub async fn list_stores(db: &impl ConnectionTrait) -> Result<Vec<Store>, DbErr> {
    db.query_all_raw(stmt("SELECT * FROM stores ORDER BY store_id", vec![]))
        .await?
        .iter()
        .map(Store::from_row)
        .collect()
}

/// One store.
pub async fn get_store(db: &impl ConnectionTrait, store_id: &str) -> Result<Option<Store>, DbErr> {
    db.query_one_raw(stmt(
        "SELECT * FROM stores WHERE store_id = $1",
        vec![store_id.into()],
    ))
    .await?
    .as_ref()
    .map(Store::from_row)
    .transpose()
}

/// A stock level row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Level {
    /// Store.
    pub store_id: String,
    /// SKU.
    pub sku: String,
    /// Physically in the store.
    pub on_hand: i64,
    /// Promised to active reservations.
    pub reserved: i64,
    /// Never offered online.
    pub safety_stock: i64,
    /// Grows with every change; 0 for a level that does not exist.
    pub revision: i64,
    /// Last change; `None` for a level that does not exist.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Level {
    fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            store_id: row.try_get("", "store_id")?,
            sku: row.try_get("", "sku")?,
            on_hand: row.try_get("", "on_hand")?,
            reserved: row.try_get("", "reserved")?,
            safety_stock: row.try_get("", "safety_stock")?,
            revision: row.try_get("", "revision")?,
            updated_at: row.try_get("", "updated_at")?,
        })
    }

    /// The level of a pair that has never been stocked.
    pub fn absent(store_id: &str, sku: &str) -> Self {
        Self {
            store_id: store_id.to_owned(),
            sku: sku.to_owned(),
            on_hand: 0,
            reserved: 0,
            safety_stock: 0,
            revision: 0,
            updated_at: None,
        }
    }
}

/// The levels of the given pairs that exist.
pub async fn levels(
    db: &impl ConnectionTrait,
    pairs: &[(String, String)],
) -> Result<Vec<Level>, DbErr> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let stores: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    let skus: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
    db.query_all_raw(stmt(
        "SELECT l.* FROM unnest($1::text[], $2::text[]) AS q (store_id, sku) \
         JOIN stock_levels l ON l.store_id = q.store_id AND l.sku = q.sku",
        vec![stores.into(), skus.into()],
    ))
    .await?
    .iter()
    .map(Level::from_row)
    .collect()
}

/// A kind of stock movement that is not a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveKind {
    /// Goods delivered.
    Receipt,
    /// Goods back from a customer.
    Return,
    /// A POS sale (never refused).
    Sale,
    /// A signed correction.
    Adjustment,
    /// A stock-take: absolute on_hand.
    Count,
}

impl MoveKind {
    /// The ledger's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Return => "return",
            Self::Sale => "sale",
            Self::Adjustment => "adjustment",
            Self::Count => "count",
        }
    }
}

/// Who and why of a write, carried into the ledger and the events.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The caller (`role:id`).
    pub actor: String,
    /// The caller's reference (POS ticket, delivery note…).
    pub reference: Option<String>,
    /// Correlation of everything this request causes.
    pub correlation: Uuid,
}

/// Applies one movement; `None` when an adjustment would take on_hand below zero.
pub async fn move_stock(
    db: &impl ConnectionTrait,
    store_id: &str,
    sku: &str,
    kind: MoveKind,
    quantity: i64,
    safety_stock: Option<i64>,
    by: &Provenance,
) -> Result<Option<Level>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT m.* FROM move_stock($1, $2, $3, $4, $5, $6, $7, $8) m",
            vec![
                store_id.into(),
                sku.into(),
                kind.as_str().into(),
                quantity.into(),
                safety_stock.into(),
                by.reference.clone().into(),
                by.actor.clone().into(),
                by.correlation.into(),
            ],
        ))
        .await?;
    match row {
        // A composite NULL comes back as a row of NULLs.
        Some(row) if row.try_get::<Option<String>>("", "store_id")?.is_some() => {
            Ok(Some(Level::from_row(&row)?))
        }
        _ => Ok(None),
    }
}

/// One line of a bulk import, already validated.
#[derive(Debug, Clone)]
pub struct BulkItem {
    /// Store.
    pub store_id: String,
    /// SKU.
    pub sku: String,
    /// Count or receipt.
    pub kind: MoveKind,
    /// Units.
    pub quantity: i64,
}

/// Applies every item in one statement, all or nothing, in (store, SKU) order.
pub async fn move_stock_bulk(
    db: &impl ConnectionTrait,
    items: &mut [BulkItem],
    by: &Provenance,
) -> Result<(), DbErr> {
    // Stable: two items of one level keep the order they were sent in.
    items.sort_by(|a, b| (&a.store_id, &a.sku).cmp(&(&b.store_id, &b.sku)));
    let stores: Vec<String> = items.iter().map(|i| i.store_id.clone()).collect();
    let skus: Vec<String> = items.iter().map(|i| i.sku.clone()).collect();
    let kinds: Vec<String> = items.iter().map(|i| i.kind.as_str().to_owned()).collect();
    let quantities: Vec<i64> = items.iter().map(|i| i.quantity).collect();
    db.execute_raw(stmt(
        "SELECT move_stock_bulk($1, $2, $3, $4, $5, $6, $7)",
        vec![
            stores.into(),
            skus.into(),
            kinds.into(),
            quantities.into(),
            by.reference.clone().into(),
            by.actor.clone().into(),
            by.correlation.into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// Which of `store_ids` exist.
pub async fn existing_stores(
    db: &impl ConnectionTrait,
    store_ids: Vec<String>,
) -> Result<std::collections::HashSet<String>, DbErr> {
    db.query_all_raw(stmt(
        "SELECT store_id FROM stores WHERE store_id = ANY ($1)",
        vec![store_ids.into()],
    ))
    .await?
    .iter()
    .map(|r| r.try_get::<String>("", "store_id"))
    .collect()
}

/// One ledger row.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Movement {
    /// Ledger position (grows).
    pub id: i64,
    /// receipt, adjustment, count, sale, return, reserve, release, expire, commit.
    pub kind: String,
    /// The quantity of the operation.
    pub quantity: i64,
    /// What it did to on_hand.
    pub on_hand_delta: i64,
    /// What it did to reserved.
    pub reserved_delta: i64,
    /// The level's revision after it.
    pub revision: i64,
    /// The caller's reference.
    pub reference: Option<String>,
    /// Who did it.
    pub actor: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The ledger of one level, newest first, before `before_id` when given.
pub async fn movements(
    db: &impl ConnectionTrait,
    store_id: &str,
    sku: &str,
    before_id: Option<i64>,
    limit: u64,
) -> Result<Vec<Movement>, DbErr> {
    let limit = <i64 as TryFrom<u64>>::try_from(limit).unwrap_or(100);
    db.query_all_raw(stmt(
        "SELECT id, kind, quantity, on_hand_delta, reserved_delta, revision, reference, actor, \
         created_at FROM movements WHERE store_id = $1 AND sku = $2 AND ($3::bigint IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4",
        vec![store_id.into(), sku.into(), before_id.into(), limit.into()],
    ))
    .await?
    .iter()
    .map(|r| {
        Ok(Movement {
            id: r.try_get("", "id")?,
            kind: r.try_get("", "kind")?,
            quantity: r.try_get("", "quantity")?,
            on_hand_delta: r.try_get("", "on_hand_delta")?,
            reserved_delta: r.try_get("", "reserved_delta")?,
            revision: r.try_get("", "revision")?,
            reference: r.try_get("", "reference")?,
            actor: r.try_get("", "actor")?,
            created_at: r.try_get("", "created_at")?,
        })
    })
    .collect()
}

/// A reservation request, lines merged per SKU and sorted.
#[derive(Debug, Clone)]
pub struct ReserveCall {
    /// New reservation id.
    pub id: Uuid,
    /// Store.
    pub store_id: String,
    /// Distinct SKUs in order, with their quantities.
    pub lines: Vec<(String, i64)>,
    /// web, app, pos, order.
    pub channel: String,
    /// Cart id, POS ticket, order id.
    pub reference: String,
    /// Who owns it (`role:id`).
    pub owner: String,
    /// The order it serves.
    pub order_id: Option<Uuid>,
    /// Hold duration.
    pub ttl_seconds: i64,
    /// Correlation id.
    pub correlation: Uuid,
    /// The message that caused it.
    pub causation: Option<Uuid>,
    /// `(caller, key, request hash)` when an Idempotency-Key came with it.
    pub idempotency: Option<shared::idempotency::IdempotencyKey>,
}

/// What `reserve` answered.
#[derive(Debug, Clone)]
pub struct ReserveAnswer {
    /// created, short, replay, mismatch, running.
    pub outcome: String,
    /// HTTP status to answer (201, 409, or the replayed one).
    pub status: Option<i32>,
    /// The reservation, the shortages, or the replayed body, as JSON text (a created
    /// reservation goes out as it came from the database, without being parsed).
    pub body: Option<String>,
    /// The levels a created reservation changed.
    pub levels: Vec<Level>,
}

/// Reserves all lines or none, in one statement.
pub async fn reserve(
    db: &impl ConnectionTrait,
    call: &ReserveCall,
) -> Result<ReserveAnswer, DbErr> {
    let skus: Vec<String> = call.lines.iter().map(|l| l.0.clone()).collect();
    let quantities: Vec<i64> = call.lines.iter().map(|l| l.1).collect();
    let (caller, key, hash) = match &call.idempotency {
        Some(k) => (
            Some(k.caller.clone()),
            Some(k.key.clone()),
            Some(k.request_hash.clone()),
        ),
        None => (None, None, None),
    };
    let row = db
        .query_one_raw(stmt(
            "SELECT outcome, status, body::text AS body, levels::text AS levels \
             FROM reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            vec![
                call.id.into(),
                call.store_id.clone().into(),
                skus.into(),
                quantities.into(),
                call.channel.clone().into(),
                call.reference.clone().into(),
                call.owner.clone().into(),
                call.order_id.into(),
                call.ttl_seconds.into(),
                call.correlation.into(),
                call.causation.into(),
                caller.into(),
                key.into(),
                hash.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("reserve returned nothing".into()))?;
    ReserveAnswer::from_row(&row)
}

impl ReserveAnswer {
    fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        let levels = match row.try_get::<Option<String>>("", "levels")? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| DbErr::Custom(format!("unreadable levels from reserve: {e}")))?,
            None => Vec::new(),
        };
        Ok(Self {
            outcome: row.try_get("", "outcome")?,
            status: row.try_get("", "status")?,
            body: row.try_get("", "body")?,
            levels,
        })
    }

    /// The body, parsed (for the answers that are not sent as they came).
    pub fn body_json(&self) -> Result<Option<serde_json::Value>, DbErr> {
        parse_answer_body(self.body.as_deref())
    }
}

/// A body `reserve` or `reserve_batch` wrote, parsed.
pub fn parse_answer_body(text: Option<&str>) -> Result<Option<serde_json::Value>, DbErr> {
    text.map(serde_json::from_str)
        .transpose()
        .map_err(|e| DbErr::Custom(format!("unreadable answer from reserve: {e}")))
}

/// A request as `reserve_batch` reads it.
#[derive(Serialize)]
struct GroupRequest<'a> {
    id: Uuid,
    store_id: &'a str,
    skus: Vec<&'a str>,
    quantities: Vec<i64>,
    channel: &'a str,
    reference: &'a str,
    owner: &'a str,
    order_id: Option<Uuid>,
    ttl_seconds: i64,
    correlation: Uuid,
    causation: Option<Uuid>,
    idem_caller: Option<&'a str>,
    idem_key: Option<&'a str>,
    idem_hash: Option<&'a str>,
}

impl<'a> From<&'a ReserveCall> for GroupRequest<'a> {
    fn from(call: &'a ReserveCall) -> Self {
        let (skus, quantities) = call.lines.iter().map(|(s, q)| (s.as_str(), *q)).unzip();
        let idem = call.idempotency.as_ref();
        Self {
            id: call.id,
            store_id: &call.store_id,
            skus,
            quantities,
            channel: &call.channel,
            reference: &call.reference,
            owner: &call.owner,
            order_id: call.order_id,
            ttl_seconds: call.ttl_seconds,
            correlation: call.correlation,
            causation: call.causation,
            idem_caller: idem.map(|k| k.caller.as_str()),
            idem_key: idem.map(|k| k.key.as_str()),
            idem_hash: idem.map(|k| k.request_hash.as_str()),
        }
    }
}

/// A group as `reserve_batch` reads it: a JSON array of requests (benchmarks that call the
/// function directly check their scripts against this shape).
pub fn encode_group(calls: &[ReserveCall]) -> Result<String, DbErr> {
    let requests: Vec<GroupRequest<'_>> = calls.iter().map(GroupRequest::from).collect();
    serde_json::to_string(&requests)
        .map_err(|e| DbErr::Custom(format!("cannot encode the reservation group: {e}")))
}

/// Many reservation requests in one statement and one commit; each is all or nothing on
/// its own and gets its own answer, in the order of `calls`. An error means none of them
/// happened (the statement is its own transaction).
pub async fn reserve_batch(
    db: &impl ConnectionTrait,
    calls: &[ReserveCall],
) -> Result<Vec<ReserveAnswer>, DbErr> {
    let requests = encode_group(calls)?;
    let rows = db
        .query_all_raw(stmt(
            "SELECT idx, outcome, status, body, levels FROM reserve_batch($1::text::jsonb)",
            vec![requests.into()],
        ))
        .await?;
    let mut answers: Vec<Option<ReserveAnswer>> = calls.iter().map(|_| None).collect();
    for row in &rows {
        let idx: i32 = row.try_get("", "idx")?;
        let slot = usize::try_from(idx)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| answers.get_mut(i))
            .ok_or_else(|| DbErr::Custom(format!("reserve_batch answered for request {idx}")))?;
        *slot = Some(ReserveAnswer::from_row(row)?);
    }
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| DbErr::Custom("reserve_batch left a request unanswered".into())))
        .collect()
}

/// A reservation's JSON and its owner.
pub async fn get_reservation(
    db: &impl ConnectionTrait,
    id: Uuid,
) -> Result<Option<(serde_json::Value, String)>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT reservation_json(r) AS body, r.owner FROM reservations r WHERE r.id = $1",
            vec![id.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get("", "body")?, r.try_get("", "owner")?)))
        .transpose()
}

/// How a reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Goods handed over.
    Committed,
    /// Given back.
    Released,
    /// Ran out of time.
    Expired,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

/// A reservation that just ended, and the levels that changed with it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ended {
    /// The reservation as now stored.
    pub reservation: serde_json::Value,
    /// The levels after it ended.
    pub levels: Vec<Level>,
}

fn ended_of(value: Option<serde_json::Value>) -> Result<Option<Ended>, DbErr> {
    value
        .map(|v| {
            serde_json::from_value(v)
                .map_err(|e| DbErr::Custom(format!("unreadable end_reservation answer: {e}")))
        })
        .transpose()
}

/// Ends an active reservation once; `None` when it was not active (or does not exist).
pub async fn end_reservation(
    db: &impl ConnectionTrait,
    id: Uuid,
    ending: Ending,
    actor: &str,
    correlation: Uuid,
    causation: Option<Uuid>,
) -> Result<Option<Ended>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT end_reservation($1, $2, $3, $4, $5) AS body",
            vec![
                id.into(),
                ending.as_str().into(),
                actor.into(),
                correlation.into(),
                causation.into(),
            ],
        ))
        .await?;
    ended_of(match row {
        Some(r) => r.try_get::<Option<serde_json::Value>>("", "body")?,
        None => None,
    })
}

/// Expires one due reservation, if any; safe with many sweepers.
pub async fn expire_one_due(db: &DatabaseConnection) -> Result<Option<Ended>, DbErr> {
    let row = db
        .query_one_raw(stmt("SELECT expire_one_due() AS body", vec![]))
        .await?;
    ended_of(match row {
        Some(r) => r.try_get::<Option<serde_json::Value>>("", "body")?,
        None => None,
    })
}
