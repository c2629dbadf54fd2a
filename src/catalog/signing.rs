//! The node's ed25519 signing key and the canonical bytes it signs.
//!
//! Canonical form: JSON with object keys sorted, no whitespace, and the `signature`
//! member removed. A client parses the answer, removes `signature`, re-encodes the same
//! way and verifies. The key is created on first start in the data dir (mode 0600) or
//! read from a configured file; it is never logged.

use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signing key file {0}: {1}")]
    Key(String, String),
    #[error("answer has no valid signature: {0}")]
    Invalid(String),
}

pub struct Signer {
    key: SigningKey,
    id: String,
}

/// Short id of a public key: first 8 bytes of its blake3, hex.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&blake3::hash(public.as_bytes()).as_bytes()[..8])
}

impl Signer {
    /// Reads the hex seed at `path`, creating a new random key there if it is missing.
    pub fn load_or_create(path: &Path) -> Result<Signer, SignError> {
        let err = |e: String| SignError::Key(path.display().to_string(), e);
        let seed: [u8; 32] = match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut seed = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut seed)
                    .map_err(|e| err(format!("not 64 hex digits: {e}")))?;
                seed
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                write_private(path, &hex::encode(key.to_bytes()))
                    .map_err(|e| err(e.to_string()))?;
                key.to_bytes()
            }
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Signer::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> Signer {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(&key.verifying_key());
        Signer { key, id }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Adds `key_id` and `signature` members to an answer object.
    pub fn sign(&self, mut answer: Value) -> Value {
        if let Value::Object(m) = &mut answer {
            m.insert("key_id".into(), Value::String(self.id.clone()));
            m.remove("signature");
        }
        let sig = self.key.sign(&canonical(&answer));
        if let Value::Object(m) = &mut answer {
            m.insert(
                "signature".into(),
                Value::String(hex::encode(sig.to_bytes())),
            );
        }
        answer
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Canonical encoding: sorted keys, no whitespace.
pub fn canonical(v: &Value) -> Vec<u8> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
                    out.push(b':');
                    write(&m[*k], out);
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out);
                }
                out.push(b']');
            }
            other => out.extend_from_slice(&serde_json::to_vec(other).unwrap_or_default()),
        }
    }
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

/// Verifies a signed answer against a public key (hex).
pub fn verify(public_hex: &str, answer: &Value) -> Result<(), SignError> {
    let bad = |m: &str| SignError::Invalid(m.to_string());
    let mut pk = [0u8; 32];
    hex::decode_to_slice(public_hex.trim(), &mut pk)
        .map_err(|_| bad("public key is not 64 hex digits"))?;
    let key = VerifyingKey::from_bytes(&pk)
        .map_err(|_| bad("public key is not a valid ed25519 point"))?;
    let sig_hex = answer
        .get("signature")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing signature"))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| bad("signature is not 128 hex digits"))?;
    let mut unsigned = answer.clone();
    if let Value::Object(m) = &mut unsigned {
        m.remove("signature");
    }
    key.verify(&canonical(&unsigned), &Signature::from_bytes(&sig))
        .map_err(|_| bad("signature does not match"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_answers_verify_and_tampering_is_caught() {
        let s = Signer::from_seed([7; 32]);
        let signed = s
            .sign(serde_json::json!({"update": {"version": "1.2.3", "size": 10}, "expires_at": 5}));
        verify(&s.public_hex(), &signed).unwrap();
        let mut tampered = signed.clone();
        tampered["update"]["size"] = serde_json::json!(11);
        assert!(verify(&s.public_hex(), &tampered).is_err());
        let other = Signer::from_seed([8; 32]);
        assert!(verify(&other.public_hex(), &signed).is_err());
    }

    #[test]
    fn canonical_form_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": [1, 2], "c": "x"}}"#).unwrap();
        assert_eq!(canonical(&v), br#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let a = Signer::load_or_create(&path).unwrap();
        let b = Signer::load_or_create(&path).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        std::fs::write(&path, "zz").unwrap();
        assert!(Signer::load_or_create(&path).is_err());
    }
}
