//! Director answers: the canonical bytes a director key signs and how a device verifies
//! them.
//!
//! Canonical form: JSON with object keys sorted, no whitespace, and the `signature`
//! member removed. A client parses the answer, removes `signature`, re-encodes the same
//! way and verifies with a director key that root authorises (`key_id` is the key's TUF
//! key id). The key comes from the repository's key files; it is never logged.

use std::sync::Arc;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;

use crate::repo::keys::KeyPair;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("answer has no valid signature: {0}")]
    Invalid(String),
}

/// Signs check answers with the node's director key.
pub struct Signer {
    key: Arc<KeyPair>,
}

impl Signer {
    pub fn new(key: Arc<KeyPair>) -> Signer {
        Signer { key }
    }

    /// TUF key id of the director key.
    pub fn id(&self) -> &str {
        self.key.id()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.public())
    }

    /// Adds `key_id` and `signature` members to an answer object.
    pub fn sign(&self, mut answer: Value) -> Value {
        if let Value::Object(m) = &mut answer {
            m.insert("key_id".into(), Value::String(self.key.id().to_string()));
            m.remove("signature");
        }
        let sig = self.key.sign(&canonical(&answer));
        if let Value::Object(m) = &mut answer {
            m.insert("signature".into(), Value::String(hex::encode(sig)));
        }
        answer
    }
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

    fn signer(dir: &std::path::Path, name: &str) -> Signer {
        Signer::new(Arc::new(KeyPair::create(&dir.join(name)).unwrap()))
    }

    #[test]
    fn signed_answers_verify_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path(), "a.pk8");
        let signed = s
            .sign(serde_json::json!({"update": {"version": "1.2.3", "size": 10}, "expires_at": 5}));
        verify(&s.public_hex(), &signed).unwrap();
        let mut tampered = signed.clone();
        tampered["update"]["size"] = serde_json::json!(11);
        assert!(verify(&s.public_hex(), &tampered).is_err());
        let other = signer(dir.path(), "b.pk8");
        assert!(verify(&other.public_hex(), &signed).is_err());
    }

    #[test]
    fn canonical_form_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": [1, 2], "c": "x"}}"#).unwrap();
        assert_eq!(canonical(&v), br#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }
}
