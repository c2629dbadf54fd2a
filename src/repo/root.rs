//! Root metadata and its life: `keys init` (root k-of-n plus the online keys), `keys
//! rotate` (the next root version, signed by the old and the new root threshold), and
//! the chain a node loads at start (every version verified by its predecessor).
//!
//! Layout: the online directory holds `root/{N}.root.json` (public; what devices follow)
//! and `{targets,snapshot,timestamp,director}.pk8`; the root keys live in their own
//! directory, meant to be kept offline, as `root-{id}.pk8`. Replaced keys move to
//! `retired/` beside them (never deleted, never reused).
//!
//! The director role is not one of TUF's four top-level roles (python-tuf rejects
//! unknown roles), so its authorisation is carried in root's signed extra data under
//! [`DIRECTOR_FIELD`], with its keys in root's `keys`: root-signed, it rotates and is
//! revoked like any other role.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde_json::json;
use tough::schema::{RoleKeys, RoleType, Root, Signed};

use super::keys::KeyPair;
use super::{expires_in, sign_role, RepoError, SPEC_VERSION};

pub use crate::protocol::trust::{version_of, DIRECTOR_FIELD};

/// Online roles, each with one key file in the online directory.
pub const ONLINE_ROLES: [&str; 4] = ["targets", "snapshot", "timestamp", "director"];

/// Days a root version is valid by default (re-signing root needs the offline keys).
pub const DEFAULT_ROOT_DAYS: u64 = 365;

/// How `keys init` lays out root.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Root keys created (n).
    pub root_keys: usize,
    /// Root signatures required (k).
    pub root_threshold: usize,
    pub root_days: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            root_keys: 3,
            root_threshold: 2,
            root_days: DEFAULT_ROOT_DAYS,
        }
    }
}

pub fn root_dir(keys_dir: &Path) -> PathBuf {
    keys_dir.join("root")
}

pub fn key_path(keys_dir: &Path, role: &str) -> PathBuf {
    keys_dir.join(format!("{role}.pk8"))
}

fn role_type(role: &str) -> Option<RoleType> {
    match role {
        "root" => Some(RoleType::Root),
        "targets" => Some(RoleType::Targets),
        "snapshot" => Some(RoleType::Snapshot),
        "timestamp" => Some(RoleType::Timestamp),
        _ => None,
    }
}

fn role_keys(ids: &[&KeyPair], threshold: usize) -> RoleKeys {
    RoleKeys {
        keyids: ids
            .iter()
            .map(|k| hex::decode(k.id()).unwrap_or_default().into())
            .collect(),
        threshold: NonZeroU64::new(threshold as u64).unwrap_or(NonZeroU64::MIN),
        _extra: HashMap::new(),
    }
}

/// Creates root keys in `root_keys_dir`, online keys and `root/1.root.json` in
/// `keys_dir`. Refuses to touch a directory that already holds a root.
pub fn init(
    keys_dir: &Path,
    root_keys_dir: &Path,
    opts: InitOptions,
) -> Result<PathBuf, RepoError> {
    if opts.root_threshold == 0 || opts.root_threshold > opts.root_keys {
        return Err(RepoError::Invalid(format!(
            "root threshold {} must be between 1 and the number of root keys {}",
            opts.root_threshold, opts.root_keys
        )));
    }
    let first = root_dir(keys_dir).join("1.root.json");
    if first.exists() {
        return Err(RepoError::Invalid(format!(
            "{} already exists: keys are initialised once (rotate them with `keys rotate`)",
            first.display()
        )));
    }
    let roots = create_root_keys(root_keys_dir, opts.root_keys)?;
    let mut online = HashMap::new();
    for role in ONLINE_ROLES {
        online.insert(role, KeyPair::create(&key_path(keys_dir, role))?);
    }
    let mut keys = HashMap::new();
    let mut roles = HashMap::new();
    let root_refs: Vec<&KeyPair> = roots.iter().collect();
    roles.insert(RoleType::Root, role_keys(&root_refs, opts.root_threshold));
    for k in &roots {
        keys.insert(
            hex::decode(k.id()).unwrap_or_default().into(),
            k.tuf_key().clone(),
        );
    }
    let mut extra = HashMap::new();
    for (role, k) in &online {
        keys.insert(
            hex::decode(k.id()).unwrap_or_default().into(),
            k.tuf_key().clone(),
        );
        match role_type(role) {
            Some(t) => {
                roles.insert(t, role_keys(&[k], 1));
            }
            None => {
                extra.insert(
                    DIRECTOR_FIELD.to_string(),
                    json!({ "keyids": [k.id()], "threshold": 1 }),
                );
            }
        }
    }
    let root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: expires_in(opts.root_days * 86_400),
        keys,
        roles,
        _extra: extra,
    };
    let (_, bytes) = sign_role(root, &root_refs)?;
    write_root(keys_dir, 1, &bytes)?;
    Ok(first)
}

