//! Scenario files (`loadtest/scenarios/*.toml`): what the simulated fleet does.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `POST /v1/check` only.
    Checks,
    /// Check, then download the offered artifact in Range pieces.
    Downloads,
    /// Download, drop the connection mid-way, resume with a Range request.
    Resume,
    /// Many concurrent downloads, each throttled to a low rate.
    Slow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub kind: Kind,
    /// Arrivals per second (open loop).
    pub rate: f64,
    pub duration_secs: u64,
    pub max_requests: u64,
    /// Distinct device ids spread over the run.
    #[serde(default = "default_devices")]
    pub devices: u64,
    /// Keep-alive connections kept per host.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Outstanding device sessions beyond which an arrival counts as an error.
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Share of devices that can use the delta (they hold the previous build).
    #[serde(default)]
    pub delta_share: f64,
    #[serde(default = "default_piece")]
    pub piece_bytes: u64,
    /// Share of downloads whose bytes are blake3-verified end to end.
    #[serde(default)]
    pub verify_sample: f64,
    /// Throttle per download (slow-clients).
    #[serde(default)]
    pub per_connection_bytes_per_sec: u64,
}

fn default_devices() -> u64 {
    1_000_000
}
fn default_connections() -> usize {
    64
}
fn default_inflight() -> usize {
    4096
}
fn default_piece() -> u64 {
    1 << 20
}

impl Scenario {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}
