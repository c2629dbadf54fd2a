//! Read path: (blob, byte range) → stream of `Bytes`, one chunk slice at a time.
//!
//! The stream is lazy: the next chunk is fetched only when the consumer (the socket)
//! asks for more, so a slow client holds at most one chunk, whatever the range size.
//! Slices share the cached chunk's memory (no copy).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::{blocking, Manifest, Store, StoreError};
use crate::hash::Hash;

/// Largest piece of a chunk copied out of it rather than shared.
const COPY_BELOW: usize = 64 << 10;

/// Bytes `from..to` of a chunk, for a response. A large part shares the chunk (no copy);
/// a small one is copied, so a client that asks for a few bytes and never reads them
/// pins those bytes, not the whole chunk (up to 1 MiB) they came from.
pub fn piece_of(chunk: &Bytes, from: usize, to: usize) -> Bytes {
    let len = to.saturating_sub(from);
    if len <= COPY_BELOW && len < chunk.len() / 2 {
        Bytes::copy_from_slice(&chunk[from..to])
    } else {
        chunk.slice(from..to)
    }
}

impl Store {
    /// One chunk, verified: from the cache, or read once from the engine however many
    /// requests miss on it at the same moment.
    pub async fn chunk(self: &Arc<Self>, hash: Hash) -> Result<Bytes, StoreError> {
        match self.cache.chunks.get_value_or_guard_async(&hash).await {
            Ok(bytes) => {
                self.metrics.cache_hits.inc();
                Ok(bytes)
            }
            Err(guard) => {
                self.metrics.cache_misses.inc();
                let this = self.clone();
                let read = move || {
                    let bytes = this.read_chunk_uncached(&hash)?;
                    this.load_outboard(hash, bytes.len() as u64);
                    Ok(bytes)
                };
                let bytes = match self.inline_reads.load(std::sync::atomic::Ordering::Relaxed) {
                    true => read()?,
                    false => blocking(read).await?,
                };
                let _ = guard.insert(bytes.clone());
                Ok(bytes)
            }
        }
    }

    /// Bytes `from..to` of chunk `hash` (`len` bytes long), verified. From the cache when
    /// the chunk is there. Part of a chunk that is not comes from the cached 16 KiB
    /// blocks it overlaps, or is read from the engine and checked against the chunk's
    /// stored outboard: only those blocks are hashed, and only they are cached, so
    /// ranges neither hash nor push out the parts of chunks they do not return (a
    /// random 1 MiB range hashes its two end chunks only as far as it reaches into
    /// them), and a range asked again is a hit. A whole chunk (what sequential
    /// downloads ask for) is read, verified and cached whole ([`Store::chunk`]).
    pub async fn chunk_piece(
        self: &Arc<Self>,
        hash: Hash,
        len: usize,
        from: usize,
        to: usize,
    ) -> Result<Bytes, StoreError> {
        let part = (from > 0 || to < len) && len > crate::protocol::bao::BLOCK.bytes();
        if !part {
            let bytes = self.chunk(hash).await?;
            return Ok(piece_of(&bytes, from, to.min(bytes.len())));
        }
        if let Some(bytes) = self.cache.chunks.get(&hash) {
            self.metrics.cache_hits.inc();
            return Ok(piece_of(&bytes, from, to.min(bytes.len())));
        }
        let to = to.min(len);
        if let Some(piece) = self.cached_blocks(hash, from, to) {
            self.metrics.cache_hits.inc();
            return Ok(piece);
        }
        self.metrics.cache_misses.inc();
        let this = self.clone();
        let read = move || match this.stored_outboard(hash, len as u64) {
            Some(tree) => this.read_part(hash, len, &tree, from, to).map(Some),
            None => Ok(None),
        };
        let piece = match self.inline_reads.load(std::sync::atomic::Ordering::Relaxed) {
            true => read()?,
            false => blocking(read).await?,
        };
        match piece {
            Some(piece) => Ok(piece),
            None => {
                // No tree stored (a chunk kept before trees were): the whole chunk,
                // hashed and cached, off the serving thread.
                let bytes = self.chunk(hash).await?;
                Ok(piece_of(&bytes, from, to.min(bytes.len())))
            }
        }
    }

