//! Chunk fills: one upstream fetch per missing chunk, however many readers want it, and
//! every reader gets its bytes as they arrive.
//!
//! The first reader to miss starts a fill as its own task (so it completes for the
//! others even if that reader disconnects) and registers it; later readers join it.
//! Upstream sends the chunk interleaved with its blake3 tree ([`crate::protocol::bao`]),
//! so each 16 KiB group is verified against the chunk's address on arrival and handed to
//! every waiter at once: a reader's first byte waits for one group, not the whole chunk.
//! The fill asks for the chunk from the group its first reader wants (a range that
//! starts mid-chunk does not wait for the bytes before it); the groups before it come
//! last in the same response.
//! A fill fails on lack of progress (no byte for `stall_timeout`), never on age; a
//! group that does not verify fails the transfer, which is counted and fetched again
//! (groups already verified are kept). The whole chunk is cached and stored once every
//! group has verified. At most `max_fills` fetches run at once, so fill memory is
//! bounded by that many chunks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::{watch, Semaphore};

use super::{BodyReader, Upstream, UpstreamError};
use crate::hash::Hash;
use crate::protocol::bao;
use crate::store::read::piece_of;
use crate::store::StoreError;

/// Fetches of one chunk before a fill gives up (corrupt or failed transfers).
const FILL_ATTEMPTS: usize = 3;
/// Largest chunk accepted from upstream (the store's chunk size limit).
const MAX_CHUNK_BYTES: u64 = 64 << 20;

type Outcome = Result<Bytes, Arc<UpstreamError>>;

/// A verified chunk and its outboard (its tree's parent pairs, stored beside it).
struct Filled {
    bytes: Bytes,
    outboard: Vec<u8>,
}

/// What a fill's waiters see.
#[derive(Default)]
pub struct Progress {
    /// Verified groups by their offset in the chunk (arriving from the group the fill
    /// started at to the chunk's end, then from its start).
    groups: BTreeMap<u64, Bytes>,
    /// Bytes in `groups`.
    len: u64,
    /// The whole chunk (cached and being stored), or why the fill failed.
    end: Option<Outcome>,
}

type Pending = watch::Receiver<Progress>;

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

/// Where a reader of one chunk is: `pos` is the next byte of the chunk it wants.
struct Reader {
    hash: Hash,
    kind: &'static str,
    pos: u64,
    to: u64,
    attempts: usize,
    fill: Option<Pending>,
}

impl Progress {
    /// Bytes `pos..to` of the chunk as far as they are verified, in one piece: from the
    /// whole chunk once the fill is done, else from the group holding `pos`.
    fn piece_at(&self, pos: u64, to: u64) -> Option<Bytes> {
        if let Some(Ok(whole)) = &self.end {
            let to = to.min(whole.len() as u64);
            return (pos < to).then(|| piece_of(whole, pos as usize, to as usize));
        }
        let (&at, g) = self.groups.range(..=pos).next_back()?;
        let end = at + g.len() as u64;
        (pos < end).then(|| piece_of(g, (pos - at) as usize, (to.min(end) - at) as usize))
    }
}

impl Upstream {
    /// One whole chunk, verified: held locally, or filled from upstream. A chunk that is
    /// missing or fails verification locally is refilled.
    /// `kind` is the artifact kind the chunk is read for (upstream bytes are counted by
    /// it: the origin's egress per artifact).
    pub async fn chunk(
        self: &Arc<Self>,
        hash: Hash,
        kind: &'static str,
    ) -> Result<Bytes, Arc<UpstreamError>> {
        self.recency.touch(hash);
        if let Some(b) = self.local_chunk(hash).await? {
            return Ok(b);
        }
        let mut last = None;
        // A failed fill is retried by the next waiter (here: by this reader, up to the
        // attempt limit), never by everyone at once: the retry is itself coalesced.
        for _ in 0..FILL_ATTEMPTS {
            let mut fill = self.join_or_start(hash, kind, None, 0);
            let end = match fill.wait_for(|p| p.end.is_some()).await {
                Ok(p) => p.end.clone(),
                Err(_) => None,
            };
            match end.unwrap_or_else(|| Err(ended_without_outcome())) {
                Ok(b) => return Ok(b),
                Err(e) if e.retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Arc::new(UpstreamError::Corrupt(hash))))
    }

