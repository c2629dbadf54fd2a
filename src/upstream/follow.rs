//! Catalog replication: the edge long-polls upstream's change feed
//! (`GET /v1/catalog/changes?after=SEQ&wait=S`, bearer `edge.token`) and applies each
//! page atomically together with its position, so a crash never skips or half-applies
//! one. While upstream is unreachable the edge keeps what it has and retries with
//! backoff; what it answers from then is bounded by the replicated timestamp's expiry.

use std::sync::Arc;
use std::time::Duration;

use super::{Upstream, UpstreamError};
use crate::catalog::model::{DeltaRecord, DeltaStatus};
use crate::metrics::SourceLabel;
use crate::store::changes::ChangePage;

/// Where the edge keeps its position in upstream's feed (meta column family).
pub const CURSOR_KEY: &[u8] = b"edge/upstream-seq";
/// Largest feed page accepted (a first sync carries the whole catalog and metadata).
const MAX_PAGE_BYTES: usize = 512 << 20;
/// Backoff between failed polls: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_LAST: Duration = Duration::from_secs(15);

impl Upstream {
    /// Reads one page of upstream's feed after this edge's position (waiting up to
    /// `wait` for a change) and applies it. Returns the page.
    pub async fn sync_once(&self, wait: Duration) -> Result<ChangePage, UpstreamError> {
        let r = self.sync_inner(wait).await;
        self.note(&r);
        r
    }

    async fn sync_inner(&self, wait: Duration) -> Result<ChangePage, UpstreamError> {
        let store = self.store.clone();
        let after = crate::store::blocking(move || store.cursor(CURSOR_KEY)).await?;
        let path = format!("v1/catalog/changes?after={after}&wait={}", wait.as_secs());
        let resp = self.get_waiting(&path, wait).await?;
        let url = resp.url().to_string();
        let bytes = self.body(resp, MAX_PAGE_BYTES).await?;
        let page: ChangePage = serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Body {
            url,
            message: format!("change feed page: {e}"),
        })?;
        if page.reset || !page.changes.is_empty() || page.next != after {
            let store = self.store.clone();
            let p = page.clone();
            crate::store::blocking(move || store.apply_changes(&p, CURSOR_KEY)).await?;
            let ready = page
                .changes
                .iter()
                .filter(|c| c.cf == "deltas")
                .filter_map(|c| c.value.as_deref())
                .filter_map(|v| serde_json::from_slice::<DeltaRecord>(v).ok())
                .filter(|d| d.status == DeltaStatus::Ready && d.delta.is_some())
                .count();
            self.metrics
                .deltas_obtained
                .get_or_create(&SourceLabel {
                    source: "upstream".into(),
                })
                .inc_by(ready as u64);
        }
        self.metrics.upstream_replicated_seq.set(page.next as i64);
        self.metrics
            .upstream_last_sync
            .set(crate::protocol::unix_now() as i64);
        Ok(page)
    }

    /// Follows the feed until the task is dropped, calling `applied` after every page
    /// that changed something (so in-memory views are reloaded).
    pub async fn follow(
        self: Arc<Self>,
        wait: Duration,
        applied: impl Fn(&ChangePage) + Send + 'static,
    ) {
        let mut backoff = RETRY_FIRST;
        loop {
            match self.sync_once(wait).await {
                Ok(page) => {
                    backoff = RETRY_FIRST;
                    if page.reset || !page.changes.is_empty() {
                        applied(&page);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "change feed unavailable; serving the last replicated state");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_LAST);
                }
            }
        }
    }

    /// Syncs until the first success (a new edge has nothing to serve before it),
    /// logging each failure; gives up on an answer no retry can change (a wrong token:
    /// 401/403), so a misconfigured edge stops with the reason instead of waiting.
    pub async fn first_sync(&self) -> Result<ChangePage, UpstreamError> {
        let mut backoff = RETRY_FIRST;
        loop {
            match self.sync_once(Duration::ZERO).await {
                Ok(page) => return Ok(page),
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for upstream to replicate the catalog from");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_LAST);
                }
            }
        }
    }
}
