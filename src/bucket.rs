//! The origin's bucket (`[origin.s3]`): an S3-compatible store as the origin of record.
//!
//! Layout (every key under `origin.s3.prefix`):
//! - `packs/{blake3}`: the chunks blob `blake3` brought that the bucket did not hold
//!   yet, one after another, each interleaved with its blake3 tree (the encoding of
//!   `GET /v1/chunks/{blake3}?format=bao`, [`crate::protocol::bao`]), so a reader of
//!   one chunk (a ranged GET) verifies it group by group against its address as it
//!   arrives. One object per published blob, not one per chunk: an object store's cost
//!   is per request (Garage here takes ~90 small objects a second, ~85 MB/s in large
//!   ones; AWS bills per PUT), and a build of 256 KiB chunks is 4,096 of them per GiB.
//! - `blobs/{blake3}`: a blob's manifest (size and chunk list, the store's binary form),
//!   followed by where each of its chunks is: pack, offset, length. Chunks shared with
//!   earlier blobs point into those blobs' packs (deduplicated in the bucket too).
//!   Devices' JSON chunk lists are derived from the manifest, so they are not stored.
//! - `catalog/{seq:020}`: a snapshot of every replicated record (products, builds,
//!   rings, deltas and the signed TUF metadata) as of change `seq`, zstd-compressed JSON.
//! - `catalog/latest`: which snapshot is current, with its blake3.
//!
//! Content objects are content-addressed and immutable: one that exists is never
//! rewritten. Order on publish: the pack, then the manifest (so a manifest in the bucket
//! implies its chunks are there), then the catalog snapshot, then `catalog/latest` (so
//! the snapshot `latest` names only refers to content already written). Signing keys are
//! never written here. This node keeps where each chunk is in the bucket (an index in
//! its meta column family, 44 bytes a chunk), from its own publishes and from every
//! bucket manifest it reads.
//!
//! Trust: objects are verified on the way back in (chunks by their blake3 tree, a
//! snapshot by the blake3 `latest` names, build manifests by the chunk-list hash their
//! signed build record names); a corrupt object is counted and never served.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};

use crate::config::S3Config;
use crate::hash::Hash;
use crate::metrics::{Metrics, ReasonLabel};
use crate::store::changes::ChangePage;
use crate::store::{Manifest, Store, StoreError};

/// Meta-family prefix of the markers of blobs whose chunks and manifest are in the
/// bucket (not replicated: each origin knows what it wrote).
const MIRRORED_PREFIX: &[u8] = b"bucket/mirrored/";
/// Meta-family prefix of the chunk index: where in the bucket each chunk is.
const LOCATION_PREFIX: &[u8] = b"bucket/chunk/";
/// Part size of pack uploads.
const PART_BYTES: usize = 16 << 20;
/// Chunks read ahead of the pack upload.
const READ_AHEAD: usize = 8;
/// Objects at least this large are uploaded in parts.
const MULTIPART_BYTES: usize = 16 << 20;
/// Largest catalog snapshot read back (compressed).
const MAX_SNAPSHOT_BYTES: usize = 1 << 30;
/// Largest manifest read back (a 64 GiB blob of 64 KiB chunks fits).
const MAX_MANIFEST_BYTES: usize = 64 << 20;

/// Errors talking to the bucket; each names the bucket and what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("bucket {bucket} unavailable: {message}")]
    Unavailable { bucket: String, message: String },
    #[error("bucket {bucket}: object {key} not found")]
    NotFound { bucket: String, key: String },
    #[error("bucket {bucket}: object {key} is corrupt: {why}")]
    Corrupt {
        bucket: String,
        key: String,
        why: String,
    },
    #[error("bucket configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BucketError {
    /// The metrics label for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            BucketError::Unavailable { .. } => "unavailable",
            BucketError::NotFound { .. } => "not_found",
            BucketError::Corrupt { .. } => "corrupt",
            BucketError::Config(_) => "config",
            BucketError::Store(_) => "store",
        }
    }
}

