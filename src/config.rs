//! Typed configuration: built-in defaults → TOML file → `UPDATE_EDGE_*` environment → flags.
//!
//! Every field is documented with its unit and default here and in `config/edge.toml`;
//! unknown keys are rejected with a message that names them, so a typo never silently
//! falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub delta: DeltaConfig,
    pub catalog: CatalogConfig,
    pub tuf: TufConfig,
    pub edge: EdgeConfig,
    pub log: LogConfig,
}

/// `[log]`: log format, the access log, and whose `X-Forwarded-For` to believe.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable lines) or `json` (one object per line, every field a key).
    /// Default `text`. The level comes from `UPDATE_EDGE_LOG` (`info` by default).
    pub format: LogFormat,
    /// One line per request (target `update_edge::access`). Default `true`. The audit
    /// log of operator actions (`update_edge::audit`) is always on.
    pub access: bool,
    /// Addresses or networks of proxies and load balancers in front of this node
    /// (`"10.0.0.0/8"`, `"::1"`): for a request from one, the client is the nearest
    /// address in `X-Forwarded-For` that is not one (logged, and what per-address
    /// limits count). Default empty = the socket peer, the header ignored.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogConfig {
    /// The trusted proxies as networks (validated at load).
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|s| parse_net(s).ok())
            .collect()
    }
}

/// A network (`10.0.0.0/8`) or one address (`192.0.2.1`, `::1`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network (a.b.c.d/n)"))
}

/// `[server]`: sockets, data directory, operator credentials.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (HTTP/1.1 and cleartext HTTP/2). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory holding the RocksDB store. Default `./data`.
    pub data_dir: PathBuf,
    /// Bearer token for operator routes. Default empty = operator routes refused.
    pub admin_token: String,
    /// Bearer token edges present to read this node's change feed (an edge-scoped
    /// credential: it opens nothing else). Default empty = only the admin token reads it.
    pub replication_token: String,
    /// Most connections served at once; a connection past it is answered `503` (with
    /// `Retry-After: 1`) and closed. The open-files limit is raised to allow it (its hard
    /// limit permitting). Default `16384`.
    pub max_connections: usize,
    /// On SIGTERM the node stops accepting and lets requests in flight finish for at
    /// most this long (a download cut then resumes elsewhere with a Range request).
    /// Default `10s`.
    pub drain_timeout: Seconds,
    /// A client must send a request's whole header within this time, and an idle HTTP/1
    /// keep-alive connection is closed after it (slowloris protection). Default `20`.
    pub header_read_timeout: Seconds,
    /// TCP keepalive probes after this much silence (dead peers free their connection);
    /// `0` = off. Default `60`.
    pub tcp_keepalive: Seconds,
    /// HTTP/2 ping interval; a connection whose ping is not answered within the same time
    /// is closed. `0` = off. Default `30`.
    pub h2_keepalive: Seconds,
    /// Concurrent streams per HTTP/2 connection (nginx's default is 128). Default `128`.
    pub h2_max_streams: u32,
    /// Largest upload (`POST /v1/blobs`, a build's payload); a larger one is refused
    /// `413` and nothing of it is kept. Default `64GiB`.
    pub max_upload_bytes: ByteSize,
    /// An upload that sends no byte for this long is aborted `408` (nothing kept), so a
    /// stalled client cannot hold up garbage collection. Default `60`.
    pub upload_idle_timeout: Seconds,
    /// A second listener speaking TLS (HTTPS; HTTP/2 and HTTP/1.1 by ALPN), with the
    /// same routes and limits. Default empty = none.
    pub tls_listen: String,
    /// PEM certificate chain and private key for `tls_listen`; reloaded on SIGHUP and
    /// when either file changes, without dropping connections.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

impl ServerConfig {
    /// `tls_listen` as an address, if set.
    pub fn tls_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.tls_listen.is_empty() {
            return Ok(None);
        }
        self.tls_listen.parse().map(Some).map_err(|e| {
            ConfigError::Invalid(format!("server.tls_listen {:?}: {e}", self.tls_listen))
        })
    }
}

