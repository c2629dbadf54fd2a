//! A blob's chunk list as devices fetch it (`GET /v1/blobs/{hash}/chunks`): offset,
//! length and blake3 of each chunk, so a client can verify every piece it downloads.
//! The bytes are deterministic; their blake3 goes into signed check answers. Built once
//! per blob and cached, so update checks never do work proportional to payload size.

use std::sync::Arc;

use bytes::Bytes;
use quick_cache::sync::Cache;

use crate::hash::Hash;
use crate::store::{Manifest, RemoteManifests, Store, StoreError};

/// Memory for cached chunk lists.
const CACHE_BYTES: u64 = 64 << 20;

pub use crate::protocol::chunklist::{ChunkEntry, ChunkList};

impl ChunkList {
    pub fn from_manifest(blob: Hash, m: &Manifest) -> ChunkList {
        let chunks = m
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| ChunkEntry {
                offset: m.start_of(i),
                length: c.len,
                blake3: c.hash,
            })
            .collect();
        ChunkList {
            blob,
            size: m.size,
            chunks,
        }
    }
}

#[derive(Clone)]
pub struct Weight;

impl quick_cache::Weighter<Hash, (Bytes, Hash)> for Weight {
    fn weight(&self, _: &Hash, v: &(Bytes, Hash)) -> u64 {
        v.0.len() as u64 + 64
    }
}

pub struct ChunkLists {
    store: Arc<Store>,
    /// Manifests of blobs not held here (an edge's upstream).
    remote: Option<Arc<dyn RemoteManifests>>,
    cache: Cache<Hash, (Bytes, Hash), Weight>,
}

impl ChunkLists {
    pub fn new(store: Arc<Store>, remote: Option<Arc<dyn RemoteManifests>>) -> Self {
        ChunkLists {
            store,
            remote,
            cache: Cache::with_weighter(4096, CACHE_BYTES, Weight),
        }
    }

    /// The serialized chunk list of a stored blob and its blake3.
    pub async fn get(&self, blob: Hash) -> Result<(Bytes, Hash), StoreError> {
        if let Some(v) = self.cache.get(&blob) {
            return Ok(v);
        }
        let m = match (self.store.manifest(blob).await, &self.remote) {
            (Err(StoreError::BlobNotFound(_)), Some(remote)) => remote.clone().fetch(blob).await?,
            (m, _) => m?,
        };
        let bytes = Bytes::from(
            serde_json::to_vec(&ChunkList::from_manifest(blob, &m)).unwrap_or_default(),
        );
        let hash = Hash::of(&bytes);
        self.cache.insert(blob, (bytes.clone(), hash));
        Ok((bytes, hash))
    }
}
