//! What the device trusts, and why: the TUF workflow from a pinned `root.json`
//! (root chain, timestamp, snapshot, targets; expiry; versions never go back, with the
//! last trusted metadata kept in the state directory), then a director answer accepted
//! only when a key that root authorises signed it for this very request (device,
//! product, current version, nonce) and the target it names is in the verified targets
//! metadata with the same length and hashes, for this product, newer than what runs and
//! than anything ever installed.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tough::schema::key::Key;
use tough::schema::Root;
use tough::{Limits, Repository, RepositoryLoader, TargetName};

use super::transport::HttpTransport;
use super::ClientError;
use crate::hash::Hash;
use crate::protocol::answer as signing;
use crate::protocol::trust::{director_keys, version_of};
use crate::protocol::version::Version;

/// Metadata size caps (endless-data attacks): root and timestamp are small; snapshot and
/// targets are bounded by the lengths snapshot/timestamp sign, and by these otherwise.
pub const LIMITS: Limits = Limits {
    max_root_size: 512 << 10,
    max_targets_size: 32 << 20,
    max_timestamp_size: 64 << 10,
    max_snapshot_size: 4 << 20,
    max_root_updates: 1024,
};

/// Largest director answer read.
pub const MAX_ANSWER_BYTES: usize = 256 << 10;

fn untrusted(m: impl Into<String>) -> ClientError {
    ClientError::Untrusted(m.into())
}

/// Why the repository could not be loaded: a transport failure (retry) or a refusal.
pub enum LoadError {
    Transport(String),
    Refused(ClientError),
}

/// Runs the TUF client workflow against `{server}/v1/tuf/`, starting from the newest
/// root the device trusts: the one it last verified (kept in `state/tuf`) or the pinned
/// `root.json` it shipped with, whichever is newer.
pub async fn load_repository(
    http: &reqwest::Client,
    server: &str,
    pinned_root: &Path,
    state: &Path,
) -> Result<Repository, LoadError> {
    let usage = |m: String| LoadError::Refused(ClientError::Usage(m));
    let datastore = state.join("tuf");
    std::fs::create_dir_all(&datastore)
        .map_err(|e| usage(format!("{}: {e}", datastore.display())))?;
    let pinned = std::fs::read(pinned_root)
        .map_err(|e| usage(format!("--root {}: {e}", pinned_root.display())))?;
    let root = match std::fs::read(datastore.join("root.json")) {
        Ok(saved) if version_of(&saved) >= version_of(&pinned) => saved,
        _ => pinned,
    };
    let meta = url::Url::parse(&format!("{}/v1/tuf/", server.trim_end_matches('/')))
        .map_err(|e| usage(format!("--server: {e}")))?;
    let targets = meta
        .join("targets/")
        .map_err(|e| usage(format!("--server: {e}")))?;
    RepositoryLoader::new(&root, meta, targets)
        .transport(HttpTransport { http: http.clone() })
        .limits(LIMITS)
        .datastore(datastore)
        .load()
        .await
        .map_err(|e| {
            if super::transport::is_network(&e) {
                LoadError::Transport(chain(&e))
            } else {
                LoadError::Refused(untrusted(format!("TUF repository refused: {}", chain(&e))))
            }
        })
}

/// An error with its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// What the device asked, which the answer must echo.
pub struct Request<'a> {
    pub product: &'a str,
    pub device_id: &'a str,
    pub version: &'a Version,
    pub nonce: &'a str,
}

/// Verifies a director answer against `root`'s director keys and this request.
pub fn verify_answer(
    root: &Root,
    body: &[u8],
    req: &Request<'_>,
    now: u64,
) -> Result<Value, ClientError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| untrusted(format!("answer is not JSON: {e}")))?;
    let key_id = v["key_id"]
        .as_str()
        .ok_or_else(|| untrusted("answer names no key"))?;
    let (ids, _threshold) = director_keys(root).map_err(untrusted)?;
    if !ids.iter().any(|id| id == key_id) {
        return Err(untrusted(format!(
            "answer signed by key {} which root version {} does not authorise as director",
            &key_id[..16.min(key_id.len())],
            root.version
        )));
    }
    let key = root
        .keys
        .iter()
        .find(|(id, _)| hex::encode(id.as_ref()) == key_id)
        .map(|(_, k)| k)
        .ok_or_else(|| untrusted("director key missing from root"))?;
    let Key::Ed25519 { keyval, .. } = key else {
        return Err(untrusted("director key is not ed25519"));
    };
    signing::verify(&hex::encode(keyval.public.as_ref()), &v)
        .map_err(|e| untrusted(format!("director answer: {e}")))?;
    let expires = v["expires_at"]
        .as_u64()
        .ok_or_else(|| untrusted("answer has no expiry"))?;
    if expires <= now {
        return Err(untrusted(format!(
            "answer expired at {expires} (now {now})"
        )));
    }
    if v["product"] != req.product || v["device_id"] != req.device_id {
        return Err(untrusted("answer is for another device or product"));
    }
    if v["nonce"] != req.nonce {
        return Err(untrusted(
            "answer does not echo this check's nonce (replayed or for another request)",
        ));
    }
    let echoed: Option<Version> = v["current_version"].as_str().and_then(|s| s.parse().ok());
    if echoed.as_ref() != Some(req.version) {
        return Err(untrusted(format!(
            "answer was made for version {} but this device runs {}",
            v["current_version"], req.version
        )));
    }
    Ok(v)
}

