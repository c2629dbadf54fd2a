//! `update-edge admin`: drives a running node's operator API from anywhere
//! (`--server URL --token-file F`). Publishing is resumable: the file is chunked with the
//! node's own chunker, only chunks the node lacks are uploaded (each on its own request,
//! retried), and the build is published by its chunk list — run the same command again
//! after a drop and it sends only what is still missing.
//!
//! Exit status: 0 done; 1 the node refused or failed the request (its message on
//! stderr); 2 bad usage or local input (a file that cannot be read, a bad token file);
//! 3 the node could not be reached (connection refused, timeout). `--json` prints the
//! node's JSON answer on stdout instead of text.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};

use super::{EXIT_OK, EXIT_PROBLEM, EXIT_USAGE};
use crate::hash::Hash;
use crate::protocol::chunklist::{ChunkEntry, ChunkList};
use crate::store::chunker::{ChunkParams, Chunker};

/// Exit status: the node could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Chunk uploads in flight at once.
const UPLOADS_IN_FLIGHT: usize = 4;
/// Tries per request on a network error or a 500, 502, 503 or 504.
const TRIES: u32 = 5;
/// Times a publish is retried after the node reports chunks missing (swept by a GC
/// between upload and publish).
const PUBLISH_ROUNDS: u32 = 3;

/// A failed admin command and the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("{status}: {message}")]
    Refused {
        status: reqwest::StatusCode,
        message: String,
        body: Value,
    },
    #[error("cannot reach {0}")]
    Unreachable(String, #[source] reqwest::Error),
}

impl AdminError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Usage(_) => EXIT_USAGE,
            AdminError::Refused { .. } => EXIT_PROBLEM,
            AdminError::Unreachable(..) => EXIT_UNREACHABLE,
        }
    }
}

