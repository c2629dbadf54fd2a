//! Typed configuration: built-in defaults → TOML file → `UPDATE_EDGE_*` environment → flags.
//!
//! Every field is documented with its unit and default here and in `config/edge.toml`;
//! unknown keys are rejected with a message that names them, so a typo never silently
//! falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    Env { var: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub delta: DeltaConfig,
    pub catalog: CatalogConfig,
    pub tuf: TufConfig,
    pub edge: EdgeConfig,
    pub origin: OriginConfig,
    pub log: LogConfig,
}

/// `[log]`: log format, the access log, and whose `X-Forwarded-For` to believe.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
    /// Where `POST /v1/admin/backup` writes checkpoints (one new directory each, named
    /// by time). On the data directory's filesystem they are hard links, so nearly free.
    /// Default empty = online backups refused (the offline `update-edge backup` works).
    pub backup_dir: PathBuf,
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
    /// A read that misses the cache (a chunk, or the 16 KiB groups of one that a range
    /// needs) runs on the serving thread, as nginx reads without `aio threads`, instead
    /// of via the blocking pool: the hop there and back costs more than a read from the
    /// page cache (the chunk's stored value, up to 1 MiB, is copied and what is served
    /// of it hashed: about 0.4 ms for 1 MiB). Turn off where a read can wait long on
    /// the disk (network block storage): a serving thread waits that long. Default
    /// `true`.
    pub inline_reads: bool,
    /// RocksDB reads its files through memory maps instead of `pread`: a chunk read
    /// from the page cache is copied once instead of twice (cold 4 KiB ranges: 17 %
    /// more requests per CPU-second; whole files 8 % less CPU per GiB). The price, as
    /// with every mmap-based store (Varnish's file storage, Prometheus' TSDB): a disk
    /// that fails a read stops the process (`SIGBUS`) instead of failing one request,
    /// and the mapped pages count in the process's RSS (they are page cache, reclaimed
    /// as such). Turn off on disks known to return read errors. Default `true`.
    pub mmap_reads: bool,
}

/// `[delta]`: when a delta is worth offering.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
    /// Where content (chunks and manifests) comes from when it is not upstream itself:
    /// `s3://BUCKET`, the origin's bucket (`[edge.s3]` says how to reach it), so the
    /// origin is out of the download path; the catalog still replicates from
    /// `upstream`. Default empty = content from `upstream`.
    pub upstream_content: String,
    /// `[edge.s3]`: how to reach the bucket `upstream_content` names (its `bucket` key,
    /// if set, must be that name; credentials need read access only).
    pub s3: S3Config,
}

/// `[origin]`: where an origin keeps its durable copy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    pub s3: S3Config,
}

/// `[origin.s3]`: an S3-compatible bucket as the origin of record (AWS S3, Ceph RGW,
/// MinIO, Garage). Every published chunk, blob manifest and catalog snapshot is written
/// there before the publish is acknowledged; chunks missing locally are read back from
/// it. Credentials come from `access_key_id`/`secret_access_key` (or
/// `UPDATE_EDGE_ORIGIN_S3_SECRET_ACCESS_KEY_FILE`), else the standard `AWS_*`
/// environment variables; they are never logged.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name. Default empty = no bucket.
    pub bucket: String,
    /// Endpoint URL (`http://127.0.0.1:3900` for Garage); empty = AWS for `region`.
    pub endpoint: String,
    /// Region (`garage` for Garage's default). Default `us-east-1`.
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as Garage and MinIO need by default;
    /// false = virtual-hosted (`bucket.endpoint/key`). Default `true`.
    pub path_style: bool,
    /// Key prefix of every object this node writes (`fleet-a/`). Default empty.
    pub prefix: String,
    /// Access key id. Default empty = `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// Secret key (masked by `config show`). Default empty = `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Requests to the bucket at once. Default `16`.
    pub max_concurrency: usize,
    /// Retries of a request that failed with a 5xx or a timeout (exponential backoff).
    /// Default `5`.
    pub max_retries: usize,
    /// One request's timeout. Default `30s`.
    pub timeout: Seconds,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            path_style: true,
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            max_concurrency: 16,
            max_retries: 5,
            timeout: Seconds(30),
        }
    }
}

