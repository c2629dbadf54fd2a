//! Blobs through an edge: the manifest (local, or upstream's, checked for consistency),
//! ranged reads that fill missing chunks as they go, and promotion of a fully read blob
//! to a local one once its whole blake3 matches.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use quick_cache::sync::Cache;

use iroh_io::AsyncStreamReader;

use super::{BodyReader, Upstream, UpstreamError};
use crate::hash::Hash;
use crate::store::{Manifest, StoreError};

/// Memory for manifests of blobs being filled (36 bytes per chunk: a 4 GiB image of
/// 256 KiB chunks takes ~600 KiB).
const PARTIALS_BYTES: u64 = 64 << 20;
/// Largest manifest accepted from upstream (a 64 GiB blob of 64 KiB chunks fits).
const MAX_LIST_BYTES: usize = 64 << 20;
/// Largest chunk a manifest may name (the store's chunk size limit).
const MAX_CHUNK_BYTES: usize = 64 << 20;

/// Where a ranged read through an edge is.
struct RangeState {
    pos: u64,
    /// First chunk index not yet prefetched.
    ahead: usize,
    /// Whether the previous chunk was missing here (None before the first).
    missed_before: Option<bool>,
    current: Option<Current>,
}

type Pieces =
    std::pin::Pin<Box<dyn Stream<Item = Result<(Bytes, bool), Arc<UpstreamError>>> + Send>>;