    /// Bytes `from..to` of chunk `hash` (`len` bytes, `outboard` its stored tree), a
    /// part of it, from the engine (blocking): the chunk's value is read, and only the
    /// 16 KiB groups the range overlaps are verified, copied out of the engine's buffer
    /// and cached.
    fn read_part(
        &self,
        hash: Hash,
        len: usize,
        outboard: &[u8],
        from: usize,
        to: usize,
    ) -> Result<Bytes, StoreError> {
        let group = crate::protocol::bao::BLOCK.bytes();
        let (a, b) = (from / group * group, to.div_ceil(group) * group);
        let mut answer = Err(StoreError::ChunkMissing(hash));
        self.kv
            .with_value(super::Cf::Chunks, hash.as_bytes(), &mut |v| {
                if let Some(v) = v {
                    answer = self.verified_span(hash, v, len, outboard, a, b.min(v.len()));
                }
            })?;
        let span = answer?;
        for (i, at) in (a..span.len() + a).step_by(group).enumerate() {
            let end = (at + group).min(a + span.len());
            let key = (hash, (a / group + i) as u32);
            self.cache.blocks.insert(key, span.slice(at - a..end - a));
        }
        Ok(span.slice(from - a..to - a))
    }

    /// Bytes `from..to` of a chunk from cached blocks, when every block they need is
    /// there.
    fn cached_blocks(&self, hash: Hash, from: usize, to: usize) -> Option<Bytes> {
        let group = crate::protocol::bao::BLOCK.bytes();
        let (g0, g1) = (from / group, to.div_ceil(group));
        if g1 == g0 + 1 {
            let b = self.cache.blocks.get(&(hash, g0 as u32))?;
            let at = from - g0 * group;
            return (at + (to - from) <= b.len()).then(|| b.slice(at..at + (to - from)));
        }
        let mut out = Vec::with_capacity(to - from);
        for g in g0..g1 {
            let b = self.cache.blocks.get(&(hash, g as u32))?;
            let start = from.max(g * group) - g * group;
            let end = (to.min((g + 1) * group) - g * group).min(b.len());
            out.extend_from_slice(b.get(start..end)?);
        }
        (out.len() == to - from).then(|| Bytes::from(out))
    }

    /// Bytes `a..b` (16 KiB groups) of chunk `hash` whose stored value is `v`, once they
    /// verify against the chunk's tree (or, when the tree is damaged, the whole chunk's
    /// hash).
    fn verified_span(
        &self,
        hash: Hash,
        v: &[u8],
        len: usize,
        outboard: &[u8],
        a: usize,
        b: usize,
    ) -> Result<Bytes, StoreError> {
        self.metrics.chunk_read_bytes.inc_by(v.len() as u64);
        self.metrics.chunk_hashed_bytes.inc_by((b - a) as u64);
        if v.len() != len || !crate::protocol::bao::verify_range(hash, v, outboard, a, b) {
            // The chunk, or only its tree? The whole chunk decides.
            self.metrics.chunk_hashed_bytes.inc_by(v.len() as u64);
            let (actual, tree) = crate::protocol::bao::outboard(v);
            if actual != hash || v.len() != len {
                self.metrics.corrupt_chunks.inc();
                tracing::error!(chunk = %hash.short(), "stored chunk failed verification");
                return Err(StoreError::ChunkCorrupt(hash));
            }
            tracing::warn!(chunk = %hash.short(), "stored outboard is damaged; using the recomputed one");
            self.cache.outboards.insert(hash, Bytes::from(tree));
        }
        Ok(Bytes::copy_from_slice(&v[a..b]))
    }

    /// The stored outboard of a chunk of `len` bytes (blocking): from the cache, else the
    /// engine (kept in the cache then). None when none is stored.
    fn stored_outboard(&self, hash: Hash, len: u64) -> Option<Bytes> {
        if crate::protocol::bao::outboard_len(len) == 0 {
            return Some(Bytes::new());
        }
        if let Some(o) = self.cache.outboards.get(&hash) {
            return Some(o);
        }
        match self.kv.get(super::Cf::Outboards, hash.as_bytes()) {
            Ok(Some(v)) => {
                let v = Bytes::from(v);
                self.cache.outboards.insert(hash, v.clone());
                Some(v)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(chunk = %hash.short(), error = %e, "reading an outboard failed");
                None
            }
        }
    }

