//! Update checks: device → ring → rollout bucket → target build → best artifact →
//! signed answer. Constant work per check (point lookups, one record write, one
//! signature), whatever the payload size or fleet size.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::chunklist::ChunkLists;
use super::model::{now_secs, Build, DeltaStatus, DeviceRecord, Hardware};
use super::rollout::{hardware_matches, in_rollout};
use super::scheduler::DeltaScheduler;
use super::signing::Signer;
use super::version::Version;
use super::{Catalog, CatalogError};

/// Ring a device is in when it does not say.
pub const DEFAULT_RING: &str = "general";

/// What a device sends to `POST /v1/check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub product: String,
    pub device_id: String,
    pub version: String,
    #[serde(default)]
    pub ring: Option<String>,
    #[serde(default)]
    pub hardware: Option<Hardware>,
    /// Fresh per check (the device's own random value); echoed in the signed answer so
    /// an answer cannot be replayed to a later check.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// Longest nonce accepted (hex of 64 random bytes).
pub const MAX_NONCE_BYTES: usize = 128;

/// The check service: catalog + chunk lists + signer + delta scheduler.
pub struct Checker {
    pub catalog: Arc<Catalog>,
    pub chunk_lists: ChunkLists,
    pub signer: Signer,
    /// None on an edge (its deltas come from the origin through the catalog).
    pub scheduler: Option<DeltaScheduler>,
    /// On an edge, a missing delta is computed here only when both builds are held
    /// here whole; otherwise the origin's, replicated, is awaited.
    pub edge: bool,
    /// The publish policy (`delta.from_previous`): a check queues a missing delta only
    /// for a pair a publish would have queued, so made-up "current versions" cannot
    /// make the node compute deltas from every old build.
    pub delta_from_previous: usize,
    pub answer_ttl_secs: u64,
    pub devices: DeviceLog,
}

/// Device records waiting for the writer, at most (more are dropped and counted).
const DEVICE_LOG_QUEUE: usize = 65_536;
/// Records written in one engine batch, at most.
const DEVICE_LOG_BATCH: usize = 1024;
/// Records expired after one batch, at most (the rest after the next).
const DEVICE_EXPIRE_STEP: usize = 4 * DEVICE_LOG_BATCH;
/// With no checks arriving, records are expired this often.
const DEVICE_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

type Pending = (String, String, DeviceRecord);

/// How long and how many device records are kept (`[catalog]`).
#[derive(Debug, Clone, Copy)]
pub struct DeviceRetention {
    /// Seconds after the last check; 0 = no age limit.
    pub ttl: u64,
    pub max: u64,
}

