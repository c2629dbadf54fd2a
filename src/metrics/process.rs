//! Scrape-time collectors: the process's own figures (the names every Prometheus client
//! library exports: `process_cpu_seconds_total`, `process_resident_memory_bytes`, ...)
//! and the storage engine's (`update_edge_rocksdb_*`), read when `/metrics` is scraped,
//! never on the request path.
//!
//! The process figures come from Linux's `/proc/self` (`stat`, `statm`, `fd`) and
//! `/proc/stat`'s boot time: a few small reads, parsed here (five fields; a crate for
//! the whole of procfs would be more code than this). Elsewhere they are simply absent.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// One figure an engine reports: a counter (cumulative since it opened) or a gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStat {
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub value: f64,
}

/// Where engine figures come from, once the store is open.
pub type EngineSource = Arc<dyn Fn() -> Vec<EngineStat> + Send + Sync>;

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// The process figures of this process, as far as `/proc` gives them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub start_time_seconds: f64,
}

/// Linux's clock tick for `/proc` times (`USER_HZ`, 100 on every architecture it
/// supports that we build for).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22.
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut pages = statm.split_whitespace().map(|v| v.parse::<f64>().ok());
        let page = rustix::param::page_size() as f64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft as f64)
            .unwrap_or(0.0);
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
            virtual_bytes: pages.next()?? * page,
            resident_bytes: pages.next()?? * page,
            open_fds,
            max_fds,
            start_time_seconds: boot + field(22)? / TICKS_PER_SECOND,
        })
    }
}

/// Encodes the process figures and those of every added source at each scrape.
#[derive(Default)]
pub struct ScrapeCollector {
    pub sources: Arc<Mutex<Vec<EngineSource>>>,
}

impl std::fmt::Debug for ScrapeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.sources.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("ScrapeCollector")
            .field("sources", &n)
            .finish()
    }
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(p) = ProcessStats::read() {
            let e = &mut encoder;
            counter(
                e,
                "process_cpu_seconds",
                "User and system CPU time spent in seconds",
                p.cpu_seconds,
            )?;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            )?;
            gauge(
                e,
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            )?;
            gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                p.max_fds,
            )?;
            gauge(
                e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time_seconds,
            )?;
        }
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for source in sources {
            for s in source() {
                if s.counter {
                    counter(&mut encoder, s.name, s.help, s.value)?;
                } else {
                    gauge(&mut encoder, s.name, s.help, s.value)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_sane_figures() {
        let p = ProcessStats::read().expect("/proc/self is readable on Linux");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds > now - 86_400.0 * 30.0 && p.start_time_seconds <= now + 1.0,
            "{p:?}"
        );
        assert!(
            p.resident_bytes > 1e6 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(p.open_fds >= 3.0 && p.max_fds >= p.open_fds, "{p:?}");
        // Burn a little CPU: the figure moves.
        let before = p.cpu_seconds;
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = ProcessStats::read().unwrap().cpu_seconds;
        assert!(after >= before + 0.1, "{before} -> {after}");
    }
}
