//! Catalog records as stored (JSON values in their column families) and as listed.

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// SMBIOS-like hardware identity; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub hardware: Hardware,
    pub created_at: u64,
}

/// Payload kinds a build can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Os,
    Driver,
    App,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Os => "os",
            Kind::Driver => "driver",
            Kind::App => "app",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "os" => Some(Kind::Os),
            "driver" => Some(Kind::Driver),
            "app" => Some(Kind::App),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub product: String,
    pub version: String,
    pub blob: Hash,
    pub size: u64,
    pub kind: Kind,
    #[serde(default)]
    pub notes: String,
    pub created_at: u64,
    /// SHA-256 of the payload, hex (the hash TUF clients check). Absent only on records
    /// written before it existed; filled in when the repository is next signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// blake3 of the payload's chunk list as served (`/v1/blobs/{hash}/chunks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_blake3: Option<Hash>,
}

impl Build {
    /// The build's TUF target name: `{product}/{version}/{kind}`.
    pub fn target_name(&self) -> String {
        format!("{}/{}/{}", self.product, self.version, self.kind.as_str())
    }
}

/// Default rings, in order.
pub const DEFAULT_RINGS: [&str; 3] = ["preview", "early-adopter", "general"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ring {
    pub name: String,
    /// Position in the ring order (preview = 0 …); new custom rings go after the defaults.
    pub order: u32,
    pub version: String,
    /// 0–100 with two decimals.
    pub percent: f64,
    pub paused: bool,
    pub updated_at: u64,
}

/// State of a (from, to) delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaStatus {
    Ready,
    /// Computed but larger than the worth-it rule allows: never offered.
    NotWorthIt,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaRecord {
    pub from: Hash,
    pub to: Hash,
    pub status: DeltaStatus,
    pub delta: Option<Hash>,
    pub delta_size: u64,
    pub to_size: u64,
    pub zstd_full_size: u64,
    pub compute_seconds: f64,
    pub created_at: u64,
    /// Failed computations of this pair so far (a failed pair is retried with backoff).
    #[serde(default)]
    pub attempts: u32,
}

impl DeltaRecord {
    /// A failed pair may be computed again once its backoff has passed: 1 min after the
    /// first failure, doubling per failure, at most a day.
    pub fn retry_due(&self, now: u64) -> bool {
        if self.status != DeltaStatus::Failed {
            return false;
        }
        let backoff = 60u64 << self.attempts.saturating_sub(1).min(11);
        now >= self.created_at.saturating_add(backoff.min(86_400))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub version: String,
    pub ring: String,
    pub last_seen: u64,
    /// `update`, `none`.
    pub result: String,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Product slugs and ring names: 1–64 of `[a-z0-9._-]`, starting alphanumeric.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_delta_is_retried_after_a_doubling_backoff_capped_at_a_day() {
        let h = crate::hash::Hash::of(b"x");
        let rec = |status, attempts| DeltaRecord {
            from: h,
            to: h,
            status,
            delta: None,
            delta_size: 0,
            to_size: 0,
            zstd_full_size: 0,
            compute_seconds: 0.0,
            created_at: 1000,
            attempts,
        };
        let failed = |attempts| rec(DeltaStatus::Failed, attempts);
        assert!(!failed(1).retry_due(1059));
        assert!(failed(1).retry_due(1060));
        assert!(!failed(3).retry_due(1239));
        assert!(failed(3).retry_due(1240));
        assert!(!failed(40).retry_due(1000 + 86_399));
        assert!(failed(40).retry_due(1000 + 86_400));
        // Records from before attempts were counted: the first backoff.
        assert!(failed(0).retry_due(1060));
        assert!(!rec(DeltaStatus::Ready, 1).retry_due(u64::MAX));
        assert!(!rec(DeltaStatus::NotWorthIt, 1).retry_due(u64::MAX));
    }
}
