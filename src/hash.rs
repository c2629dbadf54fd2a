//! The content address: a blake3 digest, parsed from and printed as 64 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

/// A blake3 digest of some bytes (a chunk, a blob, a patch).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

/// Why a string is not a content address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a blake3 hash (want 64 lowercase hex digits): {0:?}")]
pub struct BadHash(pub String);

impl Hash {
    /// Hash of `data` in one go.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a hash from exactly 32 bytes (as stored in keys and manifests).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Hash)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// First 12 hex digits, for log fields.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl FromStr for Hash {
    type Err = BadHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Lowercase only: one spelling per address, so one URL per blob for every HTTP
        // cache in front of a node.
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(BadHash(s.chars().take(80).collect()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadHash(s.to_string()))?;
        Ok(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let h = Hash::of(b"abc");
        assert_eq!(h.to_hex().parse::<Hash>().unwrap(), h);
        assert_eq!(h.to_hex(), blake3::hash(b"abc").to_hex().as_str());
    }

    #[test]
    fn wrong_length_or_non_hex_is_rejected() {
        assert!("abc".parse::<Hash>().is_err());
        assert!("g".repeat(64).parse::<Hash>().is_err());
        assert!("a".repeat(64).parse::<Hash>().is_ok());
        // Uppercase would give a second URL per blob (two cache entries for one object).
        assert!("A".repeat(64).parse::<Hash>().is_err());
        let upper = Hash::of(b"abc").to_hex().to_uppercase();
        assert!(upper.parse::<Hash>().is_err());
    }
}