/// `[store]`: chunking and the hot cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Bytes of chunk data kept in memory in front of RocksDB. Default `512MiB`.
    pub cache_size: ByteSize,
    /// Smallest content-defined chunk. Default `64KiB`.
    pub chunk_min: ByteSize,
    /// Average (target) chunk size, a power of two. Default `256KiB`.
    pub chunk_avg: ByteSize,
    /// Largest chunk. Default `1MiB`.
    pub chunk_max: ByteSize,
    /// Edge only: disk budget for chunk data; past it, least-recently-used chunks not
    /// pinned by a ring target are evicted (and refilled on demand). Default `0` = no
    /// limit. An origin holds the only copy, so it refuses a budget.
    pub max_bytes: ByteSize,
    /// Free space kept on the data dir's filesystem: an upload that would leave less
    /// (twice its declared length: the engine writes it to its log and its files) is
    /// refused `507` before a byte is stored, and one that gets there while streaming
    /// is aborted `507`, so the engine itself never runs out. Default `1GiB`.
    pub min_free_bytes: ByteSize,
}

/// `[delta]`: when a delta is worth offering.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaConfig {
    /// A delta is offered only if it is at most this fraction of the zstd-compressed
    /// full payload. Default `0.8`.
    pub worth_it_ratio: f64,
    /// Memory budget for one delta computation. Default `2GiB`.
    pub memory_limit: ByteSize,
    /// On publish, deltas are computed to the new build from this many previous builds
    /// of its kind. A check queues a missing delta only for such a pair (the policy).
    /// Default `3`.
    pub from_previous: usize,
    /// Delta computations running at once (each uses every core). Default `1`.
    pub workers: usize,
    /// zstd level of patch streams. Default `18`.
    pub zstd_level: i32,
}

/// `[catalog]`: update checks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// Seconds a signed check answer stays valid. Default `3600`.
    pub answer_ttl_secs: u64,
    /// A device record (last check: version, ring) is removed this long after the
    /// device was last seen. `0` = kept until `max_devices` pushes it out. Default `180d`.
    pub device_ttl: Seconds,
    /// Device records held at most; past it the least recently seen go first.
    /// Default `10000000`.
    pub max_devices: u64,
    /// Checks per second one client address may make, sustained (IPv6: per /64); more
    /// are answered `429` with `Retry-After`. `0` = no limit. Default `20` (a site of
    /// 50,000 devices behind one NAT address checking hourly uses 14).
    pub check_rate_per_ip: u32,
    /// Checks one address may make at once before the rate applies. Default `200`.
    pub check_burst_per_ip: u32,
}

/// `[tuf]`: the image repository's keys and metadata lifetimes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TufConfig {
    /// Directory of the online keys (`targets.pk8`, `snapshot.pk8`, `timestamp.pk8`,
    /// `director.pk8`) and the public root history (`root/{N}.root.json`), as written by
    /// `update-edge keys init`. A missing file is a start-up error. Default `./keys`.
    pub keys_dir: PathBuf,
    /// The key this node signs check answers with, if not `{keys_dir}/director.pk8`
    /// (an edge's own key from `keys add-director`). Default empty.
    pub director_key: PathBuf,
    /// Lifetime of timestamp.json; re-signed at half of it. Default `1d`.
    pub timestamp_ttl: Seconds,
    /// Lifetime of snapshot.json. Default `7d`.
    pub snapshot_ttl: Seconds,
    /// Lifetime of targets.json. Default `90d`.
    pub targets_ttl: Seconds,
}

