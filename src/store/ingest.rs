//! Streaming ingest: bytes in → content-defined chunks → new chunks written in bounded
//! batches → manifest committed last, synced.
//!
//! Memory: one chunking window (up to `2 × max` chunk bytes) and at most
//! `BATCH_BYTES` (8 MiB) of pending chunk data, whatever the payload size.

use bytes::{Bytes, BytesMut};

use super::kv::{Batch, Cf};
use super::manifest::{ChunkRef, Manifest};
use super::{Store, StoreError, STATS_KEY};
use crate::hash::Hash;

/// Pending new-chunk bytes before they are written as one batch.
const BATCH_BYTES: usize = 8 << 20;

/// Result of storing a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PutOutcome {
    pub hash: Hash,
    pub size: u64,
    /// False when the blob was already stored (nothing new was committed).
    #[serde(skip)]
    pub created: bool,
    /// SHA-256 of the payload, computed alongside blake3 (what TUF clients check).
    #[serde(skip)]
    pub sha256: [u8; 32],
}

/// What [`Store::assemble`] made of a chunk list.
#[derive(Debug)]
pub enum Assembled {
    /// The blob, committed (or found stored already).
    Blob(PutOutcome),
    /// These chunks are not stored (sorted, each once).
    Missing(Vec<Hash>),
    /// The list gives a chunk a length its stored bytes do not have.
    WrongLength {
        chunk: Hash,
        stored: u64,
        listed: u32,
    },
    /// The chunks make another blob than the one declared.
    WrongBlob { actual: Hash },
}

/// Writes one blob; call [`BlobWriter::write`] repeatedly, then [`BlobWriter::finish`].
/// Dropping it without `finish` leaves only unreferenced chunks.
pub struct BlobWriter<'a> {
    store: &'a Store,
    chunker: super::chunker::Chunker,
    window: BytesMut,
    whole: blake3::Hasher,
    sha256: aws_lc_rs::digest::Context,
    chunks: Vec<ChunkRef>,
    /// Chunks not written yet, with their outboards.
    pending: Vec<(Hash, Bytes, Vec<u8>)>,
    pending_bytes: usize,
}

impl<'a> BlobWriter<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        let params = store.chunk_params();
        BlobWriter {
            store,
            chunker: super::chunker::Chunker::new(params),
            window: BytesMut::with_capacity(2 * params.max),
            whole: blake3::Hasher::new(),
            sha256: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            chunks: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.store.metrics.ingest_bytes.inc_by(data.len() as u64);
        self.whole.update(data);
        self.sha256.update(data);
        let max = self.chunker.params().max;
        while !data.is_empty() {
            let take = (2 * max - self.window.len()).min(data.len());
            self.window.extend_from_slice(&data[..take]);
            data = &data[take..];
            while self.window.len() >= max {
                self.cut_one()?;
            }
        }
        Ok(())
    }

    fn cut_one(&mut self) -> Result<(), StoreError> {
        let n = self.chunker.cut(&self.window);
        let chunk = self.window.split_to(n).freeze();
        // The address and the outboard in one pass over the chunk.
        let (hash, outboard) = crate::protocol::bao::outboard(&chunk);
        self.chunks.push(ChunkRef {
            hash,
            len: n as u32,
        });
        self.pending_bytes += chunk.len();
        self.pending.push((hash, chunk, outboard));
        if self.pending_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending chunks the store does not have yet, with the updated counters.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut stats = self
            .store
            .write_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = *stats;
        let mut batch = Batch::default();
        let mut seen = std::collections::HashSet::new();
        for (hash, bytes, outboard) in self.pending.drain(..) {
            if !seen.insert(hash) || self.store.kv.contains(Cf::Chunks, hash.as_bytes())? {
                continue;
            }
            next.chunks += 1;
            next.bytes += bytes.len() as u64;
            put_chunk_ops(&mut batch, hash, bytes, outboard);
        }
        self.pending_bytes = 0;
        if batch.is_empty() {
            return Ok(());
        }
        batch.put(Cf::Meta, STATS_KEY, next.encode());
        self.store.kv.write(batch, false)?;
        *stats = next;
        self.store.metrics.store_chunks.set(next.chunks);
        self.store.metrics.store_bytes.set(next.bytes);
        Ok(())
    }

    /// Chunks the tail, writes what is pending, then commits the manifest (synced).
    pub fn finish(mut self) -> Result<PutOutcome, StoreError> {
        while !self.window.is_empty() {
            self.cut_one()?;
        }
        self.flush()?;
        let hash = Hash::from(self.whole.finalize());
        let sha256: [u8; 32] = self
            .sha256
            .clone()
            .finish()
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        let manifest = Manifest::new(std::mem::take(&mut self.chunks));
        let size = manifest.size;
        if self.store.kv.contains(Cf::Blobs, hash.as_bytes())? {
            return Ok(PutOutcome {
                hash,
                size,
                created: false,
                sha256,
            });
        }
        let mut batch = Batch::default();
        batch.put(Cf::Blobs, hash.as_bytes().to_vec(), manifest.encode());
        // Synced: this makes every earlier (unsynced) chunk write durable too, since the
        // engine's log is ordered.
        self.store.kv.write(batch, true)?;
        tracing::debug!(blob = %hash.short(), size, "blob committed");
        Ok(PutOutcome {
            hash,
            size,
            created: true,
            sha256,
        })
    }
}

