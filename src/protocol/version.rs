//! Build versions: dotted numeric components (`10.0.17763.1234`), ordered numerically,
//! with a key encoding whose byte order is the version order. Pure logic.

use std::cmp::Ordering;
use std::fmt;

/// Most components a version may have.
pub const MAX_COMPONENTS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(Vec<u64>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a dotted numeric version (like 10.0.17763.1234): {0:?}")]
pub struct BadVersion(pub String);

impl std::str::FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Version, BadVersion> {
        let bad = || BadVersion(s.chars().take(64).collect());
        let parts: Vec<u64> = s
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 19 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    Err(bad())
                } else {
                    p.parse().map_err(|_| bad())
                }
            })
            .collect::<Result<_, _>>()?;
        if parts.is_empty() || parts.len() > MAX_COMPONENTS {
            return Err(bad());
        }
        Ok(Version(parts))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&s.join("."))
    }
}

impl Ord for Version {
    /// Component by component; a version that is a prefix of another sorts first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Version {
    /// Order-preserving key bytes: per component `0x01` + 8 bytes big-endian, then `0x00`.
    pub fn key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 9 + 1);
        for c in &self.0 {
            out.push(1);
            out.extend_from_slice(&c.to_be_bytes());
        }
        out.push(0);
        out
    }

    pub fn from_key(key: &[u8]) -> Option<Version> {
        let mut parts = Vec::new();
        let mut at = 0;
        loop {
            match key.get(at)? {
                0 => return (at + 1 == key.len() && !parts.is_empty()).then_some(Version(parts)),
                1 => {
                    let c = key.get(at + 1..at + 9)?;
                    parts.push(u64::from_be_bytes(c.try_into().ok()?));
                    at += 9;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(v("10.0.17763.1234") > v("10.0.17763.999"));
        assert!(v("2") < v("10"));
        assert!(v("1.2") < v("1.2.0"));
        assert_eq!(v("10.0.1").to_string(), "10.0.1");
        for bad in [
            "",
            "1..2",
            "a.b",
            "1.2.",
            "-1",
            "1.2.3.4.5.6.7.8.9",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn key_order_is_version_order(a in proptest::collection::vec(any::<u64>(), 1..5), b in proptest::collection::vec(any::<u64>(), 1..5)) {
            let (va, vb) = (Version(a), Version(b));
            prop_assert_eq!(va.key().cmp(&vb.key()), va.cmp(&vb));
            prop_assert_eq!(Version::from_key(&va.key()), Some(va));
        }
    }
}
