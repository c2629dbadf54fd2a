//! The repository's online half: signs targets, snapshot and timestamp with the online
//! keys, stores every version it serves (consistent snapshots: `{N}.targets.json`,
//! `{N}.snapshot.json`), and re-signs before anything expires.
//!
//! Stored in the store's `meta` column family: `tuf/targets/{N}`, `tuf/snapshot/{N}`
//! (the last [`KEEP_VERSIONS`] of each, so a client that read snapshot N a moment ago
//! still finds the targets it names), `tuf/timestamp` and `tuf/state`, all written in
//! one synced batch per change.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tough::schema::{Hashes, Metafile, Root, Signed, Snapshot, Target, Targets, Timestamp};
use tough::TargetName;

use super::keys::KeyPair;
use super::root::{self, key_path, load_chain, role_key_ids};
use super::{expires_in, now_secs, sign_role, RepoError, SPEC_VERSION};
use crate::hash::Hash;
use crate::store::{Batch, Cf, Store};

/// Old targets/snapshot versions kept servable after a change.
pub const KEEP_VERSIONS: u64 = 16;

const STATE_KEY: &[u8] = b"tuf/state";
const TIMESTAMP_KEY: &[u8] = b"tuf/timestamp";

/// Lifetimes of the online metadata, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
}

/// One published image as a TUF target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetEntry {
    /// `{product}/{version}/{kind}`.
    pub name: String,
    pub length: u64,
    /// SHA-256 of the payload (what standard TUF clients check), 32 bytes.
    pub sha256: [u8; 32],
    /// Product, version, kind, hardware, blake3, chunks_blake3 — strings and objects
    /// only (canonical JSON has no floats).
    pub custom: serde_json::Map<String, Value>,
}

/// What serving a target needs: the stored blob behind a target name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRef {
    pub blob: Hash,
    pub sha256: [u8; 32],
    pub length: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    targets: u64,
    snapshot: u64,
    timestamp: u64,
    targets_expires: i64,
    snapshot_expires: i64,
    timestamp_expires: i64,
    /// Key ids that signed the current versions (a rotation makes them differ).
    targets_key: String,
    snapshot_key: String,
    timestamp_key: String,
    /// blake3 of the target entries, to notice a catalog change made before a crash.
    entries_digest: String,
}

/// The current published set.
#[derive(Default)]
pub struct Published {
    state: State,
    timestamp: Bytes,
    names: HashMap<String, TargetRef>,
    entries: Vec<TargetEntry>,
}

/// Every root version (1 first) and the newest, parsed.
pub struct Roots {
    pub files: Vec<Bytes>,
    pub root: Root,
}

/// The keys an origin signs with; an edge replica has none.
pub(super) struct OnlineKeys {
    /// Where they (and the root history) were read from.
    dir: std::path::PathBuf,
    targets: KeyPair,
    snapshot: KeyPair,
    timestamp: KeyPair,
}

pub struct Repo {
    pub(super) store: Arc<Store>,
    pub(super) roots: RwLock<Arc<Roots>>,
    pub(super) keys: Option<OnlineKeys>,
    pub(super) director: Arc<KeyPair>,
    pub(super) ttls: Ttls,
    pub(super) current: RwLock<Arc<Published>>,
    pub(super) writes: Mutex<()>,
}

pub(super) fn versioned_key(role: &str, n: u64) -> Vec<u8> {
    format!("tuf/{role}/{n:020}").into_bytes()
}

fn digest(entries: &[TargetEntry]) -> String {
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(e.name.as_bytes());
        h.update(&e.length.to_le_bytes());
        h.update(&e.sha256);
        h.update(&serde_json::to_vec(&e.custom).unwrap_or_default());
    }
    h.finalize().to_hex().to_string()
}

fn meta_err(what: &str, e: impl std::fmt::Display) -> RepoError {
    RepoError::Metadata {
        what: what.into(),
        message: e.to_string(),
    }
}

