//! The small key-value interface the store is written against, so store logic can be
//! tested without RocksDB. Column families are named here; only `rocks.rs` names RocksDB.

use bytes::Bytes;

use super::StoreError;

/// Column families (one per kind of record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// chunk blake3 → chunk bytes (large values: RocksDB blob files).
    Chunks,
    /// blob blake3 → manifest (size + ordered chunk list).
    Blobs,
    /// schema version, counters.
    Meta,
    /// catalog: products, builds, rings, deltas, device records.
    Products,
    Builds,
    Rings,
    Deltas,
    Devices,
    /// device records by age: last-seen seconds (8 bytes big-endian) + the record's key
    /// → empty. Expiry and the count cap walk it oldest first.
    DeviceSeen,
    /// chunk blake3 → the chunk's bao outboard (its blake3 tree's parent pairs in
    /// pre-order, 64 bytes per 16 KiB group), for chunks of more than one group. Written
    /// in the same batch as the chunk, deleted with it; absent for chunks stored before
    /// outboards were kept (computed when needed).
    Outboards,
}

impl Cf {
    /// Every family. Append only: the change feed encodes a family as its index here.
    pub const ALL: [Cf; 10] = [
        Cf::Chunks,
        Cf::Blobs,
        Cf::Meta,
        Cf::Products,
        Cf::Builds,
        Cf::Rings,
        Cf::Deltas,
        Cf::Devices,
        Cf::DeviceSeen,
        Cf::Outboards,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Chunks => "chunks",
            Cf::Blobs => "blobs",
            Cf::Meta => "meta",
            Cf::Products => "products",
            Cf::Builds => "builds",
            Cf::Rings => "rings",
            Cf::Deltas => "deltas",
            Cf::Devices => "devices",
            Cf::DeviceSeen => "device_seen",
            Cf::Outboards => "outboards",
        }
    }
}

/// One write in a batch: `Some(value)` puts, `None` deletes. Values are `Bytes` so a
/// chunk already in memory is written without another copy.
pub type Op = (Cf, Vec<u8>, Option<Bytes>);

/// An ordered set of writes applied atomically.
#[derive(Default, Debug)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops
            .push((cf, key.into(), Some(Bytes::from(value.into()))));
    }

    /// Puts a value held as `Bytes` (a chunk) without copying it.
    pub fn put_bytes(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: Bytes) {
        self.ops.push((cf, key.into(), Some(value)));
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What a storage engine must offer. Implementations are blocking; async callers use
/// `spawn_blocking`.
pub trait KvStore: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Calls `f` with the value of `key` (None when absent) where the engine holds it,
    /// without copying it out: for reading a small part of a large value.
    fn with_value(
        &self,
        cf: Cf,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let v = self.get(cf, key)?;
        f(v.as_deref());
        Ok(())
    }

    /// Values of many keys of one family at once (the engine batches the lookups).
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(cf, k)).collect()
    }

    /// `get` answered from memory only (memtables and cached blocks): `None` when the
    /// answer needs a disk read. Cheap enough for an async thread; small values only.
    fn get_from_memory(&self, cf: Cf, key: &[u8]) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        self.get(cf, key).map(Some)
    }

    /// A consistent copy of the whole database in `dir` (which must not exist), taken
    /// while writes go on: files hard-linked where the filesystem allows, copied where
    /// not, memtables flushed first.
    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        Err(StoreError::Engine(format!(
            "this engine cannot take a checkpoint (asked for {})",
            dir.display()
        )))
    }

    /// The engine's own figures for `/metrics` (sizes, compaction debt, stalls, cache).
    fn engine_stats(&self) -> Vec<crate::metrics::EngineStat> {
        Vec::new()
    }

    /// Exact membership (may be cheaper than `get` for large values).
    fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool, StoreError>;

    /// False only if `key` is certainly absent, answered from memory (memtables and
    /// cached filters), never from disk: cheap enough for an async thread. True means
    /// "look it up".
    fn may_contain(&self, _cf: Cf, _key: &[u8]) -> bool {
        true
    }

    /// Applies `batch` atomically; with `sync`, durable on return (and so is every
    /// earlier write).
    fn write(&self, batch: Batch, sync: bool) -> Result<(), StoreError>;

    /// Applies `batch` without the engine's write-ahead log: cheaper, and lost on a
    /// crash unless a later write flushed it. For data that can be fetched again (an
    /// edge's filled chunks).
    fn write_unlogged(&self, batch: Batch) -> Result<(), StoreError> {
        self.write(batch, false)
    }

    /// Visits every record whose key starts with `prefix`, in key order, until `visit`
    /// returns false.
    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_from(cf, prefix, &mut |k, v| k.starts_with(prefix) && visit(k, v))
    }

    /// Visits every record from key `start` on, in key order, until `visit` returns false.
    fn scan_from(
        &self,
        cf: Cf,
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Visits keys only (no large values read), in key order.
    fn scan_keys(&self, cf: Cf, visit: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), StoreError>;

    /// Persists in-memory state to the engine's files (on shutdown, after offline imports).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
