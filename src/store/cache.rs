//! The hot in-memory caches in front of the engine, bounded in bytes.
//!
//! quick_cache (CLOCK-Pro style) admits new keys on first insert, so the freshly
//! released build everyone asks for becomes resident at once (a TinyLFU admission
//! filter could refuse it). Only verified chunks are ever inserted.

use std::sync::Arc;

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use super::Manifest;
use crate::hash::Hash;

/// Fraction of the cache budget given to manifests (the rest holds chunk bytes).
const MANIFEST_SHARE: u64 = 16;

#[derive(Clone)]
pub struct ChunkWeight;

impl Weighter<Hash, Bytes> for ChunkWeight {
    fn weight(&self, _: &Hash, v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

#[derive(Clone)]
pub struct ManifestWeight;

impl Weighter<Hash, Arc<Manifest>> for ManifestWeight {
    fn weight(&self, _: &Hash, m: &Arc<Manifest>) -> u64 {
        m.weight()
    }
}

/// Outboard bytes per chunk byte kept in memory: outboards are 1/256 of their chunks,
/// so this leaves room for twice the cached chunks' trees.
const OUTBOARD_SHARE: u64 = 128;

#[derive(Clone)]
pub struct BlockWeight;

impl Weighter<(Hash, u32), Bytes> for BlockWeight {
    fn weight(&self, _: &(Hash, u32), v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

/// Fraction of the chunk budget given to 16 KiB blocks of small ranges.
const BLOCK_SHARE: u64 = 8;

pub struct Caches {
    pub chunks: Cache<Hash, Bytes, ChunkWeight>,
    /// Verified 16 KiB groups of chunks read for small ranges, keyed by chunk and group
    /// index: a random 4 KiB range admits 16 KiB, not its whole chunk (up to 1 MiB).
    pub blocks: Cache<(Hash, u32), Bytes, BlockWeight>,
    /// Outboards of chunks read from the engine (read with them): a chunk in memory has
    /// its tree in memory, so encoding it for an edge hashes nothing.
    pub outboards: Cache<Hash, Bytes, ChunkWeight>,
    pub manifests: Cache<Hash, Arc<Manifest>, ManifestWeight>,
}

impl Caches {
    pub fn new(budget: u64) -> Self {
        let manifest_bytes = (budget / MANIFEST_SHARE).max(1 << 20);
        let chunk_bytes = budget.saturating_sub(manifest_bytes).max(1 << 20);
        let block_bytes = chunk_bytes / BLOCK_SHARE;
        let chunk_bytes = chunk_bytes - block_bytes;
        // Item estimates only size the hash tables; weights bound the memory.
        let chunk_items = (chunk_bytes / (256 << 10)).clamp(64, 1 << 20) as usize;
        Caches {
            chunks: Cache::with_weighter(chunk_items, chunk_bytes, ChunkWeight),
            blocks: Cache::with_weighter(
                (block_bytes / (16 << 10)).clamp(64, 1 << 20) as usize,
                block_bytes.max(64 << 10),
                BlockWeight,
            ),
            outboards: Cache::with_weighter(
                chunk_items,
                (chunk_bytes / OUTBOARD_SHARE).max(1 << 20),
                ChunkWeight,
            ),
            manifests: Cache::with_weighter(1024, manifest_bytes, ManifestWeight),
        }
    }
}