/// What `catalog/latest` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Latest {
    /// The change sequence the snapshot is at.
    pub seq: u64,
    /// Its object key (relative to the prefix).
    pub key: String,
    /// The blake3 of the object's bytes.
    pub blake3: Hash,
}

/// Where a chunk is in the bucket: bytes `offset..offset + len` of `packs/{pack}`
/// (its encoding, [`crate::protocol::bao`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: Hash,
    pub offset: u64,
    pub len: u64,
}

const LOCATION_BYTES: usize = 32 + 8 + 8;

impl Location {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.pack.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Location> {
        let b: &[u8; LOCATION_BYTES] = b.try_into().ok()?;
        Some(Location {
            pack: Hash::from_slice(&b[..32])?,
            offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
            len: u64::from_le_bytes(b[40..48].try_into().ok()?),
        })
    }
}

/// A bucket manifest: the blob's manifest, then one location per manifest entry.
pub fn encode_manifest(m: &Manifest, locations: &[Location]) -> Vec<u8> {
    let mut out = m.encode();
    out.reserve(locations.len() * LOCATION_BYTES);
    for l in locations {
        l.encode(&mut out);
    }
    out
}

/// Reads a bucket manifest; every location must have the length its chunk's encoding has.
pub fn decode_manifest(b: &[u8]) -> Result<(Manifest, Vec<Location>), String> {
    let head = b.get(..Manifest::HEADER).ok_or("truncated")?;
    let n = Manifest::encoded_len(head).map_err(|e| e.to_string())?;
    let m = Manifest::decode(b.get(..n).ok_or("truncated")?).map_err(|e| e.to_string())?;
    let rest = &b[n..];
    if rest.len() != m.chunks.len() * LOCATION_BYTES {
        return Err(format!(
            "{} bytes of locations for {} chunks",
            rest.len(),
            m.chunks.len()
        ));
    }
    let mut locations = Vec::with_capacity(m.chunks.len());
    for (c, l) in m.chunks.iter().zip(rest.chunks_exact(LOCATION_BYTES)) {
        let l = Location::decode(l).ok_or("bad location")?;
        if l.len != crate::protocol::bao::encoded_len(u64::from(c.len)) {
            return Err(format!(
                "chunk {} has a location of the wrong length",
                c.hash
            ));
        }
        locations.push(l);
    }
    Ok((m, locations))
}

/// Where this node knows chunk `hash` to be in the bucket.
pub fn location(store: &Store, hash: &Hash) -> Result<Option<Location>, StoreError> {
    Ok(store
        .kv()
        .get(crate::store::Cf::Meta, &location_key(hash))?
        .and_then(|v| Location::decode(&v)))
}

/// Records where chunks are (from a bucket manifest read or written).
pub fn remember(store: &Store, m: &Manifest, locations: &[Location]) -> Result<(), StoreError> {
    let mut b = crate::store::Batch::default();
    for (c, l) in m.chunks.iter().zip(locations) {
        let mut v = Vec::with_capacity(LOCATION_BYTES);
        l.encode(&mut v);
        b.put(crate::store::Cf::Meta, location_key(&c.hash), v);
    }
    store.kv().write(b, false)
}

fn location_key(hash: &Hash) -> Vec<u8> {
    [LOCATION_PREFIX, hash.as_bytes().as_slice()].concat()
}

/// What mirroring a blob did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mirrored {
    /// Chunk objects written (the others were there already).
    pub chunks_written: u64,
    /// Bytes of those objects.
    pub bytes_written: u64,
}

/// A connection to the bucket.
pub struct Bucket {
    s3: Arc<dyn ObjectStore>,
    name: String,
    prefix: String,
    concurrency: usize,
    metrics: Arc<Metrics>,
}

