//! Reference device client: trust the image repository from a pinned `root.json`
//! (TUF), check in with a fresh nonce, accept only an answer a root-authorised director
//! key signed for this request and a target the repository signed, newer than what runs
//! and than anything ever installed; download the best artifact in verified pieces
//! (resuming across dropped connections and server restarts), apply a delta or take the
//! full payload, verify against the repository's hashes, and write atomically.
//!
//! Trust chain: pinned root → TUF root chain, timestamp, snapshot, targets (state dir
//! keeps the newest verified versions: no rollback, no freeze) → director answer
//! (authorised key, device, product, version, nonce, expiry) → target in signed targets
//! (length, sha256, blake3, chunk-list blake3) → every downloaded chunk's blake3 →
//! final blake3, sha256 and length. Nothing unverified is ever written to `out`;
//! unverified bytes on disk (the partial download) are re-checked chunk by chunk before
//! they are trusted on resume.

pub mod transport;
pub mod trust;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hash::Hash;
use crate::protocol::chunklist::ChunkList;
use crate::protocol::version::Version;
use trust::Approved;

/// Largest chunk list read: ~110 bytes a chunk, so 32 MiB covers 300 k chunks (a 19 GiB
/// payload at the smallest 64 KiB chunks).
const MAX_CHUNK_LIST_BYTES: usize = 32 << 20;

enum Capped {
    Over,
    Net(String),
}

