//! Delta scheduling: a bounded pool of worker threads (off the async runtime) computes
//! deltas between stored builds. Each (from, to) pair is computed once however many
//! publishes or checks ask for it; the result is just another blob plus a record.

use std::collections::HashSet;
use std::io::{Seek, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::model::{now_secs, DeltaRecord, DeltaStatus};
use super::Catalog;
use crate::delta::{self, DiffOptions, ReadAt};
use crate::hash::Hash;
use crate::metrics::{JobState, Metrics};
use crate::store::{Manifest, Store, StoreError};

/// Pairs waiting beyond this are dropped (and asked for again by the next check).
const QUEUE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub workers: usize,
    pub worth_it_ratio: f64,
    pub memory_limit: u64,
    pub zstd_level: i32,
}

#[derive(Clone)]
pub struct DeltaScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    opts: SchedulerOptions,
    inflight: Mutex<HashSet<(Hash, Hash)>>,
    tx: SyncSender<(Hash, Hash)>,
}

impl DeltaScheduler {
    pub fn start(
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        opts: SchedulerOptions,
    ) -> DeltaScheduler {
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        let inner = Arc::new(Inner {
            catalog,
            metrics,
            opts,
            inflight: Mutex::new(HashSet::new()),
            tx,
        });
        for i in 0..inner.opts.workers.max(1) {
            let (inner, rx) = (Arc::downgrade(&inner), rx.clone());
            let _ = std::thread::Builder::new()
                .name(format!("delta-{i}"))
                .spawn(move || worker(inner, rx));
        }
        DeltaScheduler { inner }
    }

    /// Queues a pair unless it is queued, running, or already recorded. True if queued.
    /// A pair that failed is queued again once its backoff has passed.
    pub fn enqueue(&self, from: Hash, to: Hash) -> bool {
        if from == to {
            return false;
        }
        match self.inner.catalog.delta(&from, &to) {
            Ok(None) => {}
            Ok(Some(r)) if r.retry_due(now_secs()) => {}
            Ok(Some(_)) | Err(_) => return false,
        }
        let mut inflight = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !inflight.insert((from, to)) {
            return false;
        }
        match self.inner.tx.try_send((from, to)) {
            Ok(()) => {
                self.inner
                    .metrics
                    .delta_jobs
                    .get_or_create(&JobState::queued())
                    .inc();
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                inflight.remove(&(from, to));
                false
            }
        }
    }

    /// Pairs queued or running.
    pub fn pending(&self) -> usize {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

fn worker(inner: std::sync::Weak<Inner>, rx: Arc<Mutex<Receiver<(Hash, Hash)>>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok((from, to)) = job else { return };
        let Some(inner) = inner.upgrade() else { return };
        let m = &inner.metrics;
        m.delta_jobs.get_or_create(&JobState::queued()).dec();
        m.delta_jobs.get_or_create(&JobState::running()).inc();
        let started = Instant::now();
        // A panic in a job is this job's failure, not the worker's end.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compute(&inner, from, to)))
                .unwrap_or_else(|panic| {
                    m.delta_job_panics.inc();
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(format!("delta job panicked: {what}").into())
                });
        m.delta_compute_seconds
            .observe(started.elapsed().as_secs_f64());
        m.delta_jobs.get_or_create(&JobState::running()).dec();
        let record = result.unwrap_or_else(|e| {
            let attempts = match inner.catalog.delta(&from, &to) {
                Ok(Some(r)) if r.status == DeltaStatus::Failed => r.attempts + 1,
                _ => 1,
            };
            tracing::error!(from = %from.short(), to = %to.short(), attempts, error = %e, "delta computation failed; retried after a backoff");
            DeltaRecord { from, to, status: DeltaStatus::Failed, delta: None, delta_size: 0, to_size: 0, zstd_full_size: 0, compute_seconds: started.elapsed().as_secs_f64(), created_at: now_secs(), attempts }
        });
        if let Err(e) = inner.catalog.put_delta(&record) {
            tracing::error!(error = %e, "recording delta failed");
        }
        inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(from, to));
    }
}

