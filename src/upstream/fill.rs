//! Chunk fills: one upstream fetch per missing chunk, however many readers want it.
//!
//! The first reader to miss starts a fill as its own task (so it completes for the
//! others even if that reader disconnects) and registers it; later readers join it.
//! A fill fails on lack of progress (no byte for `stall_timeout`), never on age, and a
//! chunk whose bytes do not hash to its address is discarded, counted and fetched again.
//! Every waiter gets the verified chunk at the moment it is stored. At most `max_fills`
//! fetches run at once, so fill memory is bounded by that many chunks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use super::{Upstream, UpstreamError};
use crate::hash::Hash;
use crate::store::StoreError;

/// Fetches of one chunk before a fill gives up (corrupt or failed transfers).
const FILL_ATTEMPTS: usize = 3;
/// Largest chunk accepted from upstream (the store's chunk size limit).
const MAX_CHUNK_BYTES: usize = 64 << 20;

type Outcome = Result<Bytes, Arc<UpstreamError>>;
type Pending = Shared<BoxFuture<'static, Outcome>>;

pub struct Fills {
    inflight: Mutex<HashMap<Hash, Pending>>,
    permits: Arc<Semaphore>,
}

impl Fills {
    pub fn new(max: usize) -> Fills {
        Fills {
            inflight: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Pending>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills under way (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

impl Upstream {
    /// One chunk, verified: held locally, or filled from upstream. A chunk that is
    /// missing or fails verification locally is refilled.
    /// `kind` is the artifact kind the chunk is read for (upstream bytes are counted by
    /// it: the origin's egress per artifact).
    pub async fn chunk(
        self: &Arc<Self>,
        hash: Hash,
        kind: &'static str,
    ) -> Result<Bytes, Arc<UpstreamError>> {
        self.recency.touch(hash);
        match self.store.chunk(hash).await {
            Ok(b) => return Ok(b),
            Err(StoreError::ChunkMissing(_) | StoreError::ChunkCorrupt(_)) => {}
            Err(e) => return Err(Arc::new(e.into())),
        }
        let mut last = None;
        // A failed fill is retried by the next waiter (here: by this reader, up to the
        // attempt limit), never by everyone at once: the retry is itself coalesced.
        for _ in 0..FILL_ATTEMPTS {
            match self.join_or_start(hash, kind).await {
                Ok(b) => return Ok(b),
                Err(e) if e.retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Arc::new(UpstreamError::Corrupt(hash))))
    }

    /// Starts filling a chunk in the background if it is neither cached nor being filled
    /// (read-ahead); never waits.
    pub fn prefetch(self: &Arc<Self>, hash: Hash, kind: &'static str) {
        if self.store.is_cached(&hash) || self.fills.lock().contains_key(&hash) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.chunk(hash, kind).await;
        });
    }

    fn join_or_start(self: &Arc<Self>, hash: Hash, kind: &'static str) -> Pending {
        let mut inflight = self.fills.lock();
        if let Some(p) = inflight.get(&hash) {
            self.metrics.upstream_coalesced.inc();
            return p.clone();
        }
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<Outcome>();
        tokio::spawn(async move {
            // A fill that just finished stored the chunk before deregistering: look
            // again before fetching, so a late reader does not fetch it twice.
            let result = match this.store.cached(&hash) {
                Some(b) => Ok(b),
                None => this.fetch_chunk(hash, kind).await,
            };
            match result {
                Ok(bytes) => {
                    // Readers first (cached, then answered), the disk write after; the
                    // fill stays registered until stored, so nobody fetches it again.
                    this.store.cache_chunk(hash, bytes.clone());
                    let _ = tx.send(Ok(bytes.clone()));
                    let store = this.store.clone();
                    let stored = crate::store::blocking(move || store.put_chunk(hash, bytes)).await;
                    if let Err(e) = stored {
                        tracing::error!(chunk = %hash.short(), error = %e, "storing a filled chunk failed");
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Arc::new(e)));
                }
            }
            this.fills.lock().remove(&hash);
        });
        let pending: Pending = async move {
            rx.await.unwrap_or_else(|e| {
                Err(Arc::new(UpstreamError::Store(StoreError::Task(
                    e.to_string(),
                ))))
            })
        }
        .boxed()
        .shared();
        inflight.insert(hash, pending.clone());
        pending
    }

    /// Fetches, verifies and stores one chunk; corrupt transfers are retried.
    async fn fetch_chunk(
        self: &Arc<Self>,
        hash: Hash,
        kind: &'static str,
    ) -> Result<Bytes, UpstreamError> {
        let _permit = self
            .fills
            .permits
            .acquire()
            .await
            .map_err(|e| UpstreamError::Store(StoreError::Task(e.to_string())))?;
        let mut last = UpstreamError::Corrupt(hash);
        for _ in 0..FILL_ATTEMPTS {
            self.metrics.upstream_fetches.inc();
            let got = self.fetch_once(hash).await;
            self.note(&got);
            match got {
                Ok(bytes) => {
                    self.metrics
                        .upstream_artifact_bytes
                        .get_or_create(&crate::metrics::KindLabel { kind: kind.into() })
                        .inc_by(bytes.len() as u64);
                    return Ok(bytes);
                }
                Err(e) if e.retryable() => {
                    tracing::warn!(chunk = %hash.short(), error = %e, "chunk fill failed; retrying");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn fetch_once(&self, hash: Hash) -> Result<Bytes, UpstreamError> {
        let resp = self.get(&format!("v1/chunks/{hash}"), false).await?;
        let metrics = self.metrics.clone();
        // Hashed piece by piece as it arrives (while the bytes are still in cache), so
        // the check is done when the last byte is.
        let mut hasher = blake3::Hasher::new();
        let bytes = self
            .body(resp, MAX_CHUNK_BYTES, |piece| {
                metrics.upstream_bytes.inc_by(piece.len() as u64);
                hasher.update(piece);
            })
            .await?;
        if Hash::from(hasher.finalize()) != hash {
            tracing::error!(chunk = %hash.short(), "chunk from upstream failed verification; discarded");
            return Err(UpstreamError::Corrupt(hash));
        }
        Ok(bytes)
    }
}