/// A target the device may install, with the hashes the repository signed.
#[derive(Debug, Clone)]
pub struct Approved {
    pub name: String,
    pub version: Version,
    pub length: u64,
    pub sha256: [u8; 32],
    pub blake3: Hash,
    pub chunks_blake3: Option<Hash>,
}

/// Checks the target a verified answer offers against the verified targets metadata and
/// the anti-rollback rules.
pub fn approve(
    repo: &Repository,
    update: &Value,
    product: &str,
    running: &Version,
    highest: Option<&Version>,
) -> Result<Approved, ClientError> {
    let t = &update["target"];
    let name = t["name"]
        .as_str()
        .ok_or_else(|| untrusted("answer names no TUF target"))?;
    let tn = TargetName::new(name).map_err(|e| untrusted(format!("target name {name:?}: {e}")))?;
    let signed = repo.targets().signed.targets.get(&tn).ok_or_else(|| {
        untrusted(format!(
            "target {name:?} is not in the repository's signed targets (director compromise?)"
        ))
    })?;
    let sha256: [u8; 32] = signed
        .hashes
        .sha256
        .as_ref()
        .try_into()
        .map_err(|_| untrusted("signed target has no sha256"))?;
    if t["length"].as_u64() != Some(signed.length)
        || t["hashes"]["sha256"].as_str() != Some(hex::encode(sha256).as_str())
    {
        return Err(untrusted(format!(
            "answer's length or hashes for {name:?} differ from the signed targets"
        )));
    }
    let custom = |k: &str| signed.custom.get(k).and_then(Value::as_str);
    if custom("product") != Some(product) {
        return Err(untrusted(format!(
            "target {name:?} is not for product {product:?}"
        )));
    }
    let version: Version = custom("version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| untrusted(format!("target {name:?} has no version")))?;
    if update["version"]
        .as_str()
        .and_then(|v| v.parse::<Version>().ok())
        .as_ref()
        != Some(&version)
    {
        return Err(untrusted("answer's version differs from its target's"));
    }
    if version <= *running {
        return Err(untrusted(format!(
            "offered version {version} is not newer than the running {running} (downgrade refused)"
        )));
    }
    if let Some(h) = highest {
        if version <= *h {
            return Err(untrusted(format!(
                "offered version {version} is not newer than {h}, the highest ever installed (rollback refused)"
            )));
        }
    }
    let blake3: Hash = custom("blake3")
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| untrusted(format!("target {name:?} has no blake3")))?;
    Ok(Approved {
        name: name.to_string(),
        version,
        length: signed.length,
        sha256,
        blake3,
        chunks_blake3: custom("chunks_blake3").and_then(|h| h.parse().ok()),
    })
}

fn installed_path(state: &Path) -> PathBuf {
    state.join("installed.json")
}

/// Highest version this device ever installed (from the state directory).
pub fn highest_installed(state: &Path) -> Result<Option<Version>, ClientError> {
    match std::fs::read(installed_path(state)) {
        Ok(b) => {
            let v: Value = serde_json::from_slice(&b).map_err(|e| {
                ClientError::Usage(format!("{}: {e}", installed_path(state).display()))
            })?;
            Ok(v["highest_version"].as_str().and_then(|s| s.parse().ok()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records an installed version (atomically; never lowers the recorded one).
pub fn record_installed(state: &Path, version: &Version, name: &str) -> Result<(), ClientError> {
    if highest_installed(state)?.is_some_and(|h| h >= *version) {
        return Ok(());
    }
    let path = installed_path(state);
    // A name of its own: two runs on one state directory never write the same file.
    let tmp = state.join(format!(
        ".installed.json.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let body = serde_json::json!({ "highest_version": version.to_string(), "target": name });
    let written = (|| {
        std::fs::write(&tmp, serde_json::to_vec_pretty(&body).unwrap_or_default())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}