impl S3Config {
    /// True when a bucket is configured.
    pub fn enabled(&self) -> bool {
        !self.bucket.is_empty()
    }

    /// Checks the settings of a configured bucket; `section` names it in messages.
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if !self.endpoint.is_empty() {
            let url = url::Url::parse(&self.endpoint).map_err(|err| {
                ConfigError::Invalid(format!("{section}.endpoint {:?}: {err}", self.endpoint))
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ConfigError::Invalid(format!(
                    "{section}.endpoint {:?} must be an http:// or https:// URL",
                    self.endpoint
                )));
            }
        }
        if !(1..=256).contains(&self.max_concurrency) || self.timeout.0 == 0 {
            return Err(ConfigError::Invalid(format!(
                "{section}: max_concurrency must be 1..=256 and timeout at least 1s"
            )));
        }
        if self.access_key_id.is_empty() != self.secret_access_key.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{section}: set both access_key_id and secret_access_key, or neither (then AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )));
        }
        Ok(())
    }
}

impl EdgeConfig {
    /// True when this node is an edge.
    pub fn is_edge(&self) -> bool {
        !self.upstream.is_empty()
    }

    /// The bucket content comes from (`upstream_content`), with its connection settings.
    pub fn content_bucket(&self) -> Option<S3Config> {
        let name = self.upstream_content.strip_prefix("s3://")?;
        Some(S3Config {
            bucket: name.trim_end_matches('/').to_string(),
            ..self.s3.clone()
        })
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
                backup_dir: PathBuf::new(),
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
                inline_reads: true,
                mmap_reads: true,
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
                upstream_content: String::new(),
                s3: S3Config::default(),
            },
            origin: OriginConfig::default(),
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

/// The sections of the file; `UPDATE_EDGE_<SECTION>_<KEY>` sets `<section>.<key>`.
/// A nested section's variables join its path with `_` (`UPDATE_EDGE_ORIGIN_S3_BUCKET`).
pub const SECTIONS: [&str; 9] = [
    "server",
    "store",
    "delta",
    "catalog",
    "tuf",
    "edge.s3",
    "edge",
    "origin.s3",
    "log",
];

/// The table at dotted `path` (`origin.s3`) in `t`.
fn table_at<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Table> {
    path.split('.')
        .try_fold(t, |t, name| t.get(name).and_then(|v| v.as_table()))
}

/// The table at dotted `path` in `t`, made if absent.
fn table_at_mut<'a>(t: &'a mut toml::Table, path: &str) -> Option<&'a mut toml::Table> {
    path.split('.').try_fold(t, |t, name| {
        t.entry(name)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
    })
}

/// Shorter names that set a key too (they came first and stay).
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("UPDATE_EDGE_LISTEN", "server.listen"),
    ("UPDATE_EDGE_DATA_DIR", "server.data_dir"),
    ("UPDATE_EDGE_ADMIN_TOKEN", "server.admin_token"),
    ("UPDATE_EDGE_REPLICATION_TOKEN", "server.replication_token"),
    ("UPDATE_EDGE_CACHE_SIZE", "store.cache_size"),
    ("UPDATE_EDGE_UPSTREAM", "edge.upstream"),
    ("UPDATE_EDGE_UPSTREAM_TOKEN", "edge.token"),
];

/// What `config show` prints for a secret that is set.
pub const MASK: &str = "(set; not shown)";

/// Keys whose values are secrets: masked by `config show`, never logged.
pub const SECRET_KEYS: [&str; 5] = [
    "server.admin_token",
    "server.replication_token",
    "edge.token",
    "edge.s3.secret_access_key",
    "origin.s3.secret_access_key",
];

/// What an environment variable sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvKey {
    pub section: String,
    pub key: String,
    /// `…_FILE`: the value is the path of a file holding it (secrets).
    pub from_file: bool,
}

/// Every key there is, by section (from the defaults).
fn known_keys() -> toml::Table {
    toml::Table::try_from(Config::default()).unwrap_or_default()
}

