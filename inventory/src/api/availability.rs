//! Availability reads (public): single and batch, nearby stores, and the live SSE stream.

use super::{AppState, query_pairs};
use crate::domain;
use crate::store::{Level, Store};
use actix_web::{HttpRequest, HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::problem::Problem;
use std::collections::HashSet;
use std::time::Duration;

/// One (store, SKU) as the channels see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AvailabilityItem {
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
    /// `max(0, on_hand - reserved - safety_stock)`.
    pub available: i64,
    /// `in_stock`, `low_stock` or `out_of_stock`.
    pub status: String,
    /// The level's revision (0: never stocked).
    pub revision: i64,
    /// Last change; absent for a pair never stocked.
    pub updated_at: Option<DateTime<Utc>>,
}

/// [`AvailabilityItem`] borrowing its level: what the read paths serialize, without
/// copying a string per item (a batch answers up to 10,000 of them).
#[derive(Debug, Serialize)]
pub struct ItemRef<'a> {
    store_id: &'a str,
    sku: &'a str,
    on_hand: i64,
    reserved: i64,
    safety_stock: i64,
    available: i64,
    status: &'static str,
    revision: i64,
    updated_at: Option<DateTime<Utc>>,
}

impl<'a> ItemRef<'a> {
    /// The item of `level` under its store's threshold (0 for an unknown store).
    pub fn new(level: &'a Level, threshold: i64) -> Self {
        let available = domain::available(level.on_hand, level.reserved, level.safety_stock);
        Self {
            store_id: &level.store_id,
            sku: &level.sku,
            on_hand: level.on_hand,
            reserved: level.reserved,
            safety_stock: level.safety_stock,
            available,
            status: domain::status(available, threshold),
            revision: level.revision,
            updated_at: level.updated_at,
        }
    }
}

impl ItemRef<'_> {
    /// Appends the item's JSON to `out`: the bytes `serde_json` writes for it (a test pins
    /// that), in a fraction of its time. Availability answers are mostly this: a batch is
    /// up to 10,000 items, and escaping every key and code through the serializer was
    /// about a third of the service's CPU on it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"store_id\":");
        json_str(out, self.store_id);
        out.extend_from_slice(b",\"sku\":");
        json_str(out, self.sku);
        for (key, value) in [
            (&b",\"on_hand\":"[..], self.on_hand),
            (b",\"reserved\":", self.reserved),
            (b",\"safety_stock\":", self.safety_stock),
            (b",\"available\":", self.available),
        ] {
            out.extend_from_slice(key);
            out.extend_from_slice(n.format(value).as_bytes());
        }
        out.extend_from_slice(b",\"status\":");
        json_str(out, self.status);
        out.extend_from_slice(b",\"revision\":");
        out.extend_from_slice(n.format(self.revision).as_bytes());
        out.extend_from_slice(b",\"updated_at\":");
        match self.updated_at {
            Some(at) => {
                out.push(b'"');
                out.extend_from_slice(
                    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                        .as_bytes(),
                );
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
}

/// A JSON string: as it is when nothing in it needs escaping (codes never do), else
/// through `serde_json`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing to a Vec does not fail; keep the document valid regardless.
        out.extend_from_slice(b"null");
    }
}

/// `{"items":[...]}` of `items`, as [`AvailabilityList`] serializes.
fn items_json<'a>(items: impl ExactSizeIterator<Item = ItemRef<'a>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + items.len() * 160);
    out.extend_from_slice(b"{\"items\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write_json(&mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

/// The item of a level under its store's threshold (0 for an unknown store), owned.
pub fn item_with_threshold(level: &Level, threshold: i64) -> AvailabilityItem {
    let item = ItemRef::new(level, threshold);
    AvailabilityItem {
        store_id: item.store_id.to_owned(),
        sku: item.sku.to_owned(),
        on_hand: item.on_hand,
        reserved: item.reserved,
        safety_stock: item.safety_stock,
        available: item.available,
        status: item.status.to_owned(),
        revision: item.revision,
        updated_at: item.updated_at,
    }
}

/// The item of a level of `store`.
pub fn item_of(level: &Level, store: &Store) -> AvailabilityItem {
    item_with_threshold(level, store.low_stock_threshold)
}

/// Items of an availability read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AvailabilityList {
    /// One per (store, SKU) asked, stores outer, SKUs inner, in the order asked.
    pub items: Vec<AvailabilityItem>,
}

fn codes_of(pairs: &[(String, String)], name: &str) -> Result<Vec<String>, Problem> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (k, v) in pairs {
        if k == name {
            if !domain::is_code(v) {
                return Err(Problem::unprocessable(format!(
                    "{name} {v:?} must match [A-Za-z0-9._-]{{1,64}}"
                )));
            }
            if seen.insert(v.as_str()) {
                out.push(v.clone());
            }
        }
    }
    Ok(out)
}

