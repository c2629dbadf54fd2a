//! Director answers on the wire: the canonical bytes a director key signs and how a
//! device verifies them.
//!
//! Canonical form: JSON with object keys sorted, no whitespace, and the `signature`
//! member removed. A client parses the answer, removes `signature`, re-encodes the same
//! way and verifies with a director key that root authorises (`key_id` is the key's TUF
//! key id).

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("answer has no valid signature: {0}")]
    Invalid(String),
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