impl Repo {
    /// Loads the root chain and the online keys from `keys_dir`, checks each key is the
    /// one the latest root authorises for its role, and brings the stored metadata up to
    /// date with `entries` (re-signing when keys or targets changed or expiry is near).
    pub fn open(
        store: Arc<Store>,
        keys_dir: &Path,
        director_key: &Path,
        ttls: Ttls,
        entries: Vec<TargetEntry>,
    ) -> Result<Repo, RepoError> {
        let chain = load_chain(keys_dir)?;
        let roots: Vec<Bytes> = chain.iter().map(|(_, b)| Bytes::from(b.clone())).collect();
        let root = chain
            .last()
            .map(|(r, _)| r.signed.clone())
            .ok_or_else(|| RepoError::Invalid("no root".into()))?;
        let load = |role: &str| -> Result<KeyPair, RepoError> {
            let path = if role == "director" {
                director_key.to_path_buf()
            } else {
                key_path(keys_dir, role)
            };
            let k = KeyPair::load(&path)?;
            if !role_key_ids(&root, role)?.iter().any(|id| id == k.id()) {
                return Err(RepoError::KeyFile {
                    path,
                    message: format!(
                        "key {} is not authorised for {role} by root version {} (restore the matching key or rotate with `update-edge keys rotate --role {role}`)",
                        &k.id()[..16],
                        root.version
                    ),
                });
            }
            Ok(k)
        };
        let keys = OnlineKeys {
            dir: keys_dir.to_path_buf(),
            targets: load("targets")?,
            snapshot: load("snapshot")?,
            timestamp: load("timestamp")?,
        };
        let repo = Repo {
            director: Arc::new(load("director")?),
            keys: Some(keys),
            store,
            roots: RwLock::new(Arc::new(Roots { files: roots, root })),
            ttls,
            current: RwLock::new(Arc::new(Published::default())),
            writes: Mutex::new(()),
        };
        repo.store_roots()?;
        repo.load_stored()?;
        repo.publish(entries)?;
        repo.refresh()?;
        Ok(repo)
    }

    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RepoError> {
        Ok(self.store.kv().get(Cf::Meta, key)?)
    }

    /// A stored version that the current state names (missing = corrupt store).
    fn stored(&self, role: &str, n: u64) -> Result<Vec<u8>, RepoError> {
        self.kv_get(&versioned_key(role, n))?
            .ok_or_else(|| meta_err(&format!("tuf/{role}/{n}"), "missing"))
    }

    /// Root versions go into the store too (replicated records), so edges serve the same
    /// chain without holding the keys directory.
    fn store_roots(&self) -> Result<(), RepoError> {
        let roots = self.roots();
        let mut batch = Batch::default();
        for (i, bytes) in roots.files.iter().enumerate() {
            let key = versioned_key("root", i as u64 + 1);
            if self.kv_get(&key)?.as_deref() != Some(bytes.as_ref()) {
                batch.put(Cf::Meta, key, bytes.to_vec());
            }
        }
        if !batch.is_empty() {
            self.store.commit(batch, true)?;
        }
        Ok(())
    }

