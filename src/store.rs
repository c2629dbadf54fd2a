//! Content-addressed payload store: chunks and blob manifests in a key-value engine
//! (RocksDB in production, memory in unit tests), with a verified hot cache in front.
//!
//! Guarantees:
//! - **Addressing**: chunks and blobs are keyed by the blake3 of their bytes.
//! - **Durability**: a blob's manifest is written (synced) only after all of its chunks;
//!   a crash can leave unreferenced chunks (GC removes them), never a blob with missing
//!   chunks.
//! - **Integrity**: every chunk read from the engine is re-hashed before it is served or
//!   cached; a mismatch is an error and a metric, never wrong bytes.
//! - **Memory**: ingest holds one chunk window plus a bounded write batch; reads hold a
//!   chunk at a time. Neither grows with payload size (bar the 36-byte-per-chunk list).
//! - **Concurrency**: readers never block each other; concurrent misses on one chunk are
//!   coalesced into one engine read by the cache.

pub mod cache;
pub mod changes;
pub mod chunker;
pub mod gc;
pub mod ingest;
pub mod kv;
pub mod manifest;
pub mod memory;
pub mod read;
#[cfg(feature = "rocksdb")]
pub mod rocks;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::hash::Hash;
use crate::metrics::Metrics;

pub use chunker::ChunkParams;
pub use ingest::{Assembled, BlobWriter, PutOutcome};
pub use kv::{Batch, Cf, KvStore};
pub use manifest::Manifest;

/// The on-disk layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";
const STATS_KEY: &[u8] = b"stats";