/// Reads a body, giving up as soon as it passes `max` bytes.
async fn read_capped(mut r: reqwest::Response, max: usize) -> Result<Vec<u8>, Capped> {
    if r.content_length().is_some_and(|n| n > max as u64) {
        return Err(Capped::Over);
    }
    let mut out = Vec::new();
    while let Some(piece) = r.chunk().await.map_err(|e| Capped::Net(e.to_string()))? {
        if out.len() + piece.len() > max {
            return Err(Capped::Over);
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// Longest range fetched in one request (whole chunks up to this size).
const MAX_REQUEST_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("answer rejected: {0}")]
    Untrusted(String),
    #[error("download failed verification: {0}")]
    Verification(String),
    #[error("server: {0}")]
    Server(String),
    #[error("gave up after retrying for {0:?}: {1}")]
    GaveUp(Duration, String),
    #[error("{0}")]
    Usage(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("delta: {0}")]
    Delta(#[from] crate::delta::DeltaError),
}

#[derive(Debug, Clone)]
pub struct UpdateArgs {
    pub server: String,
    pub product: String,
    pub device_id: String,
    pub version: String,
    pub ring: Option<String>,
    pub current: Option<PathBuf>,
    pub out: PathBuf,
    /// The `root.json` the device shipped with (its root of trust).
    pub root: PathBuf,
    /// Persistent state: newest verified TUF metadata, highest installed version.
    pub state: PathBuf,
    /// Bytes per second per download (0 = unlimited); simulates slow links.
    pub max_rate: u64,
    /// How long to keep retrying a failing piece before giving up.
    pub retry_for: Duration,
    /// A PEM CA certificate (bundle) trusted for an https server, beside the system's
    /// roots.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct UpdateResult {
    /// `updated` or `no_update`.
    pub result: String,
    pub version: Option<String>,
    /// TUF target name of what was installed.
    pub target: Option<String>,
    /// `delta` or `full`.
    pub artifact: Option<String>,
    pub blake3: Option<String>,
    pub bytes_downloaded: u64,
    pub bytes_resumed: u64,
    pub retries: u64,
}

struct Session {
    http: reqwest::Client,
    base: String,
    args: UpdateArgs,
    downloaded: u64,
    resumed: u64,
    retries: u64,
}

/// The device's HTTP client: http or https (rustls, the system's roots plus `ca`),
/// HTTP/2 when the server offers it by ALPN.
fn http_client(ca: Option<&Path>) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30));
    if let Some(path) = ca {
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Usage(format!("--ca {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ClientError::Usage(format!("--ca {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ClientError::Usage(format!(
                "--ca {}: no PEM certificate in it",
                path.display()
            )));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| ClientError::Server(e.to_string()))
}

pub async fn update(args: UpdateArgs) -> Result<UpdateResult, ClientError> {
    let running: Version = args
        .version
        .parse()
        .map_err(|e| ClientError::Usage(format!("--version {:?}: {e}", args.version)))?;
    std::fs::create_dir_all(&args.state)?;
    let http = http_client(args.ca.as_deref())?;
    let base = args.server.trim_end_matches('/').to_string();
    let mut s = Session {
        http,
        base,
        args,
        downloaded: 0,
        resumed: 0,
        retries: 0,
    };
    let repo = s.load_repository().await?;
    let highest = trust::highest_installed(&s.args.state)?;
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let answer = s
        .check(repo.root().signed.clone(), &running, &nonce)
        .await?;
    let update = &answer["update"];
    if update.is_null() {
        return Ok(s.result("no_update", None, None, None));
    }
    let approved = trust::approve(&repo, update, &s.args.product, &running, highest.as_ref())?;
    let artifacts = update["artifacts"].as_array().cloned().unwrap_or_default();
    let current_hash = match &s.args.current {
        Some(p) if p.exists() => Some(hash_file(p)?),
        _ => None,
    };
    for a in &artifacts {
        let kind = a["type"].as_str().unwrap_or_default();
        let hash: Hash = a["blake3"]
            .as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| ClientError::Untrusted("artifact without blake3".into()))?;
        let list: Hash = a["chunks_blake3"]
            .as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| ClientError::Untrusted("artifact without chunks_blake3".into()))?;
        let size = a["size"].as_u64().unwrap_or(u64::MAX);
        let result_hash = match kind {
            "delta" => {
                let from: Option<Hash> = a["from_blake3"].as_str().and_then(|h| h.parse().ok());
                if from.is_none() || from != current_hash {
                    continue; // the delta is for a different starting point
                }
                let partial = s.download(a, hash, list, size).await?;
                let current = s.args.current.clone().unwrap_or_default();
                let r = apply_delta(&current, &partial, &s.args.out, &approved);
                let _ = std::fs::remove_file(&partial);
                r?
            }
            "full" => {
                // The payload is the signed target itself: take its hashes from the
                // repository, not from the answer.
                if hash != approved.blake3
                    || approved.chunks_blake3.is_some_and(|l| l != list)
                    || size != approved.length
                {
                    return Err(ClientError::Untrusted(
                        "the answer's full artifact is not the signed target".into(),
                    ));
                }
                let partial = s.download(a, hash, list, size).await?;
                finish_full(&partial, &s.args.out, &approved)?
            }
            _ => continue,
        };
        trust::record_installed(&s.args.state, &approved.version, &approved.name)?;
        return Ok(s.result(
            "updated",
            Some(approved.clone()),
            Some(kind.to_string()),
            Some(result_hash.to_hex()),
        ));
    }
    Err(ClientError::Server(
        "no usable artifact in the answer".into(),
    ))
}

impl Session {
    fn result(
        &self,
        result: &str,
        approved: Option<Approved>,
        artifact: Option<String>,
        blake3: Option<String>,
    ) -> UpdateResult {
        UpdateResult {
            result: result.into(),
            version: approved.as_ref().map(|a| a.version.to_string()),
            target: approved.map(|a| a.name),
            artifact,
            blake3,
            bytes_downloaded: self.downloaded,
            bytes_resumed: self.resumed,
            retries: self.retries,
        }
    }

