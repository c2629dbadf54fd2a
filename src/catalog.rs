//! The update catalog: products, builds, rings, deltas and device records in their own
//! column families, and the decisions made from them (update checks, delta scheduling).
//!
//! Writes that read-modify-write (publish, ring changes, deletes) are serialised by one
//! mutex, so "same version, different bytes" and "delete a build a ring targets" are
//! decided race-free; every multi-key change is one atomic batch.

pub mod check;
pub mod chunklist;
pub mod model;
pub mod rollout;
pub mod scheduler;
pub mod signing;
pub mod targets;
/// Build versions live with the wire types (devices compare them too).
pub use crate::protocol::version;

use std::sync::{Arc, Mutex};

use crate::hash::Hash;
use crate::store::{Batch, Cf, Store, StoreError};
use model::{
    now_secs, valid_name, Build, DeltaRecord, DeviceRecord, Hardware, Kind, Product, Ring,
    DEFAULT_RINGS,
};
use version::Version;

/// Errors from the catalog; each names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unknown product {0:?}")]
    UnknownProduct(String),
    #[error("product {product:?} has no build {version}")]
    UnknownBuild { product: String, version: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt catalog record: {0}")]
    Corrupt(String),
}

/// Devices seen for a product: how many, on which versions, in which rings.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DeviceStats {
    pub devices: u64,
    pub versions: std::collections::BTreeMap<String, u64>,
    pub rings: std::collections::BTreeMap<String, u64>,
}

pub struct Catalog {
    store: Arc<Store>,
    writes: Mutex<()>,
    /// Artifact kind of every build and delta blob, for per-kind download metrics.
    kinds: std::sync::RwLock<std::collections::HashMap<Hash, &'static str>>,
    /// `chunks_blake3` of every build's blob (an edge checks upstream's manifests by it).
    lists: std::sync::RwLock<std::collections::HashMap<Hash, Hash>>,
}

fn key2(a: &str, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b);
    k
}

/// Where the device-record count is kept (`Cf::Meta`; not replicated).
const DEVICE_COUNT_KEY: &[u8] = b"devices.count";