/// Availability of every (store, SKU) pair asked: `store_id` and `sku` repeat (up to 100 × 100).
#[utoipa::path(
    tag = "availability",
    params(("store_id" = Vec<String>, Query, description = "repeatable, 1..=100"),
           ("sku" = Vec<String>, Query, description = "repeatable, 1..=100")),
    responses((status = 200, body = AvailabilityList), (status = 400, body = Problem), (status = 422, body = Problem))
)]
#[get("/v1/availability")]
pub async fn get_availability(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(&req)?;
    let stores = codes_of(&pairs, "store_id")?;
    let skus = codes_of(&pairs, "sku")?;
    if stores.is_empty() || skus.is_empty() {
        return Err(Problem::bad_request(
            "give at least one store_id and one sku",
        ));
    }
    if stores.len() > domain::MAX_BATCH_SIDE || skus.len() > domain::MAX_BATCH_SIDE {
        return Err(Problem::unprocessable(format!(
            "at most {} stores and {} SKUs per call",
            domain::MAX_BATCH_SIDE,
            domain::MAX_BATCH_SIDE
        )));
    }
    let mut thresholds = Vec::with_capacity(stores.len());
    for s in &stores {
        thresholds.push(state.view.threshold_of(s).await?);
    }
    let keys: Vec<(&str, &str)> = stores
        .iter()
        .flat_map(|s| skus.iter().map(move |k| (s.as_str(), k.as_str())))
        .collect();
    let levels = state.view.levels(&keys).await?;
    // Stores outer, SKUs inner: the i-th level belongs to store i / skus.len().
    let items = levels
        .iter()
        .enumerate()
        .map(|(i, l)| ItemRef::new(l, thresholds[i / skus.len()]));
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(items_json(items)))
}

/// One nearby store holding the SKU.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NearbyStore {
    /// Store.
    pub store_id: String,
    /// Its name.
    pub name: String,
    /// Great-circle distance from the point asked, km.
    pub distance_km: f64,
    /// Units available.
    pub available: i64,
    /// Display status.
    pub status: String,
}

/// Nearby stores, nearest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NearbyList {
    /// Pickup-enabled stores within the radius holding the quantity.
    pub stores: Vec<NearbyStore>,
}

fn number<T: std::str::FromStr>(
    pairs: &[(String, String)],
    name: &str,
    default: Option<T>,
) -> Result<T, Problem> {
    match pairs.iter().find(|(k, _)| k == name) {
        Some((_, v)) => v
            .parse()
            .map_err(|_| Problem::bad_request(format!("{name} must be a number"))),
        None => default.ok_or_else(|| Problem::bad_request(format!("{name} is required"))),
    }
}

