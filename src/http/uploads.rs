//! Resumable publishing, the way content-addressed tools push (restic, casync, ostree):
//! the client chunks the payload with the node's own chunker, asks which chunks the node
//! lacks, uploads only those, one request each, then publishes the build by its chunk
//! list. An interrupted publish resumes by running it again: what arrived is kept (and
//! swept by GC if the publish never completes).
//!
//! - `GET /v1/chunking`: the node's chunk parameters and query limits.
//! - `POST /v1/chunks/missing` `{"chunks": [hex, …]}` → `{"missing": [hex, …]}`.
//! - `PUT /v1/chunks/{hash}`: one chunk's bytes, verified against its address.
//! - `PUT /v1/products/{p}/builds/{v}` with `Content-Type:` [`CHUNK_LIST_TYPE`]: the body
//!   is the blob's chunk list (`GET /v1/blobs/{hash}/chunks`'s format); `409` with
//!   `missing` when chunks are not there.
//!
//! Chunk uploads are not in the audit log (a publish is thousands of them, and they change
//! nothing a device sees); the build's `PUT` that uses them is.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::auth::Operator;
use super::blobs::parse_hash;
use super::error::ApiError;
use super::AppState;
use crate::hash::Hash;
use crate::protocol::chunklist::ChunkList;
use crate::store::manifest::ChunkRef;
use crate::store::{Assembled, PutOutcome};

/// The media type of a publish by chunk list.
pub const CHUNK_LIST_TYPE: &str = "application/vnd.update-edge.chunk-list+json";

/// Most hashes one `POST /v1/chunks/missing` may ask about.
pub const MAX_QUERY: usize = 4096;

/// Largest chunk list a publish may send (about 500,000 chunks: 120 GiB at the default
/// 256 KiB average).
pub const MAX_LIST_BYTES: usize = 64 << 20;

pub async fn get_chunking(_: Operator, State(s): State<AppState>) -> Response {
    let p = s.store.chunk_params();
    Json(json!({ "min": p.min, "avg": p.avg, "max": p.max, "max_query": MAX_QUERY, "chunk_list_type": CHUNK_LIST_TYPE }))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MissingBody {
    chunks: Vec<Hash>,
}

pub async fn post_missing(
    _: Operator,
    State(s): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    // 4096 hex hashes and their quotes and commas, with room for whitespace.
    let body = axum::body::to_bytes(body, MAX_QUERY * 80 + 1024)
        .await
        .map_err(|e| ApiError::TooLarge(format!("query over {MAX_QUERY} hashes: {e}")))?;
    let b: MissingBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if b.chunks.len() > MAX_QUERY {
        return Err(ApiError::BadRequest(format!(
            "{} hashes asked about; at most {MAX_QUERY} per request",
            b.chunks.len()
        )));
    }
    let store = s.store.clone();
    let missing = crate::store::blocking(move || {
        let mut out = Vec::new();
        for h in b.chunks {
            if store.chunk_len(&h)?.is_none() {
                out.push(h);
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({ "missing": missing })).into_response())
}

pub async fn put_chunk(
    _: Operator,
    State(s): State<AppState>,
    Path(hash): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let max = s.store.chunk_params().max;
    let too_large = || ApiError::TooLarge(format!("a chunk is at most {max} bytes here"));
    if http_body::Body::size_hint(&body).lower() > max as u64 {
        return Err(too_large());
    }
    let limits = super::blobs::UploadLimits::from(&*s.config);
    super::blobs::ensure_space(&limits, 2 * max as u64)?;
    let bytes = tokio::time::timeout(limits.idle, axum::body::to_bytes(body, max))
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "upload stalled: not complete after {} s; nothing was kept",
                limits.idle.as_secs()
            ))
        })?
        .map_err(|e| super::error::body_read_error(e, too_large, "upload body interrupted"))?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("an empty chunk".into()));
    }
    let store = s.store.clone();
    let created = crate::store::blocking(move || {
        let (actual, outboard) = crate::protocol::bao::outboard(&bytes);
        if actual != hash {
            return Ok(Err(actual));
        }
        let _guard = store.gc_guard_blocking();
        store.put_uploaded_chunk(hash, bytes, outboard).map(Ok)
    })
    .await?
    .map_err(|actual| {
        ApiError::BadRequest(format!(
            "the body hashes to {actual}, not {hash}; nothing was kept"
        ))
    })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "hash": hash, "created": created }))).into_response())
}