/// A device record's key in the by-age index: last seen (big-endian) + its key.
fn seen_key(last_seen: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&last_seen.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn prefix(a: &str) -> Vec<u8> {
    key2(a, &[])
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, CatalogError> {
    serde_json::from_slice(v).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Catalog {
    /// Opens the catalog over a store, loading the blob → kind map (one scan).
    pub fn new(store: Arc<Store>) -> Result<Catalog, CatalogError> {
        let c = Catalog {
            store,
            writes: Mutex::new(()),
            kinds: Default::default(),
            lists: Default::default(),
        };
        c.reload()?;
        Ok(c)
    }

    /// Rebuilds the in-memory views from the records (one scan): at open, and on an
    /// edge after replicated records changed underneath.
    pub fn reload(&self) -> Result<(), CatalogError> {
        let builds: Vec<Build> = self.list(Cf::Builds, &[])?;
        let deltas = self.deltas()?;
        let mut kinds = std::collections::HashMap::with_capacity(builds.len() + deltas.len());
        let mut lists = std::collections::HashMap::with_capacity(builds.len());
        for b in builds {
            kinds.insert(b.blob, b.kind.as_str());
            if let Some(l) = b.chunks_blake3 {
                lists.insert(b.blob, l);
            }
        }
        *self.lists.write().unwrap_or_else(|e| e.into_inner()) = lists;
        for d in deltas {
            if let Some(h) = d.delta {
                kinds.insert(h, "delta");
            }
        }
        *self.kinds.write().unwrap_or_else(|e| e.into_inner()) = kinds;
        Ok(())
    }

    /// The blake3 of the chunk list of a build's blob, as the build record names it.
    pub fn chunk_list_of(&self, blob: &Hash) -> Option<Hash> {
        self.lists
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(blob)
            .copied()
    }

    /// `os`, `driver`, `app`, `delta`, or `other` for a blob.
    pub fn kind_of(&self, blob: &Hash) -> &'static str {
        self.kinds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(blob)
            .copied()
            .unwrap_or("other")
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>, CatalogError> {
        self.store
            .kv()
            .get(cf, key)?
            .map(|v| decode(&v))
            .transpose()
    }

    fn list<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        prefix: &[u8],
    ) -> Result<Vec<T>, CatalogError> {
        let mut out = Vec::new();
        let mut bad = None;
        self.store
            .kv()
            .scan(cf, prefix, &mut |_, v| match decode(v) {
                Ok(x) => {
                    out.push(x);
                    true
                }
                Err(e) => {
                    bad = Some(e);
                    false
                }
            })?;
        bad.map_or(Ok(out), Err)
    }

    /// Creates or updates a product; true when created.
    pub fn put_product(
        &self,
        slug: &str,
        name: &str,
        hardware: Hardware,
    ) -> Result<(Product, bool), CatalogError> {
        if !valid_name(slug) {
            return Err(CatalogError::Invalid(format!(
                "invalid product slug {slug:?} (1-64 of a-z 0-9 . _ -)"
            )));
        }
        let _w = self.lock();
        let existing: Option<Product> = self.get(Cf::Products, slug.as_bytes())?;
        let created_at = existing.as_ref().map_or_else(now_secs, |p| p.created_at);
        let p = Product {
            slug: slug.into(),
            name: name.into(),
            hardware,
            created_at,
        };
        let mut b = Batch::default();
        b.put(Cf::Products, slug.as_bytes(), encode(&p));
        self.store.commit(b, true)?;
        Ok((p, existing.is_none()))
    }

    pub fn product(&self, slug: &str) -> Result<Product, CatalogError> {
        self.get(Cf::Products, slug.as_bytes())?
            .ok_or_else(|| CatalogError::UnknownProduct(slug.into()))
    }

    pub fn products(&self) -> Result<Vec<Product>, CatalogError> {
        self.list(Cf::Products, &[])
    }

    /// Records a build whose payload is already stored. Same version and same bytes is
    /// idempotent (false); same version with different bytes is a conflict.
    pub fn publish_build(
        &self,
        slug: &str,
        version: &Version,
        kind: Kind,
        notes: &str,
        payload: &crate::store::PutOutcome,
    ) -> Result<(Build, bool), CatalogError> {
        let (blob, size, sha256) = (payload.hash, payload.size, payload.sha256);
        let chunks_blake3 = targets::chunk_list_hash(&self.store, &blob)?;
        let _w = self.lock();
        self.product(slug)?;
        let key = key2(slug, &version.key());
        if let Some(old) = self.get::<Build>(Cf::Builds, &key)? {
            if old.blob == blob {
                return Ok((old, false));
            }
            return Err(CatalogError::Conflict(format!(
                "{slug} {version} is already published with different content ({})",
                old.blob
            )));
        }
        let b = Build {
            product: slug.into(),
            version: version.to_string(),
            blob,
            size,
            kind,
            notes: notes.into(),
            created_at: now_secs(),
            sha256: Some(hex::encode(sha256)),
            chunks_blake3: Some(chunks_blake3),
        };
        let mut batch = Batch::default();
        batch.put(Cf::Builds, key, encode(&b));
        self.store.commit(batch, true)?;
        self.kinds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(blob, kind.as_str());
        Ok((b, true))
    }

    /// Every build of every product.
    pub fn all_builds(&self) -> Result<Vec<Build>, CatalogError> {
        self.list(Cf::Builds, &[])
    }

    /// Stores digests computed for a build recorded before they existed.
    pub fn set_build_digests(
        &self,
        slug: &str,
        version: &Version,
        sha256: String,
        chunks_blake3: Hash,
    ) -> Result<(), CatalogError> {
        let _w = self.lock();
        let key = key2(slug, &version.key());
        let Some(mut b) = self.get::<Build>(Cf::Builds, &key)? else {
            return Ok(());
        };
        b.sha256 = Some(sha256);
        b.chunks_blake3 = Some(chunks_blake3);
        let mut batch = Batch::default();
        batch.put(Cf::Builds, key, encode(&b));
        self.store.commit(batch, true)?;
        Ok(())
    }

    /// Builds of a product, oldest version first.
    pub fn builds(&self, slug: &str) -> Result<Vec<Build>, CatalogError> {
        self.product(slug)?;
        self.list(Cf::Builds, &prefix(slug))
    }

    pub fn build(&self, slug: &str, version: &Version) -> Result<Option<Build>, CatalogError> {
        self.get(Cf::Builds, &key2(slug, &version.key()))
    }

    /// Whether the publish policy computes a delta from `from` to `to`: same product and
    /// kind, `from` older, and at most `from_previous - 1` builds of that kind between
    /// them (a publish schedules deltas from the `from_previous` newest older builds).
    /// Visits only the builds between the two, and stops at the limit.
    pub fn delta_in_policy(
        &self,
        from: &Build,
        to: &Build,
        from_previous: usize,
    ) -> Result<bool, CatalogError> {
        let (Ok(fv), Ok(tv)) = (
            from.version.parse::<Version>(),
            to.version.parse::<Version>(),
        ) else {
            return Ok(false);
        };
        if from.product != to.product || from.kind != to.kind || fv >= tv || from_previous == 0 {
            return Ok(false);
        }
        let (start, end) = (key2(&from.product, &fv.key()), key2(&to.product, &tv.key()));
        let (mut between, mut bad) = (0usize, None);
        self.store.kv().scan_from(Cf::Builds, &start, &mut |k, v| {
            if k >= end.as_slice() {
                return false;
            }
            if k == start.as_slice() {
                return true;
            }
            match decode::<Build>(v) {
                Ok(b) if b.kind == to.kind => {
                    between += 1;
                    between < from_previous
                }
                Ok(_) => true,
                Err(e) => {
                    bad = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        Ok(between < from_previous)
    }

    /// Removes a build unless a ring targets it; its payload goes at the next GC.
    pub fn delete_build(&self, slug: &str, version: &Version) -> Result<(), CatalogError> {
        let _w = self.lock();
        let key = key2(slug, &version.key());
        let build: Build =
            self.get(Cf::Builds, &key)?
                .ok_or_else(|| CatalogError::UnknownBuild {
                    product: slug.into(),
                    version: version.to_string(),
                })?;
        let rings: Vec<Ring> = self.list(Cf::Rings, &prefix(slug))?;
        if let Some(r) = rings.iter().find(|r| r.version == build.version) {
            return Err(CatalogError::Conflict(format!(
                "ring {:?} targets {slug} {version}; retarget it first",
                r.name
            )));
        }
        let mut batch = Batch::default();
        batch.delete(Cf::Builds, key);
        self.store.commit(batch, true)?;
        Ok(())
    }

    /// Sets a ring's target; the version must be a published build.
    pub fn set_ring(
        &self,
        slug: &str,
        ring: &str,
        version: &Version,
        percent: f64,
        paused: bool,
    ) -> Result<Ring, CatalogError> {
        if !valid_name(ring) {
            return Err(CatalogError::Invalid(format!("invalid ring name {ring:?}")));
        }
        if !(0.0..=100.0).contains(&percent) || !percent.is_finite() {
            return Err(CatalogError::Invalid(format!(
                "percent {percent} is not within 0..=100"
            )));
        }
        let _w = self.lock();
        self.product(slug)?;
        if self.build(slug, version)?.is_none() {
            return Err(CatalogError::UnknownBuild {
                product: slug.into(),
                version: version.to_string(),
            });
        }
        let key = key2(slug, ring.as_bytes());
        let existing: Option<Ring> = self.get(Cf::Rings, &key)?;
        let order = match existing {
            Some(r) => r.order,
            None => DEFAULT_RINGS
                .iter()
                .position(|d| *d == ring)
                .map(|p| p as u32)
                .unwrap_or_else(|| 100 + ring.len() as u32),
        };
        let r = Ring {
            name: ring.into(),
            order,
            version: version.to_string(),
            percent: (percent * 100.0).round() / 100.0,
            paused,
            updated_at: now_secs(),
        };
        let mut batch = Batch::default();
        batch.put(Cf::Rings, key, encode(&r));
        self.store.commit(batch, true)?;
        Ok(r)
    }

    pub fn ring(&self, slug: &str, ring: &str) -> Result<Option<Ring>, CatalogError> {
        self.get(Cf::Rings, &key2(slug, ring.as_bytes()))
    }

    /// Rings of a product in ring order.
    pub fn rings(&self, slug: &str) -> Result<Vec<Ring>, CatalogError> {
        self.product(slug)?;
        let mut r: Vec<Ring> = self.list(Cf::Rings, &prefix(slug))?;
        r.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        Ok(r)
    }

    pub fn delta(&self, from: &Hash, to: &Hash) -> Result<Option<DeltaRecord>, CatalogError> {
        self.get(
            Cf::Deltas,
            &[from.as_bytes().as_slice(), to.as_bytes()].concat(),
        )
    }

    pub fn put_delta(&self, rec: &DeltaRecord) -> Result<(), CatalogError> {
        let mut batch = Batch::default();
        batch.put(
            Cf::Deltas,
            [rec.from.as_bytes().as_slice(), rec.to.as_bytes()].concat(),
            encode(rec),
        );
        self.store.commit(batch, false)?;
        if let Some(h) = rec.delta {
            self.kinds
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(h, "delta");
        }
        Ok(())
    }

    pub fn deltas(&self) -> Result<Vec<DeltaRecord>, CatalogError> {
        self.list(Cf::Deltas, &[])
    }

    /// Device records held (kept in the same batches as the records).
    pub fn device_count(&self) -> Result<Option<u64>, CatalogError> {
        Ok(self
            .store
            .kv()
            .get(Cf::Meta, DEVICE_COUNT_KEY)?
            .and_then(|v| Some(u64::from_le_bytes(v.as_slice().try_into().ok()?))))
    }

    /// Builds the by-age index and the count over device records written before they
    /// existed (once, on the device writer's thread, in batches). A no-op once the
    /// count is stored.
    pub fn index_devices(&self) -> Result<u64, CatalogError> {
        if let Some(n) = self.device_count()? {
            return Ok(n);
        }
        let kv = self.store.kv();
        let (mut count, mut batch, mut bad) = (0u64, Batch::default(), None);
        kv.scan_from(
            Cf::Devices,
            &[],
            &mut |k, v| match decode::<DeviceRecord>(v) {
                Ok(rec) => {
                    batch.put(Cf::DeviceSeen, seen_key(rec.last_seen, k), Vec::new());
                    count += 1;
                    if batch.ops.len() >= 4096 {
                        if let Err(e) = kv.write(std::mem::take(&mut batch), false) {
                            bad = Some(e.into());
                            return false;
                        }
                    }
                    true
                }
                Err(e) => {
                    bad = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = bad {
            return Err(e);
        }
        batch.put(Cf::Meta, DEVICE_COUNT_KEY, count.to_le_bytes());
        kv.write(batch, false)?;
        Ok(count)
    }

    /// Writes device records (product, device id, record) in one batch (not synced:
    /// losing the last few on a crash only affects statistics), keeping the by-age
    /// index and the count with them. A device named twice keeps its last record.
    /// Returns the count after the batch.
    pub fn record_devices(
        &self,
        records: &[(String, String, DeviceRecord)],
    ) -> Result<u64, CatalogError> {
        let kv = self.store.kv();
        let mut count = self.index_devices()?;
        let mut latest = std::collections::HashMap::with_capacity(records.len());
        for (slug, device_id, rec) in records {
            latest.insert(key2(slug, device_id.as_bytes()), rec);
        }
        let keys: Vec<&[u8]> = latest.keys().map(|k| k.as_slice()).collect();
        let olds = kv.multi_get(Cf::Devices, &keys)?;
        let mut batch = Batch::default();
        for ((key, rec), old) in latest.iter().zip(olds) {
            match old {
                Some(old) => {
                    if let Ok(old) = decode::<DeviceRecord>(&old) {
                        batch.delete(Cf::DeviceSeen, seen_key(old.last_seen, key));
                    }
                }
                None => count += 1,
            }
            batch.put(Cf::DeviceSeen, seen_key(rec.last_seen, key), Vec::new());
            batch.put(Cf::Devices, key.clone(), encode(*rec));
        }
        batch.put(Cf::Meta, DEVICE_COUNT_KEY, count.to_le_bytes());
        kv.write(batch, false)?;
        Ok(count)
    }

    /// Removes device records oldest first while there are more than `max` or the
    /// oldest was last seen `ttl` seconds or more before `now` (`ttl` 0: no age
    /// limit), at most `limit` of them. `from` is where the by-age walk starts (the
    /// last removed key; skips the tombstones of earlier removals) and is advanced.
    /// Returns how many were removed and the count left.
    pub fn expire_devices(
        &self,
        ttl: u64,
        max: u64,
        now: u64,
        limit: usize,
        from: &mut Vec<u8>,
    ) -> Result<(u64, u64), CatalogError> {
        let kv = self.store.kv();
        let mut count = self.index_devices()?;
        let mut removed = 0u64;
        while (removed as usize) < limit {
            let mut batch = Batch::default();
            let mut n = 0u64;
            let mut last = None;
            kv.scan_from(Cf::DeviceSeen, from, &mut |k, _| {
                let Some(seen) = k.get(..8).and_then(|b| b.try_into().ok()) else {
                    return true;
                };
                let seen = u64::from_be_bytes(seen);
                let old = ttl > 0 && seen.saturating_add(ttl) <= now;
                if !(old || count.saturating_sub(n) > max) {
                    return false;
                }
                batch.delete(Cf::DeviceSeen, k.to_vec());
                batch.delete(Cf::Devices, k[8..].to_vec());
                last = Some(k.to_vec());
                n += 1;
                ((removed + n) as usize) < limit && n < 1024
            })?;
            if n == 0 {
                break;
            }
            count = count.saturating_sub(n);
            removed += n;
            batch.put(Cf::Meta, DEVICE_COUNT_KEY, count.to_le_bytes());
            kv.write(batch, false)?;
            if let Some(k) = last {
                *from = k;
            }
        }
        Ok((removed, count))
    }

    /// Version histogram and per-ring counts of the devices seen (a scan: operator use).
    pub fn device_stats(&self, slug: &str) -> Result<DeviceStats, CatalogError> {
        self.product(slug)?;
        let mut stats = DeviceStats::default();
        let devices: Vec<DeviceRecord> = self.list(Cf::Devices, &prefix(slug))?;
        for d in devices {
            *stats.versions.entry(d.version).or_insert(0) += 1;
            *stats.rings.entry(d.ring).or_insert(0) += 1;
            stats.devices += 1;
        }
        Ok(stats)
    }

    /// Blobs the catalog references (GC roots): every build and every ready delta whose
    /// builds still exist. Also drops delta records whose builds are gone.
    pub fn roots(&self) -> Result<std::collections::HashSet<Hash>, CatalogError> {
        let _w = self.lock();
        let builds: Vec<Build> = self.list(Cf::Builds, &[])?;
        let mut roots: std::collections::HashSet<Hash> = builds.iter().map(|b| b.blob).collect();
        let mut batch = Batch::default();
        for d in self.deltas()? {
            if roots.contains(&d.from) && roots.contains(&d.to) {
                if let Some(h) = d.delta {
                    roots.insert(h);
                }
            } else {
                batch.delete(
                    Cf::Deltas,
                    [d.from.as_bytes().as_slice(), d.to.as_bytes()].concat(),
                );
            }
        }
        if !batch.is_empty() {
            self.store.commit(batch, true)?;
        }
        Ok(roots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::{memory_store, noise};

    #[test]
    fn the_delta_policy_covers_the_newest_older_builds_of_the_same_kind_only() {
        let (store, _) = memory_store();
        let c = Catalog::new(store.clone()).unwrap();
        c.put_product("gw", "Gateway", Hardware::default()).unwrap();
        let publish = |v: &str, kind: Kind, seed: u64| {
            let put = store.put_reader(&noise(3000, seed)[..], |_| {}).unwrap();
            c.publish_build("gw", &v.parse().unwrap(), kind, "", &put)
                .unwrap()
                .0
        };
        // Versions sort numerically (1.10 after 1.9), not as text.
        let b: Vec<Build> = ["1.1", "1.2", "1.9", "1.10"]
            .iter()
            .zip(1..)
            .map(|(v, seed)| publish(v, Kind::Os, seed))
            .collect();
        let app = publish("1.5", Kind::App, 9);
        let app2 = publish("1.6", Kind::App, 10);
        let ok = |f: &Build, t: &Build, k| c.delta_in_policy(f, t, k).unwrap();
        assert!(
            ok(&b[2], &b[3], 1),
            "the previous build (app builds between don't count)"
        );
        assert!(!ok(&b[1], &b[3], 1));
        assert!(ok(&b[1], &b[3], 2));
        assert!(!ok(&b[0], &b[3], 2));
        assert!(ok(&b[0], &b[3], 3));
        assert!(!ok(&b[3], &b[2], 3), "never backwards");
        assert!(!ok(&b[3], &b[3], 3), "never to itself");
        assert!(!ok(&b[2], &b[3], 0), "from_previous = 0: none");
        assert!(!ok(&b[1], &app, 3), "never across kinds");
        assert!(ok(&app, &app2, 1));
    }

    fn rec(seen: u64) -> DeviceRecord {
        DeviceRecord {
            version: "1.0".into(),
            ring: "general".into(),
            last_seen: seen,
            result: "none".into(),
        }
    }

    fn held(c: &Catalog) -> Vec<String> {
        let mut ids = Vec::new();
        c.store
            .kv()
            .scan(Cf::Devices, b"gw\0", &mut |k, _| {
                ids.push(String::from_utf8_lossy(&k[3..]).into_owned());
                true
            })
            .unwrap();
        ids.sort();
        ids
    }

    fn gw_catalog() -> Catalog {
        let (store, _) = memory_store();
        let c = Catalog::new(store).unwrap();
        c.put_product("gw", "Gateway", Hardware::default()).unwrap();
        c
    }

    #[test]
    fn device_records_past_the_cap_go_least_recently_seen_first() {
        let c = gw_catalog();
        let batch: Vec<_> = (1..=10)
            .map(|i| ("gw".to_string(), format!("d{i:02}"), rec(i)))
            .collect();
        assert_eq!(c.record_devices(&batch).unwrap(), 10);
        // d01 checks again (and twice in one batch: one record).
        let again = [
            ("gw".into(), "d01".into(), rec(20)),
            ("gw".into(), "d01".into(), rec(21)),
        ];
        assert_eq!(c.record_devices(&again).unwrap(), 10);
        let mut from = Vec::new();
        assert_eq!(
            c.expire_devices(0, 6, 1000, 100, &mut from).unwrap(),
            (4, 6)
        );
        assert_eq!(held(&c), ["d01", "d06", "d07", "d08", "d09", "d10"]);
        assert_eq!(c.device_count().unwrap(), Some(6));
        assert_eq!(c.device_stats("gw").unwrap().devices, 6);
        // At most `limit` per call; the walk resumes where it stopped.
        assert_eq!(c.expire_devices(0, 2, 1000, 3, &mut from).unwrap(), (3, 3));
        assert_eq!(c.expire_devices(0, 2, 1000, 3, &mut from).unwrap(), (1, 2));
        assert_eq!(held(&c), ["d01", "d10"]);
        assert_eq!(c.expire_devices(0, 2, 1000, 3, &mut from).unwrap(), (0, 2));
    }

    #[test]
    fn device_records_expire_after_their_ttl() {
        let c = gw_catalog();
        let batch: Vec<_> = (1..=5)
            .map(|i| ("gw".to_string(), format!("d{i}"), rec(i * 10)))
            .collect();
        c.record_devices(&batch).unwrap();
        // now 100, ttl 70: seen at 30 or before goes (30 + 70 <= 100).
        let mut from = Vec::new();
        assert_eq!(
            c.expire_devices(70, u64::MAX, 100, 100, &mut from).unwrap(),
            (3, 2)
        );
        assert_eq!(held(&c), ["d4", "d5"]);
        assert_eq!(
            c.expire_devices(0, u64::MAX, 100, 100, &mut Vec::new())
                .unwrap(),
            (0, 2)
        );
    }

    #[test]
    fn records_written_before_the_index_existed_are_indexed_once() {
        let c = gw_catalog();
        let mut batch = Batch::default();
        for i in 1..=4u64 {
            batch.put(
                Cf::Devices,
                key2("gw", format!("d{i}").as_bytes()),
                encode(&rec(i)),
            );
        }
        c.store.kv().write(batch, false).unwrap();
        assert_eq!(c.device_count().unwrap(), None);
        assert_eq!(c.index_devices().unwrap(), 4);
        assert_eq!(c.device_count().unwrap(), Some(4));
        assert_eq!(
            c.expire_devices(0, 1, 1000, 100, &mut Vec::new()).unwrap(),
            (3, 1)
        );
        assert_eq!(held(&c), ["d4"]);
    }
}