/// Writes checks' device records on a thread of its own, in batches: a check never
/// waits for the engine (a write stall or a full disk does not slow answers), and a
/// flood of checks costs one write per batch. A full queue or a failed write drops
/// records and counts them (`update_edge_device_record_errors_total`). After each
/// batch, and every minute, records past their retention are removed oldest first, so
/// made-up device ids cannot grow the store without bound.
pub struct DeviceLog {
    tx: std::sync::mpsc::SyncSender<Pending>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl DeviceLog {
    /// Starts the writer; it holds the catalog only while writing, and ends with the
    /// last `DeviceLog` handle.
    pub fn start(catalog: &Arc<Catalog>, keep: DeviceRetention) -> DeviceLog {
        use std::sync::mpsc::RecvTimeoutError;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Pending>(DEVICE_LOG_QUEUE);
        let metrics = catalog.store().metrics().clone();
        let (weak, m) = (Arc::downgrade(catalog), metrics.clone());
        let _ = std::thread::Builder::new()
            .name("device-log".into())
            .spawn(move || {
                // Where the by-age walk resumes (past earlier removals' tombstones);
                // restarted from the beginning on each idle sweep.
                let mut from = Vec::new();
                loop {
                    let batch = match rx.recv_timeout(DEVICE_SWEEP_EVERY) {
                        Ok(first) => {
                            let mut batch = vec![first];
                            while batch.len() < DEVICE_LOG_BATCH {
                                match rx.try_recv() {
                                    Ok(p) => batch.push(p),
                                    Err(_) => break,
                                }
                            }
                            batch
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            from.clear();
                            Vec::new()
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    let Some(catalog) = weak.upgrade() else {
                        return;
                    };
                    if !batch.is_empty() {
                        if let Err(e) = catalog.record_devices(&batch) {
                            m.device_record_errors.inc_by(batch.len() as u64);
                            tracing::warn!(records = batch.len(), error = %e, "writing device records failed");
                        }
                    }
                    match catalog.expire_devices(
                        keep.ttl,
                        keep.max,
                        super::model::now_secs(),
                        DEVICE_EXPIRE_STEP,
                        &mut from,
                    ) {
                        Ok((removed, left)) => {
                            m.device_records_expired.inc_by(removed);
                            m.device_records.set(left as i64);
                        }
                        Err(e) => tracing::warn!(error = %e, "expiring device records failed"),
                    }
                }
            });
        DeviceLog { tx, metrics }
    }

    /// Queues one device's record (never waits).
    pub fn record(&self, product: &str, device: &str, rec: DeviceRecord) {
        if self
            .tx
            .try_send((product.to_string(), device.to_string(), rec))
            .is_err()
        {
            self.metrics.device_record_errors.inc();
        }
    }
}

/// Result label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Update,
    None,
}

impl Checker {
    /// Decides and signs the answer for one device.
    pub async fn check(&self, req: &CheckRequest) -> Result<(Value, Outcome, u64), CatalogError> {
        if req.device_id.is_empty() || req.device_id.len() > 256 {
            return Err(CatalogError::Invalid(
                "device_id must be 1-256 bytes".into(),
            ));
        }
        if let Some(n) = &req.nonce {
            if n.is_empty() || n.len() > MAX_NONCE_BYTES || !n.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(CatalogError::Invalid(format!(
                    "nonce must be 1-{MAX_NONCE_BYTES} printable ASCII bytes"
                )));
            }
        }
        let current: Version = req
            .version
            .parse()
            .map_err(|e: super::version::BadVersion| CatalogError::Invalid(e.to_string()))?;
        let product = self.catalog.product(&req.product)?;
        let ring_name = req.ring.clone().unwrap_or_else(|| DEFAULT_RING.to_string());
        if !super::model::valid_name(&ring_name) {
            return Err(CatalogError::Invalid(
                "ring must be 1-64 bytes of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
                    .into(),
            ));
        }
        let (update, saved) = match self.target(
            &req.product,
            &req.device_id,
            &ring_name,
            &current,
            &product.hardware,
            req.hardware.as_ref(),
        )? {
            Some(target) => {
                let (artifacts, saved) = self.artifacts(&req.product, &current, &target).await?;
                let tuf_target = json!({
                    "name": target.target_name(),
                    "length": target.size,
                    "hashes": { "sha256": target.sha256 },
                });
                (
                    json!({ "version": target.version, "kind": target.kind.as_str(), "ring": ring_name, "target": tuf_target, "artifacts": artifacts }),
                    saved,
                )
            }
            None => (Value::Null, 0),
        };
        let outcome = if update.is_null() {
            Outcome::None
        } else {
            Outcome::Update
        };
        let now = now_secs();
        // The device record is telemetry: queued to a writer thread (batched, never on
        // the async workers); a record that cannot be written is counted, never the
        // device's problem.
        self.devices.record(
            &req.product,
            &req.device_id,
            DeviceRecord {
                version: current.to_string(),
                ring: ring_name,
                last_seen: now,
                result: if update.is_null() { "none" } else { "update" }.into(),
            },
        );
        let answer = json!({
            "product": req.product,
            "device_id": req.device_id,
            "current_version": current.to_string(),
            "nonce": req.nonce,
            "issued_at": now,
            "expires_at": now + self.answer_ttl_secs,
            "update": update,
        });
        Ok((self.signer.sign(answer), outcome, saved))
    }

    /// The build this device should move to, if any.
    fn target(
        &self,
        product: &str,
        device: &str,
        ring: &str,
        current: &Version,
        hw: &Hardware,
        device_hw: Option<&Hardware>,
    ) -> Result<Option<Build>, CatalogError> {
        let Some(r) = self.catalog.ring(product, ring)? else {
            // A ring name the catalog does not know is not a label (devices choose it).
            self.count_ring(product, "unknown", "unmatched", None);
            return Ok(None);
        };
        if !hardware_matches(hw, device_hw) {
            self.count_ring(product, ring, "unmatched", Some(r.percent));
            return Ok(None);
        }
        if r.paused {
            self.count_ring(product, ring, "paused", Some(r.percent));
            return Ok(None);
        }
        let target: Version = r
            .version
            .parse()
            .map_err(|_| CatalogError::Corrupt(format!("ring {ring} version {}", r.version)))?;
        if target <= *current {
            self.count_ring(product, ring, "current", Some(r.percent));
            return Ok(None);
        }
        if !in_rollout(product, device, r.percent) {
            self.count_ring(product, ring, "held", Some(r.percent));
            return Ok(None);
        }
        self.count_ring(product, ring, "offered", Some(r.percent));
        self.catalog.build(product, &target)
    }

    /// Rollout progress (`update_edge_ring_checks_total`, `update_edge_ring_percent`):
    /// labels are products and rings the catalog holds, so their number is the
    /// operator's, never the fleet's.
    fn count_ring(&self, product: &str, ring: &str, state: &str, percent: Option<f64>) {
        let m = self.catalog.store().metrics();
        m.ring_checks
            .get_or_create(&crate::metrics::RingState {
                product: product.into(),
                ring: ring.into(),
                state: state.into(),
            })
            .inc();
        if let Some(p) = percent {
            m.ring_percent
                .get_or_create(&crate::metrics::RingLabels {
                    product: product.into(),
                    ring: ring.into(),
                })
                .set(p);
        }
    }

    /// Artifacts best first: a worthwhile delta from the device's build, then the full
    /// payload. A missing delta is scheduled (once) and the full payload offered now.
    async fn artifacts(
        &self,
        product: &str,
        current: &Version,
        target: &Build,
    ) -> Result<(Vec<Value>, u64), CatalogError> {
        let mut out = Vec::with_capacity(2);
        let mut saved = 0;
        if let Some(from) = self.catalog.build(product, current)? {
            if from.blob != target.blob {
                match self.catalog.delta(&from.blob, &target.blob)? {
                    Some(d) if d.status == DeltaStatus::Ready => {
                        if let Some(h) = d.delta {
                            let (_, list_hash) = self.chunk_lists.get(h).await?;
                            out.push(json!({
                                "type": "delta", "url": format!("/v1/blobs/{h}"), "size": d.delta_size, "blake3": h,
                                "from": from.version, "from_blake3": from.blob,
                                "chunks_url": format!("/v1/blobs/{h}/chunks"), "chunks_blake3": list_hash,
                            }));
                            saved = target.size.saturating_sub(d.delta_size);
                        }
                    }
                    Some(d) if d.status != DeltaStatus::Failed => {}
                    // Missing, or failed (queued again once its backoff has passed).
                    _ => {
                        if let Some(s) = &self.scheduler {
                            let store = self.catalog.store();
                            if self.catalog.delta_in_policy(
                                &from,
                                target,
                                self.delta_from_previous,
                            )? && (!self.edge
                                || (store.contains_blob(&from.blob)?
                                    && store.contains_blob(&target.blob)?))
                            {
                                s.enqueue(from.blob, target.blob);
                            }
                        }
                    }
                }
            }
        }
        let (_, list_hash) = self.chunk_lists.get(target.blob).await?;
        out.push(json!({
            "type": "full", "url": format!("/v1/blobs/{}", target.blob), "size": target.size, "blake3": target.blob,
            "chunks_url": format!("/v1/blobs/{}/chunks", target.blob), "chunks_blake3": list_hash,
        }));
        Ok((out, saved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::memory_store;
    use crate::store::Cf;

    fn checker(dir: &std::path::Path) -> (Checker, Arc<crate::store::memory::MemoryKv>) {
        checker_keeping(
            dir,
            DeviceRetention {
                ttl: 0,
                max: u64::MAX,
            },
        )
    }

    fn checker_keeping(
        dir: &std::path::Path,
        keep: DeviceRetention,
    ) -> (Checker, Arc<crate::store::memory::MemoryKv>) {
        let (store, kv) = memory_store();
        let catalog = Arc::new(Catalog::new(store.clone()).unwrap());
        catalog
            .put_product("gw", "Gateway", Hardware::default())
            .unwrap();
        let key = crate::repo::keys::KeyPair::create(&dir.join("director.pk8")).unwrap();
        let checker = Checker {
            chunk_lists: ChunkLists::new(store, None),
            devices: DeviceLog::start(&catalog, keep),
            catalog,
            signer: Signer::new(Arc::new(key)),
            scheduler: None,
            edge: false,
            delta_from_previous: 3,
            answer_ttl_secs: 60,
        };
        (checker, kv)
    }

    /// Polls `cond` for up to 5 s.
    async fn eventually(cond: impl Fn() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    fn request(ring: Option<&str>) -> CheckRequest {
        serde_json::from_value(json!({
            "product": "gw", "device_id": "d1", "version": "1.0.0", "ring": ring
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_failed_device_record_is_counted_and_the_device_still_gets_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (c, kv) = checker(dir.path());
        let errors = || c.catalog.store().metrics().device_record_errors.get();
        let devices = || c.catalog.device_stats("gw").unwrap().devices;
        c.check(&request(None)).await.unwrap();
        assert!(eventually(|| devices() == 1).await, "the record is written");
        assert_eq!(errors(), 0);
        kv.fail_writes_to(Some(Cf::Devices));
        let (answer, outcome, _) = c.check(&request(None)).await.unwrap();
        assert_eq!(outcome, Outcome::None);
        assert_eq!(answer["device_id"], "d1");
        assert!(
            eventually(|| errors() == 1).await,
            "the failed write is counted"
        );
    }

    #[tokio::test]
    async fn a_ring_name_is_validated_like_every_other_name() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = checker(dir.path());
        for bad in ["", "Preview", "a b", "../x", &"r".repeat(65)] {
            assert!(
                matches!(
                    c.check(&request(Some(bad))).await,
                    Err(CatalogError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        c.check(&request(Some("preview-1.a_b"))).await.unwrap();
        assert!(eventually(|| c.catalog.device_stats("gw").unwrap().devices == 1).await);
    }

    #[tokio::test]
    async fn checks_are_counted_by_ring_and_what_they_found() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = checker(dir.path());
        let put = c
            .catalog
            .store()
            .put_reader(&crate::store::test_util::noise(10_000, 1)[..], |_| {})
            .unwrap();
        let v2: Version = "2.0.0".parse().unwrap();
        c.catalog
            .publish_build("gw", &v2, crate::catalog::model::Kind::Os, "", &put)
            .unwrap();
        c.catalog
            .set_ring("gw", "general", &v2, 50.0, false)
            .unwrap();
        c.catalog
            .set_ring("gw", "preview", &v2, 100.0, true)
            .unwrap();
        let check = |device: String, version: &str, ring: &str| {
            serde_json::from_value::<CheckRequest>(json!({
                "product": "gw", "device_id": device, "version": version, "ring": ring
            }))
            .unwrap()
        };
        let mut offered = 0;
        for i in 0..200 {
            let (_, outcome, _) = c
                .check(&check(format!("d{i}"), "1.0.0", "general"))
                .await
                .unwrap();
            offered += u64::from(outcome == Outcome::Update);
        }
        c.check(&check("d0".into(), "2.0.0", "general"))
            .await
            .unwrap();
        c.check(&check("d0".into(), "1.0.0", "preview"))
            .await
            .unwrap();
        c.check(&check("d0".into(), "1.0.0", "nightly"))
            .await
            .unwrap();
        let m = c.catalog.store().metrics();
        let n = |ring: &str, state: &str| {
            m.ring_checks
                .get_or_create(&crate::metrics::RingState {
                    product: "gw".into(),
                    ring: ring.into(),
                    state: state.into(),
                })
                .get()
        };
        assert!((60..140).contains(&offered), "{offered} of 200 at 50 %");
        assert_eq!(
            (n("general", "offered"), n("general", "held")),
            (offered, 200 - offered)
        );
        assert_eq!(n("general", "current"), 1);
        assert_eq!(n("preview", "paused"), 1);
        assert_eq!(
            (n("nightly", "unmatched"), n("unknown", "unmatched")),
            (0, 1)
        );
        let percent = |ring: &str| {
            m.ring_percent
                .get_or_create(&crate::metrics::RingLabels {
                    product: "gw".into(),
                    ring: ring.into(),
                })
                .get()
        };
        assert_eq!((percent("general"), percent("preview")), (50.0, 100.0));
    }

    #[tokio::test]
    async fn made_up_devices_cannot_grow_the_records_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = checker_keeping(dir.path(), DeviceRetention { ttl: 0, max: 3 });
        for i in 0..10 {
            let mut r = request(None);
            r.device_id = format!("made-up-{i}");
            c.check(&r).await.unwrap();
        }
        let m = c.catalog.store().metrics().clone();
        assert!(
            eventually(|| m.device_records_expired.get() == 7).await,
            "expired {}",
            m.device_records_expired.get()
        );
        assert_eq!(m.device_records.get(), 3);
        assert_eq!(c.catalog.device_stats("gw").unwrap().devices, 3);
    }
}
