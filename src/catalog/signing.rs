//! The director's signer: adds `key_id` and `signature` to check answers (canonical form
//! and verification in [`crate::protocol::answer`]). The key comes from the
//! repository's key files; it is never logged.

use std::sync::Arc;

use serde_json::Value;

pub use crate::protocol::answer::{canonical, verify, SignError};
use crate::repo::keys::KeyPair;

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