impl Bucket {
    /// Connects as `config` says (no request is made).
    pub fn open(config: &S3Config, metrics: Arc<Metrics>) -> Result<Arc<Bucket>, BucketError> {
        // The standard AWS variables first; the config's keys, when set, win.
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: config.max_retries,
                retry_timeout: Duration::from_secs(config.timeout.0 * 4),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(Duration::from_secs(config.timeout.0))
                    .with_connect_timeout(Duration::from_secs(config.timeout.0.min(10)))
                    .with_allow_http(config.endpoint.starts_with("http://")),
            );
        if !config.endpoint.is_empty() {
            b = b.with_endpoint(&config.endpoint);
        }
        if !config.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&config.access_key_id)
                .with_secret_access_key(&config.secret_access_key);
        }
        let s3 = b.build().map_err(|e| BucketError::Config(e.to_string()))?;
        let mut prefix = config.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(Arc::new(Bucket {
            s3: Arc::new(s3),
            name: format!("s3://{}", config.bucket),
            prefix,
            concurrency: config.max_concurrency,
            metrics,
        }))
    }

    /// `s3://bucket`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn key(&self, rel: &str) -> Key {
        Key::from(format!("{}{rel}", self.prefix))
    }

    pub fn pack_key(hash: &Hash) -> String {
        format!("packs/{hash}")
    }

    pub fn manifest_key(hash: &Hash) -> String {
        format!("blobs/{hash}")
    }

    fn error(&self, rel: &str, e: object_store::Error) -> BucketError {
        let err = match e {
            object_store::Error::NotFound { .. } => BucketError::NotFound {
                bucket: self.name.clone(),
                key: rel.to_string(),
            },
            e => BucketError::Unavailable {
                bucket: self.name.clone(),
                message: format!("{rel}: {e}"),
            },
        };
        self.count(&err);
        err
    }

    fn count(&self, e: &BucketError) {
        if !matches!(e, BucketError::NotFound { .. }) {
            self.metrics
                .bucket_errors
                .get_or_create(&ReasonLabel {
                    reason: e.reason().into(),
                })
                .inc();
        }
    }

    /// Whether object `rel` exists.
    pub async fn exists(&self, rel: &str) -> Result<bool, BucketError> {
        match self.s3.head(&self.key(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Writes object `rel` (in parts when large).
    pub async fn put(&self, rel: &str, body: Vec<Bytes>) -> Result<u64, BucketError> {
        let len: usize = body.iter().map(|b| b.len()).sum();
        let key = self.key(rel);
        if len >= MULTIPART_BYTES {
            let upload = self
                .s3
                .put_multipart(&key)
                .await
                .map_err(|e| self.error(rel, e))?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
            for b in body {
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| self.error(rel, e))?;
                w.put(b);
            }
            w.finish().await.map_err(|e| self.error(rel, e))?;
        } else {
            self.s3
                .put(&key, PutPayload::from_iter(body))
                .await
                .map_err(|e| self.error(rel, e))?;
        }
        self.metrics.bucket_put_bytes.inc_by(len as u64);
        Ok(len as u64)
    }

    /// Writes content-addressed object `rel` unless it exists (same name, same bytes);
    /// the bytes written (0 when it was there).
    pub async fn put_if_absent(&self, rel: &str, body: Vec<Bytes>) -> Result<u64, BucketError> {
        if self.exists(rel).await? {
            return Ok(0);
        }
        self.put(rel, body).await
    }

    /// Object `rel` as a stream of pieces (`None` if it does not exist).
    pub async fn get_stream(
        &self,
        rel: &str,
    ) -> Result<Option<futures_util::stream::BoxStream<'static, Result<Bytes, String>>>, BucketError>
    {
        match self.s3.get(&self.key(rel)).await {
            Ok(r) => Ok(Some(self.counted(r))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// A GET's body as pieces, counted as bucket bytes read.
    fn counted(
        &self,
        r: object_store::GetResult,
    ) -> futures_util::stream::BoxStream<'static, Result<Bytes, String>> {
        let metrics = self.metrics.clone();
        r.into_stream()
            .map_ok(move |b| {
                metrics.bucket_get_bytes.inc_by(b.len() as u64);
                b
            })
            .map_err(|e| e.to_string())
            .boxed()
    }

    /// Object `rel` whole, at most `cap` bytes.
    pub async fn get(&self, rel: &str, cap: usize) -> Result<Bytes, BucketError> {
        let Some(mut s) = self.get_stream(rel).await? else {
            return Err(BucketError::NotFound {
                bucket: self.name.clone(),
                key: rel.into(),
            });
        };
        let mut out = bytes::BytesMut::new();
        while let Some(piece) = s.next().await {
            let piece = piece.map_err(|message| {
                let e = BucketError::Unavailable {
                    bucket: self.name.clone(),
                    message: format!("{rel}: {message}"),
                };
                self.count(&e);
                e
            })?;
            if out.len() + piece.len() > cap {
                return Err(self.corrupt(rel, format!("over {cap} bytes")));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out.freeze())
    }

    /// Bytes `range` of object `rel`.
    pub async fn get_range(
        &self,
        rel: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, BucketError> {
        let b = self
            .s3
            .get_range(&self.key(rel), range)
            .await
            .map_err(|e| self.error(rel, e))?;
        self.metrics.bucket_get_bytes.inc_by(b.len() as u64);
        Ok(b)
    }

    fn corrupt(&self, rel: &str, why: String) -> BucketError {
        let e = BucketError::Corrupt {
            bucket: self.name.clone(),
            key: rel.into(),
            why,
        };
        self.metrics.bucket_corrupt.inc();
        self.count(&e);
        tracing::error!(bucket = %self.name, key = rel, error = %e, "corrupt object in the bucket");
        e
    }

    /// Whether this node has written blob `hash` (chunks and manifest) to the bucket.
    pub fn is_mirrored(store: &Store, hash: &Hash) -> Result<bool, StoreError> {
        store
            .kv()
            .contains(crate::store::Cf::Meta, &mirrored_key(hash))
    }

    /// Writes blob `hash` (a blob in `store`) to the bucket: the chunks the bucket lacks
    /// (as far as this node knows) as its pack, uploaded in parts `max_concurrency` at
    /// a time while the next chunks are read; then its manifest with every chunk's
    /// location; then records the locations and marks the blob written here. A blob
    /// marked already costs nothing.
    pub async fn mirror_blob(
        self: &Arc<Self>,
        store: &Arc<Store>,
        hash: Hash,
    ) -> Result<Mirrored, BucketError> {
        if Bucket::is_mirrored(store, &hash)? {
            return Ok(Mirrored::default());
        }
        let started = std::time::Instant::now();
        let manifest = store.manifest(hash).await?;
        let (s, m) = (store.clone(), manifest.clone());
        // Each chunk's known location, or None for those the pack brings.
        let known: Vec<Option<Location>> = crate::store::blocking(move || {
            m.chunks.iter().map(|c| location(&s, &c.hash)).collect()
        })
        .await?;
        let mut placed: std::collections::HashMap<Hash, Location> =
            std::collections::HashMap::new();
        let mut new = Vec::new();
        let mut offset = 0u64;
        for (c, k) in manifest.chunks.iter().zip(&known) {
            if k.is_some() || placed.contains_key(&c.hash) {
                continue;
            }
            let len = crate::protocol::bao::encoded_len(u64::from(c.len));
            placed.insert(
                c.hash,
                Location {
                    pack: hash,
                    offset,
                    len,
                },
            );
            new.push((c.hash, c.len));
            offset += len;
        }
        let pack_bytes = offset;
        let rel = Bucket::pack_key(&hash);
        let mut done = Mirrored::default();
        // A pack written before a crash (same chunks, so the same bytes) is not rewritten.
        let there = match new.is_empty() {
            true => true,
            false => match self.s3.head(&self.key(&rel)).await {
                Ok(meta) => meta.size == pack_bytes,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(self.error(&rel, e)),
            },
        };
        if !there {
            done = Mirrored {
                chunks_written: new.len() as u64,
                bytes_written: pack_bytes,
            };
            self.put_pack(store, &rel, new).await?;
        }
        let locations: Vec<Location> = manifest
            .chunks
            .iter()
            .zip(known)
            .map(|(c, k)| k.or_else(|| placed.get(&c.hash).copied()))
            .collect::<Option<_>>()
            .ok_or_else(|| BucketError::Config("a chunk was placed nowhere".into()))?;
        let mrel = Bucket::manifest_key(&hash);
        self.put_if_absent(
            &mrel,
            vec![Bytes::from(encode_manifest(&manifest, &locations))],
        )
        .await?;
        let s = store.clone();
        crate::store::blocking(move || {
            remember(&s, &manifest, &locations)?;
            let mut b = crate::store::Batch::default();
            b.put(crate::store::Cf::Meta, mirrored_key(&hash), Vec::new());
            s.kv().write(b, true)
        })
        .await?;
        self.metrics
            .bucket_chunks_written
            .inc_by(done.chunks_written);
        tracing::info!(
            blob = %hash.short(),
            chunks_written = done.chunks_written,
            bytes_written = done.bytes_written,
            seconds = started.elapsed().as_secs_f64(),
            "blob written to the bucket"
        );
        Ok(done)
    }

    /// Uploads the encodings of `chunks` one after another as object `rel`, in parts,
    /// reading the next chunks while parts upload.
    async fn put_pack(
        &self,
        store: &Arc<Store>,
        rel: &str,
        chunks: Vec<(Hash, u32)>,
    ) -> Result<(), BucketError> {
        let key = self.key(rel);
        let upload = self
            .s3
            .put_multipart(&key)
            .await
            .map_err(|e| self.error(rel, e))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut frames = stream::iter(chunks)
            .map(|(c, len)| {
                let store = store.clone();
                async move {
                    let s = store.clone();
                    // Not through the hot cache: a publish must not flush it.
                    let bytes = crate::store::blocking(move || s.chunk_blocking(&c)).await?;
                    let outboard = store.outboard(c, u64::from(len)).await;
                    Ok::<_, BucketError>(crate::protocol::bao::encode_with(
                        &bytes,
                        outboard.as_deref(),
                    ))
                }
            })
            .buffered(READ_AHEAD);
        let mut len = 0u64;
        let result = async {
            while let Some(f) = frames.next().await {
                w.wait_for_capacity(self.concurrency)
                    .await
                    .map_err(|e| self.error(rel, e))?;
                for piece in f? {
                    len += piece.len() as u64;
                    // Counted as it is handed over, so a long upload shows progress.
                    self.metrics.bucket_put_bytes.inc_by(piece.len() as u64);
                    w.put(piece);
                }
            }
            Ok::<_, BucketError>(())
        }
        .await;
        if let Err(e) = result {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await.map_err(|e| self.error(rel, e))?;
        tracing::debug!(key = rel, bytes = len, "pack written");
        Ok(())
    }

    /// A stream of chunk `hash`'s encoding from its pack (`None` if this node does not
    /// know where it is or the pack is missing), and the object it reads.
    pub async fn chunk_stream(
        &self,
        store: &Arc<Store>,
        hash: Hash,
    ) -> Result<
        Option<(
            String,
            futures_util::stream::BoxStream<'static, Result<Bytes, String>>,
        )>,
        BucketError,
    > {
        let s = store.clone();
        let Some(loc) = crate::store::blocking(move || location(&s, &hash)).await? else {
            return Ok(None);
        };
        let rel = Bucket::pack_key(&loc.pack);
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(
                loc.offset..loc.offset + loc.len,
            )),
            ..Default::default()
        };
        match self.s3.get_opts(&self.key(&rel), opts).await {
            Ok(r) => {
                let name = format!("{}/{rel}@{}+{}", self.name, loc.offset, loc.len);
                Ok(Some((name, self.counted(r))))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&rel, e)),
        }
    }

    /// A blob's manifest and its chunks' locations from the bucket, the manifest checked
    /// against the chunk-list hash its build record names (when it is a build's); the
    /// locations are remembered in `store`.
    pub async fn manifest(
        &self,
        store: &Arc<Store>,
        blob: Hash,
        expected_list: Option<Hash>,
    ) -> Result<Manifest, BucketError> {
        let rel = Bucket::manifest_key(&blob);
        let bytes = self.get(&rel, MAX_MANIFEST_BYTES).await?;
        let (m, locations) = decode_manifest(&bytes).map_err(|e| self.corrupt(&rel, e))?;
        if let Some(expected) = expected_list {
            if crate::catalog::targets::list_hash(&blob, &m) != expected {
                return Err(self.corrupt(&rel, "not the chunk list its build record names".into()));
            }
        }
        let (s, m2) = (store.clone(), m.clone());
        crate::store::blocking(move || remember(&s, &m2, &locations)).await?;
        Ok(m)
    }

    /// Writes a snapshot of every replicated record (as of the store's change head),
    /// then points `catalog/latest` at it. Returns the sequence written.
    pub async fn put_snapshot(&self, store: &Arc<Store>) -> Result<u64, BucketError> {
        let s = store.clone();
        let page = crate::store::blocking(move || s.changes_after(0)).await?;
        let seq = page.head;
        let json = serde_json::to_vec(&page).map_err(|e| BucketError::Config(e.to_string()))?;
        let packed = zstd::bulk::compress(&json, 3)
            .map_err(|e| BucketError::Store(StoreError::Io("snapshot".into(), e)))?;
        let key = format!("catalog/{seq:020}");
        let latest = Latest {
            seq,
            key: key.clone(),
            blake3: Hash::of(&packed),
        };
        self.put(&key, vec![Bytes::from(packed)]).await?;
        let pointer =
            serde_json::to_vec(&latest).map_err(|e| BucketError::Config(e.to_string()))?;
        self.put("catalog/latest", vec![Bytes::from(pointer)])
            .await?;
        Ok(seq)
    }

    /// The current catalog snapshot, verified against `catalog/latest`.
    pub async fn latest_snapshot(&self) -> Result<(Latest, ChangePage), BucketError> {
        let pointer = self.get("catalog/latest", 1 << 20).await?;
        let latest: Latest = serde_json::from_slice(&pointer)
            .map_err(|e| self.corrupt("catalog/latest", e.to_string()))?;
        let packed = self.get(&latest.key, MAX_SNAPSHOT_BYTES).await?;
        if Hash::of(&packed) != latest.blake3 {
            return Err(self.corrupt(&latest.key, "blake3 differs from catalog/latest".into()));
        }
        let json = zstd::stream::decode_all(&packed[..])
            .map_err(|e| self.corrupt(&latest.key, e.to_string()))?;
        let page: ChangePage =
            serde_json::from_slice(&json).map_err(|e| self.corrupt(&latest.key, e.to_string()))?;
        if !page.reset {
            return Err(self.corrupt(&latest.key, "not a full snapshot".into()));
        }
        Ok((latest, page))
    }
}

fn mirrored_key(hash: &Hash) -> Vec<u8> {
    [MIRRORED_PREFIX, hash.as_bytes().as_slice()].concat()
}

/// An origin's link to its bucket: what it writes (blobs, catalog snapshots) and where
/// it reads content it lacks ([`crate::upstream::Upstream::for_bucket`]).
pub struct BucketOrigin {
    pub bucket: Arc<Bucket>,
    /// Chunk and manifest fills from the bucket, coalesced and verified.
    pub fills: Arc<crate::upstream::Upstream>,
    store: Arc<Store>,
    catalog: Arc<crate::catalog::Catalog>,
    /// One sync at a time.
    syncing: tokio::sync::Mutex<()>,
    /// The change sequence the bucket's `catalog/latest` is at (0 before the first).
    synced: tokio::sync::watch::Sender<u64>,
}

impl BucketOrigin {
    pub fn open(
        config: &crate::config::Config,
        store: Arc<Store>,
        catalog: Arc<crate::catalog::Catalog>,
    ) -> Result<Arc<BucketOrigin>, crate::upstream::UpstreamError> {
        let bucket = Bucket::open(&config.origin.s3, store.metrics().clone())?;
        let fills = crate::upstream::Upstream::for_bucket(
            &config.edge,
            bucket.clone(),
            store.clone(),
            catalog.clone(),
        )?;
        Ok(Arc::new(BucketOrigin {
            bucket,
            fills,
            store,
            catalog,
            syncing: tokio::sync::Mutex::new(()),
            synced: tokio::sync::watch::channel(0).0,
        }))
    }

    /// Writes blob `hash` to the bucket (see [`Bucket::mirror_blob`]).
    pub async fn mirror_blob(&self, hash: Hash) -> Result<Mirrored, BucketError> {
        self.bucket.mirror_blob(&self.store, hash).await
    }

    /// Makes the bucket hold the catalog as of now: every blob it references that this
    /// node holds and has not written yet (deltas computed here), then a snapshot, then
    /// `catalog/latest`. Returns the sequence the bucket is at.
    pub async fn sync(&self) -> Result<u64, BucketError> {
        let _one = self.syncing.lock().await;
        let head = self.store.change_head();
        if *self.synced.borrow() >= head && head > 0 {
            return Ok(head);
        }
        let (catalog, store) = (self.catalog.clone(), self.store.clone());
        let pending = crate::store::blocking(move || {
            let roots = catalog
                .roots()
                .map_err(|e| StoreError::Engine(e.to_string()))?;
            let mut pending = Vec::new();
            for h in roots {
                if !Bucket::is_mirrored(&store, &h)? && store.contains_blob(&h)? {
                    pending.push(h);
                }
            }
            Ok(pending)
        })
        .await?;
        for h in pending {
            self.mirror_blob(h).await?;
        }
        let seq = self.bucket.put_snapshot(&self.store).await?;
        self.synced.send_replace(seq);
        self.store.metrics().bucket_synced_seq.set(seq as i64);
        Ok(seq)
    }

    /// Keeps the bucket's catalog current: syncs whenever the change feed moves,
    /// retrying with backoff (1 s doubling to 60 s) while the bucket fails.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.store.watch_changes();
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.sync().await {
                Ok(_) => {
                    backoff = Duration::from_secs(1);
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(bucket = %self.bucket.name(), error = %e, "writing the catalog to the bucket failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::ChunkRef;

    fn manifest() -> (Manifest, Vec<Location>) {
        let chunks = vec![
            ChunkRef {
                hash: Hash::of(b"a"),
                len: 1000,
            },
            ChunkRef {
                hash: Hash::of(b"b"),
                len: 40_000,
            },
            ChunkRef {
                hash: Hash::of(b"a"),
                len: 1000,
            },
        ];
        let m = Manifest::new(chunks);
        let (pack, old) = (Hash::of(b"pack"), Hash::of(b"older pack"));
        let l0 = crate::protocol::bao::encoded_len(1000);
        let l1 = crate::protocol::bao::encoded_len(40_000);
        let locations = vec![
            Location {
                pack: old,
                offset: 77,
                len: l0,
            },
            Location {
                pack,
                offset: 0,
                len: l1,
            },
            Location {
                pack: old,
                offset: 77,
                len: l0,
            },
        ];
        (m, locations)
    }

    #[test]
    fn a_bucket_manifest_reads_back_and_a_damaged_one_is_refused() {
        let (m, locations) = manifest();
        let bytes = encode_manifest(&m, &locations);
        assert_eq!(
            decode_manifest(&bytes).unwrap(),
            (m.clone(), locations.clone())
        );
        // One location short, one byte long, cut inside the manifest.
        assert!(decode_manifest(&bytes[..bytes.len() - LOCATION_BYTES]).is_err());
        assert!(decode_manifest(&[&bytes[..], &[0]].concat()).is_err());
        assert!(decode_manifest(&bytes[..Manifest::HEADER + 10]).is_err());
        // A location whose length is not its chunk's encoding.
        let mut wrong = locations.clone();
        wrong[1].len -= 1;
        let err = decode_manifest(&encode_manifest(&m, &wrong)).unwrap_err();
        assert!(err.contains("wrong length"), "{err}");
    }
}
