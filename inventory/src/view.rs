//! The availability view: stock levels and stores kept in memory, exact, for fast reads.
//!
//! Every committed level change has its `inventory.stock.changed` event in the outbox; the
//! relay publishes it and each replica receives it on a fan-out subscription, applies it
//! (newest revision wins) and passes it to its SSE streams. So every replica sees every
//! change, including another replica's. A replica also applies the levels its own writes
//! return, at once after commit. While the subscription is down the view is not live and
//! reads go to the database; when it comes back, the cached levels are dropped (events
//! may have been missed) and refilled on demand.

use crate::store::{self, Level, Store};
use dashmap::DashMap;
use sea_orm::{DatabaseConnection, DbErr};
use serde_json::value::RawValue;
use shared::events::{StockChanged, StoreUpserted, types};
use shared::messaging::{Broker, Subscription};
use shared::shutdown::Shutdown;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

/// Cached pairs before the view starts again from empty (bounds memory).
const MAX_CACHED_LEVELS: usize = 2_000_000;

/// Levels by store, then SKU: lookups borrow the caller's strings (no allocation).
type Levels = DashMap<String, HashMap<String, Arc<Level>>>;

/// The shared, in-memory view of levels and stores.
pub struct AvailabilityView {
    db: DatabaseConnection,
    levels: Levels,
    /// How many levels are held (bounds memory).
    held: AtomicUsize,
    stores: DashMap<String, Store>,
    /// True while the listener is connected: only then is the cache trusted.
    live: AtomicBool,
    /// Bumped whenever the cache is dropped, so a load that raced it is not kept.
    epoch: AtomicU64,
    changes: broadcast::Sender<Arc<Level>>,
}

impl AvailabilityView {
    /// An empty view; call [`AvailabilityView::follow`] to make it live.
    pub fn new(db: DatabaseConnection) -> Arc<Self> {
        let (changes, _) = broadcast::channel(8192);
        Arc::new(Self {
            db,
            levels: DashMap::new(),
            held: AtomicUsize::new(0),
            stores: DashMap::new(),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            changes,
        })
    }

