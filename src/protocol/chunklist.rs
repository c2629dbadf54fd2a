//! A blob's chunk list as devices fetch it (`GET /v1/blobs/{hash}/chunks`): offset,
//! length and blake3 of each chunk, so a client can verify every piece it downloads.
//! Its blake3 is what signed targets (`custom.chunks_blake3`) and answers carry.

use crate::hash::Hash;

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChunkEntry {
    pub offset: u64,
    pub length: u32,
    pub blake3: Hash,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChunkList {
    pub blob: Hash,
    pub size: u64,
    pub chunks: Vec<ChunkEntry>,
}
