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
    /// Chunks and bytes counted by the walk, and as the store's counters record them
    /// (`update_edge_store_chunks` / `_bytes`): equal unless the counters drifted.
    pub counted: super::Stats,
    pub recorded: super::Stats,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt_chunks.is_empty() && self.corrupt_blobs.is_empty() && self.counters_match()
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
        self.kv.scan(Cf::Chunks, &[], &mut |k, v| {
            report.chunks_checked += 1;
            report.counted.chunks += 1;
            report.counted.bytes += v.len() as u64;
            progress(v.len() as u64);
            let key = Hash::from_slice(k).unwrap_or(Hash([0; 32]));
            if Hash::of(v) != key || k.len() != 32 {
                bad.insert(key);
                report.corrupt_chunks.push(key);
            }
            true
        })?;
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
    }
}