    /// The chunk if this edge holds it intact. A chunk the engine certainly lacks (its
    /// filters say so, from memory) costs no engine read: a cold chunk's fill starts at
    /// once instead of after a blocking-pool round trip.
    async fn local_chunk(
        self: &Arc<Self>,
        hash: Hash,
    ) -> Result<Option<Bytes>, Arc<UpstreamError>> {
        if !self.store.may_hold_chunk(&hash) {
            return Ok(None);
        }
        match self.store.chunk(hash).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::ChunkMissing(_) | StoreError::ChunkCorrupt(_)) => Ok(None),
            Err(e) => Err(Arc::new(e.into())),
        }
    }

    /// Bytes `from..to` of chunk `hash`, verified, as they become available: from the
    /// store in one piece, or group by group while a fill runs. Each item says whether,
    /// with it, the whole chunk is held here (false for a read that ends before a fill
    /// does).
    pub fn chunk_range(
        self: &Arc<Self>,
        hash: Hash,
        kind: &'static str,
        from: u64,
        to: u64,
    ) -> impl Stream<Item = Result<(Bytes, bool), Arc<UpstreamError>>> + Send + 'static {
        let reader = Reader {
            hash,
            kind,
            pos: from,
            to,
            attempts: 0,
            fill: None,
        };
        let this = self.clone();
        futures_util::stream::try_unfold(reader, move |mut r| {
            let this = this.clone();
            async move { Ok(this.next_piece(&mut r).await?.map(|piece| (piece, r))) }
        })
    }

    async fn next_piece(
        self: &Arc<Self>,
        r: &mut Reader,
    ) -> Result<Option<(Bytes, bool)>, Arc<UpstreamError>> {
        if r.pos >= r.to {
            return Ok(None);
        }
        if r.attempts == 0 {
            r.attempts = 1;
            self.recency.touch(r.hash);
            if let Some(b) = self.local_chunk(r.hash).await? {
                let to = r.to.min(b.len() as u64);
                let piece = piece_of(&b, (r.pos as usize).min(to as usize), to as usize);
                r.pos = r.to;
                return Ok(Some((piece, true)));
            }
            r.fill = Some(self.join_or_start(r.hash, r.kind, None, r.pos));
        }
        loop {
            let Some(fill) = r.fill.as_mut() else {
                r.attempts += 1;
                r.fill = Some(self.join_or_start(r.hash, r.kind, None, r.pos));
                continue;
            };
            {
                let p = fill.borrow_and_update();
                if let Some(piece) = p.piece_at(r.pos, r.to) {
                    r.pos += piece.len() as u64;
                    let held = matches!(p.end, Some(Ok(_)));
                    return Ok(Some((piece, held)));
                }
                match &p.end {
                    // Past the chunk's end: the range asked for more than it holds.
                    Some(Ok(_)) => return Ok(None),
                    Some(Err(e)) if e.retryable() && r.attempts < FILL_ATTEMPTS => {
                        drop(p);
                        r.fill = None;
                        continue;
                    }
                    Some(Err(e)) => return Err(e.clone()),
                    None => {}
                }
            }
            if fill.changed().await.is_err() {
                return Err(ended_without_outcome());
            }
        }
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

    /// Joins the fill of `hash`, or starts one: from `source` (a response already
    /// carrying the chunk's encoding) if given, else with a request of its own that
    /// starts at the group holding byte `from` (what the reader starting it wants first).
    pub(super) fn join_or_start(
        self: &Arc<Self>,
        hash: Hash,
        kind: &'static str,
        source: Option<BodyReader>,
        from: u64,
    ) -> Pending {
        let mut inflight = self.fills.lock();
        if let Some(p) = inflight.get(&hash) {
            self.metrics.upstream_coalesced.inc();
            return p.clone();
        }
        let (tx, rx) = watch::channel(Progress::default());
        inflight.insert(hash, rx.clone());
        drop(inflight);
        let this = self.clone();
        tokio::spawn(async move {
            // A fill that just finished stored the chunk before deregistering: look
            // again before fetching, so a late reader does not fetch it twice. A cached
            // chunk is held here already (fills are cached and stored before they
            // deregister; local reads are cached from the store).
            let result = match this.store.cached(&hash) {
                Some(bytes) => Ok((bytes, None)),
                None => this
                    .fetch_chunk(hash, kind, &tx, source, from)
                    .await
                    .map(|f| (f.bytes, Some(f.outboard))),
            };
            match result {
                Ok((bytes, fetched)) => {
                    // Readers first (cached, then answered), the disk write after; the
                    // fill stays registered until stored, so nobody fetches it again.
                    this.store.cache_chunk(hash, bytes.clone());
                    tx.send_modify(|p| {
                        p.groups.clear();
                        p.end = Some(Ok(bytes.clone()));
                    });
                    if let Some(outboard) = fetched {
                        let store = this.store.clone();
                        let stored =
                            crate::store::blocking(move || store.put_chunk(hash, bytes, outboard))
                                .await;
                        if let Err(e) = stored {
                            tracing::error!(chunk = %hash.short(), error = %e, "storing a filled chunk failed");
                        }
                    }
                }
                Err(e) => tx.send_modify(|p| p.end = Some(Err(Arc::new(e)))),
            }
            this.fills.lock().remove(&hash);
        });
        rx
    }

    /// Fetches and verifies one chunk, publishing each group to the fill's waiters as it
    /// verifies; failed or corrupt transfers are retried.
    async fn fetch_chunk(
        self: &Arc<Self>,
        hash: Hash,
        kind: &'static str,
        tx: &watch::Sender<Progress>,
        mut source: Option<BodyReader>,
        from: u64,
    ) -> Result<Filled, UpstreamError> {
        let mut permit = None;
        let mut last = UpstreamError::Corrupt(hash);
        for _ in 0..FILL_ATTEMPTS {
            let reader = match source.take() {
                // Already under way (it came with the blob's manifest): no permit.
                Some(r) => Ok(r),
                None => {
                    if permit.is_none() {
                        permit =
                            Some(self.fills.permits.clone().acquire_owned().await.map_err(
                                |e| UpstreamError::Store(StoreError::Task(e.to_string())),
                            )?);
                    }
                    self.open_chunk(hash, from).await.map(|mut r| {
                        r.count_from_here();
                        r
                    })
                }
            };
            self.metrics.upstream_fetches.inc();
            let got = match reader {
                Ok(r) => self.receive(hash, r, tx).await,
                Err(e) => Err(e),
            };
            self.note(&got);
            match got {
                Ok(filled) => {
                    self.metrics
                        .upstream_artifact_bytes
                        .get_or_create(&crate::metrics::KindLabel { kind: kind.into() })
                        .inc_by(filled.bytes.len() as u64);
                    return Ok(filled);
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

    /// Reads one encoded chunk from `reader`, verifying it group by group; groups the
    /// fill already has (from an earlier, failed transfer) are not added again.
    async fn receive(
        &self,
        hash: Hash,
        mut reader: BodyReader,
        tx: &watch::Sender<Progress>,
    ) -> Result<Filled, UpstreamError> {
        let start = reader.start;
        let decoded = bao::decode_from(hash, &mut reader, MAX_CHUNK_BYTES, start, |at, group| {
            tx.send_if_modified(|p| {
                if p.groups.contains_key(&at) {
                    return false;
                }
                p.len += group.len() as u64;
                p.groups.insert(at, group);
                true
            });
        })
        .await;
        let (size, outboard) = match decoded {
            Ok(d) => d,
            Err(bao::DecodeError::Corrupt) => {
                if self.bucket().is_some() {
                    self.metrics.bucket_corrupt.inc();
                }
                tracing::error!(chunk = %hash.short(), source = %reader.url, "chunk from upstream failed verification; discarded");
                return Err(UpstreamError::Corrupt(hash));
            }
            Err(bao::DecodeError::TooLarge(n)) => {
                return Err(UpstreamError::Body {
                    url: reader.url.clone(),
                    message: format!("chunk {hash} of {n} bytes is over {MAX_CHUNK_BYTES}"),
                })
            }
            Err(bao::DecodeError::Io(e)) => return Err(reader.failure(e)),
        };
        let p = tx.borrow();
        if p.len != size {
            return Err(UpstreamError::Corrupt(hash));
        }
        // Groups are keyed by their offsets and verified at them, so `size` bytes of
        // them cover the chunk exactly.
        let bytes = match p.groups.len() {
            1 => p.groups.values().next().cloned().unwrap_or_default(),
            _ => {
                let mut whole = BytesMut::with_capacity(size as usize);
                for g in p.groups.values() {
                    whole.extend_from_slice(g);
                }
                whole.freeze()
            }
        };
        Ok(Filled { bytes, outboard })
    }
}

fn ended_without_outcome() -> Arc<UpstreamError> {
    Arc::new(UpstreamError::Store(StoreError::Task(
        "a chunk fill ended without an outcome".into(),
    )))
}