/// True when a publish sends a chunk list instead of the payload.
pub fn is_chunk_list(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(CHUNK_LIST_TYPE))
}

/// The chunk list of a publish, checked for shape (contiguous, each chunk within the
/// node's bounds, sizes adding up).
fn parse_list(bytes: &[u8], max_chunk: usize) -> Result<(Hash, Vec<ChunkRef>), ApiError> {
    let list: ChunkList = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid chunk list: {e}")))?;
    let mut at = 0u64;
    let mut refs = Vec::with_capacity(list.chunks.len());
    for (i, c) in list.chunks.iter().enumerate() {
        if c.offset != at {
            return Err(ApiError::BadRequest(format!(
                "chunk list entry {i} starts at {}, expected {at}",
                c.offset
            )));
        }
        if c.length == 0 || c.length as usize > max_chunk {
            return Err(ApiError::BadRequest(format!(
                "chunk list entry {i} is {} bytes; chunks here are 1..={max_chunk}",
                c.length
            )));
        }
        at += u64::from(c.length);
        refs.push(ChunkRef {
            hash: c.blake3,
            len: c.length,
        });
    }
    if at != list.size {
        return Err(ApiError::BadRequest(format!(
            "chunk list covers {at} bytes but declares size {}",
            list.size
        )));
    }
    Ok((list.blob, refs))
}

/// Reads a publish's chunk list and makes its blob from stored chunks: `409` naming
/// missing chunks, `400` when the chunks do not make the declared blob (nothing is
/// committed then).
pub async fn assemble_body(s: &AppState, body: Body) -> Result<PutOutcome, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_LIST_BYTES)
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the chunk list: {e}")))?;
    let (declared, refs) = parse_list(&bytes, s.store.chunk_params().max)?;
    let size: u64 = refs.iter().map(|c| u64::from(c.len)).sum();
    let max = s.config.server.max_upload_bytes.0;
    if size > max {
        return Err(ApiError::TooLarge(format!(
            "a build of {size} bytes is over server.max_upload_bytes ({max} bytes); nothing was committed"
        )));
    }
    let store = s.store.clone();
    let assembled = crate::store::blocking(move || store.assemble(refs, declared)).await?;
    match assembled {
        Assembled::Blob(put) => Ok(put),
        Assembled::Missing(missing) => Err(ApiError::MissingChunks(missing)),
        Assembled::WrongLength {
            chunk,
            stored,
            listed,
        } => Err(ApiError::BadRequest(format!(
            "chunk {chunk} is {stored} bytes, the list says {listed}; nothing was committed"
        ))),
        Assembled::WrongBlob { actual } => Err(ApiError::BadRequest(format!(
            "the chunks make blob {actual}, not the declared {declared}; nothing was committed"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_list_must_be_contiguous_bounded_and_add_up() {
        let h = Hash::of(b"x");
        let list = |entries: &[(u64, u32)], size: u64| {
            let chunks: Vec<_> = entries
                .iter()
                .map(|(o, l)| json!({"offset": o, "length": l, "blake3": h}))
                .collect();
            serde_json::to_vec(&json!({"blob": h, "size": size, "chunks": chunks})).unwrap()
        };
        let (blob, refs) = parse_list(&list(&[(0, 10), (10, 5)], 15), 16).unwrap();
        assert_eq!((blob, refs.len(), refs[1].len), (h, 2, 5));
        for (bad, why) in [
            (list(&[(0, 10), (11, 5)], 16), "starts at 11"),
            (list(&[(0, 10), (10, 0)], 10), "is 0 bytes"),
            (list(&[(0, 17)], 17), "is 17 bytes"),
            (list(&[(0, 10)], 11), "declares size 11"),
        ] {
            let e = parse_list(&bad, 16).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        assert!(parse_list(b"{}", 16).is_err());
    }

    #[test]
    fn only_the_chunk_list_media_type_selects_it() {
        let mut h = HeaderMap::new();
        assert!(!is_chunk_list(&h));
        h.insert(
            http::header::CONTENT_TYPE,
            "application/octet-stream".parse().unwrap(),
        );
        assert!(!is_chunk_list(&h));
        h.insert(
            http::header::CONTENT_TYPE,
            format!("{CHUNK_LIST_TYPE}; charset=utf-8").parse().unwrap(),
        );
        assert!(is_chunk_list(&h));
    }
}
