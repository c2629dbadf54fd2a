//! RocksDB adapter: the only file that names `rocksdb`.
//!
//! Chunks live in the `chunks` column family with integrated BlobDB (`enable_blob_files`):
//! their bytes go to append-only blob files and only small index entries to the LSM, so
//! compaction does not rewrite payload bytes. Chunk reads skip RocksDB's CRC because the
//! store verifies every chunk against its blake3 anyway (a stronger check, and one that
//! lets `verify` walk past a damaged record instead of stopping at it).

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    Options, ReadOptions, WriteOptions, DB,
};

use super::kv::{Batch, Cf, KvStore};
use super::StoreError;

/// Memory for RocksDB's own block cache (index and filter blocks, manifests); chunk
/// bytes are cached above the store, verified.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Chunk values at least this large go to blob files (all real chunks are larger).
const MIN_BLOB_SIZE: u64 = 1024;
/// Target size of one blob file.
const BLOB_FILE_SIZE: u64 = 256 << 20;

pub struct RocksKv {
    db: DB,
    /// The options the database was opened with: they hold its statistics (tickers).
    opts: Options,
}

fn err(e: rocksdb::Error) -> StoreError {
    let text = e.into_string();
    if text.contains("No space left on device") {
        StoreError::NoSpace(text)
    } else {
        StoreError::Engine(text)
    }
}

impl RocksKv {
    /// Opens (creating if missing) the database under `dir`; `mmap_reads`: read its
    /// files through memory maps (`store.mmap_reads`).
    pub fn open(dir: &Path, mmap_reads: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.display().to_string(), e))?;
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        // A chunk's bytes are copied once, from the mapped page cache into the value
        // (with pread, the kernel copies them into a buffer first, and the engine copies
        // that buffer into the value).
        db_opts.set_allow_mmap_reads(mmap_reads);
        // Tickers only (cache hits, stall time): no histograms, no timers.
        db_opts.enable_statistics();
        db_opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            table.set_cache_index_and_filter_blocks(true);
            o.set_block_based_table_factory(&table);
            if *cf == Cf::Outboards {
                // Hashes: nothing to compress.
                o.set_compression_type(DBCompressionType::None);
            } else if *cf == Cf::Chunks {
                o.set_enable_blob_files(true);
                o.set_min_blob_size(MIN_BLOB_SIZE);
                o.set_blob_file_size(BLOB_FILE_SIZE);
                o.set_blob_compression_type(DBCompressionType::None);
                o.set_enable_blob_gc(true);
                // A bloom filter over the memtable's keys: a chunk not in it (a cold
                // chunk an edge is about to fill) is ruled out without a search of the
                // skip list, whose nodes sit beside their values until the flush (each
                // step a cache and TLB miss: 0.8 % of an edge's CPU over cold 1 MiB
                // ranges, on the way to each upstream request). 0.001 of the 64 MiB
                // write buffer: 64 KiB, over 500 bits per key at 64 KiB chunks.
                o.set_memtable_prefix_bloom_ratio(0.001);
                o.set_memtable_whole_key_filtering(true);
            } else {
                o.set_compression_type(DBCompressionType::Zstd);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs).map_err(err)?;
        Ok(RocksKv { db, opts: db_opts })
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StoreError::Engine(format!("missing column family {}", cf.name())))
    }

    fn batch(&self, batch: Batch) -> Result<rocksdb::WriteBatch, StoreError> {
        let mut wb = rocksdb::WriteBatch::default();
        for (cf, key, value) in &batch.ops {
            let h = self.cf(*cf)?;
            match value {
                Some(v) => wb.put_cf(h, key, v),
                None => wb.delete_cf(h, key),
            }
        }
        Ok(wb)
    }

    fn read_opts(cf: Cf) -> ReadOptions {
        let mut o = ReadOptions::default();
        if cf == Cf::Chunks {
            o.set_verify_checksums(false);
        }
        o
    }
}