/// The key `var` sets, `None` for a variable that is not configuration
/// (`UPDATE_EDGE_LOG`, the level filter; tools' variables). A variable naming a section
/// but no key of it is an error, so a typo is never silently ignored.
pub fn env_key(var: &str) -> Result<Option<EnvKey>, ConfigError> {
    let known = known_keys();
    let has = |sec: &str, key: &str| {
        table_at(&known, sec).is_some_and(|t| t.get(key).is_some_and(|v| !v.is_table()))
    };
    let (name, from_file) = match var.strip_suffix("_FILE") {
        Some(n) => (n, true),
        None => (var, false),
    };
    if let Some((_, target)) = ENV_ALIASES.iter().find(|(alias, _)| *alias == name) {
        let (section, key) = target.split_once('.').unwrap_or((target, ""));
        return Ok(Some(EnvKey {
            section: section.into(),
            key: key.into(),
            from_file,
        }));
    }
    let Some(rest) = var.strip_prefix("UPDATE_EDGE_") else {
        return Ok(None);
    };
    for section in SECTIONS {
        let Some(key) = rest
            .strip_prefix(&section.replace('.', "_").to_ascii_uppercase())
            .and_then(|k| k.strip_prefix('_'))
        else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if has(section, &key) {
            return Ok(Some(EnvKey {
                section: section.into(),
                key,
                from_file: false,
            }));
        }
        if let Some(k) = key.strip_suffix("_file").filter(|k| has(section, k)) {
            return Ok(Some(EnvKey {
                section: section.into(),
                key: k.into(),
                from_file: true,
            }));
        }
        let keys: Vec<&String> = table_at(&known, section)
            .map(|t| {
                t.iter()
                    .filter(|(_, v)| !v.is_table())
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        return Err(ConfigError::Env {
            var: var.to_string(),
            message: format!("[{section}] has no key {key:?} (keys: {keys:?})"),
        });
    }
    Ok(None)
}

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
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("UPDATE_EDGE_"))
            .collect();
        // Aliases first, so the full name wins when both are set.
        env.sort_by_key(|(k, _)| !ENV_ALIASES.iter().any(|(a, _)| k.starts_with(a)));
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

    /// Pure core of [`Config::load`]: `text` is the TOML file, `env` the process's
    /// `UPDATE_EDGE_*` variables (those that are not configuration are ignored).
    pub fn from_parts(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        // The file alone first, so its errors name the file.
        let mut config: Config = table.clone().try_into().map_err(parse_err)?;
        for (var, value) in env {
            let Some(k) = env_key(var)? else {
                continue;
            };
            let bad = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            let candidates = if k.from_file {
                let text = std::fs::read_to_string(value)
                    .map_err(|e| bad(format!("reading {value}: {e}")))?;
                vec![toml::Value::String(
                    text.trim_end_matches(['\n', '\r']).to_string(),
                )]
            } else {
                // As TOML when it is a TOML value (`100`, `true`, `["10.0.0.0/8"]`), else
                // as text (`0.0.0.0:8080`, `1GiB`, a token).
                let typed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"));
                typed
                    .into_iter()
                    .chain([toml::Value::String(value.clone())])
                    .collect()
            };
            let mut last = String::new();
            let mut applied = false;
            for candidate in candidates {
                let mut next = table.clone();
                if let Some(t) = table_at_mut(&mut next, &k.section) {
                    t.insert(k.key.clone(), candidate);
                }
                match next.clone().try_into::<Config>() {
                    Ok(c) => {
                        (table, config, applied) = (next, c, true);
                        break;
                    }
                    Err(e) => last = e.message().to_string(),
                }
            }
            if !applied {
                return Err(bad(format!("{}.{}: {last}", k.section, k.key)));
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML, secrets replaced by [`MASK`] (`update-edge config show`).
    pub fn to_masked_toml(&self) -> String {
        let mut t = toml::Table::try_from(self).unwrap_or_default();
        for key in SECRET_KEYS {
            let (section, name) = key.rsplit_once('.').unwrap_or((key, ""));
            if let Some(v) = table_at_mut(&mut t, section).and_then(|s| s.get_mut(name)) {
                if v.as_str().is_some_and(|s| !s.is_empty()) {
                    *v = toml::Value::String(MASK.into());
                }
            }
        }
        toml::to_string_pretty(&t).unwrap_or_default()
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
        if self.origin.s3.enabled() && e.is_edge() {
            return Err(ConfigError::Invalid(
                "origin.s3 is an origin's bucket; an edge names the bucket it reads in edge.upstream_content".into(),
            ));
        }
        self.origin.s3.validate("origin.s3")?;
        if !e.upstream_content.is_empty() {
            let name = e.upstream_content.strip_prefix("s3://").unwrap_or("");
            if !e.is_edge() || name.is_empty() || name.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "edge.upstream_content {:?} must be s3://BUCKET, on an edge (edge.upstream set)",
                    e.upstream_content
                )));
            }
            if !e.s3.bucket.is_empty() && e.s3.bucket != name {
                return Err(ConfigError::Invalid(format!(
                    "edge.s3.bucket {:?} is not the bucket edge.upstream_content names ({name:?})",
                    e.s3.bucket
                )));
            }
            if let Some(b) = e.content_bucket() {
                b.validate("edge.s3")?;
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

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
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

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
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
    fn the_example_file_and_the_readme_table_name_every_key() {
        let example: toml::Table = toml::from_str(
            &std::fs::read_to_string(manifest_dir().join("config/edge.toml")).unwrap(),
        )
        .unwrap();
        let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
        let mut missing = Vec::new();
        let known = known_keys();
        for section in SECTIONS {
            let keys = table_at(&known, section).unwrap();
            let listed = table_at(&example, section)
                .unwrap_or_else(|| panic!("config/edge.toml lacks [{section}]"));
            let leaves = |t: &toml::Table| -> Vec<String> {
                let mut k: Vec<String> = t
                    .iter()
                    .filter(|(_, v)| !v.is_table())
                    .map(|(k, _)| k.clone())
                    .collect();
                k.sort();
                k
            };
            let (want, have) = (leaves(keys), leaves(listed));
            assert_eq!(
                have, want,
                "config/edge.toml [{section}] must list exactly the keys"
            );
            for key in &want {
                let full = format!("`{section}.{key}`");
                let in_row = readme
                    .lines()
                    .filter(|l| l.starts_with(&format!("| `{section}.")))
                    .any(|l| l.contains(&format!("`{key}`")));
                if !(readme.contains(&full) || in_row) {
                    missing.push(full);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "README's configuration table lacks {missing:?}"
        );
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

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_key_can_be_set_from_the_environment_and_a_typo_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "token-from-a-secret-file-0123\n").unwrap();
        let c = Config::from_parts(
            "[server]\nmax_connections = 5\n",
            Path::new("x"),
            &env(&[
                ("UPDATE_EDGE_SERVER_MAX_CONNECTIONS", "100"),
                ("UPDATE_EDGE_SERVER_LISTEN", "0.0.0.0:9000"),
                ("UPDATE_EDGE_STORE_MIN_FREE_BYTES", "10GiB"),
                ("UPDATE_EDGE_STORE_INLINE_READS", "false"),
                ("UPDATE_EDGE_STORE_MMAP_READS", "false"),
                ("UPDATE_EDGE_TUF_TIMESTAMP_TTL", "2h"),
                ("UPDATE_EDGE_DELTA_WORTH_IT_RATIO", "0.5"),
                ("UPDATE_EDGE_LOG_ACCESS", "false"),
                (
                    "UPDATE_EDGE_LOG_TRUSTED_PROXIES",
                    "[\"10.0.0.0/8\", \"::1\"]",
                ),
                (
                    "UPDATE_EDGE_SERVER_ADMIN_TOKEN_FILE",
                    secret.to_str().unwrap(),
                ),
                // A token of digits stays text.
                (
                    "UPDATE_EDGE_SERVER_REPLICATION_TOKEN",
                    "12345678901234567890",
                ),
                // Not configuration: ignored.
                ("UPDATE_EDGE_LOG", "debug"),
                ("UPDATE_EDGE_REQUIRE_TOOLS", "1"),
                // A nested section.
                ("UPDATE_EDGE_ORIGIN_S3_BUCKET", "fleet"),
                ("UPDATE_EDGE_ORIGIN_S3_PATH_STYLE", "false"),
                ("UPDATE_EDGE_ORIGIN_S3_ACCESS_KEY_ID", "GK0123"),
                (
                    "UPDATE_EDGE_ORIGIN_S3_SECRET_ACCESS_KEY_FILE",
                    secret.to_str().unwrap(),
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.origin.s3.bucket, "fleet");
        assert!(!c.origin.s3.path_style);
        assert_eq!(
            c.origin.s3.secret_access_key,
            "token-from-a-secret-file-0123"
        );
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("token-from-a-secret") && shown.contains("[origin.s3]"),
            "{shown}"
        );
        let nested_typo = Config::from_parts(
            "",
            Path::new("x"),
            &env(&[("UPDATE_EDGE_ORIGIN_S3_BUKET", "x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(nested_typo.contains("buket"), "{nested_typo}");
        assert_eq!(c.server.max_connections, 100);
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.store.min_free_bytes, ByteSize(10 << 30));
        assert!(!c.store.inline_reads);
        assert!(!c.store.mmap_reads);
        assert_eq!(c.tuf.timestamp_ttl, Seconds(7200));
        assert_eq!(c.delta.worth_it_ratio, 0.5);
        assert!(!c.log.access);
        assert_eq!(c.log.trusted_proxies, ["10.0.0.0/8", "::1"]);
        assert_eq!(c.server.admin_token, "token-from-a-secret-file-0123");
        assert_eq!(c.server.replication_token, "12345678901234567890");
        // Every key the defaults have maps from its variable, and every section of the
        // defaults is one the variables know.
        let known = known_keys();
        let mut seen = 0;
        for section in SECTIONS {
            for (key, v) in table_at(&known, section).unwrap() {
                if v.is_table() {
                    continue;
                }
                seen += 1;
                let var = format!(
                    "UPDATE_EDGE_{}_{}",
                    section.replace('.', "_").to_uppercase(),
                    key.to_uppercase()
                );
                let k = env_key(&var).unwrap().unwrap_or_else(|| panic!("{var}"));
                assert_eq!(
                    (k.section.as_str(), k.key.as_str(), k.from_file),
                    (section, key.as_str(), false)
                );
            }
        }
        let all = |t: &toml::Table| -> usize {
            fn count(t: &toml::Table) -> usize {
                t.values().map(|v| v.as_table().map_or(1, count)).sum()
            }
            count(t)
        };
        assert_eq!(
            seen,
            all(&known),
            "a section of the defaults is not in SECTIONS"
        );
        let typo = Config::from_parts(
            "",
            Path::new("x"),
            &env(&[("UPDATE_EDGE_SERVER_LISTN", "0.0.0.0:1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            typo.contains("UPDATE_EDGE_SERVER_LISTN") && typo.contains("listn"),
            "{typo}"
        );
        let wrong = Config::from_parts(
            "",
            Path::new("x"),
            &env(&[("UPDATE_EDGE_SERVER_MAX_CONNECTIONS", "many")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            wrong.contains("UPDATE_EDGE_SERVER_MAX_CONNECTIONS"),
            "{wrong}"
        );
        let missing = Config::from_parts(
            "",
            Path::new("x"),
            &env(&[("UPDATE_EDGE_EDGE_TOKEN_FILE", "/nonexistent/token")]),
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("/nonexistent/token"), "{missing}");
    }

    #[test]
    fn the_shown_config_masks_secrets_and_reads_back_as_the_same_config() {
        let c = Config::from_parts(
            "",
            Path::new("x"),
            &env(&[("UPDATE_EDGE_ADMIN_TOKEN", "s3cret-admin-token-000")]),
        )
        .unwrap();
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("s3cret") && shown.contains(&format!("admin_token = \"{MASK}\"")),
            "{shown}"
        );
        let back = Config::from_parts(&shown, Path::new("shown"), &[]).unwrap();
        assert_eq!(back.server.admin_token, MASK);
        assert_eq!(
            Config {
                server: ServerConfig {
                    admin_token: String::new(),
                    ..back.server
                },
                ..back
            },
            Config::default()
        );
    }

    #[test]
    fn env_overrides_file() {
        let env = env(&[
            ("UPDATE_EDGE_ADMIN_TOKEN", "s3cret-from-the-environment"),
            ("UPDATE_EDGE_CACHE_SIZE", "1GiB"),
        ]);
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
