//! The node's one Prometheus registry and the handles each component records into.
//!
//! Built once at startup and passed in (never global). Labels stay low-cardinality:
//! route templates, status classes and artifact kinds, never hashes or device ids.

mod process;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

pub use process::{EngineSource, EngineStat, ProcessStats};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Request latency buckets: 0.5 ms .. ~16 s, doubling (time to response head).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096, 8.192, 16.384,
];

/// Whole-response buckets: 1 ms .. ~70 min, ×4 (a 4 GiB image over a slow link takes
/// minutes).
pub const TRANSFER_BUCKETS: [f64; 12] = [
    0.001, 0.004, 0.016, 0.064, 0.256, 1.024, 4.096, 16.384, 65.536, 262.144, 1048.576, 4194.304,
];

/// Route template, status class (`2xx`) and exact code (`206`): classes for ratios, codes
/// to tell `206`/`304`/`416` apart. Each code has one class, so the pair adds no series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub route: String,
    pub status: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobState {
    pub state: String,
}

impl JobState {
    pub fn queued() -> Self {
        JobState {
            state: "queued".into(),
        }
    }
    pub fn running() -> Self {
        JobState {
            state: "running".into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// A product's ring and what a check of a device in it found (`ring_checks_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RingState {
    pub product: String,
    pub ring: String,
    /// offered (an update), current (already on the ring's build or newer), held (outside
    /// the rollout percentage), paused, unmatched (hardware differs, or no such ring).
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RingLabels {
    pub product: String,
    pub ring: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Why an upstream fetch failed (the `reason` label of `upstream_errors_total`).
pub const UPSTREAM_ERROR_REASONS: [&str; 5] = ["connect", "status", "stalled", "corrupt", "body"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

/// Delta computation time buckets: 0.1 s .. ~27 min, doubling.
pub const DELTA_SECONDS_BUCKETS: [f64; 15] = [
    0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6, 819.2, 1638.4,
];

/// Handles to every metric the node exports.
pub struct Metrics {
    registry: Registry,
    /// Figures read at scrape time (the storage engine's, the data directory's).
    sources: Arc<Mutex<Vec<EngineSource>>>,
    pub http_requests: Family<CodeLabels, Counter>,
    pub http_duration: Family<RouteOnly, Histogram>,
    /// Time to a response's last byte (or to its abandonment).
    pub http_full_duration: Family<RouteOnly, Histogram>,
    /// Requests whose response has not finished.
    pub http_in_flight: Gauge,
    pub bytes_served: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub store_bytes: Gauge<u64, AtomicU64>,
    pub store_chunks: Gauge<u64, AtomicU64>,
    pub ingest_bytes: Counter,
    pub corrupt_chunks: Counter,
    /// Chunk bytes read from the engine, and bytes hashed to verify chunk reads: per
    /// byte served, the read and hash amplification of the read path.
    pub chunk_read_bytes: Counter,
    pub chunk_hashed_bytes: Counter,
    pub delta_jobs: Family<JobState, Gauge>,
    pub delta_compute_seconds: Histogram,
    pub delta_bytes_saved: Counter,
    pub checks: Family<ResultLabel, Counter>,
    /// Checks by product, ring and what they found: rollout progress per ring.
    pub ring_checks: Family<RingState, Counter>,
    /// Each ring's rollout percentage, as the last check of it saw it.
    pub ring_percent: Family<RingLabels, Gauge<f64, AtomicU64>>,
    pub artifact_bytes: Family<KindLabel, Counter>,
    /// TUF metadata expiry (unix seconds) and version, by role.
    pub tuf_expires: Family<RoleLabel, Gauge>,
    pub tuf_version: Family<RoleLabel, Gauge>,
    /// Edge role: chunk fills from upstream.
    pub upstream_fetches: Counter,
    pub upstream_bytes: Counter,
    pub upstream_coalesced: Counter,
    pub upstream_errors: Family<ReasonLabel, Counter>,
    /// Origin with a bucket (`[origin.s3]`).
    pub bucket_put_bytes: Counter,
    pub bucket_get_bytes: Counter,
    pub bucket_chunks_written: Counter,
    pub bucket_corrupt: Counter,
    pub bucket_errors: Family<ReasonLabel, Counter>,
    pub bucket_synced_seq: Gauge,
    /// Edge role: replication state.
    pub upstream_last_sync: Gauge,
    pub upstream_replicated_seq: Gauge,
    pub upstream_prefetched: Counter,
    pub store_evicted_bytes: Counter,
    /// Deltas made ready here: `computed` by this node, or `upstream` (an edge learning
    /// of one the origin computed).
    pub deltas_obtained: Family<SourceLabel, Counter>,
    /// Edge role: bytes filled from upstream by the artifact kind they were read for.
    pub upstream_artifact_bytes: Family<KindLabel, Counter>,
    /// Client connections being served, and those refused at `server.max_connections`.
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    /// Checks answered whose device record could not be written.
    pub device_record_errors: Counter,
    /// Device records held, and those removed by `catalog.device_ttl` / `max_devices`.
    pub device_records: Gauge,
    pub device_records_expired: Counter,
    /// Delta jobs that panicked (caught: the job fails, the worker lives on).
    pub delta_job_panics: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<CodeLabels, Counter>::default();
        let http_duration = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        let m = Metrics {
            http_requests,
            http_duration,
            http_full_duration: Family::<RouteOnly, Histogram>::new_with_constructor(|| {
                Histogram::new(TRANSFER_BUCKETS)
            }),
            http_in_flight: Gauge::default(),
            bytes_served: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            store_bytes: Gauge::default(),
            store_chunks: Gauge::default(),
            ingest_bytes: Counter::default(),
            corrupt_chunks: Counter::default(),
            chunk_read_bytes: Counter::default(),
            chunk_hashed_bytes: Counter::default(),
            delta_jobs: Family::default(),
            delta_compute_seconds: Histogram::new(DELTA_SECONDS_BUCKETS),
            delta_bytes_saved: Counter::default(),
            checks: Family::default(),
            ring_checks: Family::default(),
            ring_percent: Family::default(),
            artifact_bytes: Family::default(),
            tuf_expires: Family::default(),
            tuf_version: Family::default(),
            upstream_fetches: Counter::default(),
            upstream_bytes: Counter::default(),
            upstream_coalesced: Counter::default(),
            upstream_errors: Family::default(),
            bucket_put_bytes: Counter::default(),
            bucket_get_bytes: Counter::default(),
            bucket_chunks_written: Counter::default(),
            bucket_corrupt: Counter::default(),
            bucket_errors: Family::default(),
            bucket_synced_seq: Gauge::default(),
            upstream_last_sync: Gauge::default(),
            upstream_replicated_seq: Gauge::default(),
            upstream_prefetched: Counter::default(),
            store_evicted_bytes: Counter::default(),
            deltas_obtained: Family::default(),
            upstream_artifact_bytes: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            device_record_errors: Counter::default(),
            device_records: Gauge::default(),
            device_records_expired: Counter::default(),
            delta_job_panics: Counter::default(),
            registry: Registry::default(),
            sources: Arc::new(Mutex::new(Vec::new())),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "update_edge_http_requests",
            "HTTP requests by route template (unmatched ones as \"unmatched\"), status class and exact code",
            m.http_requests.clone(),
        );
        registry.register(
            "update_edge_http_request_duration_seconds",
            "Time to response head by route template",
            m.http_duration.clone(),
        );
        registry.register(
            "update_edge_http_response_duration_seconds",
            "Time to a response's last byte (or to the client abandoning it) by route template",
            m.http_full_duration.clone(),
        );
        registry.register(
            "update_edge_http_requests_in_flight",
            "Requests whose response has not finished",
            m.http_in_flight.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register(
            "update_edge_build_info",
            "Always 1; the version label names the running build",
            build_info,
        );
        registry.register(
            "update_edge_bytes_served",
            "Body bytes handed to clients (blob downloads)",
            m.bytes_served.clone(),
        );
        registry.register(
            "update_edge_cache_hits",
            "Chunk reads answered by the in-memory cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "update_edge_cache_misses",
            "Chunk reads that went to RocksDB",
            m.cache_misses.clone(),
        );
        registry.register(
            "update_edge_store_bytes",
            "Bytes of unique chunk data stored",
            m.store_bytes.clone(),
        );
        registry.register(
            "update_edge_store_chunks",
            "Unique chunks stored",
            m.store_chunks.clone(),
        );
        registry.register(
            "update_edge_ingest_bytes",
            "Payload bytes received by uploads and imports",
            m.ingest_bytes.clone(),
        );
        registry.register(
            "update_edge_store_corrupt_chunks",
            "Chunks whose bytes did not match their hash when read",
            m.corrupt_chunks.clone(),
        );
        registry.register(
            "update_edge_store_chunk_read_bytes",
            "Chunk bytes read from the storage engine (cache misses)",
            m.chunk_read_bytes.clone(),
        );
        registry.register(
            "update_edge_store_chunk_hashed_bytes",
            "Bytes hashed to verify chunk reads (whole chunks, or only the 16 KiB groups a small range needs)",
            m.chunk_hashed_bytes.clone(),
        );
        registry.register(
            "update_edge_delta_jobs",
            "Delta computations by state (queued, running)",
            m.delta_jobs.clone(),
        );
        registry.register(
            "update_edge_delta_compute_seconds",
            "Time to compute one delta",
            m.delta_compute_seconds.clone(),
        );
        registry.register(
            "update_edge_delta_bytes_saved",
            "Bytes saved by offering a delta instead of the full payload (at check time)",
            m.delta_bytes_saved.clone(),
        );
        registry.register(
            "update_edge_checks",
            "Update checks by result (update, none, error, limited)",
            m.checks.clone(),
        );
        registry.register(
            "update_edge_ring_checks",
            "Update checks by product, ring and state (offered, current, held, paused, unmatched): rollout progress",
            m.ring_checks.clone(),
        );
        registry.register(
            "update_edge_ring_percent",
            "Rollout percentage of each product's ring, as last seen by a check",
            m.ring_percent.clone(),
        );
        registry.register(
            "update_edge_artifact_bytes_served",
            "Download bytes by artifact kind (os, driver, app, delta, other)",
            m.artifact_bytes.clone(),
        );
        registry.register(
            "update_edge_tuf_metadata_expires_timestamp_seconds",
            "When the served TUF metadata expires, by role (alert well before it)",
            m.tuf_expires.clone(),
        );
        registry.register(
            "update_edge_tuf_metadata_version",
            "Version of the served TUF metadata, by role",
            m.tuf_version.clone(),
        );
        registry.register(
            "update_edge_delta_job_panics",
            "Delta jobs that panicked (caught and recorded as failed; the worker continues)",
            m.delta_job_panics.clone(),
        );
        registry.register(
            "update_edge_device_record_errors",
            "Checks answered whose device record could not be written (the check still succeeds)",
            m.device_record_errors.clone(),
        );
        registry.register(
            "update_edge_device_records",
            "Device records held (one per device seen, within catalog.device_ttl and catalog.max_devices)",
            m.device_records.clone(),
        );
        registry.register(
            "update_edge_device_records_expired",
            "Device records removed, oldest first, for age (catalog.device_ttl) or count (catalog.max_devices)",
            m.device_records_expired.clone(),
        );
        registry.register(
            "update_edge_connections_open",
            "Client connections being served",
            m.connections_open.clone(),
        );
        registry.register(
            "update_edge_connections_refused",
            "Connections answered 503 and closed because server.max_connections were open",
            m.connections_refused.clone(),
        );
        registry.register(
            "update_edge_upstream_fetches",
            "Chunks fetched from upstream (edge role; one per missing chunk however many wait)",
            m.upstream_fetches.clone(),
        );
        registry.register(
            "update_edge_upstream_bytes",
            "Bytes received from upstream for chunk fills (edge role)",
            m.upstream_bytes.clone(),
        );
        registry.register(
            "update_edge_upstream_coalesced",
            "Chunk reads that joined a fill already under way instead of fetching",
            m.upstream_coalesced.clone(),
        );
        registry.register(
            "update_edge_upstream_errors",
            "Failed upstream fetches by reason (connect, status, stalled, corrupt, body)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "update_edge_bucket_put_bytes",
            "Bytes sent to the origin's bucket (packs of chunks as they upload, manifests, catalog snapshots)",
            m.bucket_put_bytes.clone(),
        );
        registry.register(
            "update_edge_bucket_get_bytes",
            "Bytes read from the origin's bucket",
            m.bucket_get_bytes.clone(),
        );
        registry.register(
            "update_edge_bucket_chunks_written",
            "Chunk objects written to the bucket (chunks already there are not rewritten)",
            m.bucket_chunks_written.clone(),
        );
        registry.register(
            "update_edge_bucket_corrupt_objects",
            "Objects read from the bucket that failed verification (never served)",
            m.bucket_corrupt.clone(),
        );
        registry.register(
            "update_edge_bucket_errors",
            "Failed bucket requests by reason (unavailable, corrupt, store)",
            m.bucket_errors.clone(),
        );
        registry.register(
            "update_edge_bucket_synced_sequence",
            "Change sequence of the last catalog snapshot written to the bucket",
            m.bucket_synced_seq.clone(),
        );
        registry.register(
            "update_edge_upstream_last_sync_timestamp_seconds",
            "When this edge last read the origin's change feed successfully (unix seconds)",
            m.upstream_last_sync.clone(),
        );
        registry.register(
            "update_edge_upstream_replicated_sequence",
            "Position in the origin's change feed this edge has applied",
            m.upstream_replicated_seq.clone(),
        );
        registry.register(
            "update_edge_upstream_prefetched_blobs",
            "Builds and deltas pre-seeded at this edge after a ring changed target",
            m.upstream_prefetched.clone(),
        );
        registry.register(
            "update_edge_store_evicted_bytes",
            "Chunk bytes deleted to keep an edge under store.max_bytes",
            m.store_evicted_bytes.clone(),
        );
        registry.register(
            "update_edge_deltas_obtained",
            "Deltas made ready at this node by source: computed here, or from upstream (edges)",
            m.deltas_obtained.clone(),
        );
        registry.register(
            "update_edge_upstream_artifact_bytes",
            "Bytes filled from upstream by the artifact kind read (os, driver, app, delta, other)",
            m.upstream_artifact_bytes.clone(),
        );
        for source in ["computed", "upstream"] {
            let _ = m.deltas_obtained.get_or_create(&SourceLabel {
                source: source.into(),
            });
        }
        for reason in UPSTREAM_ERROR_REASONS {
            let _ = m.upstream_errors.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        for state in [JobState::queued(), JobState::running()] {
            let _ = m.delta_jobs.get_or_create(&state);
        }
        // Every kind from the start: a dashboard's rate() sees 0, not an absent series.
        for kind in ["os", "driver", "app", "delta", "other"] {
            for family in [&m.artifact_bytes, &m.upstream_artifact_bytes] {
                let _ = family.get_or_create(&KindLabel { kind: kind.into() });
            }
        }
        for result in ["update", "none", "error"] {
            let _ = m.checks.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        let collector = process::ScrapeCollector {
            sources: m.sources.clone(),
        };
        registry.register_collector(Box::new(collector));
        Metrics { registry, ..m }
    }

    /// Adds figures read at each scrape (the store's engine, the data directory).
    pub fn add_source(&self, source: EngineSource) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }

    /// Adds further metrics (delta, catalog) to the same registry.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The classic Prometheus text format (0.0.4) of everything registered, for scrapers
    /// and tools that do not ask for OpenMetrics (`promtool check metrics`, curl): a
    /// counter family is named with its `_total` suffix, and OpenMetrics' `# UNIT` and
    /// `# EOF` lines are left out.
    pub fn encode_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// OpenMetrics text exposition of everything registered.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4 (see [`Metrics::encode_text`]).
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_format_names_counters_with_their_suffix() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\n# UNIT g bytes\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn exported_names_match_the_contract() {
        let m = Metrics::new();
        m.bytes_served.inc_by(5);
        m.http_requests
            .get_or_create(&CodeLabels {
                route: "/v1/blobs/{hash}".into(),
                status: "2xx".into(),
                code: "206".into(),
            })
            .inc();
        m.http_duration
            .get_or_create(&RouteOnly {
                route: "/healthz".into(),
            })
            .observe(0.001);
        let text = m.encode();
        for name in [
            "update_edge_http_requests_total{route=\"/v1/blobs/{hash}\",status=\"2xx\",code=\"206\"} 1",
            "update_edge_http_request_duration_seconds_bucket",
            "update_edge_http_requests_in_flight 0",
            "update_edge_build_info{version=",
            "update_edge_bytes_served_total 5",
            "update_edge_cache_hits_total",
            "update_edge_cache_misses_total",
            "update_edge_store_bytes",
            "update_edge_store_chunks",
            "update_edge_ingest_bytes_total",
            "update_edge_delta_jobs{state=\"queued\"}",
            "update_edge_delta_compute_seconds_bucket",
            "update_edge_delta_bytes_saved_total",
            "update_edge_checks_total{result=\"update\"}",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