fn compute(
    inner: &Inner,
    from: Hash,
    to: Hash,
) -> Result<DeltaRecord, Box<dyn std::error::Error + Send + Sync>> {
    #[cfg(test)]
    if tests::PANIC_NEXT.swap(false, std::sync::atomic::Ordering::SeqCst) {
        panic!("injected by a test");
    }
    let store = inner.catalog.store();
    let old = BlobSource::open(store.clone(), from)?;
    let new = BlobSource::open(store.clone(), to)?;
    let opts = DiffOptions {
        memory_limit: inner.opts.memory_limit,
        zstd_level: inner.opts.zstd_level,
        ..DiffOptions::default()
    };
    let mut file = tempfile::tempfile()?;
    let report = {
        let mut w = std::io::BufWriter::new(&mut file);
        let r = delta::diff(&old, &new, &mut w, &opts, &|_| {})?;
        w.flush()?;
        r
    };
    let full = report.zstd_full_size;
    let worth = delta::worth_it(report.patch_size, full, inner.opts.worth_it_ratio);
    let mut record = DeltaRecord {
        from,
        to,
        status: if worth {
            DeltaStatus::Ready
        } else {
            DeltaStatus::NotWorthIt
        },
        delta: None,
        delta_size: report.patch_size,
        to_size: new.size(),
        zstd_full_size: full,
        compute_seconds: report.seconds,
        created_at: now_secs(),
        attempts: 0,
    };
    if worth {
        file.rewind()?;
        // Held until the record is written, so a concurrent GC cannot sweep the new blob.
        let _guard = store.gc_guard_blocking();
        let put = store.put_reader(std::io::BufReader::new(file), |_| {})?;
        record.delta = Some(put.hash);
        inner.catalog.put_delta(&record)?;
        inner
            .metrics
            .deltas_obtained
            .get_or_create(&crate::metrics::SourceLabel {
                source: "computed".into(),
            })
            .inc();
    }
    tracing::info!(from = %from.short(), to = %to.short(), patch = report.patch_size, full, worth, secs = report.seconds, "delta computed");
    Ok(record)
}

/// A stored blob as random-access input for the delta engine (chunk reads verified,
/// bypassing the serving cache; the last chunk read is kept for neighbouring reads).
pub struct BlobSource {
    store: Arc<Store>,
    manifest: Arc<Manifest>,
    last: Mutex<Option<(usize, Bytes)>>,
}

impl BlobSource {
    pub fn open(store: Arc<Store>, blob: Hash) -> Result<BlobSource, StoreError> {
        let manifest = store.manifest_blocking(&blob)?;
        Ok(BlobSource {
            store,
            manifest,
            last: Mutex::new(None),
        })
    }

    fn chunk(&self, i: usize) -> std::io::Result<Bytes> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((j, b)) = &*last {
            if *j == i {
                return Ok(b.clone());
            }
        }
        let b = self
            .store
            .read_chunk_uncached(&self.manifest.chunks[i].hash)
            .map_err(std::io::Error::other)?;
        *last = Some((i, b.clone()));
        Ok(b)
    }
}

impl ReadAt for BlobSource {
    fn size(&self) -> u64 {
        self.manifest.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.manifest.size)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        let mut pos = offset;
        while pos < end {
            let i = self.manifest.chunk_at(pos);
            let start = self.manifest.start_of(i);
            let chunk = self.chunk(i)?;
            let from = (pos - start) as usize;
            let take = (chunk.len() - from).min((end - pos) as usize);
            let at = (pos - offset) as usize;
            buf[at..at + take].copy_from_slice(&chunk[from..from + take]);
            pos += take as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::{memory_store, noise};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The next job panics (once).
    pub static PANIC_NEXT: AtomicBool = AtomicBool::new(false);

    fn wait_for(catalog: &Catalog, from: Hash, to: Hash) -> DeltaRecord {
        for _ in 0..500 {
            if let Ok(Some(r)) = catalog.delta(&from, &to) {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no record for the pair after 5 s");
    }

    #[test]
    fn a_panicking_job_is_recorded_as_failed_and_the_worker_goes_on() {
        let (store, _) = memory_store();
        let catalog = Arc::new(Catalog::new(store.clone()).unwrap());
        let metrics = store.metrics().clone();
        let a = store
            .put_reader(&noise(50_000, 1)[..], |_| {})
            .unwrap()
            .hash;
        let b = store
            .put_reader(&noise(50_000, 2)[..], |_| {})
            .unwrap()
            .hash;
        let opts = SchedulerOptions {
            workers: 1,
            worth_it_ratio: 1.0,
            memory_limit: 1 << 30,
            zstd_level: 3,
        };
        let s = DeltaScheduler::start(catalog.clone(), metrics.clone(), opts);
        PANIC_NEXT.store(true, Ordering::SeqCst);
        assert!(s.enqueue(a, b));
        let r = wait_for(&catalog, a, b);
        assert_eq!((r.status, r.attempts), (DeltaStatus::Failed, 1));
        assert_eq!(metrics.delta_job_panics.get(), 1);
        // Not again before its backoff; the one worker still computes other pairs.
        assert!(!s.enqueue(a, b));
        assert!(s.enqueue(b, a));
        assert_ne!(wait_for(&catalog, b, a).status, DeltaStatus::Failed);
    }
}
