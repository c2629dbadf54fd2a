//! The edge's disk budget (`store.max_bytes`): past it, least-recently-used chunks are
//! deleted until the store is back under 90 % of the budget, except the chunks of
//! builds a ring targets and of the ready deltas to them (pinned).
//!
//! - Recency is per chunk, kept in memory (a tick per chunk read through the edge);
//!   after a restart every stored chunk starts equally old.
//! - A response never loses bytes it is sending: it holds the chunk it sends in memory,
//!   and a later chunk of its range that was evicted meanwhile is refilled from upstream
//!   and verified like any miss. A local blob whose chunk was evicted stays a blob; its
//!   manifest is kept and the chunk is refilled on demand.
//! - Work is proportional to the stored chunk count once per eviction run (a key scan),
//!   and runs only when the budget is exceeded; reads cost one map update per chunk.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Upstream;
use crate::catalog::model::DeltaStatus;
use crate::catalog::Catalog;
use crate::hash::Hash;
use crate::store::{Cf, StoreError};

/// Eviction brings the store down to this share of the budget (hysteresis, so a store
/// at the budget does not evict on every fill).
const LOW_WATER_PERCENT: u64 = 90;
/// How often the budget is checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Last-use ticks of chunks read through this edge; kept only under a disk budget (with
/// none, nothing is evicted and the map would only grow).
#[derive(Default)]
pub struct Recency {
    enabled: bool,
    clock: AtomicU64,
    ticks: Mutex<HashMap<Hash, u64>>,
}

impl Recency {
    pub fn new(enabled: bool) -> Recency {
        Recency {
            enabled,
            ..Recency::default()
        }
    }

    pub fn touch(&self, hash: Hash) {
        if !self.enabled {
            return;
        }
        let t = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        self.ticks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, t);
    }

    fn tick(&self, hash: &Hash) -> u64 {
        self.ticks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .copied()
            .unwrap_or(0)
    }

    fn forget(&self, hashes: &[Hash]) {
        let mut t = self.ticks.lock().unwrap_or_else(|e| e.into_inner());
        for h in hashes {
            t.remove(h);
        }
    }
}

/// Checks the budget periodically and evicts when it is exceeded (runs until dropped).
pub async fn enforce(up: Arc<Upstream>, catalog: Arc<Catalog>, max_bytes: u64) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if up.store.stats().bytes <= max_bytes {
            continue;
        }
        let (u, c) = (up.clone(), catalog.clone());
        match tokio::task::spawn_blocking(move || evict(&u, &c, max_bytes)).await {
            Ok(Ok(freed)) => {
                tracing::info!(freed, "evicted least-recently-used chunks")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "eviction failed"),
            Err(e) => tracing::error!(error = %e, "eviction task failed"),
        }
    }
}

/// Chunks of ring targets and of the ready deltas to them (blocking).
fn pinned(up: &Upstream, catalog: &Catalog) -> Result<HashSet<Hash>, crate::catalog::CatalogError> {
    let mut blobs = HashSet::new();
    for p in catalog.products()? {
        for r in catalog.rings(&p.slug)? {
            let Ok(v) = r.version.parse() else { continue };
            if let Some(b) = catalog.build(&p.slug, &v)? {
                blobs.insert(b.blob);
            }
        }
    }
    for d in catalog.deltas()? {
        if let (true, DeltaStatus::Ready, Some(h)) = (blobs.contains(&d.to), d.status, d.delta) {
            blobs.insert(h);
        }
    }
    let mut chunks = HashSet::new();
    for b in blobs {
        let manifest = match up.store.manifest_blocking(&b) {
            Ok(m) => Some(m),
            Err(StoreError::BlobNotFound(_)) => up.partials.get(&b).map(|p| p.manifest.clone()),
            Err(e) => return Err(e.into()),
        };
        chunks.extend(
            manifest
                .iter()
                .flat_map(|m| m.chunks.iter().map(|c| c.hash)),
        );
    }
    Ok(chunks)
}

/// One eviction run: oldest unpinned chunks first until under the low-water mark.
/// Returns the bytes freed.
pub fn evict(up: &Upstream, catalog: &Catalog, max_bytes: u64) -> Result<u64, StoreError> {
    let pinned = pinned(up, catalog).map_err(|e| StoreError::Engine(e.to_string()))?;
    let mut candidates = Vec::new();
    up.store.kv().scan_keys(Cf::Chunks, &mut |k| {
        if let Some(h) = Hash::from_slice(k) {
            if !pinned.contains(&h) {
                candidates.push((up.recency.tick(&h), h));
            }
        }
        true
    })?;
    candidates.sort_unstable();
    let target = max_bytes / 100 * LOW_WATER_PERCENT;
    let mut freed = 0u64;
    for batch in candidates.chunks(256) {
        if up.store.stats().bytes <= target {
            break;
        }
        let over = up.store.stats().bytes - target;
        let mut take = Vec::new();
        let mut planned = 0u64;
        for (_, h) in batch {
            if planned >= over {
                break;
            }
            take.push(*h);
            planned += u64::from(up.store.chunk_len(h)?.unwrap_or(0));
        }
        // Counted per batch, as it is deleted: a run that fails part-way still counts
        // what it removed, and the count follows the store's size batch by batch.
        let n = up.store.delete_chunks(&take)?;
        up.metrics.store_evicted_bytes.inc_by(n);
        freed += n;
        up.recency.forget(&take);
    }
    if up.store.stats().bytes > max_bytes {
        tracing::warn!(
            bytes = up.store.stats().bytes,
            max_bytes,
            "store stays over its budget: pinned builds alone exceed it"
        );
    }
    Ok(freed)
}
