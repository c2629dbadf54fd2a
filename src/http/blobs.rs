//! `GET|HEAD /v1/blobs/{hash}` (RFC 9110 ranged, conditional, cacheable downloads) and
//! `POST /v1/blobs` (operator upload, streamed into the store).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use tokio::sync::mpsc;

use super::auth::Operator;
use super::error::ApiError;
use super::range::{decide, etag, if_none_match_hits, if_range_allows, ByteRange, RangeDecision};
use super::AppState;
use crate::hash::Hash;
use crate::metrics::Metrics;
use crate::store::{Manifest, PutOutcome, Store, StoreError};
use crate::upstream::blob::Partial;
use crate::upstream::Upstream;

/// Content-addressed URLs never change meaning, so any cache may keep them for a year.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Upload frames buffered between the socket and the ingest thread.
const UPLOAD_QUEUE_FRAMES: usize = 16;

type ByteStream = BoxStream<'static, Result<Bytes, ApiError>>;

/// Where a blob's bytes come from: this node's store, or (on an edge) the store with
/// missing chunks filled from upstream.
#[derive(Clone)]
enum Source {
    Local(Arc<Store>),
    Edge(Arc<Upstream>, Hash, Option<Arc<Partial>>, &'static str),
}

impl Source {
    fn range(&self, m: Arc<Manifest>, start: u64, end: u64) -> Result<ByteStream, ApiError> {
        Ok(match self {
            Source::Local(s) => s.read_range(m, start, end)?.map_err(ApiError::from).boxed(),
            Source::Edge(u, h, p, kind) => u
                .read_range(*h, kind, m, p.clone(), start, end)?
                .map_err(ApiError::from)
                .boxed(),
        })
    }
}

pub fn parse_hash(text: &str) -> Result<Hash, ApiError> {
    text.parse()
        .map_err(|e: crate::hash::BadHash| ApiError::BadRequest(e.to_string()))
}

pub async fn get_blob(
    State(state): State<AppState>,
    method: Method,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    serve_blob(state, method, hash, headers).await
}

/// A stored blob with full RFC 9110 semantics (ranges, conditionals, HEAD); also what
/// `/v1/tuf/targets/...` serves once it has mapped a target name onto its blob.
pub async fn serve_blob(
    state: AppState,
    method: Method,
    hash: Hash,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (manifest, source) = match state.fills() {
        None => (
            state.store.manifest(hash).await?,
            Source::Local(state.store.clone()),
        ),
        Some(up) => {
            let first = first_offset(headers.get(header::RANGE).and_then(|v| v.to_str().ok()));
            let kind = state.catalog.kind_of(&hash);
            let (m, partial) = up.manifest(hash, Some((first, kind))).await?;
            match partial {
                // An origin's local blob is whole here: the plain local path.
                None if !up.is_edge() => (m, Source::Local(state.store.clone())),
                partial => (m, Source::Edge(up.clone(), hash, partial, kind)),
            }
        }
    };
    let size = manifest.size;
    let tag = etag(&hash.to_hex());
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());

    let mut resp = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::CACHE_CONTROL, CACHE_IMMUTABLE)
        .header(header::ACCEPT_RANGES, "bytes");
    if text(header::IF_NONE_MATCH).is_some_and(|h| if_none_match_hits(h, &tag)) {
        return resp
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(internal);
    }
    let mut range = text(header::RANGE);
    if let Some(if_range) = text(header::IF_RANGE) {
        if !if_range_allows(if_range, &tag) {
            range = None;
        }
    }
    let head = method == Method::HEAD;
    let mut decision = decide(range, size);
    if let RangeDecision::Partial(ranges) = &decision {
        if ranges.len() > 1 && multirange_too_costly(&manifest, ranges) {
            // As nginx past `max_ranges`: served as if no Range had been asked for (work
            // in proportion to the bytes sent).
            decision = RangeDecision::Full;
        }
    }
    let (status, length, body) = match decision {
        RangeDecision::Unsatisfiable => {
            resp = resp.header(header::CONTENT_RANGE, format!("bytes */{size}"));
            (StatusCode::RANGE_NOT_SATISFIABLE, 0, None)
        }
        RangeDecision::Full => {
            resp = resp.header(header::CONTENT_TYPE, "application/octet-stream");
            let body = (!head)
                .then(|| source.range(manifest.clone(), 0, size))
                .transpose()?;
            (StatusCode::OK, size, body)
        }
        RangeDecision::Partial(ranges) if ranges.len() == 1 => {
            let r = ranges[0];
            resp = resp
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_RANGE, r.content_range(size));
            let body = (!head)
                .then(|| source.range(manifest.clone(), r.start, r.end))
                .transpose()?;
            (StatusCode::PARTIAL_CONTENT, r.len(), body)
        }
        RangeDecision::Partial(ranges) => {
            let boundary = format!("update-edge-{:032x}", rand::random::<u128>());
            resp = resp.header(
                header::CONTENT_TYPE,
                format!("multipart/byteranges; boundary={boundary}"),
            );
            let (length, body) = multipart(&source, manifest.clone(), &ranges, &boundary);
            (StatusCode::PARTIAL_CONTENT, length, (!head).then_some(body))
        }
    };
    resp = resp.status(status).header(header::CONTENT_LENGTH, length);
    let body = match body {
        None => Body::empty(),
        Some(stream) => {
            let kind = state.catalog.kind_of(&hash);
            counted(primed(stream).await?, state.metrics.clone(), kind)
        }
    };
    resp.body(body).map_err(internal)
}

