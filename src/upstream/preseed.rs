//! Pre-seeding: when a ring's target changes, the edge fetches that build, and the
//! deltas to it from the versions its own devices report (most devices first), in the
//! background at `edge.prefetch_rate`, so devices arrive to a warm cache (Connected
//! Cache stays cold until devices ask).
//!
//! Work happens per catalog change (a ring retargeted, a delta computed), never per
//! request: the device-version histogram (a scan of this edge's device records) is read
//! only when ring targets change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Upstream;
use crate::catalog::model::DeltaStatus;
use crate::catalog::Catalog;
use crate::hash::Hash;
use crate::store::changes::ChangePage;

pub struct Preseeder {
    catalog: Arc<Catalog>,
    queue: mpsc::UnboundedSender<Hash>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Blobs already queued (content-addressed: never worth queueing twice).
    queued: HashSet<Hash>,
    /// Ring targets as last seen: (product, ring) → target build blob.
    targets: HashMap<(String, String), Hash>,
    /// Per product, the versions this edge's devices run, most devices first.
    reported: HashMap<String, Vec<String>>,
}

impl Preseeder {
    /// Starts the background filler; `rate` is bytes per second (0 = unlimited).
    pub fn start(up: Arc<Upstream>, catalog: Arc<Catalog>, rate: u64) -> Arc<Preseeder> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(fill_queue(up, catalog.clone(), rx, rate));
        let p = Arc::new(Preseeder {
            catalog,
            queue: tx,
            state: Mutex::new(State::default()),
        });
        p.targets_changed_in(None);
        p
    }

    /// Called after each applied page of the feed.
    pub fn page_applied(&self, page: &ChangePage) {
        let touches = |cf: &str| page.reset || page.changes.iter().any(|c| c.cf == cf);
        if touches("rings") || touches("builds") || touches("deltas") {
            self.targets_changed_in(Some(touches("rings")));
        }
    }

    /// Recomputes what to seed; re-reads device versions when rings changed.
    fn targets_changed_in(&self, rings_changed: Option<bool>) {
        if let Err(e) = self.plan(rings_changed.unwrap_or(true)) {
            tracing::warn!(error = %e, "planning pre-seeding failed");
        }
    }

    fn plan(&self, rings_changed: bool) -> Result<(), crate::catalog::CatalogError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut targets = HashMap::new();
        for p in self.catalog.products()? {
            for r in self.catalog.rings(&p.slug)? {
                if r.paused || r.percent <= 0.0 {
                    continue;
                }
                let Ok(v) = r.version.parse() else { continue };
                if let Some(b) = self.catalog.build(&p.slug, &v)? {
                    targets.insert((p.slug.clone(), r.name.clone()), b.blob);
                }
            }
        }
        let new_target = targets.iter().any(|(k, v)| st.targets.get(k) != Some(v));
        if rings_changed && new_target {
            let products: HashSet<&String> = targets.keys().map(|(p, _)| p).collect();
            for p in products {
                let stats = self.catalog.device_stats(p)?;
                let mut versions: Vec<(String, u64)> = stats.versions.into_iter().collect();
                versions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                st.reported
                    .insert(p.clone(), versions.into_iter().map(|(v, _)| v).collect());
            }
        }
        let mut wanted = Vec::new();
        for ((product, _), target) in &targets {
            wanted.push(*target);
            for v in st.reported.get(product).into_iter().flatten() {
                let Ok(v) = v.parse() else { continue };
                let Some(from) = self.catalog.build(product, &v)? else {
                    continue;
                };
                if let Some(d) = self.catalog.delta(&from.blob, target)? {
                    if let (DeltaStatus::Ready, Some(h)) = (d.status, d.delta) {
                        wanted.push(h);
                    }
                }
            }
        }
        st.targets = targets;
        for h in wanted {
            if st.queued.insert(h) {
                let _ = self.queue.send(h);
            }
        }
        Ok(())
    }
}

/// Reads each queued blob whole through the edge (filling and promoting it), paced to
/// `rate` bytes per second.
async fn fill_queue(
    up: Arc<Upstream>,
    catalog: Arc<Catalog>,
    mut rx: mpsc::UnboundedReceiver<Hash>,
    rate: u64,
) {
    while let Some(blob) = rx.recv().await {
        let kind = catalog.kind_of(&blob);
        if up.store.contains_blob(&blob).unwrap_or(false) {
            continue;
        }
        let started = Instant::now();
        let mut bytes = 0u64;
        let result = async {
            let (m, partial) = up.manifest(blob, Some((0, kind))).await?;
            let size = m.size;
            let mut s = Box::pin(
                up.read_range(blob, kind, m, partial, 0, size)
                    .map_err(|e| Arc::new(e.into()))?,
            );
            while let Some(piece) = s.next().await {
                bytes += piece?.len() as u64;
                if rate > 0 {
                    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            Ok::<_, Arc<super::UpstreamError>>(())
        }
        .await;
        match result {
            Ok(()) => {
                up.metrics.upstream_prefetched.inc();
                tracing::info!(blob = %blob.short(), bytes, secs = started.elapsed().as_secs_f64(), "pre-seeded");
            }
            Err(e) => tracing::warn!(blob = %blob.short(), error = %e, "pre-seeding failed"),
        }
    }
}