    /// Serves a root version written to the keys directory since start (`keys add-edge`,
    /// `add-director`, `renew-root`) without a restart, when it still authorises every key
    /// this node signs with; a root that rotated them needs a restart with the new keys.
    fn pick_up_roots(&self, k: &OnlineKeys) -> Result<(), RepoError> {
        let chain = load_chain(&k.dir)?;
        if chain.len() <= self.roots().files.len() {
            return Ok(());
        }
        let Some((newest, _)) = chain.last() else {
            return Ok(());
        };
        let root = newest.signed.clone();
        for (role, key) in [
            ("targets", &k.targets),
            ("snapshot", &k.snapshot),
            ("timestamp", &k.timestamp),
            ("director", &*self.director),
        ] {
            if !role_key_ids(&root, role)?.iter().any(|id| id == key.id()) {
                tracing::warn!(version = root.version.get(), role, "a new root version rotates a key this node signs with: restart with the new keys to serve it");
                return Ok(());
            }
        }
        let files = chain.iter().map(|(_, b)| Bytes::from(b.clone())).collect();
        self.gauge("root", root.expires.as_second(), root.version.get());
        tracing::info!(version = root.version.get(), "serving a new root version");
        *self.roots.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Roots { files, root });
        self.store_roots()
    }

    pub(super) fn load_stored(&self) -> Result<(), RepoError> {
        let Some(state) = self.kv_get(STATE_KEY)? else {
            return Ok(());
        };
        let state: State = serde_json::from_slice(&state).map_err(|e| meta_err("tuf/state", e))?;
        let timestamp = self
            .kv_get(TIMESTAMP_KEY)?
            .ok_or_else(|| meta_err("tuf/timestamp", "missing"))?;
        let targets = self.stored("targets", state.targets)?;
        let targets: Signed<Targets> =
            serde_json::from_slice(&targets).map_err(|e| meta_err("stored targets", e))?;
        let entries = targets
            .signed
            .targets
            .iter()
            .map(|(name, t)| TargetEntry {
                name: name.raw().to_string(),
                length: t.length,
                sha256: t.hashes.sha256.as_ref().try_into().unwrap_or([0; 32]),
                custom: t.custom.clone().into_iter().collect(),
            })
            .collect();
        self.install(state, Bytes::from(timestamp), entries);
        Ok(())
    }

    /// Sets the expiry and version gauges of one role.
    fn gauge(&self, role: &str, expires: i64, version: u64) {
        let m = self.store.metrics();
        let role = crate::metrics::RoleLabel { role: role.into() };
        m.tuf_expires.get_or_create(&role).set(expires);
        m.tuf_version.get_or_create(&role).set(version as i64);
    }

    fn install(&self, state: State, timestamp: Bytes, mut entries: Vec<TargetEntry>) {
        let roots = self.roots();
        let root = (roots.root.expires.as_second(), roots.root.version.get());
        for (role, expires, version) in [
            ("root", root.0, root.1),
            ("targets", state.targets_expires, state.targets),
            ("snapshot", state.snapshot_expires, state.snapshot),
            ("timestamp", state.timestamp_expires, state.timestamp),
        ] {
            self.gauge(role, expires, version);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let names = entries
            .iter()
            .filter_map(|e| {
                let blob: Hash = e.custom.get("blake3")?.as_str()?.parse().ok()?;
                Some((
                    e.name.clone(),
                    TargetRef {
                        blob,
                        sha256: e.sha256,
                        length: e.length,
                    },
                ))
            })
            .collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Published {
            state,
            timestamp,
            names,
            entries,
        });
    }

    pub(super) fn current(&self) -> Arc<Published> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes `entries` as the targets (new targets, snapshot and timestamp versions)
    /// unless they and the signing keys are what is already published.
    pub fn publish(&self, entries: Vec<TargetEntry>) -> Result<bool, RepoError> {
        self.publish_from(|| Ok::<_, RepoError>(entries))
    }

    /// As [`Repo::publish`], with the entries read under the repository's lock, so
    /// concurrent publishes cannot sign an older list after a newer one.
    pub fn publish_from<E: From<RepoError>>(
        &self,
        entries: impl FnOnce() -> Result<Vec<TargetEntry>, E>,
    ) -> Result<bool, E> {
        let _w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(k) = &self.keys else {
            return Ok(false); // a replica publishes what it replicates, nothing else
        };
        let mut entries = entries()?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let cur = self.current();
        let d = digest(&entries);
        let s = &cur.state;
        if s.targets > 0
            && s.entries_digest == d
            && s.targets_key == k.targets.id()
            && s.snapshot_key == k.snapshot.id()
            && s.timestamp_key == k.timestamp.id()
        {
            return Ok(false);
        }
        self.write_set(&cur, Some(entries), true)?;
        Ok(true)
    }

    /// Re-signs whatever expires within half its lifetime (timestamp most often).
    pub fn refresh(&self) -> Result<(), RepoError> {
        let _w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(k) = &self.keys else {
            return Ok(());
        };
        self.pick_up_roots(k)?;
        let cur = self.current();
        let now = now_secs();
        let due = |expires: i64, ttl: u64| expires - now <= (ttl / 2) as i64;
        let s = &cur.state;
        if due(s.targets_expires, self.ttls.targets) {
            self.write_set(&cur, Some(cur.entries.clone()), true)
        } else if due(s.snapshot_expires, self.ttls.snapshot) {
            self.write_set(&cur, None, true)
        } else if due(s.timestamp_expires, self.ttls.timestamp) {
            self.write_set(&cur, None, false)
        } else {
            Ok(())
        }
    }

    /// Writes new versions: targets (when `entries` is given), snapshot (when targets
    /// changed or `snapshot` is set) and always timestamp, in one synced batch.
    fn write_set(
        &self,
        cur: &Published,
        entries: Option<Vec<TargetEntry>>,
        snapshot: bool,
    ) -> Result<(), RepoError> {
        let k = self
            .keys
            .as_ref()
            .ok_or_else(|| RepoError::Invalid("a replica holds no signing keys".into()))?;
        let mut st = cur.state.clone();
        let mut batch = Batch::default();
        let nz = |n: u64| NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN);
        let mut new_targets = None;
        let entries = match entries {
            Some(entries) => {
                st.targets += 1;
                st.targets_expires = expires_in(self.ttls.targets).as_second();
                let mut t = Targets::new(
                    SPEC_VERSION.into(),
                    nz(st.targets),
                    at_second(st.targets_expires),
                );
                for e in &entries {
                    let name = TargetName::new(e.name.clone()).map_err(|x| meta_err(&e.name, x))?;
                    t.add_target(
                        name,
                        Target {
                            length: e.length,
                            hashes: Hashes {
                                sha256: e.sha256.to_vec().into(),
                                _extra: HashMap::new(),
                            },
                            custom: e.custom.clone().into_iter().collect(),
                            _extra: HashMap::new(),
                        },
                    );
                }
                let (_, bytes) = sign_role(t, &[&k.targets])?;
                put_versioned(&mut batch, "targets", st.targets, &bytes);
                new_targets = Some(bytes);
                st.targets_key = k.targets.id().into();
                st.entries_digest = digest(&entries);
                entries
            }
            None => cur.entries.clone(),
        };
        let mut new_snapshot = None;
        if snapshot || new_targets.is_some() {
            let targets_bytes = match new_targets {
                Some(b) => b,
                None => self.stored("targets", st.targets)?,
            };
            st.snapshot += 1;
            st.snapshot_expires = expires_in(self.ttls.snapshot).as_second();
            let mut s = Snapshot::new(
                SPEC_VERSION.into(),
                nz(st.snapshot),
                at_second(st.snapshot_expires),
            );
            s.meta
                .insert("targets.json".into(), metafile(&targets_bytes, st.targets));
            let (_, bytes) = sign_role(s, &[&k.snapshot])?;
            put_versioned(&mut batch, "snapshot", st.snapshot, &bytes);
            new_snapshot = Some(bytes);
            st.snapshot_key = k.snapshot.id().into();
        }
        let snapshot_bytes = match new_snapshot {
            Some(b) => b,
            None => self.stored("snapshot", st.snapshot)?,
        };
        st.timestamp += 1;
        st.timestamp_expires = expires_in(self.ttls.timestamp).as_second();
        let mut ts = Timestamp::new(
            SPEC_VERSION.into(),
            nz(st.timestamp),
            at_second(st.timestamp_expires),
        );
        ts.meta.insert(
            "snapshot.json".into(),
            metafile(&snapshot_bytes, st.snapshot),
        );
        let (_, ts_bytes) = sign_role(ts, &[&k.timestamp])?;
        st.timestamp_key = k.timestamp.id().into();
        batch.put(Cf::Meta, TIMESTAMP_KEY, ts_bytes.clone());
        batch.put(
            Cf::Meta,
            STATE_KEY,
            serde_json::to_vec(&st).unwrap_or_default(),
        );
        self.store.commit(batch, true)?;
        tracing::info!(
            targets = st.targets,
            snapshot = st.snapshot,
            timestamp = st.timestamp,
            "TUF metadata signed"
        );
        self.install(st, Bytes::from(ts_bytes), entries);
        Ok(())
    }

    /// `{N}.root.json` (1-based), or None.
    pub fn root_file(&self, version: u64) -> Option<Bytes> {
        let i = usize::try_from(version).ok()?.checked_sub(1)?;
        self.roots().files.get(i).cloned()
    }

    /// The newest root.json.
    pub fn latest_root(&self) -> Bytes {
        self.roots().files.last().cloned().unwrap_or_default()
    }

    /// When the current timestamp.json expires (unix seconds; 0 before the first).
    pub fn timestamp_expires(&self) -> i64 {
        self.current().state.timestamp_expires
    }

    /// The newest root.
    pub fn root(&self) -> Root {
        self.roots().root.clone()
    }

    pub(super) fn roots(&self) -> Arc<Roots> {
        self.roots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn timestamp(&self) -> Bytes {
        self.current().timestamp.clone()
    }

    /// A stored `{N}.{role}.json` for `targets` or `snapshot`.
    pub fn versioned(&self, role: &str, version: u64) -> Result<Option<Bytes>, RepoError> {
        if role != "targets" && role != "snapshot" {
            return Ok(None);
        }
        Ok(self.kv_get(&versioned_key(role, version))?.map(Bytes::from))
    }

    /// Current version of `targets` or `snapshot`.
    pub fn current_version(&self, role: &str) -> u64 {
        let c = self.current();
        if role == "targets" {
            c.state.targets
        } else {
            c.state.snapshot
        }
    }

    /// The current target of that name.
    pub fn target(&self, name: &str) -> Option<TargetRef> {
        self.current().names.get(name).copied()
    }

    /// The key that signs director answers.
    pub fn director(&self) -> Arc<KeyPair> {
        self.director.clone()
    }

    /// Seconds until the first online metadata expires (for re-sign scheduling).
    pub fn ttls(&self) -> Ttls {
        self.ttls
    }

    /// Director key ids the latest root authorises.
    pub fn director_ids(&self) -> Vec<String> {
        root::director_keys(&self.roots().root)
            .map(|d| d.0)
            .unwrap_or_default()
    }
}

