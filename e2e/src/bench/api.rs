//! The inventory HTTP calls the benchmark makes, against the public contract of api.md.

use crate::bench::driver::Outcome;
use anyhow::{Context, bail};
use reqwest::{Client, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Most items one `POST /v1/stock/bulk` may carry.
pub const BULK_LIMIT: usize = 5_000;

/// An HTTP/1.1 keep-alive client for up to `connections` concurrent requests, local only.
pub fn http_client(connections: usize) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One availability line of `GET /v1/availability`.
#[derive(Debug, Clone, Deserialize)]
pub struct AvailabilityItem {
    /// The store.
    pub store_id: String,
    /// The SKU.
    pub sku: String,
    /// Physically in the store.
    pub on_hand: i64,
    /// Promised to active reservations.
    pub reserved: i64,
    /// Never offered online.
    pub safety_stock: i64,
    /// `max(0, on_hand - reserved - safety_stock)`.
    pub available: i64,
}

#[derive(Debug, Deserialize)]
struct AvailabilityPage {
    items: Vec<AvailabilityItem>,
}

/// Only the number of items, for the hot loop of the batch scenario.
#[derive(Debug, Deserialize)]
pub struct ItemCount {
    /// Each item, unread.
    pub items: Vec<serde::de::IgnoredAny>,
}

/// The inventory service at one address.
#[derive(Clone)]
pub struct Api {
    /// The shared keep-alive client.
    pub http: Client,
    /// `http://127.0.0.1:<port>`.
    pub base: Arc<str>,
}

impl Api {
    /// The service at `base`.
    pub fn new(http: Client, base: &str) -> Api {
        Api {
            http,
            base: base.into(),
        }
    }

    /// `PUT /v1/stores/{store_id}` as admin.
    pub async fn put_store(&self, token: &str, store_id: &str, n: usize) -> anyhow::Result<()> {
        let body = json!({
            "name": format!("Bench store {n}"),
            "latitude": 48.80 + (n as f64) * 0.01,
            "longitude": 2.30 + (n as f64) * 0.01,
            "timezone": "Europe/Paris",
            "pickup_enabled": true,
            "low_stock_threshold": 5,
            "pickup_window_hours": 48,
        });
        let resp = self
            .http
            .put(format!("{}/v1/stores/{store_id}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        expect_success(resp, &format!("PUT /v1/stores/{store_id}")).await
    }

    /// Stock counts through `POST /v1/stock/bulk`, [`BULK_LIMIT`] items a call.
    pub async fn bulk_counts(
        &self,
        token: &str,
        levels: &[(String, String, i64)],
    ) -> anyhow::Result<()> {
        for chunk in levels.chunks(BULK_LIMIT) {
            let items: Vec<_> = chunk
                .iter()
                .map(|(store_id, sku, quantity)| {
                    json!({"store_id": store_id, "sku": sku, "kind": "count", "quantity": quantity})
                })
                .collect();
            let resp = self
                .http
                .post(format!("{}/v1/stock/bulk", self.base))
                .timeout(Duration::from_secs(120))
                .bearer_auth(token)
                .json(&json!({ "items": items }))
                .send()
                .await?;
            expect_success(resp, "POST /v1/stock/bulk").await?;
        }
        Ok(())
    }

    /// The availability URL for every pair of `stores` × `skus`.
    pub fn availability_url(&self, stores: &[&str], skus: &[&str]) -> String {
        let mut url = format!("{}/v1/availability?", self.base);
        let params = stores
            .iter()
            .map(|s| format!("store_id={s}"))
            .chain(skus.iter().map(|k| format!("sku={k}")));
        url.push_str(&params.collect::<Vec<_>>().join("&"));
        url
    }

    /// `GET /v1/availability` for `stores` × `skus`.
    pub async fn availability(
        &self,
        stores: &[&str],
        skus: &[&str],
    ) -> anyhow::Result<Vec<AvailabilityItem>> {
        let resp = self
            .http
            .get(self.availability_url(stores, skus))
            .send()
            .await?;
        if resp.status() != StatusCode::OK {
            bail!("GET /v1/availability: {}", failure(resp).await);
        }
        let page: AvailabilityPage = resp
            .json()
            .await
            .context("GET /v1/availability: unexpected body")?;
        Ok(page.items)
    }

    /// One level through `GET /v1/availability`.
    pub async fn level(&self, store_id: &str, sku: &str) -> anyhow::Result<AvailabilityItem> {
        let items = self.availability(&[store_id], &[sku]).await?;
        items
            .into_iter()
            .find(|i| i.store_id == store_id && i.sku == sku)
            .with_context(|| format!("availability lists no {store_id}/{sku}"))
    }

    /// `POST /v1/reservations` of `quantity` × `sku` (201 done, 409 refused).
    pub async fn reserve(&self, token: &str, store_id: &str, sku: &str, quantity: i64) -> Outcome {
        let body = json!({
            "store_id": store_id,
            "lines": [{"sku": sku, "quantity": quantity}],
            "channel": "web",
            "reference": format!("cart-{}", uuid::Uuid::new_v4()),
            "ttl_seconds": 900,
        });
        let sent = self
            .http
            .post(format!("{}/v1/reservations", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() == StatusCode::CREATED => drain(resp, Outcome::Done).await,
            Ok(resp) if resp.status() == StatusCode::CONFLICT => {
                drain(resp, Outcome::Refused).await
            }
            Ok(resp) => Outcome::Failed(format!("POST /v1/reservations: {}", failure(resp).await)),
            Err(err) => Outcome::Failed(format!("POST /v1/reservations: {}", transport(&err))),
        }
    }

    /// `POST /v1/stores/{store_id}/stock/{sku}/adjustments` of `delta`.
    pub async fn adjust(&self, token: &str, store_id: &str, sku: &str, delta: i64) -> Outcome {
        let sent = self
            .http
            .post(format!(
                "{}/v1/stores/{store_id}/stock/{sku}/adjustments",
                self.base
            ))
            .bearer_auth(token)
            .json(&json!({"delta": delta, "reason": "bench"}))
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => drain(resp, Outcome::Done).await,
            Ok(resp) => Outcome::Failed(format!("POST …/adjustments: {}", failure(resp).await)),
            Err(err) => Outcome::Failed(format!("POST …/adjustments: {}", transport(&err))),
        }
    }
}

/// Reads the body to the end (so the connection goes back to the pool) and answers `outcome`.
pub async fn drain(resp: Response, outcome: Outcome) -> Outcome {
    match resp.bytes().await {
        Ok(_) => outcome,
        Err(err) => Outcome::Failed(format!("reading the body: {}", transport(&err))),
    }
}

/// `HTTP 500: {"type":…}` with the body cut to a readable length.
pub async fn failure(resp: Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(400).collect();
    format!("HTTP {}: {}", status.as_u16(), body.trim())
}

/// A transport error with its cause chain (reqwest's own text is often just "error sending
/// request").
pub fn transport(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn expect_success(resp: Response, what: &str) -> anyhow::Result<()> {
    if !resp.status().is_success() {
        bail!("{what}: {}", failure(resp).await);
    }
    Ok(())
}