    /// A stored chunk's outboard ([`crate::protocol::bao`]), `len` its size: from memory
    /// (read with the chunk, or held by the engine there), else read off the async
    /// runtime. `None` when none is stored (a chunk kept before outboards were, or one
    /// being filled): the sender then computes it from the chunk.
    pub async fn outboard(self: &Arc<Self>, hash: Hash, len: u64) -> Option<Bytes> {
        if crate::protocol::bao::outboard_len(len) == 0 {
            return Some(Bytes::new());
        }
        if let Some(o) = self.cache.outboards.get(&hash) {
            return Some(o);
        }
        let found = match self
            .kv
            .get_from_memory(super::Cf::Outboards, hash.as_bytes())
        {
            Ok(Some(v)) => Ok(v),
            Ok(None) => {
                let this = self.clone();
                blocking(move || this.kv.get(super::Cf::Outboards, hash.as_bytes())).await
            }
            Err(e) => Err(e),
        };
        match found {
            Ok(v) => v.map(|v| {
                let v = Bytes::from(v);
                self.cache.outboards.insert(hash, v.clone());
                v
            }),
            Err(e) => {
                // Derived data: the chunk is intact and its tree can be computed again.
                tracing::warn!(chunk = %hash.short(), error = %e, "reading an outboard failed; computing it");
                None
            }
        }
    }

    /// Reads a chunk's outboard into memory along with the chunk (blocking).
    pub(super) fn load_outboard(&self, hash: Hash, len: u64) {
        if crate::protocol::bao::outboard_len(len) == 0 || self.cache.outboards.contains_key(&hash)
        {
            return;
        }
        match self.kv.get(super::Cf::Outboards, hash.as_bytes()) {
            Ok(Some(v)) => self.cache.outboards.insert(hash, Bytes::from(v)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(chunk = %hash.short(), error = %e, "reading an outboard failed")
            }
        }
    }

    /// The chunk if it is in the hot cache (no engine read).
    pub fn cached(&self, hash: &Hash) -> Option<Bytes> {
        self.cache.chunks.get(hash)
    }

    /// False only if this store certainly does not hold the chunk (answered from memory,
    /// no engine read: what an edge asks before filling a chunk it has never seen).
    pub fn may_hold_chunk(&self, hash: &Hash) -> bool {
        self.is_cached(hash) || self.kv.may_contain(super::Cf::Chunks, hash.as_bytes())
    }

    /// Like [`Store::may_hold_chunk`], for a blob's manifest.
    pub fn may_hold_blob(&self, hash: &Hash) -> bool {
        self.cache.manifests.get(hash).is_some()
            || self.kv.may_contain(super::Cf::Blobs, hash.as_bytes())
    }

    pub fn is_cached(&self, hash: &Hash) -> bool {
        self.cache.chunks.contains_key(hash)
    }

    /// Streams bytes `start..end` of a blob (end exclusive, within the blob).
    pub fn read_range(
        self: &Arc<Self>,
        manifest: Arc<Manifest>,
        start: u64,
        end: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static, StoreError> {
        manifest.check_range(start, end)?;
        let store = self.clone();
        Ok(futures_util::stream::try_unfold(start, move |pos| {
            let store = store.clone();
            let manifest = manifest.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let i = manifest.chunk_at(pos);
                let chunk_start = manifest.start_of(i);
                let c = manifest.chunks[i];
                let from = (pos - chunk_start) as usize;
                let to = ((end - chunk_start) as usize).min(c.len as usize);
                let piece = store.chunk_piece(c.hash, c.len as usize, from, to).await?;
                let next = chunk_start + to as u64;
                Ok(Some((piece, next)))
            }
        }))
    }

