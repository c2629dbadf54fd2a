//! In-memory `KvStore` for unit tests and benches: same semantics, no durability.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::kv::{Batch, Cf, KvStore};
use super::StoreError;

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemoryKv {
    tables: RwLock<BTreeMap<Cf, Table>>,
    /// Writes touching this column family fail (a full disk, a stalled engine).
    failing: RwLock<Option<Cf>>,
}

impl MemoryKv {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every write that touches `cf` fail from now on (`None`: none fail).
    pub fn fail_writes_to(&self, cf: Option<Cf>) {
        *self.failing.write().unwrap_or_else(|e| e.into_inner()) = cf;
    }

    /// Overwrites a value in place, bypassing every check (to simulate disk corruption).
    pub fn corrupt(&self, cf: Cf, key: &[u8], value: Vec<u8>) {
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        t.entry(cf).or_default().insert(key.to_vec(), value);
    }
}

impl KvStore for MemoryKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        Ok(t.get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool, StoreError> {
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        Ok(t.get(&cf).is_some_and(|m| m.contains_key(key)))
    }

    fn write(&self, batch: Batch, _sync: bool) -> Result<(), StoreError> {
        let failing = *self.failing.read().unwrap_or_else(|e| e.into_inner());
        if let Some(cf) = failing.filter(|cf| batch.ops.iter().any(|op| op.0 == *cf)) {
            return Err(StoreError::Engine(format!(
                "injected write failure on {}",
                cf.name()
            )));
        }
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        for (cf, key, value) in batch.ops {
            let table = t.entry(cf).or_default();
            match value {
                Some(v) => {
                    table.insert(key, v.to_vec());
                }
                None => {
                    table.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan_from(
        &self,
        cf: Cf,
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // A copy, so `visit` may read the store (as RocksDB's iterators allow).
        let records: Vec<(Vec<u8>, Vec<u8>)> = {
            let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
            t.get(&cf).map_or_else(Vec::new, |m| {
                m.range(start.to_vec()..)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
        };
        for (k, v) in &records {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_keys(&self, cf: Cf, visit: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), StoreError> {
        self.scan(cf, &[], &mut |k, _| visit(k))
    }
}
