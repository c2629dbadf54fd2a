//! Blobs through an edge: the manifest (local, or upstream's, checked for consistency),
//! ranged reads that fill missing chunks as they go, and promotion of a fully read blob
//! to a local one once its whole blake3 matches.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use quick_cache::sync::Cache;

use super::{Upstream, UpstreamError};
use crate::hash::Hash;
use crate::store::{Manifest, StoreError};

/// Memory for manifests of blobs being filled (36 bytes per chunk: a 4 GiB image of
/// 256 KiB chunks takes ~600 KiB).
const PARTIALS_BYTES: u64 = 64 << 20;
/// Largest manifest accepted from upstream (a 64 GiB blob of 64 KiB chunks fits).
const MAX_LIST_BYTES: usize = 64 << 20;
/// Largest chunk a manifest may name (the store's chunk size limit).
const MAX_CHUNK_BYTES: usize = 64 << 20;

/// A blob known from upstream's chunk list, not (yet) complete here.
pub struct Partial {
    pub manifest: Arc<Manifest>,
    /// Which chunks have been read through this edge, and how many have not.
    seen: Mutex<(Vec<bool>, usize)>,
}

impl Partial {
    fn new(manifest: Manifest) -> Partial {
        let n = manifest.chunks.len();
        Partial {
            manifest: Arc::new(manifest),
            seen: Mutex::new((vec![false; n], n)),
        }
    }