/// `[edge]`: the edge role. With `upstream` set the node holds no repository keys,
/// replicates the catalog and TUF metadata from upstream, and fills content on demand.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Base URL of the upstream node (`http://origin:8080`). Default empty = origin role.
    pub upstream: String,
    /// Token presented to upstream's change feed (its `server.replication_token`).
    /// Default empty.
    pub token: String,
    /// A fill that receives no byte for this long fails (on lack of progress, never on
    /// age); the next reader retries it. Default `10s`.
    pub stall_timeout: Seconds,
    /// Chunk fills from upstream at once (bounds fill memory to this many chunks).
    /// Default `16`.
    pub max_fills: usize,
    /// Chunks a download fetches ahead of the one it is sending. Default `8`.
    pub readahead: usize,
    /// Longest wait of one change-feed long-poll. Default `30s`.
    pub poll_wait: Seconds,
    /// Bytes per second for pre-seeding: when a ring's target changes, the edge fetches
    /// that build and the deltas to it from its devices' versions at this rate.
    /// `0` = no pre-seeding. Default `50MiB`.
    pub prefetch_rate: ByteSize,
}

impl EdgeConfig {
    /// True when this node is an edge.
    pub fn is_edge(&self) -> bool {
        !self.upstream.is_empty()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                data_dir: PathBuf::from("./data"),
                admin_token: String::new(),
                replication_token: String::new(),
                max_connections: 16_384,
                header_read_timeout: Seconds(20),
                drain_timeout: Seconds(10),
                tcp_keepalive: Seconds(60),
                h2_keepalive: Seconds(30),
                h2_max_streams: 128,
                max_upload_bytes: ByteSize(64 << 30),
                upload_idle_timeout: Seconds(60),
                tls_listen: String::new(),
                tls_cert: PathBuf::new(),
                tls_key: PathBuf::new(),
            },
            store: StoreConfig {
                cache_size: ByteSize(512 << 20),
                chunk_min: ByteSize(64 << 10),
                chunk_avg: ByteSize(256 << 10),
                chunk_max: ByteSize(1 << 20),
                max_bytes: ByteSize(0),
                min_free_bytes: ByteSize(1 << 30),
            },
            delta: DeltaConfig {
                worth_it_ratio: 0.8,
                memory_limit: ByteSize(2 << 30),
                from_previous: 3,
                workers: 1,
                zstd_level: crate::delta::DEFAULT_LEVEL,
            },
            catalog: CatalogConfig {
                answer_ttl_secs: 3600,
                device_ttl: Seconds(180 * 86_400),
                max_devices: 10_000_000,
                check_rate_per_ip: 20,
                check_burst_per_ip: 200,
            },
            tuf: TufConfig {
                keys_dir: PathBuf::from("./keys"),
                director_key: PathBuf::new(),
                timestamp_ttl: Seconds(86_400),
                snapshot_ttl: Seconds(7 * 86_400),
                targets_ttl: Seconds(90 * 86_400),
            },
            edge: EdgeConfig {
                upstream: String::new(),
                token: String::new(),
                stall_timeout: Seconds(10),
                max_fills: 16,
                readahead: 8,
                poll_wait: Seconds(30),
                prefetch_rate: ByteSize(50 << 20),
            },
            log: LogConfig {
                format: LogFormat::Text,
                access: true,
                trusted_proxies: Vec::new(),
            },
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Config::default().server
    }
}
impl Default for StoreConfig {
    fn default() -> Self {
        Config::default().store
    }
}
impl Default for CatalogConfig {
    fn default() -> Self {
        Config::default().catalog
    }
}
impl Default for TufConfig {
    fn default() -> Self {
        Config::default().tuf
    }
}
impl Default for EdgeConfig {
    fn default() -> Self {
        Config::default().edge
    }
}
impl Default for DeltaConfig {
    fn default() -> Self {
        Config::default().delta
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Config::default().log
    }
}