/// What every admin command needs: where the node is and the operator token.
pub struct Remote {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Remote {
    /// `server` is the node's base URL; the token is the first line of `token_file`.
    pub fn new(server: &str, token_file: &Path, timeout: Duration) -> Result<Self, AdminError> {
        let text = std::fs::read_to_string(token_file).map_err(|e| {
            AdminError::Usage(format!("reading token file {}: {e}", token_file.display()))
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(AdminError::Usage(format!(
                "token file {} is empty",
                token_file.display()
            )));
        }
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(AdminError::Usage(format!(
                "--server {server:?}: give a URL such as http://origin:8080"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(timeout)
            .build()
            .map_err(|e| AdminError::Usage(format!("HTTP client: {e}")))?;
        Ok(Remote {
            base: server.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request (rebuilt for each try), retrying network errors and 500/502/503/504 with
    /// backoff; returns the status and the JSON body (Null when empty).
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Value), AdminError> {
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=TRIES {
            let last = attempt == TRIES;
            match build().bearer_auth(&self.token).send().await {
                Ok(r) => {
                    let status = r.status();
                    let text = match r.text().await {
                        Ok(t) => t,
                        Err(e) if !last => {
                            tracing::debug!("{what}: reading the answer: {e}; retrying");
                            tokio::time::sleep(wait).await;
                            wait *= 2;
                            continue;
                        }
                        Err(e) => return Err(AdminError::Unreachable(self.base.clone(), e)),
                    };
                    let body: Value = if text.trim().is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    };
                    // Failures that may pass; a full disk (507) will not by itself.
                    let transient = matches!(status.as_u16(), 500 | 502 | 503 | 504);
                    if transient && !last {
                        tracing::debug!("{what}: {status}; retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                        continue;
                    }
                    if status.is_success() {
                        return Ok((status, body));
                    }
                    let message = body
                        .get("error")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| body.to_string());
                    return Err(AdminError::Refused {
                        status,
                        message: format!("{what}: {message}"),
                        body,
                    });
                }
                Err(e) if !last => {
                    tracing::debug!("{what}: {e}; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(AdminError::Unreachable(self.base.clone(), e)),
            }
        }
        unreachable!("the last try returns")
    }

    async fn get(&self, path: &str) -> Result<Value, AdminError> {
        let url = self.url(path);
        Ok(self
            .send(&format!("GET {path}"), || self.http.get(&url))
            .await?
            .1)
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(reqwest::StatusCode, Value), AdminError> {
        let url = self.url(path);
        self.send(&format!("{method} {path}"), || {
            let r = self.http.request(method.clone(), &url);
            match body {
                Some(b) => r.json(b),
                None => r,
            }
        })
        .await
    }
}

/// One chunk of the file being published.
#[derive(Clone, Copy)]
struct Piece {
    offset: u64,
    len: u32,
    hash: Hash,
}

/// What a publish did, for the summary line.
#[derive(Default)]
struct Tally {
    chunks: u64,
    bytes: u64,
    uploaded_chunks: u64,
    uploaded_bytes: u64,
}

/// Chunks and hashes `file` on a thread of its own, sending batches of at most `batch`
/// pieces; returns the whole file's blake3 and size when it has read it all.
fn chunk_file(
    file: PathBuf,
    params: ChunkParams,
    batch: usize,
    tx: tokio::sync::mpsc::Sender<Vec<Piece>>,
) -> std::thread::JoinHandle<std::io::Result<(Hash, u64)>> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::open(&file)?;
        let chunker = Chunker::new(params);
        let mut whole = blake3::Hasher::new();
        // Refilled to 4 × max whenever less than max is left (a cut needs max bytes
        // unless the file ends), so moving the unread rest costs at most a third.
        let mut window: Vec<u8> = Vec::with_capacity(4 * params.max);
        let mut pos = 0usize;
        let mut offset = 0u64;
        let mut out = Vec::with_capacity(batch);
        let mut eof = false;
        loop {
            if !eof && window.len() - pos < params.max {
                window.drain(..pos);
                pos = 0;
                while !eof && window.len() < 4 * params.max {
                    let at = window.len();
                    window.resize(4 * params.max, 0);
                    let n = f.read(&mut window[at..])?;
                    window.truncate(at + n);
                    eof = n == 0;
                }
            }
            if pos == window.len() {
                break;
            }
            let n = chunker.cut(&window[pos..]);
            let piece = &window[pos..pos + n];
            whole.update(piece);
            out.push(Piece {
                offset,
                len: n as u32,
                hash: Hash::of(piece),
            });
            offset += n as u64;
            pos += n;
            if out.len() == batch && tx.blocking_send(std::mem::take(&mut out)).is_err() {
                return Err(std::io::Error::other("publish stopped"));
            }
        }
        if !out.is_empty() && tx.blocking_send(out).is_err() {
            return Err(std::io::Error::other("publish stopped"));
        }
        Ok((Hash::from(whole.finalize()), offset))
    })
}

impl Remote {
    /// Uploads those of `pieces` the node lacks; returns how many chunks and bytes were sent.
    async fn upload_missing(
        &self,
        file: &Arc<std::fs::File>,
        pieces: &[Piece],
        progress: &indicatif::ProgressBar,
    ) -> Result<(u64, u64), AdminError> {
        let hashes: Vec<Hash> = pieces.iter().map(|p| p.hash).collect();
        let (_, answer) = self
            .json(
                reqwest::Method::POST,
                "/v1/chunks/missing",
                Some(&json!({ "chunks": hashes })),
            )
            .await?;
        let missing: std::collections::HashSet<Hash> = answer
            .get("missing")
            .cloned()
            .and_then(|m| serde_json::from_value(m).ok())
            .ok_or_else(|| AdminError::Refused {
                status: reqwest::StatusCode::OK,
                message: "POST /v1/chunks/missing: no `missing` list in the answer".into(),
                body: answer.clone(),
            })?;
        let mut sent = std::collections::HashSet::new();
        let todo: Vec<Piece> = pieces
            .iter()
            .filter(|p| missing.contains(&p.hash) && sent.insert(p.hash))
            .copied()
            .collect();
        let present: u64 = pieces
            .iter()
            .filter(|p| !missing.contains(&p.hash))
            .map(|p| u64::from(p.len))
            .sum();
        progress.inc(present);
        let (count, bytes) = (
            todo.len() as u64,
            todo.iter().map(|p| u64::from(p.len)).sum(),
        );
        stream::iter(todo.into_iter().map(|p| {
            let file = file.clone();
            async move {
                let mut buf = vec![0u8; p.len as usize];
                let f = file.clone();
                let buf = tokio::task::spawn_blocking(move || {
                    f.read_exact_at(&mut buf, p.offset).map(|_| buf)
                })
                .await
                .map_err(|e| AdminError::Usage(format!("reading the file: {e}")))?
                .map_err(|e| AdminError::Usage(format!("reading the file: {e}")))?;
                let body = bytes::Bytes::from(buf);
                let path = format!("/v1/chunks/{}", p.hash);
                let url = self.url(&path);
                self.send(&format!("PUT {path}"), || {
                    self.http.put(&url).body(body.clone())
                })
                .await?;
                progress.inc(u64::from(p.len));
                Ok::<_, AdminError>(())
            }
        }))
        .buffer_unordered(UPLOADS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
        // Pieces whose hash repeats within the batch were sent once but count each time.
        let repeats: u64 = pieces
            .iter()
            .filter(|p| missing.contains(&p.hash))
            .map(|p| u64::from(p.len))
            .sum::<u64>()
            - bytes;
        progress.inc(repeats);
        Ok((count, bytes))
    }

    /// `admin publish`: chunk, upload what is missing, publish by chunk list.
    pub async fn publish(
        &self,
        product: &str,
        version: &str,
        path: &Path,
        kind: &str,
        notes: Option<&str>,
    ) -> Result<Value, AdminError> {
        let file = std::fs::File::open(path)
            .map_err(|e| AdminError::Usage(format!("opening {}: {e}", path.display())))?;
        let size = file
            .metadata()
            .map_err(|e| AdminError::Usage(format!("reading {}: {e}", path.display())))?
            .len();
        let file = Arc::new(file);
        let chunking = self.get("/v1/chunking").await?;
        let param = |k: &str| {
            chunking
                .get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| AdminError::Refused {
                    status: reqwest::StatusCode::OK,
                    message: format!("GET /v1/chunking: no `{k}`"),
                    body: chunking.clone(),
                })
        };
        let params = ChunkParams {
            min: param("min")?,
            avg: param("avg")?,
            max: param("max")?,
        };
        let batch = param("max_query")?.clamp(1, 4096);
        let progress = super::progress_bar(Some(size), &format!("{product} {version}"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let reader = chunk_file(path.to_path_buf(), params, batch, tx);
        let mut all: Vec<Piece> = Vec::new();
        let mut tally = Tally::default();
        let mut failed = None;
        while let Some(pieces) = rx.recv().await {
            match self.upload_missing(&file, &pieces, &progress).await {
                Ok((c, b)) => {
                    tally.uploaded_chunks += c;
                    tally.uploaded_bytes += b;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            all.extend_from_slice(&pieces);
        }
        drop(rx);
        let read = reader
            .join()
            .map_err(|_| AdminError::Usage("the chunking thread panicked".into()))?;
        if let Some(e) = failed {
            progress.abandon();
            return Err(e);
        }
        let (blob, read_size) =
            read.map_err(|e| AdminError::Usage(format!("reading {}: {e}", path.display())))?;
        if read_size != size {
            return Err(AdminError::Usage(format!(
                "{} changed while it was read ({size} bytes, then {read_size})",
                path.display()
            )));
        }
        tally.chunks = all.len() as u64;
        tally.bytes = size;
        let list = ChunkList {
            blob,
            size,
            chunks: all
                .iter()
                .map(|p| ChunkEntry {
                    offset: p.offset,
                    length: p.len,
                    blake3: p.hash,
                })
                .collect(),
        };
        let list = bytes::Bytes::from(
            serde_json::to_vec(&list).map_err(|e| AdminError::Usage(e.to_string()))?,
        );
        let mut query = vec![("kind", kind.to_string())];
        if let Some(n) = notes {
            query.push(("notes", n.to_string()));
        }
        let path_q = format!(
            "/v1/products/{}/builds/{}",
            encode(product),
            encode(version)
        );
        let url = self.url(&path_q);
        for round in 1..=PUBLISH_ROUNDS {
            let answer = self
                .send(&format!("PUT {path_q}"), || {
                    self.http
                        .put(&url)
                        .query(&query)
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            crate::http::uploads::CHUNK_LIST_TYPE,
                        )
                        .body(list.clone())
                })
                .await;
            match answer {
                Ok((status, mut body)) => {
                    progress.finish_and_clear();
                    if let Value::Object(m) = &mut body {
                        m.insert(
                            "created".into(),
                            json!(status == reqwest::StatusCode::CREATED),
                        );
                        m.insert(
                            "upload".into(),
                            json!({
                                "chunks": tally.chunks, "bytes": tally.bytes,
                                "uploaded_chunks": tally.uploaded_chunks, "uploaded_bytes": tally.uploaded_bytes,
                            }),
                        );
                    }
                    return Ok(body);
                }
                Err(AdminError::Refused {
                    status: reqwest::StatusCode::CONFLICT,
                    body,
                    ..
                }) if round < PUBLISH_ROUNDS && body.get("missing").is_some() => {
                    let missing: std::collections::HashSet<Hash> =
                        serde_json::from_value(body["missing"].clone()).unwrap_or_default();
                    let again: Vec<Piece> = all
                        .iter()
                        .filter(|p| missing.contains(&p.hash))
                        .copied()
                        .collect();
                    tracing::warn!(
                        "the node lost {} chunks before the publish (a GC?); sending them again",
                        missing.len()
                    );
                    for part in again.chunks(batch) {
                        let (c, b) = self.upload_missing(&file, part, &progress).await?;
                        tally.uploaded_chunks += c;
                        tally.uploaded_bytes += b;
                    }
                }
                Err(e) => {
                    progress.abandon();
                    return Err(e);
                }
            }
        }
        unreachable!("the last round returns")
    }
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The admin subcommands, as `main.rs` parses them.
pub enum Action {
    Publish {
        product: String,
        version: String,
        file: PathBuf,
        kind: String,
        notes: Option<String>,
    },
    ProductPut {
        product: String,
        name: String,
        hardware: Option<String>,
    },
    ProductsLs,
    BuildsLs {
        product: String,
    },
    RingSet {
        product: String,
        ring: String,
        version: String,
        percent: f64,
        paused: bool,
    },
    RingsLs {
        product: String,
    },
    Stats {
        product: String,
    },
    Gc,
    Backup,
}

/// Runs one admin command; prints its answer (JSON with `json`) and returns the exit status.
pub fn run(
    server: &str,
    token_file: &Path,
    timeout: Duration,
    json_out: bool,
    action: Action,
) -> u8 {
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| AdminError::Usage(format!("runtime: {e}")))
        .and_then(|rt| {
            rt.block_on(async {
                let remote = Remote::new(server, token_file, timeout)?;
                act(&remote, action).await
            })
        });
    match result {
        Ok((value, text)) => {
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{text}");
            }
            EXIT_OK
        }
        Err(e) => {
            if json_out {
                let body = match &e {
                    AdminError::Refused { status, body, .. } => {
                        json!({ "status": status.as_u16(), "error": e.to_string(), "answer": body })
                    }
                    _ => json!({ "error": format!("{e:#}") }),
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
            }
            let source = std::error::Error::source(&e)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            eprintln!("error: {e}{source}");
            e.exit_code()
        }
    }
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Does the action; returns the node's answer and its text rendering.
async fn act(r: &Remote, action: Action) -> Result<(Value, String), AdminError> {
    use reqwest::Method;
    let p = |product: &str| format!("/v1/products/{}", encode(product));
    Ok(match action {
        Action::Publish {
            product,
            version,
            file,
            kind,
            notes,
        } => {
            let v = r
                .publish(&product, &version, &file, &kind, notes.as_deref())
                .await?;
            let up = &v["upload"];
            let text = format!(
                "{} {product} {version} ({kind}): blob {} ({} bytes); uploaded {} of {} chunks ({} bytes), the others were on the node\n",
                if v["created"] == json!(true) { "published" } else { "already published" },
                s(&v, "hash"),
                s(&v, "size"),
                up["uploaded_chunks"],
                up["chunks"],
                up["uploaded_bytes"],
            );
            (v, text)
        }
        Action::ProductPut {
            product,
            name,
            hardware,
        } => {
            let mut body = json!({ "name": name });
            if let Some(h) = hardware {
                body["hardware"] = serde_json::from_str(&h)
                    .map_err(|e| AdminError::Usage(format!("--hardware is not JSON: {e}")))?;
            }
            let (status, v) = r.json(Method::PUT, &p(&product), Some(&body)).await?;
            let verb = if status == reqwest::StatusCode::CREATED {
                "created"
            } else {
                "updated"
            };
            let text = format!("{verb} product {product} ({name})\n");
            (v, text)
        }
        Action::ProductsLs => {
            let v = r.get("/v1/products").await?;
            let mut text = String::new();
            for x in list(&v, "products") {
                text += &format!("{:<24} {}\n", s(x, "slug"), s(x, "name"));
            }
            (v, text)
        }
        Action::BuildsLs { product } => {
            let v = r.get(&format!("{}/builds", p(&product))).await?;
            let mut text = format!(
                "{:<16} {:<7} {:>14}  {:<16} notes\n",
                "version", "kind", "bytes", "blob"
            );
            for b in list(&v, "builds") {
                let blob = s(b, "blob");
                text += &format!(
                    "{:<16} {:<7} {:>14}  {:<16} {}\n",
                    s(b, "version"),
                    s(b, "kind"),
                    s(b, "size"),
                    &blob[..blob.len().min(16)],
                    s(b, "notes")
                );
            }
            (v, text)
        }
        Action::RingSet {
            product,
            ring,
            version,
            percent,
            paused,
        } => {
            let body = json!({ "version": version, "percent": percent, "paused": paused });
            let path = format!("{}/rings/{}", p(&product), encode(&ring));
            let (_, v) = r.json(Method::PUT, &path, Some(&body)).await?;
            let text = format!(
                "ring {} of {product}: {} at {} %{}\n",
                s(&v, "name"),
                s(&v, "version"),
                s(&v, "percent"),
                if v["paused"] == json!(true) {
                    ", paused"
                } else {
                    ""
                }
            );
            (v, text)
        }
        Action::RingsLs { product } => {
            let v = r.get(&format!("{}/rings", p(&product))).await?;
            let mut text = format!(
                "{:<12} {:<16} {:>7}  paused\n",
                "ring", "version", "percent"
            );
            for x in list(&v, "rings") {
                text += &format!(
                    "{:<12} {:<16} {:>7}  {}\n",
                    s(x, "name"),
                    s(x, "version"),
                    s(x, "percent"),
                    s(x, "paused")
                );
            }
            (v, text)
        }
        Action::Stats { product } => {
            let v = r.get(&format!("{}/stats", p(&product))).await?;
            let mut text = format!("devices seen: {}\n", s(&v, "devices"));
            if let Some(m) = v.get("versions").and_then(Value::as_object) {
                for (ver, n) in m {
                    text += &format!("  version {ver:<16} {n}\n");
                }
            }
            if let Some(m) = v.get("rings").and_then(Value::as_object) {
                for (ring, n) in m {
                    text += &format!("  ring    {ring:<16} {n}\n");
                }
            }
            if let Some(m) = v.get("bytes_served_by_kind").and_then(Value::as_object) {
                for (kind, n) in m {
                    text += &format!("  served  {kind:<16} {n} bytes\n");
                }
            }
            (v, text)
        }
        Action::Gc => {
            let (_, v) = r.json(Method::POST, "/v1/gc", None).await?;
            let text = format!(
                "gc: {} blobs and {} chunks deleted, {} bytes freed; {} blobs kept\n",
                s(&v, "blobs_deleted"),
                s(&v, "chunks_deleted"),
                s(&v, "bytes_freed"),
                s(&v, "blobs_kept")
            );
            (v, text)
        }
        Action::Backup => {
            let (_, v) = r.json(Method::POST, "/v1/admin/backup", None).await?;
            let text = format!(
                "backup {} on the node: {} bytes in {} s\n",
                s(&v, "path"),
                s(&v, "bytes"),
                s(&v, "seconds")
            );
            (v, text)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("gw-100"), "gw-100");
        assert_eq!(encode("1.2.3+b/4 x"), "1.2.3%2Bb%2F4%20x");
    }

    #[test]
    fn the_file_is_chunked_as_the_node_chunks_it() {
        let data = crate::store::test_util::noise(3 << 20, 9);
        let dir = std::env::temp_dir().join(format!("ue-admin-chunk-{}", std::process::id()));
        std::fs::write(&dir, &data).unwrap();
        let params = ChunkParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let reader = chunk_file(dir.clone(), params, 7, tx);
        let mut pieces = Vec::new();
        while let Some(b) = rx.blocking_recv() {
            assert!(b.len() <= 7);
            pieces.extend(b);
        }
        let (blob, size) = reader.join().unwrap().unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!((blob, size), (Hash::of(&data), data.len() as u64));
        let want = Chunker::new(params).lengths(&data);
        let got: Vec<usize> = pieces.iter().map(|p| p.len as usize).collect();
        assert_eq!(got, want);
        let mut at = 0;
        for p in &pieces {
            assert_eq!(p.offset, at);
            assert_eq!(p.hash, Hash::of(&data[at as usize..][..p.len as usize]));
            at += u64::from(p.len);
        }
    }
}