/// Puts `{role}/{n}` and drops the version [`KEEP_VERSIONS`] older, in the same batch.
fn put_versioned(batch: &mut Batch, role: &str, n: u64, bytes: &[u8]) {
    batch.put(Cf::Meta, versioned_key(role, n), bytes.to_vec());
    if n > KEEP_VERSIONS {
        batch.delete(Cf::Meta, versioned_key(role, n - KEEP_VERSIONS));
    }
}

fn at_second(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::MAX)
}

fn metafile(bytes: &[u8], version: u64) -> Metafile {
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: sha.as_ref().to_vec().into(),
            _extra: HashMap::new(),
        }),
        version: NonZeroU64::new(version).unwrap_or(NonZeroU64::MIN),
        _extra: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::root::{init, InitOptions};
    use crate::store::test_util::memory_store;

    fn entry(name: &str, n: u8) -> TargetEntry {
        let mut custom = serde_json::Map::new();
        custom.insert("blake3".into(), Value::String(Hash::of(&[n]).to_hex()));
        TargetEntry {
            name: name.into(),
            length: u64::from(n),
            sha256: [n; 32],
            custom,
        }
    }

    const TTLS: Ttls = Ttls {
        timestamp: 86_400,
        snapshot: 7 * 86_400,
        targets: 90 * 86_400,
    };

    #[test]
    fn publishing_signs_a_consistent_set_that_root_verifies_and_unchanged_lists_sign_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        init(&keys, &dir.path().join("offline"), InitOptions::default()).unwrap();
        let (store, _) = memory_store();
        let repo = Repo::open(
            store.clone(),
            &keys,
            &keys.join("director.pk8"),
            TTLS,
            vec![entry("p/1.0/os", 1)],
        )
        .unwrap();
        assert_eq!(
            (
                repo.current_version("targets"),
                repo.current_version("snapshot")
            ),
            (1, 1)
        );
        assert!(!repo.publish(vec![entry("p/1.0/os", 1)]).unwrap());
        assert_eq!(repo.current_version("targets"), 1);
        assert!(repo
            .publish(vec![entry("p/1.0/os", 1), entry("p/1.1/os", 2)])
            .unwrap());
        assert_eq!(
            (
                repo.current_version("targets"),
                repo.current_version("snapshot")
            ),
            (2, 2)
        );
        assert_eq!(repo.target("p/1.1/os").map(|t| t.length), Some(2));
        assert_eq!(repo.target("p/9/os"), None);
        let gauge = |f: &prometheus_client::metrics::family::Family<
            crate::metrics::RoleLabel,
            prometheus_client::metrics::gauge::Gauge,
        >,
                     role: &str| {
            f.get_or_create(&crate::metrics::RoleLabel { role: role.into() })
                .get()
        };
        let m = store.metrics();
        assert_eq!(gauge(&m.tuf_version, "targets"), 2);
        assert!(gauge(&m.tuf_expires, "timestamp") > now_secs() + 86_000);

        let root = repo.root().clone();
        let ts: Signed<Timestamp> = serde_json::from_slice(&repo.timestamp()).unwrap();
        root.verify_role(&ts).unwrap();
        let snap_bytes = repo.versioned("snapshot", 2).unwrap().unwrap();
        let meta = &ts.signed.meta["snapshot.json"];
        assert_eq!(meta.length, Some(snap_bytes.len() as u64));
        assert_eq!(meta.version.get(), 2);
        let snap: Signed<Snapshot> = serde_json::from_slice(&snap_bytes).unwrap();
        root.verify_role(&snap).unwrap();
        let targets_bytes = repo.versioned("targets", 2).unwrap().unwrap();
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &targets_bytes);
        let tm = &snap.signed.meta["targets.json"];
        assert_eq!(tm.hashes.as_ref().unwrap().sha256.as_ref(), sha.as_ref());
        let targets: Signed<Targets> = serde_json::from_slice(&targets_bytes).unwrap();
        root.verify_role(&targets).unwrap();
        // The older version stays servable (clients mid-update).
        assert!(repo.versioned("targets", 1).unwrap().is_some());

        // Reopened on the same store with the same list: nothing re-signed.
        drop(repo);
        let repo = Repo::open(
            store,
            &keys,
            &keys.join("director.pk8"),
            TTLS,
            vec![entry("p/1.0/os", 1), entry("p/1.1/os", 2)],
        )
        .unwrap();
        assert_eq!(repo.current_version("targets"), 2);
    }

    #[test]
    fn timestamp_is_re_signed_at_half_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        init(&keys, &dir.path().join("offline"), InitOptions::default()).unwrap();
        let (store, _) = memory_store();
        let short = Ttls {
            timestamp: 4,
            ..TTLS
        };
        let repo = Repo::open(
            store,
            &keys,
            &keys.join("director.pk8"),
            short,
            vec![entry("a/1/os", 1)],
        )
        .unwrap();
        let v = |r: &Repo| -> u64 {
            let ts: Signed<Timestamp> = serde_json::from_slice(&r.timestamp()).unwrap();
            ts.signed.version.get()
        };
        let first = v(&repo);
        repo.refresh().unwrap();
        assert_eq!(v(&repo), first, "re-signed a fresh timestamp");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        repo.refresh().unwrap();
        assert_eq!(v(&repo), first + 1);
        assert_eq!(
            repo.current_version("snapshot"),
            1,
            "snapshot re-signed needlessly"
        );
    }
}