/// Chunk bytes a multi-range request may make the node read and verify at most before
/// it is answered whole instead (when also over [`MULTIRANGE_AMPLIFICATION`] × asked).
pub const MULTIRANGE_WORK_BYTES: u64 = 8 << 20;
/// Chunk bytes read per byte asked for, past which a costly multi-range request is
/// answered whole.
pub const MULTIRANGE_AMPLIFICATION: u64 = 4;

/// Whether serving `ranges` would read far more than it sends: 64 one-byte ranges on
/// 64 cold 1 MiB chunks read and hash 64 MiB for a 7 KB answer.
fn multirange_too_costly(manifest: &Manifest, ranges: &[crate::http::range::ByteRange]) -> bool {
    let spans: Vec<(u64, u64)> = ranges.iter().map(|r| (r.start, r.end)).collect();
    let touched = manifest.chunk_bytes_under(&spans);
    let asked: u64 = ranges.iter().map(|r| r.len()).sum();
    touched > MULTIRANGE_WORK_BYTES && touched > asked.saturating_mul(MULTIRANGE_AMPLIFICATION)
}

/// Where a request will start reading, from its Range header before the size is known
/// (`bytes=N-…` → N; suffix, malformed or absent → 0). Only a hint for an edge's fill.
fn first_offset(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.trim().strip_prefix("bytes="))
        .and_then(|r| r.split([',', '-']).next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn internal(e: http::Error) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Pulls the first piece before the head is sent, so a missing or corrupt first chunk
/// becomes a 500 rather than a truncated 200.
async fn primed(mut s: ByteStream) -> Result<ByteStream, ApiError> {
    match s.next().await {
        None => Ok(stream::empty().boxed()),
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(stream::once(async { Ok(first) }).chain(s).boxed()),
    }
}

/// The response body: counts bytes as they are handed to the connection. A later chunk
/// failing verification aborts the connection, so a client never takes it as complete.
fn counted(s: ByteStream, metrics: Arc<Metrics>, kind: &'static str) -> Body {
    let by_kind = metrics
        .artifact_bytes
        .get_or_create(&crate::metrics::KindLabel { kind: kind.into() })
        .clone();
    Body::from_stream(
        s.inspect_ok(move |b| {
            metrics.bytes_served.inc_by(b.len() as u64);
            by_kind.inc_by(b.len() as u64);
        })
        .map_err(|e| {
            tracing::error!(error = %e, "download aborted");
            std::io::Error::other(e.to_string())
        }),
    )
}

/// `multipart/byteranges` body (RFC 9110 §14.6) and its exact length.
fn multipart(
    source: &Source,
    manifest: Arc<Manifest>,
    ranges: &[ByteRange],
    boundary: &str,
) -> (u64, ByteStream) {
    let size = manifest.size;
    let mut length = 0u64;
    let mut parts: Vec<ByteStream> = Vec::new();
    for r in ranges {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: {}\r\n\r\n",
            r.content_range(size)
        );
        length += head.len() as u64 + r.len();
        parts.push(stream::once(async move { Ok(Bytes::from(head)) }).boxed());
        let source = source.clone();
        let manifest = manifest.clone();
        let r = *r;
        // Lazily opened: each part starts reading only when the previous one is sent.
        parts.push(
            stream::once(async move { source.range(manifest, r.start, r.end) })
                .try_flatten()
                .boxed(),
        );
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    length += tail.len() as u64;
    parts.push(stream::once(async move { Ok(Bytes::from(tail)) }).boxed());
    (length, stream::iter(parts).flatten().boxed())
}

/// `GET /v1/blobs/{hash}/chunks`: the chunk list devices verify pieces against.
pub async fn get_chunks(
    State(state): State<AppState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let (bytes, list_hash) = state.checker.chunk_lists.get(hash).await?;
    let tag = HeaderValue::from_str(&etag(&list_hash.to_hex()))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (header::CACHE_CONTROL, immutable_cache_control()),
        (header::ETAG, tag),
    ];
    Ok((headers, bytes).into_response())
}

pub async fn post_blob(
    _: Operator,
    State(state): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    let _guard = state.store.gc_guard().await;
    let outcome = ingest_body(&state.store, body, UploadLimits::from(&*state.config)).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)).into_response())
}