/// Errors from the store layer; each names the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("i/o on {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("blob {0} not found")]
    BlobNotFound(Hash),
    #[error("chunk {0} is missing (referenced by a stored blob)")]
    ChunkMissing(Hash),
    #[error("chunk {0} failed verification: stored bytes do not match their hash")]
    ChunkCorrupt(Hash),
    #[error("manifest of blob {0}: {1}")]
    BadManifest(Hash, manifest::BadManifest),
    #[error(
        "data was written by schema version {found}; this build reads version {SCHEMA_VERSION}"
    )]
    Schema { found: u32 },
    #[error("range {start}..{end} is outside blob of {size} bytes")]
    BadRange { start: u64, end: u64, size: u64 },
    #[error("background task failed: {0}")]
    Task(String),
    #[error("upstream: {0}")]
    Upstream(String),
    /// The engine could not write: the data dir's filesystem is full.
    #[error("storage full: {0}")]
    NoSpace(String),
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir` (None if
/// it cannot be asked).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// What a checkpoint wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backup {
    pub path: PathBuf,
    /// Bytes of its files (hard-linked ones share their blocks with the data directory).
    pub bytes: u64,
    pub seconds: f64,
}

fn dir_bytes(dir: &Path) -> Result<u64, StoreError> {
    let io = |e: std::io::Error| StoreError::Io(dir.display().to_string(), e);
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let meta = entry.map_err(io)?.metadata().map_err(io)?;
        if meta.is_file() {
            n += meta.len();
        }
    }
    Ok(n)
}

/// Makes data directory `data` (absent or empty) from a checkpoint: its files copied,
/// then the result opened to check it is a store of this version. Nothing is changed
/// when `data` holds anything.
pub fn restore(backup: &Path, data: &Path) -> Result<u64, StoreError> {
    let io = |p: &Path, e: std::io::Error| StoreError::Io(p.display().to_string(), e);
    if !backup.join("CURRENT").is_file() {
        return Err(StoreError::Io(
            backup.display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a checkpoint (no CURRENT file)",
            ),
        ));
    }
    if data.exists()
        && std::fs::read_dir(data)
            .map_err(|e| io(data, e))?
            .next()
            .is_some()
    {
        return Err(StoreError::Io(
            data.display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the data directory is not empty",
            ),
        ));
    }
    std::fs::create_dir_all(data).map_err(|e| io(data, e))?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(backup).map_err(|e| io(backup, e))? {
        let entry = entry.map_err(|e| io(backup, e))?;
        if entry.file_type().map_err(|e| io(backup, e))?.is_file() {
            let to = data.join(entry.file_name());
            bytes += std::fs::copy(entry.path(), &to).map_err(|e| io(&to, e))?;
        }
    }
    Ok(bytes)
}

/// Where manifests of blobs this node does not hold come from (an edge's upstream), for
/// code that needs only the manifest (chunk lists in check answers).
pub trait RemoteManifests: Send + Sync + 'static {
    fn fetch(
        self: Arc<Self>,
        blob: Hash,
    ) -> futures_util::future::BoxFuture<'static, Result<Arc<Manifest>, StoreError>>;
}

/// The store: engine + chunker settings + caches + metrics.
pub struct Store {
    kv: Arc<dyn KvStore>,
    params: ChunkParams,
    cache: cache::Caches,
    metrics: Arc<Metrics>,
    /// Serialises "is this chunk new?" + write + counter update across writers.
    write_lock: Mutex<Stats>,
    /// Held shared by every ingest (from first chunk until its blob is referenced) and
    /// exclusively by GC, so GC never sweeps chunks or blobs still being committed.
    gc_lock: Arc<tokio::sync::RwLock<()>>,
    /// The change feed's head (see [`changes`]).
    feed: changes::Feed,
    /// Reads that miss the cache run on the caller's thread, not the blocking pool
    /// (`store.inline_reads`).
    inline_reads: std::sync::atomic::AtomicBool,
}

/// Unique chunk count and bytes, persisted in the meta column family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub chunks: u64,
    pub bytes: u64,
}

impl Stats {
    fn encode(&self) -> Vec<u8> {
        [self.chunks.to_le_bytes(), self.bytes.to_le_bytes()].concat()
    }

    fn decode(b: &[u8]) -> Stats {
        let word = |r: std::ops::Range<usize>| {
            b.get(r)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        Stats {
            chunks: word(0..8),
            bytes: word(8..16),
        }
    }
}

impl Store {
    /// Opens the RocksDB store in `dir` (`mmap_reads`: `store.mmap_reads`).
    pub fn open(
        dir: &Path,
        params: ChunkParams,
        cache_bytes: u64,
        metrics: Arc<Metrics>,
        mmap_reads: bool,
    ) -> Result<Arc<Store>, StoreError> {
        #[cfg(feature = "rocksdb")]
        {
            let kv = rocks::RocksKv::open(dir, mmap_reads)?;
            Store::with_kv(Arc::new(kv), params, cache_bytes, metrics)
        }
        #[cfg(not(feature = "rocksdb"))]
        {
            let _ = (params, cache_bytes, metrics, mmap_reads);
            Err(StoreError::Engine(format!(
                "cannot open {}: built without the rocksdb feature",
                dir.display()
            )))
        }
    }

    /// Builds a store over any engine (memory in tests); checks the schema version.
    pub fn with_kv(
        kv: Arc<dyn KvStore>,
        params: ChunkParams,
        cache_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Store>, StoreError> {
        match kv.get(Cf::Meta, SCHEMA_KEY)? {
            Some(v) => {
                let found = v.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
            }
            None => {
                let mut b = Batch::default();
                b.put(Cf::Meta, SCHEMA_KEY, SCHEMA_VERSION.to_le_bytes());
                kv.write(b, true)?;
            }
        }
        let stats = kv
            .get(Cf::Meta, STATS_KEY)?
            .map(|v| Stats::decode(&v))
            .unwrap_or_default();
        metrics.store_chunks.set(stats.chunks);
        metrics.store_bytes.set(stats.bytes);
        // Weak: the metrics must not keep the engine open after the store is dropped (a
        // reopen of the directory, or RocksDB still running at process exit).
        let engine = Arc::downgrade(&kv);
        metrics.add_source(Arc::new(move || {
            engine
                .upgrade()
                .map(|e| e.engine_stats())
                .unwrap_or_default()
        }));
        let feed = changes::Feed::load(kv.as_ref())?;
        Ok(Arc::new(Store {
            feed,
            kv,
            params,
            cache: cache::Caches::new(cache_bytes),
            metrics,
            write_lock: Mutex::new(stats),
            gc_lock: Arc::new(tokio::sync::RwLock::new(())),
            inline_reads: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// Whether a read that misses the cache runs on the serving thread instead of the
    /// blocking pool (`store.inline_reads`; on by default).
    pub fn set_inline_reads(&self, on: bool) {
        self.inline_reads
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn chunk_params(&self) -> ChunkParams {
        self.params
    }

    pub fn stats(&self) -> Stats {
        *self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Manifest of a stored blob (blocking; cached).
    pub fn manifest_blocking(&self, hash: &Hash) -> Result<Arc<Manifest>, StoreError> {
        if let Some(m) = self.cache.manifests.get(hash) {
            return Ok(m);
        }
        let bytes = self
            .kv
            .get(Cf::Blobs, hash.as_bytes())?
            .ok_or(StoreError::BlobNotFound(*hash))?;
        let m = Arc::new(Manifest::decode(&bytes).map_err(|e| StoreError::BadManifest(*hash, e))?);
        self.cache.manifests.insert(*hash, m.clone());
        Ok(m)
    }

    /// Manifest of a stored blob, off the async runtime on a miss.
    pub async fn manifest(self: &Arc<Self>, hash: Hash) -> Result<Arc<Manifest>, StoreError> {
        if let Some(m) = self.cache.manifests.get(&hash) {
            return Ok(m);
        }
        let this = self.clone();
        blocking(move || this.manifest_blocking(&hash)).await
    }

    pub fn contains_blob(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.cache.manifests.get(hash).is_some()
            || self.kv.contains(Cf::Blobs, hash.as_bytes())?)
    }

    /// Reads and verifies one chunk from the engine, bypassing the cache (blocking).
    pub fn read_chunk_uncached(&self, hash: &Hash) -> Result<bytes::Bytes, StoreError> {
        // One pass over the engine's buffer: each piece is copied out and hashed while
        // it is still in the CPU cache (not a copy of the whole value, then a second
        // trip through memory to hash it).
        const PIECE: usize = 64 << 10;
        let mut read = None;
        self.kv.with_value(Cf::Chunks, hash.as_bytes(), &mut |v| {
            read = v.map(|v| {
                let mut out = Vec::with_capacity(v.len());
                let mut hasher = blake3::Hasher::new();
                for piece in v.chunks(PIECE) {
                    out.extend_from_slice(piece);
                    hasher.update(&out[out.len() - piece.len()..]);
                }
                (out, Hash(*hasher.finalize().as_bytes()))
            })
        })?;
        let (v, actual) = read.ok_or(StoreError::ChunkMissing(*hash))?;
        self.metrics.chunk_read_bytes.inc_by(v.len() as u64);
        self.metrics.chunk_hashed_bytes.inc_by(v.len() as u64);
        if actual != *hash {
            self.metrics.corrupt_chunks.inc();
            tracing::error!(chunk = %hash.short(), "stored chunk failed verification");
            return Err(StoreError::ChunkCorrupt(*hash));
        }
        Ok(bytes::Bytes::from(v))
    }

    /// One verified chunk from the cache or the engine (blocking; not cached on a miss,
    /// so a whole-blob scan does not flush the hot set).
    pub fn chunk_blocking(&self, hash: &Hash) -> Result<bytes::Bytes, StoreError> {
        match self.cache.chunks.get(hash) {
            Some(b) => Ok(b),
            None => self.read_chunk_uncached(hash),
        }
    }

    /// Shared guard for an ingest (async callers).
    pub async fn gc_guard(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.gc_lock.clone().read_owned().await
    }

    /// Shared guard for an ingest (blocking callers, never on the async runtime).
    pub fn gc_guard_blocking(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        loop {
            if let Ok(g) = self.gc_lock.clone().try_read_owned() {
                return g;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A consistent copy of the store (catalog, repository and content) in `dir`, a new
    /// directory, taken while the node serves (blocking). A data directory made from it
    /// with [`restore`] opens as this store did at that moment.
    pub fn checkpoint(&self, dir: &Path) -> Result<Backup, StoreError> {
        let start = std::time::Instant::now();
        if dir.exists() {
            return Err(StoreError::Io(
                dir.display().to_string(),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the backup directory exists",
                ),
            ));
        }
        self.kv.checkpoint(dir)?;
        Ok(Backup {
            path: dir.to_path_buf(),
            bytes: dir_bytes(dir)?,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Flushes the engine's memory tables to disk files.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    /// Starts streaming a new blob in; see [`BlobWriter`].
    pub fn writer(&self) -> BlobWriter<'_> {
        BlobWriter::new(self)
    }

    /// Imports a whole reader (blocking): CLI imports, demo content, tests.
    pub fn put_reader(
        &self,
        mut r: impl std::io::Read,
        mut progress: impl FnMut(u64),
    ) -> Result<PutOutcome, StoreError> {
        let mut w = self.writer();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| StoreError::Io("input".into(), e))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
            progress(n as u64);
        }
        w.finish()
    }
}

/// Runs blocking store work on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// A memory-backed store with small chunks so tests cross chunk boundaries cheaply.
    pub fn memory_store() -> (Arc<Store>, Arc<memory::MemoryKv>) {
        memory_store_with(ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        })
    }

    /// An in-memory store cutting chunks as `params` say.
    pub fn memory_store_with(params: ChunkParams) -> (Arc<Store>, Arc<memory::MemoryKv>) {
        let kv = Arc::new(memory::MemoryKv::new());
        let store = Store::with_kv(kv.clone(), params, 1 << 20, Arc::new(Metrics::new())).unwrap();
        (store, kv)
    }

    pub fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

#[cfg(all(test, feature = "rocksdb"))]
mod open_tests {
    use super::*;

    #[test]
    fn the_metrics_do_not_keep_a_dropped_store_open() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let open = || {
            Store::open(
                dir.path(),
                ChunkParams::default(),
                1 << 20,
                metrics.clone(),
                true,
            )
        };
        let store = open().unwrap();
        assert!(metrics
            .encode()
            .contains("update_edge_rocksdb_memtable_bytes"));
        drop(store);
        // The registry (still alive) no longer holds the engine: the directory's lock is
        // free again, and the dropped engine's figures are simply gone.
        let again = open().expect("reopening after the store was dropped");
        drop(again);
    }
}