    /// The TUF workflow, retried on transport failures for `retry_for`; a refusal by
    /// any verification step is final.
    async fn load_repository(&mut self) -> Result<tough::Repository, ClientError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match trust::load_repository(&self.http, &self.base, &self.args.root, &self.args.state)
                .await
            {
                Ok(r) => return Ok(r),
                Err(trust::LoadError::Refused(e)) => return Err(e),
                Err(trust::LoadError::Transport(e)) => {
                    let wait = pause(attempt, None);
                    if started.elapsed() + wait > self.args.retry_for {
                        return Err(ClientError::GaveUp(self.args.retry_for, e));
                    }
                    self.retries += 1;
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn check(
        &mut self,
        root: tough::schema::Root,
        running: &Version,
        nonce: &str,
    ) -> Result<Value, ClientError> {
        let mut req = serde_json::json!({ "product": self.args.product, "device_id": self.args.device_id, "version": self.args.version, "nonce": nonce });
        if let Some(r) = &self.args.ring {
            req["ring"] = Value::String(r.clone());
        }
        let url = format!("{}/v1/check", self.base);
        let body = self
            .retrying(trust::MAX_ANSWER_BYTES, |s| {
                s.http.post(&url).json(&req).send()
            })
            .await?;
        trust::verify_answer(
            &root,
            &body,
            &trust::Request {
                product: &self.args.product,
                device_id: &self.args.device_id,
                version: running,
                nonce,
            },
            crate::protocol::unix_now(),
        )
    }

    /// Runs a request until it answers 2xx, retrying transport errors and 5xx with
    /// backoff for up to `retry_for`. 4xx are final.
    /// Bodies longer than `max` are refused as soon as they pass it (endless data).
    async fn retrying<F, Fut>(&mut self, max: usize, mut send: F) -> Result<Vec<u8>, ClientError>
    where
        F: FnMut(&Self) -> Fut,
        Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let mut asked_wait = None;
            let err = match send(self).await {
                Ok(r) if r.status().is_success() => match read_capped(r, max).await {
                    Ok(b) => return Ok(b),
                    Err(Capped::Over) => {
                        return Err(ClientError::Untrusted(format!(
                            "response body over {max} bytes"
                        )))
                    }
                    Err(Capped::Net(e)) => e,
                },
                // Rate-limited: not final; retried no sooner than the node asked.
                Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    asked_wait = retry_after(&r);
                    format!("status {}", r.status())
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let text = read_capped(r, 4096).await.unwrap_or_default();
                    let text = String::from_utf8_lossy(&text);
                    return Err(ClientError::Server(format!("{status}: {text}")));
                }
                Ok(r) => {
                    asked_wait = retry_after(&r);
                    format!("status {}", r.status())
                }
                Err(e) => e.to_string(),
            };
            let wait = pause(attempt, asked_wait);
            if started.elapsed() + wait > self.args.retry_for {
                return Err(ClientError::GaveUp(self.args.retry_for, err));
            }
            self.retries += 1;
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// Downloads an artifact into a partial file beside `out`, verifying every chunk;
    /// chunks already present and correct (from an earlier attempt) are not fetched.
    async fn download(
        &mut self,
        artifact: &Value,
        hash: Hash,
        want_list: Hash,
        size: u64,
    ) -> Result<PathBuf, ClientError> {
        let chunks_url = artifact["chunks_url"]
            .as_str()
            .ok_or_else(|| ClientError::Untrusted("no chunks_url".into()))?;
        let url = format!("{}{chunks_url}", self.base);
        let list_bytes = self
            .retrying(MAX_CHUNK_LIST_BYTES, |s| s.http.get(&url).send())
            .await?;
        if Hash::of(&list_bytes) != want_list {
            return Err(ClientError::Verification(
                "chunk list does not match the signed answer".into(),
            ));
        }
        let list: ChunkList = serde_json::from_slice(&list_bytes)
            .map_err(|e| ClientError::Verification(e.to_string()))?;
        if list.blob != hash || list.size != size {
            return Err(ClientError::Verification(
                "chunk list is for another blob".into(),
            ));
        }
        let partial = partial_path(&self.args.out, &hash);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)?;
        file.set_len(list.size)?;
        // Which chunks still need fetching: re-verify whatever a previous run left.
        let mut todo = Vec::new();
        let mut buf = Vec::new();
        for (i, c) in list.chunks.iter().enumerate() {
            buf.resize(c.length as usize, 0);
            if file.read_exact_at(&mut buf, c.offset).is_ok() && Hash::of(&buf) == c.blake3 {
                self.resumed += u64::from(c.length);
            } else {
                todo.push(i);
            }
        }
        let blob_url = format!(
            "{}{}",
            self.base,
            artifact["url"].as_str().unwrap_or_default()
        );
        let mut at = 0;
        let mut bad_streak = 0u32;
        while at < todo.len() {
            // Group consecutive chunks into one range request.
            let first = todo[at];
            let mut last = first;
            let mut len = u64::from(list.chunks[first].length);
            while at + 1 < todo.len()
                && todo[at + 1] == last + 1
                && len + u64::from(list.chunks[last + 1].length) <= MAX_REQUEST_BYTES
            {
                at += 1;
                last += 1;
                len += u64::from(list.chunks[last].length);
            }
            at += 1;
            let start = list.chunks[first].offset;
            let range = format!("bytes={}-{}", start, start + len - 1);
            let body = self.fetch_range(&blob_url, &range, len).await?;
            let mut failed = Vec::new();
            for i in first..=last {
                let c = &list.chunks[i];
                let from = (c.offset - start) as usize;
                match body.get(from..from + c.length as usize) {
                    Some(piece) if Hash::of(piece) == c.blake3 => {
                        file.write_all_at(piece, c.offset)?
                    }
                    _ => failed.push(i),
                }
            }
            if !failed.is_empty() {
                bad_streak += 1;
                tracing::warn!(
                    chunks = failed.len(),
                    "downloaded bytes failed verification; fetching again"
                );
                if bad_streak > 5 {
                    return Err(ClientError::Verification(format!(
                        "chunks keep failing verification (from offset {start})"
                    )));
                }
                self.retries += 1;
                todo.splice(at..at, failed);
            } else {
                bad_streak = 0;
            }
        }
        file.sync_all()?;
        if hash_file(&partial)? != hash {
            // Every chunk matched its list, yet the whole does not: the partial file is
            // not worth resuming from.
            let _ = std::fs::remove_file(&partial);
            return Err(ClientError::Verification(
                "downloaded artifact does not match its blake3".into(),
            ));
        }
        Ok(partial)
    }