/// How much and how slowly a client may upload (`server.max_upload_bytes`,
/// `server.upload_idle_timeout`).
#[derive(Clone)]
pub struct UploadLimits {
    pub max_bytes: u64,
    pub idle: std::time::Duration,
    /// The data dir, whose free space is watched, and the space to keep free there
    /// (`store.min_free_bytes`).
    pub data_dir: std::path::PathBuf,
    pub min_free: u64,
}

impl From<&crate::config::Config> for UploadLimits {
    fn from(c: &crate::config::Config) -> Self {
        UploadLimits {
            max_bytes: c.server.max_upload_bytes.0,
            idle: std::time::Duration::from_secs(c.server.upload_idle_timeout.0),
            data_dir: c.server.data_dir.clone(),
            min_free: c.store.min_free_bytes.0,
        }
    }
}

/// Free space is looked at again after this many more bytes of an upload.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

/// `507` unless the data dir has `need` bytes free beyond `store.min_free_bytes`.
pub fn ensure_space(limits: &UploadLimits, need: u64) -> Result<(), ApiError> {
    let Some(free) = crate::store::free_bytes(&limits.data_dir) else {
        return Ok(());
    };
    let want = need.saturating_add(limits.min_free);
    if free < want {
        return Err(ApiError::NoSpace(format!(
            "not enough free space on the node's data dir: {free} bytes free, {want} needed \
             ({need} for this upload, store.min_free_bytes {} kept free); nothing was kept",
            limits.min_free
        )));
    }
    Ok(())
}

enum Frame {
    Data(Bytes),
    End,
}

/// Streams a request body into the store on a blocking thread, with a bounded queue in
/// between (backpressure to the client). The blob is committed only if the body ended
/// cleanly: a dropped upload commits nothing.
pub async fn ingest_body(
    store: &Arc<Store>,
    body: Body,
    limits: UploadLimits,
) -> Result<PutOutcome, ApiError> {
    // A declared length over the cap is refused before a byte is stored (the unread
    // rest is drained, bounded, by the lingering close).
    if http_body::Body::size_hint(&body).lower() > limits.max_bytes {
        return Err(ApiError::TooLarge(format!(
            "upload over server.max_upload_bytes ({} bytes); nothing was kept",
            limits.max_bytes
        )));
    }
    // The engine writes what it is given twice (its log, then its files) before a
    // flush frees the log: that much room, beyond the reserve, or nothing is started.
    ensure_space(
        &limits,
        http_body::Body::size_hint(&body).lower().saturating_mul(2),
    )?;
    let (tx, mut rx) = mpsc::channel::<Frame>(UPLOAD_QUEUE_FRAMES);
    let st = store.clone();
    let worker = tokio::task::spawn_blocking(move || -> Result<Option<PutOutcome>, StoreError> {
        let mut w = st.writer();
        while let Some(frame) = rx.blocking_recv() {
            match frame {
                Frame::Data(b) => w.write(&b)?,
                Frame::End => return w.finish().map(Some),
            }
        }
        Ok(None)
    });
    let mut frames = body.into_data_stream();
    let mut body_error = None;
    let mut received = 0u64;
    loop {
        let frame = match tokio::time::timeout(limits.idle, frames.next()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                body_error = Some(ApiError::Timeout(format!(
                    "upload stalled: no byte for {} s; nothing was kept",
                    limits.idle.as_secs()
                )));
                break;
            }
        };
        match frame {
            Ok(b) => {
                let before = received;
                received += b.len() as u64;
                if received / SPACE_CHECK_EVERY != before / SPACE_CHECK_EVERY {
                    if let Err(e) = ensure_space(&limits, 0) {
                        body_error = Some(e);
                        break;
                    }
                }
                if received > limits.max_bytes {
                    body_error = Some(ApiError::TooLarge(format!(
                        "upload over server.max_upload_bytes ({} bytes); nothing was kept",
                        limits.max_bytes
                    )));
                    break;
                }
                if tx.send(Frame::Data(b)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                body_error = Some(ApiError::BadRequest(format!(
                    "upload body interrupted: {e}"
                )));
                break;
            }
        }
    }
    if body_error.is_none() {
        let _ = tx.send(Frame::End).await;
    }
    drop(tx);
    let result = worker
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(e) = body_error {
        return Err(e);
    }
    result?.ok_or_else(|| ApiError::Internal("ingest ended without a result".into()))
}

/// `HeaderValue` for static strings used by other handlers.
pub fn immutable_cache_control() -> HeaderValue {
    HeaderValue::from_static(CACHE_IMMUTABLE)
}

#[cfg(test)]
mod tests {
    use super::first_offset;

    #[test]
    fn the_first_offset_hint_comes_from_the_first_range_or_is_zero() {
        for (h, want) in [
            (None, 0),
            (Some("bytes=100-199"), 100),
            (Some("bytes=5000-"), 5000),
            (Some("bytes=7-8, 1-2"), 7),
            (Some("bytes=-500"), 0),
            (Some("items=3-4"), 0),
            (Some("bytes=x-1"), 0),
        ] {
            assert_eq!(first_offset(h), want, "{h:?}");
        }
    }
}