/// Environment variables that override file values, with the key they set.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("UPDATE_EDGE_LISTEN", "server.listen"),
    ("UPDATE_EDGE_DATA_DIR", "server.data_dir"),
    ("UPDATE_EDGE_ADMIN_TOKEN", "server.admin_token"),
    ("UPDATE_EDGE_CACHE_SIZE", "store.cache_size"),
    ("UPDATE_EDGE_DELTA_WORTH_IT_RATIO", "delta.worth_it_ratio"),
    ("UPDATE_EDGE_TUF_KEYS_DIR", "tuf.keys_dir"),
    ("UPDATE_EDGE_REPLICATION_TOKEN", "server.replication_token"),
    ("UPDATE_EDGE_UPSTREAM", "edge.upstream"),
    ("UPDATE_EDGE_UPSTREAM_TOKEN", "edge.token"),
    ("UPDATE_EDGE_LOG_FORMAT", "log.format"),
    ("UPDATE_EDGE_LOG_ACCESS", "log.access"),
    ("UPDATE_EDGE_LOG_TRUSTED_PROXIES", "log.trusted_proxies"),
];

impl Config {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let env: Vec<(&'static str, String)> = ENV_OVERRIDES
            .iter()
            .filter_map(|(var, _)| std::env::var(var).ok().map(|v| (*var, v)))
            .collect();
        Self::from_parts(&text, file.unwrap_or(Path::new("<none>")), &env)
    }

    /// The director key file this node uses.
    pub fn director_key_path(&self) -> PathBuf {
        if self.tuf.director_key.as_os_str().is_empty() {
            self.tuf.keys_dir.join("director.pk8")
        } else {
            self.tuf.director_key.clone()
        }
    }

