//! Garbage collection: mark from roots, then sweep.
//!
//! Blobs not in the root set are deleted; then every chunk referenced by a remaining
//! blob is marked and unmarked chunks are deleted, in bounded batches. Runs with the GC
//! lock held exclusively, so no ingest is between writing chunks and referencing its
//! blob while it sweeps.

use std::collections::HashSet;

use super::kv::{Batch, Cf};
use super::manifest::Manifest;
use super::{Store, StoreError, STATS_KEY};
use crate::hash::Hash;

/// Deletes per write batch while sweeping.
const SWEEP_BATCH: usize = 4096;

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub blobs_kept: u64,
    pub blobs_deleted: u64,
    pub chunks_kept: u64,
    pub chunks_deleted: u64,
    pub bytes_freed: u64,
}

impl Store {
    /// Collects everything `roots` does not reach (blocking). Call with the GC lock
    /// held exclusively (see [`Store::gc_exclusive`]).
    pub fn gc_locked(&self, roots: &HashSet<Hash>) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut doomed = Vec::new();
        let mut marked: HashSet<Hash> = HashSet::new();
        let mut bad = None;
        self.kv.scan(Cf::Blobs, &[], &mut |k, v| {
            let hash = Hash::from_slice(k).unwrap_or(Hash([0; 32]));
            if roots.contains(&hash) {
                match Manifest::decode(v) {
                    Ok(m) => marked.extend(m.chunks.iter().map(|c| c.hash)),
                    Err(e) => bad = Some(StoreError::BadManifest(hash, e)),
                }
                report.blobs_kept += 1;
            } else {
                doomed.push(k.to_vec());
            }
            bad.is_none()
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        for keys in doomed.chunks(SWEEP_BATCH) {
            let mut b = Batch::default();
            for k in keys {
                b.delete(Cf::Blobs, k.clone());
                if let Some(h) = Hash::from_slice(k) {
                    self.cache.manifests.remove(&h);
                }
            }
            self.kv.write(b, true)?;
            report.blobs_deleted += keys.len() as u64;
        }
        let mut sweep = Vec::new();
        self.kv.scan_keys(Cf::Chunks, &mut |k| {
            match Hash::from_slice(k) {
                Some(h) if marked.contains(&h) => report.chunks_kept += 1,
                _ => sweep.push(k.to_vec()),
            }
            true
        })?;
        let mut stats = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        for keys in sweep.chunks(SWEEP_BATCH) {
            let mut b = Batch::default();
            let mut freed = 0u64;
            for k in keys {
                if let Some(v) = self.kv.get(Cf::Chunks, k)? {
                    freed += v.len() as u64;
                }
                if let Some(h) = Hash::from_slice(k) {
                    self.cache.chunks.remove(&h);
                    self.cache.outboards.remove(&h);
                }
                b.delete(Cf::Chunks, k.clone());
                b.delete(Cf::Outboards, k.clone());
            }
            stats.chunks = stats.chunks.saturating_sub(keys.len() as u64);
            stats.bytes = stats.bytes.saturating_sub(freed);
            b.put(Cf::Meta, STATS_KEY, stats.encode());
            self.kv.write(b, true)?;
            report.chunks_deleted += keys.len() as u64;
            report.bytes_freed += freed;
        }
        self.metrics.store_chunks.set(stats.chunks);
        self.metrics.store_bytes.set(stats.bytes);
        Ok(report)
    }

    /// Waits for in-flight ingests, then runs GC with `roots()` computed under the lock.
    pub async fn gc_exclusive<F>(
        self: &std::sync::Arc<Self>,
        roots: F,
    ) -> Result<GcReport, StoreError>
    where
        F: FnOnce() -> Result<HashSet<Hash>, StoreError> + Send + 'static,
    {
        let guard = self.gc_lock.clone().write_owned().await;
        let this = self.clone();
        super::blocking(move || {
            let _guard = guard;
            let roots = roots()?;
            this.gc_locked(&roots)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{memory_store, noise};
    use super::*;

    #[tokio::test]
    async fn unreferenced_blobs_and_their_unique_chunks_go_shared_chunks_stay() {
        let (store, _) = memory_store();
        let base = noise(60_000, 1);
        let mut edited = base.clone();
        edited.extend_from_slice(&noise(20_000, 2));
        let keep = store.put_reader(&base[..], |_| {}).unwrap();
        let drop_ = store.put_reader(&edited[..], |_| {}).unwrap();
        let before = store.stats();
        let roots: HashSet<Hash> = [keep.hash].into();
        let r = store.gc_exclusive(move || Ok(roots)).await.unwrap();
        assert_eq!((r.blobs_kept, r.blobs_deleted), (1, 1));
        assert!(r.chunks_deleted >= 1 && r.bytes_freed > 0);
        assert_eq!(store.stats().bytes, before.bytes - r.bytes_freed);
        assert_eq!(store.read_all(keep.hash).await.unwrap(), base);
        assert!(matches!(
            store.read_all(drop_.hash).await,
            Err(StoreError::BlobNotFound(_))
        ));
        assert!(store.verify(|_| {}).unwrap().is_clean());
    }
}