    /// One range request, retried until it answers; throttled to `max_rate` if set.
    async fn fetch_range(
        &mut self,
        url: &str,
        range: &str,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.try_range(url, range, len).await {
                Ok(b) => return Ok(b),
                Err((e, asked_wait)) => {
                    let wait = pause(attempt, asked_wait);
                    if started.elapsed() + wait > self.args.retry_for {
                        return Err(ClientError::GaveUp(self.args.retry_for, e));
                    }
                    self.retries += 1;
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One range request; on failure, why and how long the node asked to wait.
    async fn try_range(
        &mut self,
        url: &str,
        range: &str,
        len: u64,
    ) -> Result<Vec<u8>, (String, Option<Duration>)> {
        let mut resp = self
            .http
            .get(url)
            .header("Range", range)
            .send()
            .await
            .map_err(|e| (e.to_string(), None))?;
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err((format!("status {}", resp.status()), retry_after(&resp)));
        }
        let mut out = Vec::with_capacity(len as usize);
        let t0 = Instant::now();
        while let Some(piece) = resp.chunk().await.map_err(|e| (e.to_string(), None))? {
            out.extend_from_slice(&piece);
            self.downloaded += piece.len() as u64;
            if out.len() as u64 > len {
                return Err(("more bytes than requested".into(), None));
            }
            if self.args.max_rate > 0 {
                let due = Duration::from_secs_f64(out.len() as f64 / self.args.max_rate as f64);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if out.len() as u64 != len {
            return Err((format!("short body: {} of {len} bytes", out.len()), None));
        }
        Ok(out)
    }
}

fn partial_path(out: &Path, hash: &Hash) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.{}.part", hash.short()))
}

pub fn hash_file(path: &Path) -> std::io::Result<Hash> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path)?;
    h.update_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
    Ok(h.finalize().into())
}

/// First retry's backoff ceiling, doubled per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured (a longer one is capped: the device retries then).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long to wait before retry number `attempt` (0-based): "full jitter" — uniform in
/// [0, min(cap, base × 2^attempt)) — so a fleet cut off at once (a node restart) comes
/// back spread out, not in lockstep; never sooner than the node's `Retry-After`, and
/// spread over half of it beyond that.
fn pause(attempt: u32, asked: Option<Duration>) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let jittered = ceiling.mul_f64(rand::random::<f64>());
    match asked {
        Some(after) => after + (after / 2).mul_f64(rand::random::<f64>()).max(jittered),
        None => jittered,
    }
}