    /// Pure core of [`Config::load`]: `text` is the TOML file, `env` the overrides present.
    pub fn from_parts(
        text: &str,
        path: &Path,
        env: &[(&'static str, String)],
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        for (var, value) in env {
            config.apply_env(var, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, var: &'static str, value: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Env { var, message };
        match var {
            "UPDATE_EDGE_LISTEN" => {
                self.server.listen = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "UPDATE_EDGE_DATA_DIR" => self.server.data_dir = PathBuf::from(value),
            "UPDATE_EDGE_TUF_KEYS_DIR" => self.tuf.keys_dir = PathBuf::from(value),
            "UPDATE_EDGE_ADMIN_TOKEN" => self.server.admin_token = value.to_string(),
            "UPDATE_EDGE_REPLICATION_TOKEN" => self.server.replication_token = value.to_string(),
            "UPDATE_EDGE_UPSTREAM" => self.edge.upstream = value.to_string(),
            "UPDATE_EDGE_UPSTREAM_TOKEN" => self.edge.token = value.to_string(),
            "UPDATE_EDGE_CACHE_SIZE" => self.store.cache_size = value.parse().map_err(bad)?,
            "UPDATE_EDGE_LOG_FORMAT" => {
                self.log.format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(bad(format!("{value:?} is not text or json"))),
                }
            }
            "UPDATE_EDGE_LOG_ACCESS" => {
                self.log.access = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("{value:?} is not true or false"))),
                }
            }
            "UPDATE_EDGE_LOG_TRUSTED_PROXIES" => {
                self.log.trusted_proxies = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "UPDATE_EDGE_DELTA_WORTH_IT_RATIO" => {
                self.delta.worth_it_ratio = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for p in &self.log.trusted_proxies {
            parse_net(p).map_err(|e| ConfigError::Invalid(format!("log.trusted_proxies: {e}")))?;
        }
        let s = &self.store;
        let (min, avg, max) = (s.chunk_min.0, s.chunk_avg.0, s.chunk_max.0);
        if !avg.is_power_of_two() {
            return Err(ConfigError::Invalid(format!(
                "store.chunk_avg {avg} must be a power of two"
            )));
        }
        if !(256 <= min && min < avg && avg < max && max <= 64 << 20) {
            return Err(ConfigError::Invalid(format!(
                "store chunk sizes must satisfy 256 <= chunk_min < chunk_avg < chunk_max <= 64MiB (got {min}, {avg}, {max})"
            )));
        }
        if !(1..=22).contains(&self.delta.zstd_level)
            || self.delta.workers == 0
            || self.delta.workers > 64
        {
            return Err(ConfigError::Invalid(
                "delta.zstd_level must be 1..=22 and delta.workers 1..=64".into(),
            ));
        }
        if self.server.tls_addr()?.is_some()
            && (self.server.tls_cert.as_os_str().is_empty()
                || self.server.tls_key.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid(
                "server.tls_listen needs server.tls_cert and server.tls_key (PEM files)".into(),
            ));
        }
        let t = &self.tuf;
        if t.timestamp_ttl.0 < 2
            || t.snapshot_ttl.0 < t.timestamp_ttl.0
            || t.targets_ttl.0 < t.timestamp_ttl.0
        {
            return Err(ConfigError::Invalid(
                "tuf: timestamp_ttl must be at least 2s and snapshot_ttl, targets_ttl at least timestamp_ttl".into(),
            ));
        }
        let e = &self.edge;
        if e.is_edge() {
            let url = url::Url::parse(&e.upstream).map_err(|err| {
                ConfigError::Invalid(format!("edge.upstream {:?}: {err}", e.upstream))
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ConfigError::Invalid(format!(
                    "edge.upstream {:?} must be an http:// or https:// URL",
                    e.upstream
                )));
            }
        }
        if s.max_bytes.0 > 0 && !e.is_edge() {
            return Err(ConfigError::Invalid(
                "store.max_bytes applies to edges only: an origin holds the only copy of its content".into(),
            ));
        }
        if e.stall_timeout.0 == 0 || !(1..=1024).contains(&e.max_fills) || e.readahead > 256 {
            return Err(ConfigError::Invalid(
                "edge: stall_timeout must be at least 1s, max_fills 1..=1024, readahead at most 256"
                    .into(),
            ));
        }
        let sv = &self.server;
        for (key, token) in [
            ("server.admin_token", &sv.admin_token),
            ("server.replication_token", &sv.replication_token),
        ] {
            if !token.is_empty() && token.len() < MIN_TOKEN_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be at least {MIN_TOKEN_BYTES} bytes (a random value, for example `openssl rand -hex 16`), or empty"
                )));
            }
        }
        if sv.max_connections == 0
            || sv.header_read_timeout.0 == 0
            || sv.h2_max_streams == 0
            || sv.max_upload_bytes.0 == 0
            || sv.upload_idle_timeout.0 == 0
        {
            return Err(ConfigError::Invalid(
                "server: max_connections, header_read_timeout, h2_max_streams, max_upload_bytes and upload_idle_timeout must be at least 1"
                    .into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.delta.worth_it_ratio) {
            return Err(ConfigError::Invalid(
                "delta.worth_it_ratio must be in 0..=1".into(),
            ));
        }
        Ok(())
    }
}

/// Shortest operator or replication token accepted: a guessable token on a public
/// address is an open door.
pub const MIN_TOKEN_BYTES: usize = 16;

/// A size in bytes, written in config as an integer or a string like `"256MiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) = number_and_unit(s, "size")?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} overflows"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, ByteSize)
    }
}

/// A config value written as a bare integer (`from_int`) or as text with a unit.
fn int_or_text<'de, D, T>(d: D, from_int: fn(u64) -> T) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(from_int(n)),
        Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// Splits `"64 KiB"` into (64, "KiB"); `what` names the kind of value in the error.
fn number_and_unit<'a>(s: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n = num.parse().map_err(|_| format!("bad {what} {s:?}"))?;
    Ok((n, unit.trim()))
}

/// A duration in whole seconds, written as an integer or `"30s"`, `"15m"`, `"12h"`, `"90d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

impl std::str::FromStr for Seconds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) = number_and_unit(s, "duration")?;
        let mult: u64 = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            other => {
                return Err(format!(
                    "unknown duration unit {other:?} in {s:?} (s, m, h, d)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Seconds)
            .ok_or_else(|| format!("duration {s:?} overflows"))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, Seconds)
    }
}