/// A chunk and its outboard, in one batch (a chunk is never stored without it; a chunk of
/// one group has none).
fn put_chunk_ops(batch: &mut Batch, hash: Hash, bytes: Bytes, outboard: impl Into<Bytes>) {
    batch.put_bytes(Cf::Chunks, hash.as_bytes().to_vec(), bytes);
    let outboard = outboard.into();
    if !outboard.is_empty() {
        batch.put_bytes(Cf::Outboards, hash.as_bytes().to_vec(), outboard);
    }
}

impl Store {
    /// Puts a verified chunk in the hot cache (an edge hands a fill to readers at once
    /// and stores it after).
    pub fn cache_chunk(&self, hash: Hash, bytes: Bytes) {
        self.cache.chunks.insert(hash, bytes);
    }

    /// Stores one chunk whose bytes the caller has verified against `hash` (an edge's
    /// fill), with its outboard (the verified tree it arrived with), replacing a damaged
    /// copy, and caches it. Written without the write-ahead
    /// log: an edge's chunks are a cache of upstream, so a crash may lose the last ones
    /// (even under a blob manifest committed later); a missing chunk is refilled on use.
    pub fn put_chunk(&self, hash: Hash, bytes: Bytes, outboard: Vec<u8>) -> Result<(), StoreError> {
        self.put_verified_chunk(hash, bytes, outboard, false)
    }

    /// Stores one chunk an operator uploaded ahead of a publish (`PUT /v1/chunks/{hash}`),
    /// whose bytes the caller has verified against `hash`, with its outboard. Logged but
    /// not synced: the build that references it commits its manifest synced, which makes
    /// every earlier logged write durable too. Returns false when it was stored already.
    pub fn put_uploaded_chunk(
        &self,
        hash: Hash,
        bytes: Bytes,
        outboard: Vec<u8>,
    ) -> Result<bool, StoreError> {
        if self.kv.contains(Cf::Chunks, hash.as_bytes())? {
            return Ok(false);
        }
        self.put_verified_chunk(hash, bytes, outboard, true)?;
        Ok(true)
    }

    fn put_verified_chunk(
        &self,
        hash: Hash,
        bytes: Bytes,
        outboard: Vec<u8>,
        logged: bool,
    ) -> Result<(), StoreError> {
        debug_assert_eq!(
            crate::protocol::bao::outboard(&bytes),
            (hash, outboard.clone())
        );
        let mut stats = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = *stats;
        let mut batch = Batch::default();
        if !self.kv.contains(Cf::Chunks, hash.as_bytes())? {
            next.chunks += 1;
            next.bytes += bytes.len() as u64;
            batch.put(Cf::Meta, STATS_KEY, next.encode());
        }
        let tree = Bytes::from(outboard);
        put_chunk_ops(&mut batch, hash, bytes.clone(), tree.clone());
        if logged {
            self.kv.write(batch, false)?;
        } else {
            self.kv.write_unlogged(batch)?;
        }
        *stats = next;
        self.metrics.store_chunks.set(next.chunks);
        self.metrics.store_bytes.set(next.bytes);
        drop(stats);
        // An upload is not hot content: it would only push out what devices read.
        if !logged {
            self.cache.chunks.insert(hash, bytes);
            if !tree.is_empty() {
                self.cache.outboards.insert(hash, tree);
            }
        }
        Ok(())
    }

    /// Stored length of a chunk (None if absent).
    pub fn chunk_len(&self, hash: &Hash) -> Result<Option<u32>, StoreError> {
        Ok(self
            .kv
            .get(Cf::Chunks, hash.as_bytes())?
            .map(|v| v.len() as u32))
    }

