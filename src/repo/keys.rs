//! Key files: ed25519 private keys as PKCS#8 v2 DER (the form `tough` and aws-lc read),
//! written once with mode 0600 and never logged. A key is never created implicitly: a
//! missing file is an error naming its path, because a silently new key would make every
//! device in the field reject the node (or, unpinned, accept anything).

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};

use super::RepoError;

/// An ed25519 key pair with its TUF key (as listed in root.json) and key id.
pub struct KeyPair {
    pair: Ed25519KeyPair,
    tuf: Key,
    id: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", self.id)
    }
}

impl KeyPair {
    /// Parses PKCS#8 DER bytes.
    pub fn from_pkcs8(der: &[u8]) -> Result<KeyPair, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| format!("not an ed25519 PKCS#8 key: {e}"))?;
        let tuf = tuf_key(pair.public_key().as_ref());
        let id = key_id(&tuf);
        Ok(KeyPair { pair, tuf, id })
    }

    /// Reads a key file; a missing or unreadable file is an error naming the path.
    pub fn load(path: &Path) -> Result<KeyPair, RepoError> {
        let der = std::fs::read(path).map_err(|e| RepoError::KeyFile {
            path: path.to_path_buf(),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "missing (create keys with `update-edge keys init`; a key is never created implicitly)".into()
            } else {
                e.to_string()
            },
        })?;
        KeyPair::from_pkcs8(&der).map_err(|message| RepoError::KeyFile {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Creates a new random key and writes it to `path` (which must not exist).
    pub fn create(path: &Path) -> Result<KeyPair, RepoError> {
        let err = |message: String| RepoError::KeyFile {
            path: path.to_path_buf(),
            message,
        };
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| err(format!("generating: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        write_private(path, doc.as_ref()).map_err(|e| err(e.to_string()))?;
        KeyPair::from_pkcs8(doc.as_ref()).map_err(err)
    }

    /// TUF key id (hex sha256 of the key's canonical JSON).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn tuf_key(&self) -> &Key {
        &self.tuf
    }

    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// The TUF form of an ed25519 public key.
pub fn tuf_key(public: &[u8]) -> Key {
    Key::Ed25519 {
        keyval: Ed25519Key {
            public: public.to_vec().into(),
            _extra: HashMap::new(),
        },
        scheme: Ed25519Scheme::Ed25519,
        _extra: HashMap::new(),
    }
}

/// TUF key id of a key, hex.
pub fn key_id(key: &Key) -> String {
    key.key_id()
        .map(|d| hex::encode(d.as_ref()))
        .unwrap_or_default()
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_reloads_with_the_same_id_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/targets.pk8");
        let a = KeyPair::create(&path).unwrap();
        let b = KeyPair::load(&path).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id().len(), 64);
        assert!(
            KeyPair::create(&path).is_err(),
            "an existing key file was overwritten"
        );
    }

    #[test]
    fn missing_key_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.pk8");
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("director.pk8") && err.contains("missing"),
            "{err}"
        );
        assert!(!path.exists());
        std::fs::write(&path, b"junk").unwrap();
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(err.contains("PKCS#8"), "{err}");
    }
}
