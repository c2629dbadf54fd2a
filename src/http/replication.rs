//! What edges read from their upstream: `GET /v1/chunks/{blake3}` (one chunk's bytes,
//! immutable, so any HTTP cache may keep it) and `GET /v1/catalog/changes?after=SEQ`
//! (the change feed, long-polled; edge-scoped token).

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header;
use http::request::Parts;

use super::auth::{authorize, bearer};
use super::blobs::{immutable_cache_control, parse_hash};
use super::error::ApiError;
use super::range::etag;
use super::AppState;

/// Longest a feed request may wait for a change.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// `GET|HEAD /v1/chunks/{hash}`: a stored chunk, verified (filled from upstream on an
/// edge, so edges can be chained).
pub async fn get_chunk(
    State(s): State<AppState>,
    Path(hash): Path<String>,
    Query(q): Query<ChunkQuery>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let bytes = match s.fills() {
        None => s.store.chunk(hash).await.map_err(|e| match e {
            crate::store::StoreError::ChunkMissing(h) => {
                ApiError::NotFound(format!("chunk {h} is not stored here"))
            }
            e => e.into(),
        })?,
        Some(up) => up.chunk(hash, "other").await?,
    };
    s.metrics.bytes_served.inc_by(bytes.len() as u64);
    if q.format == Format::Bao {
        let outboard = s.store.outboard(hash, bytes.len() as u64).await;
        let (length, frames, start) = bao_from(&bytes, outboard.as_deref(), q.from);
        return Ok(framed_response(
            crate::protocol::bao::CONTENT_TYPE,
            length,
            frames,
            start,
        ));
    }
    if q.from.is_some() {
        return Err(ApiError::BadRequest(
            "from= needs format=bao (a raw chunk is sent whole)".into(),
        ));
    }
    let tag = http::HeaderValue::from_str(&etag(&hash.to_hex()))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, immutable_cache_control()),
            (header::ETAG, tag),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /v1/blobs/{hash}/manifest`: the blob's size and chunk list in the store's binary
/// form (36 bytes per chunk, no hex), what an edge fetches to serve a blob it lacks.
/// Edges check it like the JSON chunk list: it must cover the blob exactly, and every
/// chunk is verified against its hash when it arrives.
pub async fn get_manifest(
    State(s): State<AppState>,
    Path(hash): Path<String>,
    Query(q): Query<ManifestQuery>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let m = match s.fills() {
        None => s.store.manifest(hash).await?,
        Some(up) => up.manifest(hash, None).await?.0,
    };
    let list = bytes::Bytes::from(m.encode());
    let bao = q.format == Format::Bao;
    // The chunk an edge's first reader needs rides along: one round trip, not two. It
    // goes out as its own frames after the list, not copied behind it; bao-encoded, it
    // starts at the group holding the offset.
    let mut from = None;
    let chunk = match q.with_chunk_at.filter(|at| *at < m.size) {
        None => None,
        Some(at) => {
            let i = m.chunk_at(at);
            from = Some(at - m.start_of(i));
            let c = m.chunks[i].hash;
            let bytes = match s.fills() {
                None => s.store.chunk(c).await?,
                Some(up) => up.chunk(c, "other").await?,
            };
            s.metrics.bytes_served.inc_by(bytes.len() as u64);
            let outboard = match bao {
                true => s.store.outboard(c, bytes.len() as u64).await,
                false => None,
            };
            Some((bytes, outboard))
        }
    };
    let (length, chunk_frames, start) = match chunk {
        None => (0, Vec::new(), 0),
        Some((c, outboard)) if bao => bao_from(&c, outboard.as_deref(), from),
        Some((c, _)) => (c.len() as u64, vec![c], 0),
    };
    let length = list.len() as u64 + length;
    let frames = std::iter::once(list).chain(chunk_frames).collect();
    let content_type = if bao {
        crate::protocol::bao::CONTENT_TYPE
    } else {
        "application/octet-stream"
    };
    Ok(framed_response(content_type, length, frames, start))
}

/// A chunk's bao encoding for a reader that wants byte `from` first: its length, its
/// frames and the group it starts at.
fn bao_from(
    chunk: &bytes::Bytes,
    outboard: Option<&[u8]>,
    from: Option<u64>,
) -> (u64, Vec<bytes::Bytes>, u64) {
    use crate::protocol::bao;
    let size = chunk.len() as u64;
    let start = bao::group_start(size, from.unwrap_or(0));
    // `start` is a group start: the functions below map it to itself.
    (
        bao::encoded_len_from(size, start),
        bao::encode_from(chunk, outboard, start),
        start,
    )
}

/// An immutable body of `length` bytes sent as `frames` (a chunk's groups are not copied
/// into one buffer); `start`, when not 0, is where its bao encoding starts (a
/// parameter of its media type).
fn framed_response(
    content_type: &'static str,
    length: u64,
    frames: Vec<bytes::Bytes>,
    start: u64,
) -> Response {
    let frames = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>));
    let content_type = match start {
        0 => http::HeaderValue::from_static(content_type),
        _ => http::HeaderValue::from_str(&crate::protocol::bao::content_type_from(start))
            .unwrap_or_else(|_| http::HeaderValue::from_static(content_type)),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, immutable_cache_control()),
            (header::CONTENT_LENGTH, http::HeaderValue::from(length)),
        ],
        axum::body::Body::from_stream(frames),
    )
        .into_response()
}

/// How a chunk is sent (`?format=`): `raw`, its bytes (the default), or `bao`,
/// interleaved with its blake3 tree so the receiver verifies it 16 KiB at a time (see
/// [`crate::protocol::bao`]). Anything else is a 400.
#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Raw,
    Bao,
}

#[derive(serde::Deserialize)]
pub struct ChunkQuery {
    #[serde(default)]
    format: Format,
    /// With `format=bao`: the byte the reader wants first; the encoding starts at the
    /// 16 KiB group holding it and sends the groups before it last.
    from: Option<u64>,
}

#[derive(serde::Deserialize)]
pub struct ManifestQuery {
    /// Also send the chunk holding this byte offset, after the manifest.
    with_chunk_at: Option<u64>,
    /// How that chunk is sent.
    #[serde(default)]
    format: Format,
}

/// A reader of the change feed: the operator token or the replication token.
pub struct Replicator;

impl FromRequestParts<AppState> for Replicator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(parts);
        let repl = &s.config.server.replication_token;
        if !repl.is_empty() && authorize(repl, presented).is_ok() {
            return Ok(Replicator);
        }
        authorize(&s.config.server.admin_token, presented).map(|_| Replicator)
    }
}

#[derive(serde::Deserialize)]
pub struct FeedQuery {
    #[serde(default)]
    after: u64,
    /// Seconds to wait for a change when there is none after `after`.
    #[serde(default)]
    wait: u64,
}

/// `GET /v1/catalog/changes?after=SEQ&wait=S`: the replicated records changed after
/// `SEQ`, or a full snapshot when `SEQ` is 0 or older than the log keeps.
pub async fn get_changes(
    _: Replicator,
    State(s): State<AppState>,
    Query(q): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_secs(q.wait).min(MAX_WAIT);
    if q.after == s.store.change_head() && !wait.is_zero() {
        let mut rx = s.store.watch_changes();
        let _ = tokio::time::timeout(wait, rx.wait_for(|head| *head != q.after)).await;
    }
    let store = s.store.clone();
    let page = crate::store::blocking(move || store.changes_after(q.after)).await?;
    Ok(Json(page).into_response())
}