/// Pickup-enabled stores within `radius_km` of (`lat`, `lon`) holding at least `quantity`.
#[utoipa::path(
    tag = "availability",
    params(("sku" = String, Query), ("lat" = f64, Query), ("lon" = f64, Query),
           ("radius_km" = Option<f64>, Query, description = "default 25, at most 1000"),
           ("quantity" = Option<i64>, Query, description = "default 1")),
    responses((status = 200, body = NearbyList), (status = 400, body = Problem))
)]
#[get("/v1/availability/nearby")]
pub async fn get_nearby(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(&req)?;
    let skus = codes_of(&pairs, "sku")?;
    let [sku] = skus.as_slice() else {
        return Err(Problem::bad_request("give exactly one sku"));
    };
    let lat: f64 = number(&pairs, "lat", None)?;
    let lon: f64 = number(&pairs, "lon", None)?;
    let radius: f64 = number(&pairs, "radius_km", Some(25.0))?;
    // Parsed wide, so that a huge quantity is out of range (422), not malformed (400).
    let quantity = i64::try_from(number::<i128>(&pairs, "quantity", Some(1))?).unwrap_or(i64::MAX);
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(Problem::unprocessable(
            "lat must be within -90..90 and lon within -180..180",
        ));
    }
    if !(radius > 0.0 && radius <= 1000.0) {
        return Err(Problem::unprocessable("radius_km must be within (0, 1000]"));
    }
    if !(1..=domain::MAX_QUANTITY).contains(&quantity) {
        return Err(Problem::unprocessable(
            "quantity must be a positive integer",
        ));
    }
    let mut near: Vec<(f64, Store)> = state
        .view
        .stores()
        .await?
        .into_iter()
        .filter(|s| s.pickup_enabled)
        .map(|s| (domain::distance_km(lat, lon, s.latitude, s.longitude), s))
        .filter(|(d, _)| *d <= radius)
        .collect();
    near.sort_by(|a, b| a.0.total_cmp(&b.0));
    let keys: Vec<(&str, &str)> = near
        .iter()
        .map(|(_, s)| (s.store_id.as_str(), sku.as_str()))
        .collect();
    let levels = state.view.levels(&keys).await?;
    let stores = near
        .into_iter()
        .zip(levels)
        .filter_map(|((distance, shop), level)| {
            let item = item_of(&level, &shop);
            (item.available >= quantity).then(|| NearbyStore {
                store_id: shop.store_id,
                name: shop.name,
                distance_km: (distance * 100.0).round() / 100.0,
                available: item.available,
                status: item.status,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(NearbyList { stores }))
}

/// Live availability: an SSE event `availability` with the item each time a matching level
/// changes (`store_id`, `sku` optional and repeatable).
#[utoipa::path(
    tag = "availability",
    params(("store_id" = Option<Vec<String>>, Query), ("sku" = Option<Vec<String>>, Query)),
    responses((status = 200, content_type = "text/event-stream", description = "event: availability"))
)]
#[get("/v1/availability/stream")]
pub async fn get_stream(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(&req)?;
    let stores: HashSet<String> = codes_of(&pairs, "store_id")?.into_iter().collect();
    let skus: HashSet<String> = codes_of(&pairs, "sku")?.into_iter().collect();
    if stores.len() > domain::MAX_BATCH_SIDE || skus.len() > domain::MAX_BATCH_SIDE {
        return Err(Problem::unprocessable(
            "at most 100 stores and 100 SKUs per stream",
        ));
    }
    // Subscribed before the response starts: a change committed after the headers reach
    // the client is seen.
    let changes = state.view.subscribe();
    let view = state.view.clone();
    let shutdown = state.shutdown.clone();
    let hello = futures::stream::once(async {
        Ok::<_, actix_web::Error>(web::Bytes::from_static(b": connected\n\n"))
    });
    let ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(15),
        Duration::from_secs(15),
    );
    let events = futures::stream::unfold(
        (changes, ticker, view, shutdown),
        move |(mut changes, mut ticker, view, shutdown)| {
            let stores = stores.clone();
            let skus = skus.clone();
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        _ = ticker.tick() => {
                            return Some((Ok(web::Bytes::from_static(b": keep-alive\n\n")),
                                         (changes, ticker, view, shutdown)));
                        }
                        change = changes.recv() => match change {
                            Ok(level) => {
                                if (!stores.is_empty() && !stores.contains(&level.store_id))
                                    || (!skus.is_empty() && !skus.contains(&level.sku)) {
                                    continue;
                                }
                                let item = ItemRef::new(&level, view.threshold(&level.store_id));
                                let mut frame = format!("event: availability\nid: {}:{}:{}\ndata: ",
                                                        level.store_id, level.sku, level.revision).into_bytes();
                                item.write_json(&mut frame);
                                frame.extend_from_slice(b"\n\n");
                                return Some((Ok(web::Bytes::from(frame)), (changes, ticker, view, shutdown)));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                // Ending the stream is honest: EventSource reconnects and
                                // the client reads the levels again, instead of showing
                                // stale ones.
                                tracing::warn!(missed = n, "slow SSE client fell behind; closing its stream");
                                return None;
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        },
                    }
                }
            }
        },
    );
    use futures::StreamExt;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(hello.chain(events)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[derive(Serialize)]
    struct Items<'a> {
        items: Vec<ItemRef<'a>>,
    }

    #[test]
    fn items_are_written_byte_for_byte_as_serde_json_writes_them()
    -> Result<(), Box<dyn std::error::Error>> {
        let at = |nanos: u32| Utc.timestamp_opt(1_796_000_000, nanos).single();
        let level = |store: &str, on_hand: i64, updated_at: Option<DateTime<Utc>>| Level {
            store_id: store.into(),
            sku: "SKU-00042".into(),
            on_hand,
            reserved: 3,
            safety_stock: 1,
            revision: 7,
            updated_at,
        };
        let levels = [
            level("S001", 10, at(0)),
            level("S002", 4, at(120_000_000)),
            level("S003", 0, at(123_456_000)),
            level("S004", 99, at(123_456_789)),
            level("S005", 5, None),
            Level::absent("S006", "SKU-1"),
            // Not a code the API takes, but written the same if one ever got in.
            level("we\"ird\\store\u{1}é", 2, at(5)),
        ];
        for threshold in [0, 5] {
            let items = || levels.iter().map(|l| ItemRef::new(l, threshold));
            let ours = items_json(items());
            let theirs = serde_json::to_vec(&Items {
                items: items().collect(),
            })?;
            assert_eq!(String::from_utf8(ours)?, String::from_utf8(theirs)?);
        }
        assert_eq!(items_json(std::iter::empty()), b"{\"items\":[]}");
        Ok(())
    }
}
