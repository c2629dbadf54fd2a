//! Offline integrity check: re-hash every chunk and every blob, report what is damaged.

use super::kv::Cf;
use super::manifest::Manifest;
use super::{Store, StoreError};
use crate::hash::Hash;

/// What `verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub chunks_checked: u64,
    pub blobs_checked: u64,
    /// Chunks whose bytes do not hash to their key.
    pub corrupt_chunks: Vec<Hash>,
    /// Blobs that reference a missing or corrupt chunk, or whose bytes do not hash to
    /// their key, or whose manifest is unreadable.
    pub corrupt_blobs: Vec<Hash>,
    /// Intact chunks whose stored outboard is not their tree (an edge would refuse
    /// what this node sends for them).
    pub corrupt_outboards: Vec<Hash>,
    /// Chunks of more than one group stored without an outboard (kept before outboards
    /// were; their trees are computed when needed). Not damage.
    pub outboards_missing: u64,
    /// Chunks and bytes counted by the walk, and as the store's counters record them
    /// (`update_edge_store_chunks` / `_bytes`): equal unless the counters drifted.
    pub counted: super::Stats,
    pub recorded: super::Stats,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt_chunks.is_empty()
            && self.corrupt_blobs.is_empty()
            && self.corrupt_outboards.is_empty()
            && self.counters_match()
    }

    pub fn counters_match(&self) -> bool {
        self.counted == self.recorded
    }
}

impl Store {
    /// Walks the whole store (blocking). Reads every chunk once for the chunk pass and
    /// again per blob for the blob pass.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport {
            recorded: self.stats(),
            ..VerifyReport::default()
        };
        let mut bad = std::collections::HashSet::new();
        let mut failed = None;
        self.kv.scan(Cf::Chunks, &[], &mut |k, v| {
            report.chunks_checked += 1;
            report.counted.chunks += 1;
            report.counted.bytes += v.len() as u64;
            progress(v.len() as u64);
            let key = Hash::from_slice(k).unwrap_or(Hash([0; 32]));
            // The address and the tree in one pass.
            let (address, tree) = crate::protocol::bao::outboard(v);
            if address != key || k.len() != 32 {
                bad.insert(key);
                report.corrupt_chunks.push(key);
                return true;
            }
            if tree.is_empty() {
                return true;
            }
            match self.kv.get(Cf::Outboards, k) {
                Ok(Some(stored)) if stored != tree => report.corrupt_outboards.push(key),
                Ok(Some(_)) => {}
                Ok(None) => report.outboards_missing += 1,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut blobs = Vec::new();
        self.kv.scan(Cf::Blobs, &[], &mut |k, v| {
            blobs.push((
                Hash::from_slice(k).unwrap_or(Hash([0; 32])),
                Manifest::decode(v).ok(),
            ));
            true
        })?;
        for (hash, manifest) in blobs {
            report.blobs_checked += 1;
            let ok = match manifest {
                Some(m) => self.blob_hashes_to(&m, &hash, &bad)?,
                None => false,
            };
            if !ok {
                report.corrupt_blobs.push(hash);
            }
        }
        Ok(report)
    }

    fn blob_hashes_to(
        &self,
        m: &Manifest,
        hash: &Hash,
        bad: &std::collections::HashSet<Hash>,
    ) -> Result<bool, StoreError> {
        let mut h = blake3::Hasher::new();
        for c in &m.chunks {
            if bad.contains(&c.hash) {
                return Ok(false);
            }
            match self.kv.get(Cf::Chunks, c.hash.as_bytes())? {
                Some(v) if v.len() == c.len as usize => {
                    h.update(&v);
                }
                _ => return Ok(false),
            }
        }
        Ok(Hash::from(h.finalize()) == *hash)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{memory_store, noise};
    use super::*;

    #[test]
    fn clean_store_verifies_and_corruption_is_named() {
        let (store, kv) = memory_store();
        let a = store.put_reader(&noise(30_000, 1)[..], |_| {}).unwrap();
        let b = store.put_reader(&noise(30_000, 2)[..], |_| {}).unwrap();
        let r = store.verify(|_| {}).unwrap();
        assert!(r.is_clean());
        assert_eq!(r.blobs_checked, 2);
        assert_eq!(r.counted, store.stats());
        assert!(r.counted.bytes >= 60_000 && r.counted.chunks == r.chunks_checked);
        let m = store.manifest_blocking(&a.hash).unwrap();
        let victim = m.chunks[0].hash;
        kv.corrupt(
            Cf::Chunks,
            victim.as_bytes(),
            vec![0; m.chunks[0].len as usize],
        );
        let r = store.verify(|_| {}).unwrap();
        assert_eq!(r.corrupt_chunks, vec![victim]);
        assert_eq!(r.corrupt_blobs, vec![a.hash]);
        assert!(!r.corrupt_blobs.contains(&b.hash));
        assert!(r.corrupt_outboards.is_empty());
    }

    #[test]
    fn every_chunk_is_stored_with_its_tree_and_a_damaged_tree_is_named() {
        use super::super::kv::KvStore;
        // Chunks of several 16 KiB groups (the default test store's are of one).
        let (store, kv) = super::super::test_util::memory_store_with(super::super::ChunkParams {
            min: 20 << 10,
            avg: 40 << 10,
            max: 80 << 10,
        });
        let data = noise(300_000, 4);
        let put = store.put_reader(&data[..], |_| {}).unwrap();
        let m = store.manifest_blocking(&put.hash).unwrap();
        let big: Vec<_> = m.chunks.iter().filter(|c| c.len > 16 << 10).collect();
        assert!(!big.is_empty());
        for c in &big {
            let chunk = store.chunk_blocking(&c.hash).unwrap();
            let stored = kv.get(Cf::Outboards, c.hash.as_bytes()).unwrap();
            assert_eq!(stored, Some(crate::protocol::bao::outboard(&chunk).1));
        }
        let r = store.verify(|_| {}).unwrap();
        assert!(r.is_clean() && r.outboards_missing == 0, "{r:?}");
        let victim = big[0].hash;
        let mut tree = kv.get(Cf::Outboards, victim.as_bytes()).unwrap().unwrap();
        tree[5] ^= 1;
        kv.corrupt(Cf::Outboards, victim.as_bytes(), tree);
        let r = store.verify(|_| {}).unwrap();
        assert_eq!(r.corrupt_outboards, vec![victim]);
        assert!(r.corrupt_chunks.is_empty() && r.corrupt_blobs.is_empty());
        assert!(!r.is_clean());
    }
}