/// A response's `Retry-After` in seconds (the HTTP-date form is not used by nodes),
/// capped at [`MAX_RETRY_AFTER`].
fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Makes a rename in `file`'s directory durable (the new name survives a power cut).
fn sync_parent(file: &Path) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Checks a finished file against the repository's signed length, sha256 and blake3, in
/// one pass. Returns its blake3.
fn verify_target(path: &Path, want: &Approved) -> Result<Hash, ClientError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut b3 = blake3::Hasher::new();
    let mut sha = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        b3.update(&buf[..n]);
        sha.update(&buf[..n]);
        len += n as u64;
    }
    let got = Hash::from(b3.finalize());
    if len != want.length || sha.finish().as_ref() != want.sha256 || got != want.blake3 {
        return Err(ClientError::Verification(format!(
            "result does not match the signed target {} (length, sha256 or blake3)",
            want.name
        )));
    }
    Ok(got)
}

fn finish_full(partial: &Path, out: &Path, want: &Approved) -> Result<Hash, ClientError> {
    let r = verify_target(partial, want);
    if r.is_err() {
        let _ = std::fs::remove_file(partial);
    }
    let hash = r?;
    std::fs::rename(partial, out)?;
    sync_parent(out)?;
    Ok(hash)
}

fn apply_delta(
    current: &Path,
    patch: &Path,
    out: &Path,
    want: &Approved,
) -> Result<Hash, ClientError> {
    let old = crate::delta::FileAt::open_mapped(current)?;
    let tmp = out.with_file_name(format!(
        ".{}.{}.{:08x}.applying",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        // Apply writes in large pieces of its own (no buffer needed).
        let mut f = std::fs::File::create(&tmp)?;
        let mut p = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(patch)?);
        crate::delta::apply(&old, &mut p, &mut f)?;
        f.sync_all()?;
        let got = verify_target(&tmp, want)?;
        std::fs::rename(&tmp, out)?;
        sync_parent(out)?;
        Ok(got)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_full_jitter_under_a_doubling_cap_and_never_less_than_retry_after() {
        for attempt in 0..20 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_CAP);
            let waits: Vec<Duration> = (0..200).map(|_| pause(attempt, None)).collect();
            assert!(waits.iter().all(|w| *w < ceiling), "attempt {attempt}");
            // Spread over the whole interval, not bunched around its middle.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "attempt {attempt}");
            assert!(
                waits.iter().any(|w| *w > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
        let asked = Duration::from_secs(10);
        for attempt in [0, 3, 30] {
            let w = pause(attempt, Some(asked));
            assert!(w >= asked && w <= asked * 3 / 2 + BACKOFF_CAP, "{w:?}");
        }
    }
}