impl KvStore for RocksKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let h = self.cf(cf)?;
        let v = self
            .db
            .get_pinned_cf_opt(h, key, &Self::read_opts(cf))
            .map_err(err)?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn with_value(
        &self,
        cf: Cf,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let h = self.cf(cf)?;
        let v = self
            .db
            .get_pinned_cf_opt(h, key, &Self::read_opts(cf))
            .map_err(err)?;
        f(v.as_deref());
        Ok(())
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let h = self.cf(cf)?;
        self.db
            .batched_multi_get_cf_opt(h, keys.iter().copied(), false, &Self::read_opts(cf))
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(err))
            .collect()
    }

    fn get_from_memory(&self, cf: Cf, key: &[u8]) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let h = self.cf(cf)?;
        let mut o = Self::read_opts(cf);
        o.set_read_tier(rocksdb::ReadTier::BlockCache);
        match self.db.get_pinned_cf_opt(h, key, &o) {
            Ok(v) => Ok(Some(v.map(|v| v.to_vec()))),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(err)
    }

    fn engine_stats(&self) -> Vec<crate::metrics::EngineStat> {
        use crate::metrics::EngineStat;
        use rocksdb::statistics::Ticker;
        // A property summed over the families (absent ones count 0).
        let sum = |name: &str| -> f64 {
            Cf::ALL
                .iter()
                .filter_map(|cf| self.cf(*cf).ok())
                .filter_map(|h| self.db.property_int_value_cf(h, name).ok().flatten())
                .sum::<u64>() as f64
        };
        let db = |name: &str| -> f64 {
            self.db.property_int_value(name).ok().flatten().unwrap_or(0) as f64
        };
        let gauge = |name, help, value| EngineStat {
            name,
            help,
            counter: false,
            value,
        };
        let counter = |name, help, value| EngineStat {
            name,
            help,
            counter: true,
            value,
        };
        vec![
            gauge("update_edge_rocksdb_live_sst_bytes", "Bytes of live SST files (index entries, manifests, catalog)", sum("rocksdb.live-sst-files-size")),
            gauge("update_edge_rocksdb_blob_file_bytes", "Bytes of blob files (chunk bytes), garbage included", sum("rocksdb.total-blob-file-size")),
            gauge("update_edge_rocksdb_blob_garbage_bytes", "Bytes in blob files no longer referenced, reclaimed by blob GC during compaction", sum("rocksdb.live-blob-file-garbage-size")),
            gauge("update_edge_rocksdb_memtable_bytes", "Bytes in memtables", sum("rocksdb.cur-size-all-mem-tables")),
            gauge("update_edge_rocksdb_pending_compaction_bytes", "Estimated bytes compaction must rewrite to settle the LSM", sum("rocksdb.estimate-pending-compaction-bytes")),
            gauge("update_edge_rocksdb_running_compactions", "Compactions running", db("rocksdb.num-running-compactions")),
            gauge("update_edge_rocksdb_write_stopped", "1 while RocksDB stops writes (too many L0 files or memtables, or too much compaction debt)", db("rocksdb.is-write-stopped")),
            gauge("update_edge_rocksdb_delayed_write_rate", "Bytes per second RocksDB slows writes to (0: not slowed)", db("rocksdb.actual-delayed-write-rate")),
            counter("update_edge_rocksdb_stall_seconds", "Time writes spent stalled by RocksDB", self.opts.get_ticker_count(Ticker::StallMicros) as f64 / 1e6),
            counter("update_edge_rocksdb_block_cache_hits", "RocksDB block cache hits (index, filter and data blocks; chunk bytes are cached above it)", self.opts.get_ticker_count(Ticker::BlockCacheHit) as f64),
            counter("update_edge_rocksdb_block_cache_misses", "RocksDB block cache misses", self.opts.get_ticker_count(Ticker::BlockCacheMiss) as f64),
        ]
    }

    fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool, StoreError> {
        let h = self.cf(cf)?;
        // The bloom filter answers "definitely absent" (the common case for new chunks)
        // without touching a blob file.
        if !self.db.key_may_exist_cf(h, key) {
            return Ok(false);
        }
        Ok(self
            .db
            .get_pinned_cf_opt(h, key, &Self::read_opts(cf))
            .map_err(err)?
            .is_some())
    }

    fn may_contain(&self, cf: Cf, key: &[u8]) -> bool {
        let Ok(h) = self.cf(cf) else {
            return true;
        };
        // Block-cache tier: a filter block not in memory answers "may exist" instead of
        // being read from disk.
        let mut o = ReadOptions::default();
        o.set_read_tier(rocksdb::ReadTier::BlockCache);
        self.db.key_may_exist_cf_opt(h, key, &o)
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(self.batch(batch)?, &wo).map_err(err)
    }

    fn write_unlogged(&self, batch: Batch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(self.batch(batch)?, &wo).map_err(err)
    }

    fn scan_from(
        &self,
        cf: Cf,
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let h = self.cf(cf)?;
        let iter = self.db.iterator_cf_opt(
            h,
            Self::read_opts(cf),
            IteratorMode::From(start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(err)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_keys(&self, cf: Cf, visit: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), StoreError> {
        let h = self.cf(cf)?;
        let mut it = self.db.raw_iterator_cf_opt(h, Self::read_opts(cf));
        it.seek_to_first();
        while it.valid() {
            if let Some(k) = it.key() {
                if !visit(k) {
                    break;
                }
            }
            it.next();
        }
        it.status().map_err(err)
    }

    fn flush(&self) -> Result<(), StoreError> {
        for cf in Cf::ALL {
            self.db.flush_cf(self.cf(cf)?).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_get_answers_each_key_in_order_from_memtable_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RocksKv::open(dir.path(), false).unwrap();
        let mut batch = Batch::default();
        batch.put(Cf::Devices, b"a".to_vec(), b"1".to_vec());
        batch.put(Cf::Devices, b"c".to_vec(), b"3".to_vec());
        kv.write(batch, false).unwrap();
        let want = vec![Some(b"3".to_vec()), None, Some(b"1".to_vec())];
        let keys: [&[u8]; 3] = [b"c", b"b", b"a"];
        assert_eq!(kv.multi_get(Cf::Devices, &keys).unwrap(), want);
        kv.db.flush_cf(kv.cf(Cf::Devices).unwrap()).unwrap();
        assert_eq!(kv.multi_get(Cf::Devices, &keys).unwrap(), want);
    }

    #[test]
    fn may_contain_never_denies_a_stored_key_and_denies_absent_ones_from_the_filters() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RocksKv::open(dir.path(), false).unwrap();
        let keys: Vec<[u8; 32]> = (0u8..200).map(|i| [i; 32]).collect();
        let mut batch = Batch::default();
        for k in &keys {
            batch.put(Cf::Chunks, k.to_vec(), vec![k[0]; 100]);
        }
        kv.write(batch, false).unwrap();
        // In the memtable, then in a flushed table file.
        assert!(keys.iter().all(|k| kv.may_contain(Cf::Chunks, k)));
        // Absent keys are ruled out by the memtable's bloom filter, not a search of it
        // (counted per thread).
        rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::EnableCount);
        let mut perf = rocksdb::perf::PerfContext::default();
        perf.reset();
        let absent: Vec<[u8; 32]> = (0u32..100)
            .map(|i| *crate::hash::Hash::of(&i.to_le_bytes()).as_bytes())
            .collect();
        let denied = absent
            .iter()
            .filter(|k| !kv.may_contain(Cf::Chunks, *k))
            .count();
        let missed = perf.metric(rocksdb::perf::PerfMetric::BloomMemtableMissCount);
        rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
        assert_eq!(denied, 100);
        assert!(
            missed >= 95,
            "the memtable filter ruled out {missed} of 100"
        );
        kv.db.flush_cf(kv.cf(Cf::Chunks).unwrap()).unwrap();
        assert!(keys.iter().all(|k| kv.may_contain(Cf::Chunks, k)));
        let denied = (0u32..1000)
            .map(|i| *crate::hash::Hash::of(&i.to_le_bytes()).as_bytes())
            .filter(|k| !kv.may_contain(Cf::Chunks, k))
            .count();
        assert!(denied > 900, "only {denied} of 1000 absent keys denied");
    }

    #[test]
    fn mmap_reads_reach_the_engine_and_read_back_the_same_bytes() {
        for mmap in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let kv = RocksKv::open(dir.path(), mmap).unwrap();
            let value: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut batch = Batch::default();
            batch.put(Cf::Chunks, b"k".to_vec(), value.clone());
            kv.write(batch, false).unwrap();
            kv.db.flush_cf(kv.cf(Cf::Chunks).unwrap()).unwrap();
            // From a blob file now, through the map or not.
            assert_eq!(
                kv.get(Cf::Chunks, b"k").unwrap().as_deref(),
                Some(&value[..])
            );
            // The engine records the options it runs with.
            let options = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("OPTIONS-")
                })
                .max()
                .expect("an OPTIONS file");
            let text = std::fs::read_to_string(options).unwrap();
            assert!(
                text.contains(&format!("allow_mmap_reads={mmap}")),
                "allow_mmap_reads is not {mmap}"
            );
        }
    }
}