#[cfg(test)]
mod tests {
    /// The package directory, read when the test runs (cargo sets it): a compile-time
    /// `env!` would keep the path of whichever checkout first built this binary into a
    /// shared target dir, and cargo does not rebuild when only that path changes.
    fn manifest_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
    }

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_parts(text, Path::new("test.toml"), &[])
    }

    #[test]
    fn defaults_are_pinned() {
        let c = Config::default();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.admin_token, "");
        assert_eq!(c.store.cache_size, ByteSize(512 << 20));
        assert_eq!(
            (
                c.store.chunk_min.0,
                c.store.chunk_avg.0,
                c.store.chunk_max.0
            ),
            (64 << 10, 256 << 10, 1 << 20)
        );
        assert_eq!(c.tuf.keys_dir, PathBuf::from("./keys"));
        assert_eq!(
            (c.tuf.timestamp_ttl, c.tuf.snapshot_ttl, c.tuf.targets_ttl),
            (Seconds(86_400), Seconds(604_800), Seconds(7_776_000))
        );
        assert_eq!(
            (
                c.server.max_connections,
                c.server.header_read_timeout,
                c.server.tcp_keepalive,
                c.server.h2_keepalive,
                c.server.h2_max_streams
            ),
            (16_384, Seconds(20), Seconds(60), Seconds(30), 128)
        );
        assert_eq!(
            (c.server.max_upload_bytes, c.server.upload_idle_timeout),
            (ByteSize(64 << 30), Seconds(60))
        );
        assert_eq!(parse("").unwrap(), c);
        // The shipped example states every default.
        let example = std::fs::read_to_string(manifest_dir().join("config/edge.toml")).unwrap();
        assert_eq!(parse(&example).unwrap(), c);
    }

    #[test]
    fn every_shipped_config_file_parses() {
        for entry in std::fs::read_dir(manifest_dir().join("config")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                Config::from_parts(&text, &path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }

    #[test]
    fn a_short_token_is_refused_naming_the_key() {
        for key in ["admin_token", "replication_token"] {
            let e = parse(&format!("[server]\n{key} = \"short-token\"\n")).unwrap_err();
            assert!(e.to_string().contains(&format!("server.{key}")), "{e}");
            let ok = parse(&format!("[server]\n{key} = \"{}\"\n", "x".repeat(16)));
            assert!(ok.is_ok(), "{key}");
        }
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err = parse("[store]\ncache_sise = \"1MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache_sise"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let env = [
            (
                "UPDATE_EDGE_ADMIN_TOKEN",
                "s3cret-from-the-environment".to_string(),
            ),
            ("UPDATE_EDGE_CACHE_SIZE", "1GiB".to_string()),
        ];
        let c = Config::from_parts(
            "[server]\nadmin_token = \"token-from-the-file\"\n",
            Path::new("x"),
            &env,
        )
        .unwrap();
        assert_eq!(c.server.admin_token, "s3cret-from-the-environment");
        assert_eq!(c.store.cache_size, ByteSize(1 << 30));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("2 GB".parse::<ByteSize>().unwrap(), ByteSize(2_000_000_000));
        assert_eq!("17".parse::<ByteSize>().unwrap(), ByteSize(17));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!(parse("[store]\ncache_size = \"lots\"\n").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("90d".parse::<Seconds>().unwrap(), Seconds(90 * 86_400));
        assert_eq!("12h".parse::<Seconds>().unwrap(), Seconds(43_200));
        assert_eq!("5".parse::<Seconds>().unwrap(), Seconds(5));
        assert!("1 fortnight".parse::<Seconds>().is_err());
        assert!(parse("[tuf]\ntimestamp_ttl = \"1s\"\n").is_err());
        assert_eq!(
            parse("[tuf]\ntimestamp_ttl = \"1h\"\n")
                .unwrap()
                .tuf
                .timestamp_ttl,
            Seconds(3600)
        );
    }

    #[test]
    fn inconsistent_chunk_sizes_are_rejected() {
        assert!(parse("[store]\nchunk_avg = \"100KiB\"\n").is_err());
        assert!(parse("[store]\nchunk_min = \"2MiB\"\n").is_err());
    }
}
