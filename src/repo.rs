//! The TUF image repository (spec 1.0, consistent snapshots): which images exist,
//! signed so that any TUF client (python-tuf, `tough`) can verify them from the
//! `root.json` a device ships with.
//!
//! Trust: root keys (k of n) sign `root.json` and can live offline; the targets,
//! snapshot and timestamp keys are online on the origin; the director key (signing
//! per-device check answers) is authorised by root too (see [`root`]). Metadata
//! schema and verification come from `tough` (what Bottlerocket ships with); signing
//! is the canonical-JSON ed25519 signature TUF specifies, done here so it stays
//! synchronous and cheap.
//!
//! Durability: every metadata change (targets + snapshot + timestamp) is one synced
//! batch in the store, so a crash leaves either the old or the new consistent set.
//! Concurrency: re-signing is serialised by one mutex; readers get an `Arc` of the
//! current set and never wait for a re-sign.

pub mod keys;
pub mod publish;
pub mod replica;
pub mod root;

use std::path::PathBuf;

use olpc_cjson::CanonicalFormatter;
use serde::Serialize;
use tough::schema::{Role, Signature, Signed};

pub use publish::{Repo, TargetEntry, TargetRef, Ttls};

/// `spec_version` written into every metadata file.
pub const SPEC_VERSION: &str = "1.0.31";

/// Errors of the repository and its keys; each names the file or role concerned.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Metadata { what: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Signs `role` with each key over its canonical JSON; returns the signed value and the
/// bytes served (exactly what snapshot/timestamp hash).
pub fn sign_role<T: Role + Serialize>(
    role: T,
    keys: &[&keys::KeyPair],
) -> Result<(Signed<T>, Vec<u8>), RepoError> {
    let bad = |e: serde_json::Error| RepoError::Metadata {
        what: T::TYPE.to_string(),
        message: e.to_string(),
    };
    let mut canonical = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut canonical, CanonicalFormatter::new());
    role.serialize(&mut ser).map_err(bad)?;
    let signatures = keys
        .iter()
        .map(|k| Signature {
            keyid: hex::decode(k.id()).unwrap_or_default().into(),
            sig: k.sign(&canonical).into(),
        })
        .collect();
    let signed = Signed {
        signed: role,
        signatures,
    };
    let bytes = serde_json::to_vec_pretty(&signed).map_err(bad)?;
    Ok((signed, bytes))
}

/// Now + `secs`, whole seconds (python-tuf parses `expires` as `%Y-%m-%dT%H:%M:%SZ`).
pub fn expires_in(secs: u64) -> jiff::Timestamp {
    let at = now_secs().saturating_add(secs.min(i64::MAX as u64 / 2) as i64);
    jiff::Timestamp::from_second(at).unwrap_or(jiff::Timestamp::MAX)
}

pub fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}