/// The chunk being read: its index, where the read of it ends (blob offset), whether it
/// is held here as of the last piece, and its pieces.
struct Current {
    index: usize,
    to: u64,
    held: bool,
    pieces: Pieces,
}

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
    /// `first`: the offset the caller will read first, if known, and the artifact kind it
    /// is read for; the chunk holding it comes with upstream's manifest (one round trip
    /// for a cold range, not two).
    pub async fn manifest(
        self: &Arc<Self>,
        blob: Hash,
        first: Option<(u64, &'static str)>,
    ) -> Result<(Arc<Manifest>, Option<Arc<Partial>>), Arc<UpstreamError>> {
        // A blob being filled is not local yet (promotion drops it from here only after
        // its manifest is committed): no engine lookup for it on every request.
        if let Some(p) = self.partials.get(&blob) {
            return Ok((p.manifest.clone(), Some(p)));
        }
        // A blob the engine certainly lacks (from memory) costs no engine read.
        if self.store.may_hold_blob(&blob) {
            match self.store.manifest(blob).await {
                Ok(m) => return Ok((m, None)),
                Err(StoreError::BlobNotFound(_)) => {}
                Err(e) => return Err(Arc::new(e.into())),
            }
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
    /// before it is promoted. With `first`, the chunk holding that offset comes in the
    /// same response, verified streaming, and becomes that chunk's fill.
    async fn fetch_list(
        self: &Arc<Self>,
        blob: Hash,
        first: Option<(u64, &'static str)>,
    ) -> Result<Manifest, UpstreamError> {
        if let Some(b) = self.bucket() {
            let m = b
                .manifest(&self.store, blob, self.catalog.chunk_list_of(&blob))
                .await?;
            if m.chunks.iter().any(|c| c.len as usize > MAX_CHUNK_BYTES) {
                return Err(UpstreamError::WrongManifest(blob));
            }
            return Ok(m);
        }
        let path = match first {
            Some((at, _)) => format!("v1/blobs/{blob}/manifest?with_chunk_at={at}&format=bao"),
            None => format!("v1/blobs/{blob}/manifest"),
        };
        let resp = self.get(&path, false).await?;
        let mut reader = self.reader(resp);
        let bad = |reader: &BodyReader, message: String| UpstreamError::Body {
            url: reader.url.clone(),
            message: format!("manifest of {blob}: {message}"),
        };
        let head = match reader.read_bytes_exact(Manifest::HEADER).await {
            Ok(h) => h,
            Err(e) => return Err(reader.failure(e)),
        };
        let len = Manifest::encoded_len(&head).map_err(|e| bad(&reader, e.to_string()))?;
        if len > MAX_LIST_BYTES {
            return Err(bad(
                &reader,
                format!("{len} bytes is over {MAX_LIST_BYTES}"),
            ));
        }
        let rest = match reader.read_bytes_exact(len - head.len()).await {
            Ok(r) => r,
            Err(e) => return Err(reader.failure(e)),
        };
        let m = Manifest::decode(&[&head[..], &rest[..]].concat())
            .map_err(|e| bad(&reader, e.to_string()))?;
        // A build's manifest must be the one its catalog record names, before any of its
        // bytes are served (otherwise only the whole-blob hash at promotion catches a
        // manifest of the wrong blob).
        if let Some(expected) = self.catalog.chunk_list_of(&blob) {
            if crate::catalog::targets::list_hash(&blob, &m) != expected {
                return Err(UpstreamError::WrongManifest(blob));
            }
        }
        if m.chunks.iter().any(|c| c.len as usize > MAX_CHUNK_BYTES) {
            return Err(bad(
                &reader,
                format!("names a chunk over {MAX_CHUNK_BYTES} bytes"),
            ));
        }
        if let Some((at, kind)) = first.filter(|(at, _)| *at < m.size) {
            // The rest of this response is that chunk: its fill reads it from here
            // (verified group by group like any fill, refetched if it fails).
            reader.count_from_here();
            let i = m.chunk_at(at);
            let from = at - m.start_of(i);
            let _ = self.join_or_start(m.chunks[i].hash, kind, Some(reader), from);
        }
        Ok(m)
    }

    /// Streams bytes `start..end` of `blob` (`manifest` from [`Upstream::manifest`]):
    /// each chunk from the store, or from a fill as its groups verify, with the next
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
        let state = RangeState {
            pos: start,
            ahead: 0,
            missed_before: None,
            current: None,
        };
        Ok(futures_util::stream::try_unfold(state, move |mut st| {
            let this = this.clone();
            let manifest = manifest.clone();
            let partial = partial.clone();
            async move {
                loop {
                    if st.current.is_none() {
                        if st.pos >= end {
                            return Ok(None);
                        }
                        let i = manifest.chunk_at(st.pos);
                        let last = manifest.chunk_at(end - 1);
                        let hash = manifest.chunks[i].hash;
                        let missed = !this.store.is_cached(&hash);
                        // Read-ahead starts from the second chunk of a cold range on:
                        // the first chunk's response goes out without sharing upstream,
                        // this node's cores or the upstream's with its followers.
                        st.ahead = st.ahead.max(i + 1);
                        if st.missed_before.is_some_and(|before| before || missed) {
                            let want_ahead = (i + 1 + this.readahead).min(last + 1);
                            while st.ahead < want_ahead {
                                this.prefetch(manifest.chunks[st.ahead].hash, kind);
                                st.ahead += 1;
                            }
                        }
                        st.missed_before = Some(missed);
                        let chunk_start = manifest.start_of(i);
                        let chunk_end = chunk_start + manifest.chunks[i].len as u64;
                        let to = end.min(chunk_end);
                        st.current = Some(Current {
                            index: i,
                            to,
                            held: false,
                            pieces: Box::pin(this.chunk_range(
                                hash,
                                kind,
                                st.pos - chunk_start,
                                to - chunk_start,
                            )),
                        });
                    }
                    let Some(cur) = st.current.as_mut() else {
                        continue;
                    };
                    let next = futures_util::StreamExt::next(&mut cur.pieces).await;
                    if let Some(Ok((bytes, held))) = &next {
                        st.pos += bytes.len() as u64;
                        cur.held = *held;
                    }
                    // The chunk's part of the range is done with its last byte (a reader
                    // that got every byte it asked for may never poll again).
                    if st.pos >= cur.to || next.is_none() {
                        let done = st.current.take().expect("a chunk is being read");
                        st.pos = st.pos.max(done.to);
                        if let Some(p) = &partial {
                            let hash = manifest.chunks[done.index].hash;
                            this.mark_when_held(blob, p.clone(), done.index, hash, kind, done.held);
                        }
                    }
                    match next {
                        Some(Ok((bytes, _))) => return Ok(Some((bytes, st))),
                        Some(Err(e)) => return Err(e),
                        None => {}
                    }
                }
            }
        }))
    }

    /// Chunk `index` of a partial blob has been read: counts it as held (now, or when
    /// its fill completes), promoting the blob when that was its last chunk.
    fn mark_when_held(
        self: &Arc<Self>,
        blob: Hash,
        partial: Arc<Partial>,
        index: usize,
        hash: Hash,
        kind: &'static str,
        held: bool,
    ) {
        if held {
            if partial.mark(index) {
                self.promote(blob, partial);
            }
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if this.chunk(hash, kind).await.is_ok() && partial.mark(index) {
                this.promote(blob, partial);
            }
        });
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