    /// Deletes chunks (an edge's eviction) from the engine and the hot cache; returns
    /// the bytes freed. Manifests that reference them stay: an edge refills on demand.
    pub fn delete_chunks(&self, hashes: &[Hash]) -> Result<u64, StoreError> {
        let mut stats = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = *stats;
        let mut batch = Batch::default();
        for h in hashes {
            if let Some(v) = self.kv.get(Cf::Chunks, h.as_bytes())? {
                next.chunks = next.chunks.saturating_sub(1);
                next.bytes = next.bytes.saturating_sub(v.len() as u64);
                batch.delete(Cf::Chunks, h.as_bytes().to_vec());
                batch.delete(Cf::Outboards, h.as_bytes().to_vec());
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let freed = stats.bytes - next.bytes;
        batch.put(Cf::Meta, STATS_KEY, next.encode());
        self.kv.write(batch, false)?;
        *stats = next;
        self.metrics.store_chunks.set(next.chunks);
        self.metrics.store_bytes.set(next.bytes);
        drop(stats);
        for h in hashes {
            self.cache.chunks.remove(h);
            self.cache.outboards.remove(h);
        }
        Ok(freed)
    }

    /// A blob from chunks already stored (uploaded one by one with
    /// [`Store::put_uploaded_chunk`]), in order (blocking). Every chunk is read back and
    /// verified, and the whole is hashed (blake3 and SHA-256) as an upload would be.
    /// Nothing is committed unless every chunk is there with the listed length and the
    /// whole hashes to `declared`.
    /// The caller holds a GC guard and has checked the list's shape.
    pub fn assemble(&self, chunks: Vec<ChunkRef>, declared: Hash) -> Result<Assembled, StoreError> {
        let mut missing = Vec::new();
        for c in &chunks {
            if !self.kv.contains(Cf::Chunks, c.hash.as_bytes())? {
                missing.push(c.hash);
            }
        }
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            return Ok(Assembled::Missing(missing));
        }
        // SHA-256 on a thread of its own, fed in order: the read (with each chunk's
        // verification) and blake3 here overlap it, so a 1 GiB blob costs the slower pass,
        // not the sum.
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(16);
        let (read, sha256) = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut sha256 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                for b in rx {
                    sha256.update(&b);
                }
                sha256.finish()
            });
            let read = (|| {
                let mut whole = blake3::Hasher::new();
                for c in &chunks {
                    let bytes = self.chunk_blocking(&c.hash)?;
                    if bytes.len() != c.len as usize {
                        return Ok(Err(Assembled::WrongLength {
                            chunk: c.hash,
                            stored: bytes.len() as u64,
                            listed: c.len,
                        }));
                    }
                    whole.update(&bytes);
                    if tx.send(bytes).is_err() {
                        break;
                    }
                }
                Ok::<_, StoreError>(Ok(Hash::from(whole.finalize())))
            })();
            drop(tx);
            let sha256 = hasher.join();
            (read, sha256)
        });
        let hash = match read? {
            Ok(hash) => hash,
            Err(wrong) => return Ok(wrong),
        };
        if hash != declared {
            return Ok(Assembled::WrongBlob { actual: hash });
        }
        let sha256 = sha256.map_err(|_| StoreError::Task("the SHA-256 thread panicked".into()))?;
        let sha256: [u8; 32] = sha256.as_ref().try_into().unwrap_or([0; 32]);
        let manifest = Manifest::new(chunks);
        let size = manifest.size;
        let created = !self.kv.contains(Cf::Blobs, hash.as_bytes())?;
        if created {
            self.put_manifest(hash, &manifest)?;
        }
        Ok(Assembled::Blob(PutOutcome {
            hash,
            size,
            created,
            sha256,
        }))
    }

    /// Commits the manifest of a blob whose chunks are all stored and whose whole
    /// blake3 the caller has checked (synced, so its chunks are durable too).
    pub fn put_manifest(&self, hash: Hash, manifest: &Manifest) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.put(Cf::Blobs, hash.as_bytes().to_vec(), manifest.encode());
        self.kv.write(batch, true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{memory_store, noise};
    use super::*;

    #[test]
    fn identical_payload_is_stored_once() {
        let (store, _) = memory_store();
        let data = noise(100_000, 3);
        let a = store.put_reader(&data[..], |_| {}).unwrap();
        let before = store.stats();
        let b = store.put_reader(&data[..], |_| {}).unwrap();
        assert!(a.created && !b.created);
        assert_eq!(a.hash, Hash::of(&data));
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
        assert_eq!(
            (a.sha256, b.sha256),
            (sha.as_ref().try_into().unwrap(), a.sha256)
        );
        assert_eq!(store.stats(), before);
        assert_eq!(before.bytes, 100_000);
    }

    #[test]
    fn edited_payload_shares_most_chunks() {
        let (store, _) = memory_store();
        let old = noise(400_000, 5);
        let mut new = old.clone();
        new.splice(200_000..200_000, noise(100, 6));
        store.put_reader(&old[..], |_| {}).unwrap();
        let after_old = store.stats().bytes;
        store.put_reader(&new[..], |_| {}).unwrap();
        let added = store.stats().bytes - after_old;
        assert!(added < 40_000, "edit of 100 bytes stored {added} new bytes");
    }

    #[test]
    fn abandoned_writer_leaves_no_blob() {
        let (store, kv) = memory_store();
        let data = noise(50_000, 8);
        let mut w = store.writer();
        w.write(&data).unwrap();
        drop(w);
        use super::super::kv::KvStore;
        let mut blobs = 0;
        kv.scan_keys(Cf::Blobs, &mut |_| {
            blobs += 1;
            true
        })
        .unwrap();
        assert_eq!(blobs, 0);
    }
}
