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
    pub answer_ttl_secs: u64,
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
        // The device record is telemetry: written off the async workers, and a failed
        // write (a full disk, a stalled engine) is logged and counted, never the
        // device's problem.
        let record = DeviceRecord {
            version: current.to_string(),
            ring: ring_name,
            last_seen: now,
            result: if update.is_null() { "none" } else { "update" }.into(),
        };
        let (catalog, product_slug, device) = (
            self.catalog.clone(),
            req.product.clone(),
            req.device_id.clone(),
        );
        let written = tokio::task::spawn_blocking(move || {
            catalog.record_device(&product_slug, &device, &record)
        })
        .await
        .map_err(|e| CatalogError::Invalid(e.to_string()))
        .and_then(|r| r);
        if let Err(e) = written {
            self.catalog.store().metrics().device_record_errors.inc();
            tracing::warn!(device = %req.device_id, error = %e, "recording a device's check failed");
        }
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
        if !hardware_matches(hw, device_hw) {
            return Ok(None);
        }
        let Some(r) = self.catalog.ring(product, ring)? else {
            return Ok(None);
        };
        if r.paused || !in_rollout(product, device, r.percent) {
            return Ok(None);
        }
        let target: Version = r
            .version
            .parse()
            .map_err(|_| CatalogError::Corrupt(format!("ring {ring} version {}", r.version)))?;
        if target <= *current {
            return Ok(None);
        }
        self.catalog.build(product, &target)
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
                            if !self.edge
                                || (store.contains_blob(&from.blob)?
                                    && store.contains_blob(&target.blob)?)
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
        let (store, kv) = memory_store();
        let catalog = Arc::new(Catalog::new(store.clone()).unwrap());
        catalog
            .put_product("gw", "Gateway", Hardware::default())
            .unwrap();
        let key = crate::repo::keys::KeyPair::create(&dir.join("director.pk8")).unwrap();
        let checker = Checker {
            chunk_lists: ChunkLists::new(store, None),
            catalog,
            signer: Signer::new(Arc::new(key)),
            scheduler: None,
            edge: false,
            answer_ttl_secs: 60,
        };
        (checker, kv)
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
        c.check(&request(None)).await.unwrap();
        assert_eq!(errors(), 0);
        assert_eq!(c.catalog.device_stats("gw").unwrap().devices, 1);
        kv.fail_writes_to(Some(Cf::Devices));
        let (answer, outcome, _) = c.check(&request(None)).await.unwrap();
        assert_eq!(outcome, Outcome::None);
        assert_eq!(answer["device_id"], "d1");
        assert_eq!(errors(), 1);
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
        assert_eq!(c.catalog.device_stats("gw").unwrap().devices, 1);
    }
}