    /// Marks chunk `i` as held; true when that made every chunk held.
    fn mark(&self, i: usize) -> bool {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, left) = &mut *s;
        match seen.get_mut(i) {
            Some(b) if !*b => {
                *b = true;
                *left -= 1;
                *left == 0
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct PartialWeight;

impl quick_cache::Weighter<Hash, Arc<Partial>> for PartialWeight {
    fn weight(&self, _: &Hash, p: &Arc<Partial>) -> u64 {
        p.manifest.weight() + p.manifest.chunks.len() as u64
    }
}

pub type Partials = Cache<Hash, Arc<Partial>, PartialWeight>;

pub fn new_partials() -> Partials {
    Cache::with_weighter(1024, PARTIALS_BYTES, PartialWeight)
}

impl Upstream {
    /// A blob's manifest: the local one, or upstream's (with the
    /// fill state of a blob not complete here). Concurrent misses fetch the list once.
    ///
    /// `first`: the offset the caller will read first, if known; the chunk holding it
    /// comes with upstream's manifest (one round trip for a cold range, not two).
    pub async fn manifest(
        self: &Arc<Self>,
        blob: Hash,
        first: Option<u64>,
    ) -> Result<(Arc<Manifest>, Option<Arc<Partial>>), Arc<UpstreamError>> {
        // A blob being filled is not local yet (promotion drops it from here only after
        // its manifest is committed): no engine lookup for it on every request.
        if let Some(p) = self.partials.get(&blob) {
            return Ok((p.manifest.clone(), Some(p)));
        }
        match self.store.manifest(blob).await {
            Ok(m) => return Ok((m, None)),
            Err(StoreError::BlobNotFound(_)) => {}
            Err(e) => return Err(Arc::new(e.into())),
        }
        match self.partials.get_value_or_guard_async(&blob).await {
            Ok(p) => Ok((p.manifest.clone(), Some(p))),
            Err(guard) => {
                let got = self.fetch_list(blob, first).await;
                self.note(&got);
                let p = Arc::new(Partial::new(got.map_err(Arc::new)?));
                let _ = guard.insert(p.clone());
                Ok((p.manifest.clone(), Some(p)))
            }
        }
    }

    /// The blob's manifest from upstream in binary form (`/v1/blobs/{h}/manifest`),
    /// checked for consistency; chunks are verified as they arrive and the whole blob
    /// before it is promoted.
    async fn fetch_list(&self, blob: Hash, first: Option<u64>) -> Result<Manifest, UpstreamError> {
        let path = match first {
            Some(at) => format!("v1/blobs/{blob}/manifest?with_chunk_at={at}"),
            None => format!("v1/blobs/{blob}/manifest"),
        };
        let resp = self.get(&path, false).await?;
        let url = resp.url().to_string();
        let bytes = self
            .body(resp, MAX_LIST_BYTES + MAX_CHUNK_BYTES, |_: &[u8]| {})
            .await?;
        let (m, used) = Manifest::decode_prefix(&bytes).map_err(|e| UpstreamError::Body {
            url: url.clone(),
            message: format!("manifest of {blob}: {e}"),
        })?;
        // A build's manifest must be the one its catalog record names, before any of its
        // bytes are served (otherwise only the whole-blob hash at promotion catches a
        // manifest of the wrong blob).
        if let Some(expected) = self.catalog.chunk_list_of(&blob) {
            if crate::catalog::targets::list_hash(&blob, &m) != expected {
                return Err(UpstreamError::WrongManifest(blob));
            }
        }
        if let Some(at) = first.filter(|at| *at < m.size && used < bytes.len()) {
            self.take_first_chunk(&m, at, bytes.slice(used..));
        }
        if m.chunks.iter().any(|c| c.len as usize > MAX_CHUNK_BYTES) {
            return Err(UpstreamError::Body {
                url,
                message: format!("manifest of {blob} names a chunk over {MAX_CHUNK_BYTES} bytes"),
            });
        }
        Ok(m)
    }

    /// Keeps the chunk that came with a manifest if it is the one named at `at` (it is
    /// verified like any fill; anything else is dropped and counted, and fetched anew).
    fn take_first_chunk(&self, m: &Manifest, at: u64, bytes: Bytes) {
        let want = m.chunks[m.chunk_at(at)];
        if bytes.len() != want.len as usize || Hash::of(&bytes) != want.hash {
            self.note::<()>(&Err(UpstreamError::Corrupt(want.hash)));
            return;
        }
        self.metrics.upstream_fetches.inc();
        self.metrics.upstream_bytes.inc_by(bytes.len() as u64);
        self.store.cache_chunk(want.hash, bytes.clone());
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.put_chunk(want.hash, bytes) {
                tracing::error!(chunk = %want.hash.short(), error = %e, "storing a filled chunk failed");
            }
        });
    }

    /// Streams bytes `start..end` of `blob` (`manifest` from [`Upstream::manifest`]):
    /// each chunk from the store, or filled from upstream, with the next
    /// `edge.readahead` chunks of the range started in the background while one is sent.
    pub fn read_range(
        self: &Arc<Self>,
        blob: Hash,
        kind: &'static str,
        manifest: Arc<Manifest>,
        partial: Option<Arc<Partial>>,
        start: u64,
        end: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, Arc<UpstreamError>>> + Send + 'static, StoreError>
    {
        manifest.check_range(start, end)?;
        let this = self.clone();
        // (position, first chunk index not yet prefetched, whether a chunk was missed)
        Ok(futures_util::stream::try_unfold(
            (start, 0usize, None::<bool>),
            move |(pos, ahead, missed_before)| {
                let this = this.clone();
                let manifest = manifest.clone();
                let partial = partial.clone();
                async move {
                    if pos >= end {
                        return Ok(None);
                    }
                    let i = manifest.chunk_at(pos);
                    let last = manifest.chunk_at(end - 1);
                    let missed = !this.store.is_cached(&manifest.chunks[i].hash);
                    // Read-ahead starts from the second chunk of a cold range on: the
                    // first chunk's response goes out without sharing upstream, this
                    // node's cores or the upstream's with its followers.
                    let mut ahead = ahead.max(i + 1);
                    if missed_before.is_some_and(|before| before || missed) {
                        let want_ahead = (i + 1 + this.readahead).min(last + 1);
                        while ahead < want_ahead {
                            this.prefetch(manifest.chunks[ahead].hash, kind);
                            ahead += 1;
                        }
                    }
                    let chunk_start = manifest.start_of(i);
                    let bytes = this.chunk(manifest.chunks[i].hash, kind).await?;
                    if let Some(p) = &partial {
                        if p.mark(i) {
                            this.promote(blob, p.clone());
                        }
                    }
                    let from = (pos - chunk_start) as usize;
                    let to = ((end - chunk_start) as usize).min(bytes.len());
                    Ok(Some((
                        bytes.slice(from..to),
                        (chunk_start + to as u64, ahead, Some(missed)),
                    )))
                }
            },
        ))
    }

    /// Every chunk of a partial blob has been read: check the whole blob's blake3 and
    /// commit its manifest, making it a local blob. A mismatch (a chunk list that lied)
    /// is counted and the list dropped, so the next request fetches it again.
    fn promote(self: &Arc<Self>, blob: Hash, partial: Arc<Partial>) {
        let this = self.clone();
        tokio::spawn(async move {
            let store = this.store.clone();
            let m = partial.manifest.clone();
            let result = crate::store::blocking(move || {
                let mut h = blake3::Hasher::new();
                for c in &m.chunks {
                    h.update(&store.chunk_blocking(&c.hash)?);
                }
                if Hash::from(h.finalize()) != blob {
                    return Ok(false);
                }
                store.put_manifest(blob, &m)?;
                Ok(true)
            })
            .await;
            this.partials.remove(&blob);
            match result {
                Ok(true) => tracing::debug!(blob = %blob.short(), "blob complete at this edge"),
                Ok(false) => {
                    let e = UpstreamError::Body {
                        url: this.url(&format!("v1/blobs/{blob}/chunks")),
                        message: format!("chunks do not make up blob {blob}"),
                    };
                    tracing::error!(error = %e, "blob from upstream failed verification");
                    this.note::<()>(&Err(UpstreamError::Corrupt(blob)));
                }
                // A chunk evicted meanwhile: the blob stays partial, found again on use.
                Err(e) => tracing::warn!(blob = %blob.short(), error = %e, "blob not promoted"),
            }
        });
    }
}

/// Manifests of blobs an edge does not hold, for the chunk lists its check answers
/// carry.
impl crate::store::RemoteManifests for Upstream {
    fn fetch(
        self: Arc<Self>,
        blob: Hash,
    ) -> futures_util::future::BoxFuture<'static, Result<Arc<Manifest>, StoreError>> {
        Box::pin(async move {
            self.manifest(blob, None)
                .await
                .map(|(m, _)| m)
                .map_err(|e| match &*e {
                    e if e.is_not_found() => StoreError::BlobNotFound(blob),
                    e => StoreError::Upstream(e.to_string()),
                })
        })
    }
}