/// `count` new root keys in `dir`, each written under a temporary name and then named by
/// its key id (`root-{id}.pk8`).
fn create_root_keys(dir: &Path, count: usize) -> Result<Vec<KeyPair>, RepoError> {
    (0..count)
        .map(|_| {
            let tmp = dir.join(format!(
                "new-{}.pk8",
                hex::encode(rand::random::<[u8; 8]>())
            ));
            let k = KeyPair::create(&tmp)?;
            let named = dir.join(format!("root-{}.pk8", &k.id()[..16]));
            std::fs::rename(&tmp, &named).map_err(|e| io(&named, e))?;
            Ok(k)
        })
        .collect()
}

fn io(path: &Path, e: std::io::Error) -> RepoError {
    RepoError::KeyFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn write_root(keys_dir: &Path, version: u64, bytes: &[u8]) -> Result<PathBuf, RepoError> {
    let dir = root_dir(keys_dir);
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let path = dir.join(format!("{version}.root.json"));
    let tmp = dir.join(format!(".{version}.root.json.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Root versions oldest first, each parsed and as the bytes served.
pub type RootChain = Vec<(Signed<Root>, Vec<u8>)>;

/// Every root version in `keys_dir/root`, oldest first, each verified by the one
/// before it (threshold of the old root's root keys) and by itself.
pub fn load_chain(keys_dir: &Path) -> Result<RootChain, RepoError> {
    let dir = root_dir(keys_dir);
    let mut files = Vec::new();
    for n in 1u64.. {
        let path = dir.join(format!("{n}.root.json"));
        match std::fs::read(&path) {
            Ok(b) => files.push((path.display().to_string(), b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && n > 1 => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RepoError::KeyFile {
                    path,
                    message: "missing (create keys with `update-edge keys init`)".into(),
                })
            }
            Err(e) => return Err(io(&path, e)),
        }
    }
    verify_chain(files)
}

/// Checks root versions 1, 2, … (each `(where it came from, bytes)`): version numbers in
/// order, each signed by a threshold of its predecessor's root keys and of its own.
pub fn verify_chain(files: Vec<(String, Vec<u8>)>) -> Result<RootChain, RepoError> {
    let mut chain: RootChain = Vec::new();
    for (n, (what, bytes)) in (1u64..).zip(files) {
        let bad = |message: String| RepoError::Metadata {
            what: what.clone(),
            message,
        };
        let root: Signed<Root> = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if root.signed.version.get() != n {
            return Err(bad(format!("holds version {}", root.signed.version)));
        }
        if let Some((prev, _)) = chain.last() {
            prev.signed
                .verify_role(&root)
                .map_err(|e| bad(format!("not signed by root version {}: {e}", n - 1)))?;
        }
        root.signed
            .verify_role(&root)
            .map_err(|e| bad(format!("not signed by its own root keys: {e}")))?;
        chain.push((root, bytes));
    }
    Ok(chain)
}

/// Director key ids (hex) and threshold that `root` authorises.
pub fn director_keys(root: &Root) -> Result<(Vec<String>, u64), RepoError> {
    crate::protocol::trust::director_keys(root).map_err(|message| RepoError::Metadata {
        what: format!("root version {}", root.version),
        message,
    })
}

/// Key ids (hex) authorised for an online role in `root`.
pub fn role_key_ids(root: &Root, role: &str) -> Result<Vec<String>, RepoError> {
    match role_type(role) {
        Some(t) => Ok(root
            .roles
            .get(&t)
            .map(|r| r.keyids.iter().map(|k| hex::encode(k.as_ref())).collect())
            .unwrap_or_default()),
        None => Ok(director_keys(root)?.0),
    }
}

/// What `keys rotate` did.
#[derive(Debug)]
pub struct Rotated {
    pub root_path: PathBuf,
    pub version: u64,
    pub old_ids: Vec<String>,
    pub new_ids: Vec<String>,
}

/// Writes root version N+1 in which `role` has fresh keys, signed by a threshold of the
/// current root keys and (for a root rotation) of the new ones. The replaced key files
/// move to `retired/`.
pub fn rotate(
    keys_dir: &Path,
    root_keys_dir: &Path,
    role: &str,
    root_days: u64,
) -> Result<Rotated, RepoError> {
    if role != "root" && !ONLINE_ROLES.contains(&role) {
        return Err(RepoError::Invalid(format!(
            "unknown role {role:?} (root, targets, snapshot, timestamp, director)"
        )));
    }
    advance(keys_dir, root_keys_dir, Change::Rotate(role), root_days)
}

/// Writes root version N+1 with the same keys and a new expiry (`root_days` from now),
/// signed by a threshold of the root keys: how root is kept from expiring.
pub fn renew(keys_dir: &Path, root_keys_dir: &Path, root_days: u64) -> Result<Rotated, RepoError> {
    advance(keys_dir, root_keys_dir, Change::Renew, root_days)
}

/// Authorises one more director key (an edge node's own), created at `out`, in root N+1.
pub fn add_director(
    keys_dir: &Path,
    root_keys_dir: &Path,
    out: &Path,
    root_days: u64,
) -> Result<Rotated, RepoError> {
    advance(keys_dir, root_keys_dir, Change::AddDirector(out), root_days)
}

/// Withdraws a director key's authorisation (by key id or its first 16 hex digits) in
/// root N+1; the last director key cannot be revoked (rotate it instead).
pub fn revoke_director(
    keys_dir: &Path,
    root_keys_dir: &Path,
    key_id: &str,
    root_days: u64,
) -> Result<Rotated, RepoError> {
    advance(
        keys_dir,
        root_keys_dir,
        Change::RevokeDirector(key_id),
        root_days,
    )
}

/// What the next root version changes.
#[derive(Clone, Copy)]
enum Change<'a> {
    /// Same keys, new expiry.
    Renew,
    /// Fresh keys for a role; for `director`, only the key in `director.pk8` is replaced.
    Rotate(&'a str),
    AddDirector(&'a Path),
    RevokeDirector(&'a str),
}

fn set_directors(root: &mut Root, ids: &[String]) -> Result<(), RepoError> {
    let threshold = director_keys(root)?.1;
    root._extra.insert(
        DIRECTOR_FIELD.to_string(),
        json!({ "keyids": ids, "threshold": threshold }),
    );
    Ok(())
}

/// The next root version, signed by a threshold of the current root keys (and of the
/// new ones when root itself rotates), checked against both before it is written.
fn advance(
    keys_dir: &Path,
    root_keys_dir: &Path,
    change: Change<'_>,
    root_days: u64,
) -> Result<Rotated, RepoError> {
    let rotated = match change {
        Change::Rotate(r) => Some(r),
        _ => None,
    };
    let role = match change {
        Change::Rotate(r) => r,
        Change::AddDirector(_) | Change::RevokeDirector(_) => "director",
        Change::Renew => "root",
    };
    let chain = load_chain(keys_dir)?;
    let (current, _) = chain
        .last()
        .ok_or_else(|| RepoError::Invalid("no root".into()))?;
    let old_root = &current.signed;
    let root_ids = role_key_ids(old_root, "root")?;
    let threshold = old_root
        .roles
        .get(&RoleType::Root)
        .map_or(1, |r| r.threshold.get()) as usize;
    let mut old_signers = Vec::new();
    let mut old_files = Vec::new();
    let entries = std::fs::read_dir(root_keys_dir).map_err(|e| io(root_keys_dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| io(root_keys_dir, e))?.path();
        if path.extension().is_some_and(|e| e == "pk8") {
            let k = KeyPair::load(&path)?;
            if root_ids.iter().any(|id| id == k.id()) {
                old_signers.push(k);
                old_files.push(path);
            }
        }
    }
    if old_signers.len() < threshold {
        return Err(RepoError::Invalid(format!(
            "{} holds {} of the {threshold} root keys root version {} needs",
            root_keys_dir.display(),
            old_signers.len(),
            old_root.version
        )));
    }
    let mut next = old_root.clone();
    next.version = NonZeroU64::new(old_root.version.get() + 1).unwrap_or(NonZeroU64::MIN);
    next.expires = expires_in(root_days * 86_400);
    let old_ids = role_key_ids(old_root, role)?;
    let retired = |dir: &Path, name: String, from: &Path| -> Result<(), RepoError> {
        let to_dir = dir.join("retired");
        std::fs::create_dir_all(&to_dir).map_err(|e| io(&to_dir, e))?;
        let to = to_dir.join(name);
        std::fs::rename(from, &to).map_err(|e| io(&to, e))
    };
    let mut new_signers = Vec::new();
    let mut new_online = None;
    if rotated == Some("root") {
        new_signers = create_root_keys(root_keys_dir, root_ids.len().max(threshold))?;
        let refs: Vec<&KeyPair> = new_signers.iter().collect();
        next.roles
            .insert(RoleType::Root, role_keys(&refs, threshold));
        for k in &new_signers {
            next.keys.insert(
                hex::decode(k.id()).unwrap_or_default().into(),
                k.tuf_key().clone(),
            );
        }
    } else if rotated.is_some() {
        let tmp = keys_dir.join(format!(".{role}.pk8.new"));
        let _ = std::fs::remove_file(&tmp);
        // For director: the key this directory holds is replaced; other directors stay.
        let own = if role == "director" {
            Some(KeyPair::load(&key_path(keys_dir, role))?.id().to_string())
        } else {
            None
        };
        let k = KeyPair::create(&tmp)?;
        next.keys.insert(
            hex::decode(k.id()).unwrap_or_default().into(),
            k.tuf_key().clone(),
        );
        match role_type(role) {
            Some(t) => {
                next.roles.insert(t, role_keys(&[&k], 1));
            }
            None => {
                let mut ids = director_keys(&next)?.0;
                ids.retain(|id| Some(id) != own.as_ref());
                ids.push(k.id().to_string());
                set_directors(&mut next, &ids)?;
            }
        }
        new_online = Some((tmp, k));
    } else if let Change::AddDirector(out) = change {
        let k = KeyPair::create(out)?;
        next.keys.insert(
            hex::decode(k.id()).unwrap_or_default().into(),
            k.tuf_key().clone(),
        );
        let mut ids = director_keys(&next)?.0;
        ids.push(k.id().to_string());
        set_directors(&mut next, &ids)?;
    } else if let Change::RevokeDirector(id) = change {
        let mut ids = director_keys(&next)?.0;
        let before = ids.len();
        ids.retain(|k| !(id.len() >= 16 && k.starts_with(id)));
        if ids.len() == before {
            return Err(RepoError::Invalid(format!(
                "root version {} authorises no director key {id}",
                old_root.version
            )));
        }
        if ids.is_empty() {
            return Err(RepoError::Invalid(
                "that is the last director key: rotate it instead".into(),
            ));
        }
        set_directors(&mut next, &ids)?;
    }
    // Drop keys no role uses any more.
    let mut used: Vec<String> = Vec::new();
    for r in next.roles.values() {
        used.extend(r.keyids.iter().map(|k| hex::encode(k.as_ref())));
    }
    used.extend(director_keys(&next)?.0);
    next.keys
        .retain(|id, _| used.contains(&hex::encode(id.as_ref())));

    let old_refs: Vec<&KeyPair> = old_signers.iter().take(threshold).collect();
    let new_refs: Vec<&KeyPair> = new_signers.iter().collect();
    let all: Vec<&KeyPair> = old_refs.iter().chain(new_refs.iter()).copied().collect();
    let (signed, bytes) = sign_role(next, &all)?;
    old_root
        .verify_role(&signed)
        .map_err(|e| RepoError::Invalid(format!("new root fails the old root: {e}")))?;
    signed
        .signed
        .verify_role(&signed)
        .map_err(|e| RepoError::Invalid(format!("new root fails itself: {e}")))?;
    let version = signed.signed.version.get();
    let root_path = write_root(keys_dir, version, &bytes)?;
    let new_ids = role_key_ids(&signed.signed, role)?;
    if rotated == Some("root") {
        for f in &old_files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            retired(root_keys_dir, name, f)?;
        }
    } else if let Some((tmp, k)) = new_online {
        let path = key_path(keys_dir, role);
        let old_id = KeyPair::load(&path)
            .map(|k| k.id()[..16].to_string())
            .unwrap_or_default();
        if path.exists() {
            retired(keys_dir, format!("{role}-{old_id}.pk8"), &path)?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        drop(k);
    }
    Ok(Rotated {
        root_path,
        version,
        old_ids,
        new_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_rotations_form_a_verified_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, offline) = (dir.path().join("keys"), dir.path().join("offline"));
        init(&keys, &offline, InitOptions::default()).unwrap();
        assert!(
            init(&keys, &offline, InitOptions::default()).is_err(),
            "init twice"
        );
        let chain = load_chain(&keys).unwrap();
        assert_eq!(chain.len(), 1);
        let r1 = &chain[0].0.signed;
        assert_eq!(r1.roles[&RoleType::Root].threshold.get(), 2);
        assert_eq!(r1.roles[&RoleType::Root].keyids.len(), 3);
        let d1 = director_keys(r1).unwrap().0;

        let rot = rotate(&keys, &offline, "director", 30).unwrap();
        assert_eq!((rot.version, rot.old_ids.clone()), (2, d1.clone()));
        assert_ne!(rot.new_ids, d1);
        let rot = rotate(&keys, &offline, "root", 30).unwrap();
        assert_eq!(rot.version, 3);
        let rot = rotate(&keys, &offline, "targets", 30).unwrap();
        assert_eq!(rot.version, 4);
        let chain = load_chain(&keys).unwrap();
        assert_eq!(chain.len(), 4);
        let last = &chain[3].0.signed;
        assert_eq!(
            director_keys(last).unwrap().0,
            director_keys(&chain[1].0.signed).unwrap().0
        );
        // The revoked director key is gone from root's keys.
        assert!(!last.keys.keys().any(|k| hex::encode(k.as_ref()) == d1[0]));
        // The online key file on disk is the authorised one.
        let k = KeyPair::load(&key_path(&keys, "director")).unwrap();
        assert_eq!(director_keys(last).unwrap().0, vec![k.id().to_string()]);
    }

    #[test]
    fn directors_are_added_rotated_one_by_one_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, offline) = (dir.path().join("keys"), dir.path().join("offline"));
        init(&keys, &offline, InitOptions::default()).unwrap();
        let own = director_keys(&load_chain(&keys).unwrap()[0].0.signed)
            .unwrap()
            .0;
        let edge = dir.path().join("edge/director.pk8");
        let r = add_director(&keys, &offline, &edge, 30).unwrap();
        let edge_id = KeyPair::load(&edge).unwrap().id().to_string();
        assert_eq!(r.new_ids, vec![own[0].clone(), edge_id.clone()]);
        // Rotating the origin's director key keeps the edge's.
        let r = rotate(&keys, &offline, "director", 30).unwrap();
        assert_eq!(r.new_ids.len(), 2);
        assert!(r.new_ids.contains(&edge_id) && !r.new_ids.contains(&own[0]));
        let r = revoke_director(&keys, &offline, &edge_id[..16], 30).unwrap();
        assert!(!r.new_ids.contains(&edge_id) && r.new_ids.len() == 1);
        let last = r.new_ids[0].clone();
        assert!(
            revoke_director(&keys, &offline, &last, 30).is_err(),
            "revoked the last one"
        );
        assert!(revoke_director(&keys, &offline, "0123456789abcdef", 30).is_err());
        let chain = load_chain(&keys).unwrap();
        assert_eq!(chain.len(), 4);
        // The revoked key is gone from root's keys too.
        let last_root = &chain[3].0.signed;
        assert!(!last_root
            .keys
            .keys()
            .any(|k| hex::encode(k.as_ref()) == edge_id));
    }

    #[test]
    fn renewing_root_keeps_every_key_and_extends_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, offline) = (dir.path().join("keys"), dir.path().join("offline"));
        init(
            &keys,
            &offline,
            InitOptions {
                root_days: 10,
                ..InitOptions::default()
            },
        )
        .unwrap();
        let r = renew(&keys, &offline, 400).unwrap();
        assert_eq!((r.version, r.old_ids.clone()), (2, r.new_ids.clone()));
        let chain = load_chain(&keys).unwrap();
        let (a, b) = (&chain[0].0.signed, &chain[1].0.signed);
        assert_eq!(
            (&a.keys, &a.roles, &a._extra),
            (&b.keys, &b.roles, &b._extra)
        );
        assert!(b.expires.as_second() - a.expires.as_second() > 300 * 86_400);
        assert_eq!(
            std::fs::read_dir(&offline).unwrap().count(),
            3,
            "root keys moved"
        );
    }

    #[test]
    fn a_root_version_not_signed_by_its_predecessor_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, offline) = (dir.path().join("keys"), dir.path().join("offline"));
        init(&keys, &offline, InitOptions::default()).unwrap();
        // A second, unrelated repository's root 1 presented as version 2 of this one.
        let other = dir.path().join("other");
        init(&other.join("k"), &other.join("o"), InitOptions::default()).unwrap();
        let (mut r, _) = load_chain(&other.join("k")).unwrap().remove(0);
        r.signed.version = NonZeroU64::new(2).unwrap();
        std::fs::write(
            root_dir(&keys).join("2.root.json"),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
        assert!(load_chain(&keys).is_err());
    }

    #[test]
    fn rotation_without_enough_root_keys_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, offline) = (dir.path().join("keys"), dir.path().join("offline"));
        init(&keys, &offline, InitOptions::default()).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&offline)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::remove_file(&files[0]).unwrap();
        std::fs::remove_file(&files[1]).unwrap();
        let err = rotate(&keys, &offline, "targets", 30)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 of the 2 root keys"), "{err}");
        assert_eq!(load_chain(&keys).unwrap().len(), 1);
    }
}