    /// Reads a whole blob into memory (tests and small objects only).
    pub async fn read_all(self: &Arc<Self>, hash: Hash) -> Result<Vec<u8>, StoreError> {
        use futures_util::TryStreamExt;
        let m = self.manifest(hash).await?;
        let size = m.size;
        let parts: Vec<Bytes> = self.read_range(m, 0, size)?.try_collect().await?;
        Ok(parts.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::super::kv::{Cf, KvStore};
    use super::super::test_util::{memory_store, noise};
    use super::*;
    use futures_util::TryStreamExt;

    #[test]
    fn a_small_piece_does_not_share_its_chunk_and_a_large_one_does() {
        let chunk = Bytes::from(noise(1 << 20, 3));
        let shares = |b: &Bytes| {
            let (p, c) = (b.as_ptr() as usize, chunk.as_ptr() as usize);
            p >= c && p < c + chunk.len()
        };
        let small = piece_of(&chunk, 1000, 1001);
        assert_eq!(small.as_ref(), &chunk[1000..1001]);
        assert!(!shares(&small), "a 1-byte piece pins its 1 MiB chunk");
        assert!(!shares(&piece_of(&chunk, 0, 64 << 10)));
        let large = piece_of(&chunk, 0, 600 << 10);
        assert_eq!(large.as_ref(), &chunk[..600 << 10]);
        assert!(shares(&large), "a large piece is copied");
        // Most of a small chunk: shared (the copy would save nothing).
        let small_chunk = chunk.slice(..1000);
        let most = piece_of(&small_chunk, 10, 1000);
        assert!(shares(&most));
    }

    #[tokio::test]
    async fn every_range_reads_back_exactly() {
        let (store, _) = memory_store();
        let data = noise(60_000, 11);
        let put = store.put_reader(&data[..], |_| {}).unwrap();
        let m = store.manifest(put.hash).await.unwrap();
        assert!(m.chunks.len() > 3);
        for (s, e) in [
            (0, 0),
            (0, 1),
            (0, 60_000),
            (4095, 4097),
            (59_999, 60_000),
            (1234, 50_000),
        ] {
            let got: Vec<Bytes> = store
                .read_range(m.clone(), s, e)
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(
                got.concat(),
                &data[s as usize..e as usize],
                "range {s}..{e}"
            );
        }
        assert!(store.read_range(m, 10, 60_001).is_err());
    }

    #[tokio::test]
    async fn boundary_sizes_round_trip() {
        let (store, _) = memory_store();
        let p = store.chunk_params();
        for len in [
            0,
            1,
            p.min - 1,
            p.min,
            p.min + 1,
            p.max - 1,
            p.max,
            p.max + 1,
            5 * p.max + 17,
        ] {
            let data = noise(len, len as u64);
            let put = store.put_reader(&data[..], |_| {}).unwrap();
            assert_eq!(put.size, len as u64);
            assert_eq!(store.read_all(put.hash).await.unwrap(), data, "size {len}");
        }
    }

    #[tokio::test]
    async fn corrupted_chunk_is_an_error_never_data() {
        let (store, kv) = memory_store();
        let data = noise(30_000, 12);
        let put = store.put_reader(&data[..], |_| {}).unwrap();
        let m = store.manifest(put.hash).await.unwrap();
        let victim = m.chunks[1].hash;
        let mut bad = data[m.start_of(1) as usize..m.start_of(2) as usize].to_vec();
        bad[0] ^= 0xff;
        kv.corrupt(Cf::Chunks, victim.as_bytes(), bad);
        let err = store.read_all(put.hash).await.unwrap_err();
        assert!(
            matches!(err, StoreError::ChunkCorrupt(h) if h == victim),
            "{err}"
        );
        assert_eq!(store.metrics().corrupt_chunks.get(), 1);
    }

    /// A store of production-sized chunks (several 16 KiB groups each), a 1 MiB blob in
    /// it, and its manifest.
    async fn big_chunks() -> (
        Arc<Store>,
        Arc<crate::store::memory::MemoryKv>,
        Vec<u8>,
        Arc<Manifest>,
    ) {
        let (store, kv) = crate::store::test_util::memory_store_with(crate::store::ChunkParams {
            min: 64 << 10,
            avg: 128 << 10,
            max: 256 << 10,
        });
        let data = noise(1 << 20, 21);
        let put = store.put_reader(&data[..], |_| {}).unwrap();
        let m = store.manifest(put.hash).await.unwrap();
        assert!(m.chunks.len() >= 4);
        // Read from the engine, as after a restart.
        store.cache.chunks.clear();
        (store, kv, data, m)
    }

    #[tokio::test]
    async fn a_small_range_of_a_cold_chunk_hashes_and_caches_only_its_blocks() {
        let (store, _, data, m) = big_chunks().await;
        let c = m.chunks[1];
        let start = m.start_of(1) as usize;
        // Reads bytes `from..to` of the chunk and checks them against the payload.
        let piece = |from: usize, to: usize| {
            let store = store.clone();
            let want = data[start + from..start + to].to_vec();
            async move {
                let got = store
                    .chunk_piece(c.hash, c.len as usize, from, to)
                    .await
                    .unwrap();
                assert_eq!(&got[..], &want[..], "{from}..{to}");
            }
        };
        piece(20_000, 24_096).await;
        let metrics = store.metrics();
        assert_eq!(metrics.chunk_read_bytes.get(), u64::from(c.len));
        // 20,000..24,096 lies in groups 1 (16..32 KiB): 16 KiB hashed, not the chunk.
        assert_eq!(metrics.chunk_hashed_bytes.get(), 16 << 10);
        assert!(
            !store.is_cached(&c.hash),
            "a small range does not cache its chunk"
        );
        // Its block is: the same range, and another in the same 16 KiB, are hits.
        let misses = metrics.cache_misses.get();
        piece(20_000, 24_096).await;
        piece(17_000, 17_100).await;
        assert_eq!(metrics.cache_misses.get(), misses);
        assert_eq!(
            metrics.chunk_read_bytes.get(),
            u64::from(c.len),
            "no second read"
        );
        // One spanning two blocks, one of them not cached: read (both blocks verified and
        // cached), then a hit.
        piece(30_000, 40_000).await;
        assert_eq!(metrics.chunk_hashed_bytes.get(), (16 << 10) + (32 << 10));
        piece(31_000, 36_000).await;
        assert_eq!(metrics.cache_misses.get(), misses + 1);
        // Larger reads still verify and cache whole chunks.
        let all = store.read_range(m.clone(), 0, m.size).unwrap();
        let parts: Vec<Bytes> = all.try_collect().await.unwrap();
        assert_eq!(parts.concat(), data);
        assert!(store.is_cached(&c.hash));
    }

    #[tokio::test]
    async fn a_large_part_of_a_cold_chunk_hashes_only_its_blocks_and_a_whole_one_is_cached() {
        let (store, _, data, m) = big_chunks().await;
        let group = crate::protocol::bao::BLOCK.bytes();
        let c = m.chunks[1];
        let (len, start) = (c.len as usize, m.start_of(1) as usize);
        assert!(len >= 4 * group);
        // All but the first and last few bytes, as where a 1 MiB range ends in a chunk.
        let (from, to) = (1000, len - 1000);
        let got = store.chunk_piece(c.hash, len, from, to).await.unwrap();
        assert_eq!(&got[..], &data[start + from..start + to]);
        let metrics = store.metrics();
        // The groups it overlaps are hashed (not a short last group it does not reach),
        // and the chunk is not cached whole.
        let reached = (to.div_ceil(group) * group).min(len);
        assert!(
            reached < len,
            "the test wants a last group the part does not reach"
        );
        assert_eq!(metrics.chunk_hashed_bytes.get(), reached as u64);
        assert!(!store.is_cached(&c.hash));
        // From the middle of its second group to the end of the chunk: the groups
        // before are not hashed.
        let c = m.chunks[2];
        let (len, start) = (c.len as usize, m.start_of(2) as usize);
        let before = metrics.chunk_hashed_bytes.get();
        let tail = store
            .chunk_piece(c.hash, len, group + 5, len)
            .await
            .unwrap();
        assert_eq!(&tail[..], &data[start + group + 5..start + len]);
        assert_eq!(
            metrics.chunk_hashed_bytes.get() - before,
            (len - group) as u64
        );
        assert!(!store.is_cached(&c.hash));
        // The whole chunk: hashed whole, cached whole.
        let whole = store.chunk_piece(c.hash, len, 0, len).await.unwrap();
        assert_eq!(&whole[..], &data[start..start + len]);
        assert!(store.is_cached(&c.hash));
    }

    #[tokio::test]
    async fn a_cold_read_runs_inline_unless_turned_off() {
        use futures_util::FutureExt;
        let (store, _, data, m) = big_chunks().await;
        let c = m.chunks[1];
        let start = m.start_of(1) as usize;
        let want = &data[start + 40_000..start + 41_000];
        // Inline (the default): answered on the first poll, no hop to another thread.
        let got = store
            .chunk_piece(c.hash, c.len as usize, 40_000, 41_000)
            .now_or_never()
            .expect("an inline read completes without waiting")
            .unwrap();
        assert_eq!(&got[..], want);
        // A whole chunk too.
        let whole = store
            .chunk(c.hash)
            .now_or_never()
            .expect("an inline read of a whole chunk completes without waiting")
            .unwrap();
        assert_eq!(&whole[..], &data[start..start + c.len as usize]);
        // Off: the same bytes, read on the blocking pool.
        store.cache.blocks.clear();
        store.cache.chunks.clear();
        store.set_inline_reads(false);
        let misses = store.metrics().cache_misses.get();
        let got = store
            .chunk_piece(c.hash, c.len as usize, 40_000, 41_000)
            .await
            .unwrap();
        assert_eq!(&got[..], want);
        assert_eq!(store.metrics().cache_misses.get(), misses + 1);
        let whole = store.chunk(c.hash).await.unwrap();
        assert_eq!(&whole[..], &data[start..start + c.len as usize]);
        assert_eq!(store.metrics().cache_misses.get(), misses + 2);
    }

    #[tokio::test]
    async fn a_small_range_of_a_chunk_without_a_stored_tree_reads_the_whole_chunk() {
        use super::super::kv::Batch;
        let (store, kv, data, m) = big_chunks().await;
        let c = m.chunks[1];
        let mut b = Batch::default();
        b.delete(Cf::Outboards, c.hash.as_bytes().to_vec());
        kv.write(b, true).unwrap();
        store.cache.outboards.clear();
        let start = m.start_of(1) as usize;
        let got = store
            .chunk_piece(c.hash, c.len as usize, 100, 4196)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[start + 100..start + 4196]);
        // Verified whole, and cached whole.
        assert_eq!(store.metrics().chunk_hashed_bytes.get(), u64::from(c.len));
        assert!(store.is_cached(&c.hash));
    }

    #[tokio::test]
    async fn a_small_range_is_served_only_if_its_bytes_verify() {
        let (store, kv, data, m) = big_chunks().await;
        let c = m.chunks[2];
        let start = m.start_of(2) as usize;
        let mut bad = data[start..start + c.len as usize].to_vec();
        bad[50_000] ^= 1;
        kv.corrupt(Cf::Chunks, c.hash.as_bytes(), bad);
        // A range over the damaged byte: an error, counted, never the bytes.
        let err = store
            .chunk_piece(c.hash, c.len as usize, 49_000, 51_000)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::ChunkCorrupt(h) if h == c.hash),
            "{err}"
        );
        assert_eq!(store.metrics().corrupt_chunks.get(), 1);
        // A range in another group is intact and served (the damage stays for
        // `blob verify` and for any read that touches it).
        let ok = store
            .chunk_piece(c.hash, c.len as usize, 0, 1000)
            .await
            .unwrap();
        assert_eq!(&ok[..], &data[start..start + 1000]);
    }

    #[tokio::test]
    async fn a_damaged_tree_does_not_fail_an_intact_chunk() {
        let (store, kv, data, m) = big_chunks().await;
        let c = m.chunks[0];
        let mut tree = kv.get(Cf::Outboards, c.hash.as_bytes()).unwrap().unwrap();
        tree[3] ^= 1;
        kv.corrupt(Cf::Outboards, c.hash.as_bytes(), tree);
        store.cache.outboards.clear();
        let got = store
            .chunk_piece(c.hash, c.len as usize, 100, 200)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[100..200]);
        assert_eq!(store.metrics().corrupt_chunks.get(), 0);
    }

    #[tokio::test]
    async fn second_read_hits_the_cache() {
        let (store, _) = memory_store();
        let data = noise(20_000, 13);
        let put = store.put_reader(&data[..], |_| {}).unwrap();
        store.read_all(put.hash).await.unwrap();
        let misses = store.metrics().cache_misses.get();
        store.read_all(put.hash).await.unwrap();
        assert_eq!(store.metrics().cache_misses.get(), misses);
        assert!(store.metrics().cache_hits.get() > 0);
    }
}