    /// Level changes as they commit (for SSE).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Level>> {
        self.changes.subscribe()
    }

    /// Whether reads are served from memory right now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Keeps a level if it is newer than what the view holds.
    pub fn apply(&self, level: Level) {
        if self.held.load(Ordering::Relaxed) >= MAX_CACHED_LEVELS {
            self.drop_levels();
        }
        let mut shop = match self.levels.get_mut(level.store_id.as_str()) {
            Some(shop) => shop,
            None => self.levels.entry(level.store_id.clone()).or_default(),
        };
        if let Some(held) = shop.get(level.sku.as_str())
            && held.revision >= level.revision
        {
            return;
        }
        if shop.insert(level.sku.clone(), Arc::new(level)).is_none() {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A mark to take before a write whose levels will be [`AvailabilityView::applied`].
    pub fn mark(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps the levels a committed write returned, and passes its response on. When the
    /// cache was dropped since `mark` (the feed was lost meanwhile), they are not kept: a
    /// change made elsewhere during the outage may be newer, and the database will say.
    pub fn applied<R>(&self, mark: u64, response: R, levels: Option<Vec<Level>>) -> R {
        if self.epoch.load(Ordering::Acquire) == mark {
            for level in levels.into_iter().flatten() {
                self.apply(level);
            }
        }
        response
    }

    fn drop_levels(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.levels.clear();
        self.held.store(0, Ordering::Relaxed);
    }

    /// A store, from memory or the database.
    pub async fn store(&self, store_id: &str) -> Result<Option<Store>, DbErr> {
        if self.is_live()
            && let Some(s) = self.stores.get(store_id)
        {
            return Ok(Some(s.clone()));
        }
        let found = store::get_store(&self.db, store_id).await?;
        if let Some(s) = &found {
            self.stores.insert(s.store_id.clone(), s.clone());
        }
        Ok(found)
    }

    /// Every store (from memory when live).
    pub async fn stores(&self) -> Result<Vec<Store>, DbErr> {
        if self.is_live() {
            let mut all: Vec<Store> = self.stores.iter().map(|s| s.clone()).collect();
            all.sort_by(|a, b| a.store_id.cmp(&b.store_id));
            return Ok(all);
        }
        store::list_stores(&self.db).await
    }

    /// Whether a store exists, without copying it (memory when live, else the database).
    pub async fn has_store(&self, store_id: &str) -> Result<bool, DbErr> {
        if self.is_live() && self.stores.contains_key(store_id) {
            return Ok(true);
        }
        Ok(self.store(store_id).await?.is_some())
    }

    /// The low-stock threshold of a store held in memory (0 when unknown).
    pub fn threshold(&self, store_id: &str) -> i64 {
        self.stores
            .get(store_id)
            .map_or(0, |s| s.low_stock_threshold)
    }

    /// Records a store the service just wrote.
    pub fn apply_store(&self, s: Store) {
        self.stores.insert(s.store_id.clone(), s);
    }

    /// The low-stock threshold of a store (0 for an unknown one), without copying it.
    pub async fn threshold_of(&self, store_id: &str) -> Result<i64, DbErr> {
        if self.is_live()
            && let Some(s) = self.stores.get(store_id)
        {
            return Ok(s.low_stock_threshold);
        }
        Ok(self
            .store(store_id)
            .await?
            .map_or(0, |s| s.low_stock_threshold))
    }

    /// The levels of `pairs` (store, SKU), in order; a pair never stocked comes back as
    /// [`Level::absent`].
    pub async fn levels(&self, pairs: &[(&str, &str)]) -> Result<Vec<Arc<Level>>, DbErr> {
        let live = self.is_live();
        let mut out: Vec<Option<Arc<Level>>> = Vec::with_capacity(pairs.len());
        let mut missing: Vec<(String, String)> = Vec::new();
        for (store_id, sku) in pairs {
            let held = if live {
                self.levels
                    .get(*store_id)
                    .and_then(|shop| shop.get(*sku).cloned())
            } else {
                None
            };
            if held.is_none() {
                missing.push(((*store_id).to_owned(), (*sku).to_owned()));
            }
            out.push(held);
        }
        if !missing.is_empty() {
            let epoch = self.epoch.load(Ordering::Acquire);
            let loaded = store::levels(&self.db, &missing).await?;
            let mut by_key: HashMap<(String, String), Level> = loaded
                .into_iter()
                .map(|l| ((l.store_id.clone(), l.sku.clone()), l))
                .collect();
            let keep = live && self.epoch.load(Ordering::Acquire) == epoch;
            for (slot, (store_id, sku)) in out.iter_mut().zip(pairs) {
                if slot.is_none() {
                    let key = ((*store_id).to_owned(), (*sku).to_owned());
                    let level = by_key
                        .remove(&key)
                        .unwrap_or_else(|| Level::absent(store_id, sku));
                    if keep {
                        // Revision 0 for an absent pair: any real change overrides it.
                        self.apply(level.clone());
                    }
                    *slot = Some(Arc::new(level));
                }
            }
        }
        Ok(out
            .into_iter()
            .zip(pairs)
            .map(|(l, (store_id, sku))| l.unwrap_or_else(|| Arc::new(Level::absent(store_id, sku))))
            .collect())
    }

    /// Follows stock and store events until shutdown, resubscribing with backoff.
    pub async fn follow(self: Arc<Self>, broker: Broker, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.follow_once(&broker, &shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "availability feed lost; reads go to the database");
                }
            }
            self.live.store(false, Ordering::Release);
            self.drop_levels();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {},
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow_once(
        &self,
        broker: &Broker,
        shutdown: &Shutdown,
        backoff: &mut Duration,
    ) -> anyhow::Result<()> {
        let mut feed =
            Subscription::open(broker, &[types::STOCK_CHANGED, types::STORE_UPSERTED]).await?;
        // Subscribed before loading: a change committed from here on reaches us.
        self.drop_levels();
        let all = store::list_stores(&self.db).await?;
        self.stores.clear();
        for s in all {
            self.stores.insert(s.store_id.clone(), s);
        }
        self.live.store(true, Ordering::Release);
        *backoff = Duration::from_millis(100);
        tracing::info!("availability view is live");
        let wanted = |t: &str| t == types::STOCK_CHANGED || t == types::STORE_UPSERTED;
        loop {
            // `data` stays unparsed until its type is known: no JSON tree per event.
            let event = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                e = feed.next_as::<Box<RawValue>>(wanted) => e,
            };
            let Some((event_type, event)) = event else {
                anyhow::bail!("the event subscription ended");
            };
            match event_type.as_str() {
                types::STOCK_CHANGED => {
                    match serde_json::from_str::<StockChanged>(event.data.get()) {
                        Ok(c) => {
                            let level = Level {
                                store_id: c.store_id,
                                sku: c.sku,
                                on_hand: c.on_hand,
                                reserved: c.reserved,
                                safety_stock: c.safety_stock,
                                revision: c.revision,
                                updated_at: c.updated_at.or(Some(event.occurred_at)),
                            };
                            let shared = Arc::new(level.clone());
                            self.apply(level);
                            // No subscriber is fine.
                            let _ = self.changes.send(shared);
                        }
                        Err(err) => tracing::error!(error = %err, "unreadable stock event"),
                    }
                }
                types::STORE_UPSERTED => {
                    match serde_json::from_str::<StoreUpserted>(event.data.get()) {
                        Ok(u) => match store::get_store(&self.db, &u.store_id).await {
                            Ok(Some(s)) => self.apply_store(s),
                            Ok(None) => {}
                            Err(err) => tracing::warn!(error = %err, "store reload failed"),
                        },
                        Err(err) => tracing::error!(error = %err, "unreadable store event"),
                    }
                }
                _ => {}
            }
        }
    }
}
