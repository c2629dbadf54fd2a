//! Edge role: pull-through from an upstream node (the origin, or another edge).
//!
//! - **Content** ([`fill`], [`blob`]): a chunk the edge lacks is fetched from
//!   `GET {upstream}/v1/chunks/{blake3}`, verified against its address before a byte of it
//!   is served or stored, then stored and cached. However many readers want the same
//!   missing chunk, one fetch runs and every reader gets the chunk the moment it is
//!   verified; downloads stream chunk by chunk, never waiting for a whole blob, and fetch
//!   a few chunks ahead. A blob this edge does not hold is described by upstream's
//!   manifest (`/v1/blobs/{blake3}/manifest`, binary); it becomes a local blob (its
//!   manifest committed) only once every chunk has been read and the blake3 of the whole
//!   matches its address.
//! - **Catalog and repository** ([`follow`]): the records the origin replicates
//!   (products, builds, rings, deltas, signed TUF metadata) arrive through its change
//!   feed, long-polled, and are applied atomically with the feed position.
//!
//! Trust: upstream is not trusted for integrity. Chunks are checked against their blake3,
//! blobs against theirs, and devices check what they install against TUF metadata
//! signed by keys the edge never holds.

pub mod blob;
pub mod evict;
pub mod fill;
pub mod follow;
pub mod preseed;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use crate::config::EdgeConfig;
use crate::hash::Hash;
use crate::metrics::{Metrics, ReasonLabel};
use crate::store::{Store, StoreError};

/// Errors talking to upstream; each says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url} unreachable: {message}")]
    Connect { url: String, message: String },
    #[error("upstream {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("upstream {url} stalled: no byte for {secs} s")]
    Stalled { url: String, secs: u64 },
    #[error("chunk {0} from upstream failed verification")]
    Corrupt(Hash),
    #[error("manifest of {0} from upstream is not the chunk list its build names")]
    WrongManifest(Hash),
    #[error("upstream {url}: {message}")]
    Body { url: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bucket(#[from] crate::bucket::BucketError),
}

impl UpstreamError {
    /// The metrics label for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Status { .. } => "status",
            UpstreamError::Stalled { .. } => "stalled",
            UpstreamError::Corrupt(_) | UpstreamError::WrongManifest(_) => "corrupt",
            UpstreamError::Body { .. } | UpstreamError::Store(_) => "body",
            UpstreamError::Bucket(e) => match e {
                crate::bucket::BucketError::NotFound { .. } => "status",
                crate::bucket::BucketError::Corrupt { .. } => "corrupt",
                _ => "connect",
            },
        }
    }

    /// Whether another attempt may succeed (a 4xx from upstream will not).
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status >= 500 || *status == 429,
            UpstreamError::Store(_) => false,
            UpstreamError::Bucket(e) => matches!(
                e,
                crate::bucket::BucketError::Unavailable { .. }
                    | crate::bucket::BucketError::Corrupt { .. }
            ),
            _ => true,
        }
    }

    /// Upstream said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            UpstreamError::Status { status: 404, .. }
                | UpstreamError::Bucket(crate::bucket::BucketError::NotFound { .. })
        )
    }
}

/// What `/readyz` reports about upstream.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Contact {
    /// Unix seconds of the last successful exchange with upstream (0 = never).
    pub last_ok: u64,
    /// The last failure, if the last exchange failed.
    pub last_error: Option<String>,
}

/// Where content comes from.
enum Content {
    /// An upstream node's HTTP API (an edge).
    Http,
    /// The origin's own bucket (an origin whose local store is a cache of it).
    Bucket(Arc<crate::bucket::Bucket>),
}

/// The edge's link to upstream, shared by downloads, checks and the feed follower; on
/// an origin with a bucket, the link to the bucket for content missing locally.
pub struct Upstream {
    base: url::Url,
    content: Content,
    /// An edge's link (false: an origin's link to its own bucket).
    edge: bool,
    token: String,
    /// Content and one-shot requests.
    http: reqwest::Client,
    /// Long-polls of the change feed, on their own connection so they never hold one a
    /// fill could use.
    feed_http: reqwest::Client,
    store: Arc<Store>,
    /// The replicated catalog: a build's record names its chunk list's blake3.
    catalog: Arc<crate::catalog::Catalog>,
    metrics: Arc<Metrics>,
    stall: Duration,
    readahead: usize,
    fills: fill::Fills,
    partials: blob::Partials,
    recency: evict::Recency,
    contact: Mutex<Contact>,
}

impl Upstream {
    /// `budgeted`: a disk budget applies (`store.max_bytes`), so chunk recency is kept.
    pub fn new(
        config: &EdgeConfig,
        budgeted: bool,
        store: Arc<Store>,
        catalog: Arc<crate::catalog::Catalog>,
    ) -> Result<Arc<Upstream>, UpstreamError> {
        let mut base = url::Url::parse(&config.upstream).map_err(|e| UpstreamError::Connect {
            url: config.upstream.clone(),
            message: e.to_string(),
        })?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let stall = Duration::from_secs(config.stall_timeout.0);
        let client = |idle: usize| {
            reqwest::Client::builder()
                .connect_timeout(stall)
                .tcp_nodelay(true)
                .pool_max_idle_per_host(idle)
                .build()
                .map_err(|e| UpstreamError::Connect {
                    url: base.to_string(),
                    message: e.to_string(),
                })
        };
        let (http, feed_http) = (client(config.max_fills * 2)?, client(1)?);
        let metrics = store.metrics().clone();
        // Content straight from the origin's bucket, when `upstream_content` names it.
        let content = match config.content_bucket() {
            Some(s3) => Content::Bucket(crate::bucket::Bucket::open(&s3, metrics.clone())?),
            None => Content::Http,
        };
        Ok(Arc::new(Upstream {
            base,
            content,
            edge: true,
            token: config.token.clone(),
            http,
            feed_http,
            metrics,
            stall,
            readahead: config.readahead,
            fills: fill::Fills::new(config.max_fills),
            partials: blob::new_partials(),
            recency: evict::Recency::new(budgeted),
            contact: Mutex::new(Contact::default()),
            store,
            catalog,
        }))
    }

    /// An origin's link to its bucket: chunks and manifests missing locally are read
    /// from it, verified, with the same coalescing and stall rules as an edge's fills
    /// (`config`'s fill settings apply; its upstream URL is not used).
    pub fn for_bucket(
        config: &EdgeConfig,
        bucket: Arc<crate::bucket::Bucket>,
        store: Arc<Store>,
        catalog: Arc<crate::catalog::Catalog>,
    ) -> Result<Arc<Upstream>, UpstreamError> {
        let name = format!("{}/", bucket.name());
        let base = url::Url::parse(&name).map_err(|e| UpstreamError::Connect {
            url: name.clone(),
            message: e.to_string(),
        })?;
        let client = reqwest::Client::new();
        let metrics = store.metrics().clone();
        Ok(Arc::new(Upstream {
            base,
            content: Content::Bucket(bucket),
            edge: false,
            token: String::new(),
            http: client.clone(),
            feed_http: client,
            metrics,
            stall: Duration::from_secs(config.stall_timeout.0),
            readahead: config.readahead,
            fills: fill::Fills::new(config.max_fills),
            partials: blob::new_partials(),
            recency: evict::Recency::new(false),
            contact: Mutex::new(Contact::default()),
            store,
            catalog,
        }))
    }

    /// True for an edge's upstream, false for an origin's link to its bucket.
    pub fn is_edge(&self) -> bool {
        self.edge
    }

    /// The bucket content comes from (an origin's, or an edge's `upstream_content`).
    pub fn bucket(&self) -> Option<&Arc<crate::bucket::Bucket>> {
        match &self.content {
            Content::Bucket(b) => Some(b),
            Content::Http => None,
        }
    }

    /// The upstream base URL (what operators are told to send writes to).
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn contact(&self) -> Contact {
        self.contact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `path` under the base URL, as text (for messages).
    fn url(&self, path: &str) -> String {
        self.endpoint(path)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| format!("{}{path}", self.base))
    }

    /// `path` under the base URL, parsed once and handed to the client as is (as a
    /// string, the client parsed it again on every chunk request).
    fn endpoint(&self, path: &str) -> Result<url::Url, UpstreamError> {
        self.base.join(path).map_err(|e| UpstreamError::Connect {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    fn stalled(&self, url: String) -> UpstreamError {
        UpstreamError::Stalled {
            url,
            secs: self.stall.as_secs(),
        }
    }

    /// Records the outcome of an exchange for `/readyz` and the error counter.
    fn note<T>(&self, r: &Result<T, UpstreamError>) {
        let mut c = self.contact.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(_) => {
                c.last_ok = crate::protocol::unix_now();
                c.last_error = None;
            }
            Err(e) => {
                self.metrics
                    .upstream_errors
                    .get_or_create(&ReasonLabel {
                        reason: e.reason().into(),
                    })
                    .inc();
                if !matches!(e, UpstreamError::Status { status: 404, .. }) {
                    c.last_error = Some(e.to_string());
                }
            }
        }
    }

    /// `GET path` with the stall timeout on the response head.
    async fn get(&self, path: &str, bearer: bool) -> Result<reqwest::Response, UpstreamError> {
        self.request(path, bearer, Duration::ZERO).await
    }

    /// `GET path` (with the edge token) whose head may take `wait` longer (long-poll).
    async fn get_waiting(
        &self,
        path: &str,
        wait: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.request(path, true, wait).await
    }

    async fn request(
        &self,
        path: &str,
        bearer: bool,
        wait: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        let endpoint = self.endpoint(path)?;
        let client = if wait.is_zero() {
            &self.http
        } else {
            &self.feed_http
        };
        // The text form only for errors.
        let url = || endpoint.to_string();
        let mut req = client.get(endpoint.clone());
        if bearer && !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let resp = match tokio::time::timeout(self.stall + wait, req.send()).await {
            Err(_) => return Err(self.stalled(url())),
            Ok(Err(e)) => {
                return Err(UpstreamError::Connect {
                    url: url(),
                    message: e.to_string(),
                })
            }
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return Err(UpstreamError::Status {
                url: url(),
                status: resp.status().as_u16(),
            });
        }
        Ok(resp)
    }

    /// A verified-streaming reader of `resp`'s body (stall timeout per read; bytes
    /// counted as upstream bytes from when `counting` is set).
    fn reader(&self, resp: reqwest::Response) -> BodyReader {
        // Where a bao-encoded chunk in it starts (0 when upstream does not say: the plain
        // encoding).
        let start = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or(0, crate::protocol::bao::start_of);
        BodyReader {
            url: resp.url().to_string(),
            start,
            body: resp.bytes_stream().map_err(|e| e.to_string()).boxed(),
            buf: bytes::Bytes::new(),
            stall: self.stall,
            metrics: self.metrics.clone(),
            counting: false,
            failure: None,
        }
    }

    /// A reader of chunk `hash`'s encoding from upstream (starting at the group holding
    /// byte `from`, see [`crate::protocol::bao::encode_from`]) or the bucket (whose packs
    /// hold the plain encoding).
    async fn open_chunk(&self, hash: Hash, from: u64) -> Result<BodyReader, UpstreamError> {
        match &self.content {
            Content::Http => {
                let path = match from {
                    0 => format!("v1/chunks/{hash}?format=bao"),
                    _ => format!("v1/chunks/{hash}?format=bao&from={from}"),
                };
                self.get(&path, false).await.map(|resp| self.reader(resp))
            }
            Content::Bucket(b) => {
                let get = tokio::time::timeout(self.stall, b.chunk_stream(&self.store, hash));
                match get.await {
                    Err(_) => Err(self.stalled(format!("{}/packs (chunk {hash})", b.name()))),
                    Ok(Err(e)) => Err(e.into()),
                    Ok(Ok(None)) => Err(UpstreamError::Status {
                        url: format!("{}: chunk {hash}", b.name()),
                        status: 404,
                    }),
                    Ok(Ok(Some((url, body)))) => Ok(BodyReader {
                        url,
                        start: 0,
                        body,
                        buf: bytes::Bytes::new(),
                        stall: self.stall,
                        metrics: self.metrics.clone(),
                        counting: false,
                        failure: None,
                    }),
                }
            }
        }
    }

    /// Reads a whole response body of at most `cap` bytes, failing when no byte arrives
    /// for the stall timeout.
    async fn body(
        &self,
        resp: reqwest::Response,
        cap: usize,
    ) -> Result<bytes::Bytes, UpstreamError> {
        let mut buf = bytes::BytesMut::with_capacity(
            resp.content_length()
                .map_or(0, |n| n.min(cap as u64) as usize),
        );
        let mut r = self.reader(resp);
        loop {
            match r.next_piece().await {
                Err(e) => return Err(r.failure(e)),
                Ok(false) => return Ok(buf.freeze()),
                Ok(true) => {
                    if buf.len() + r.buf.len() > cap {
                        return Err(UpstreamError::Body {
                            url: r.url,
                            message: format!("body over {cap} bytes"),
                        });
                    }
                    buf.extend_from_slice(&std::mem::take(&mut r.buf));
                }
            }
        }
    }
}

/// An upstream response body read in the sizes a decoder asks for: pieces that hold a
/// whole request are split off without copying. A read fails when no byte arrives for
/// the stall timeout; the upstream-side cause is kept in `failure` (the decoder sees only
/// an `io::Error`).
pub struct BodyReader {
    body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
    url: String,
    /// Where the bao-encoded chunk it carries starts (the group upstream sent first).
    start: u64,
    buf: bytes::Bytes,
    stall: Duration,
    metrics: Arc<Metrics>,
    /// Count bytes as `update_edge_upstream_bytes_total` (chunk bytes, not manifests).
    counting: bool,
    failure: Option<UpstreamError>,
}

impl BodyReader {
    /// Starts counting received bytes (including those already buffered).
    fn count_from_here(&mut self) {
        self.counting = true;
        self.metrics.upstream_bytes.inc_by(self.buf.len() as u64);
    }

    /// Why the last read failed, as an upstream error.
    fn failure(&mut self, e: std::io::Error) -> UpstreamError {
        self.failure.take().unwrap_or_else(|| UpstreamError::Body {
            url: self.url.clone(),
            message: e.to_string(),
        })
    }

    /// The next piece of the body into `buf` (which is empty); false at its end.
    async fn next_piece(&mut self) -> std::io::Result<bool> {
        let failed = |this: &mut Self, e: UpstreamError| {
            let io = std::io::Error::other(e.to_string());
            this.failure = Some(e);
            Err(io)
        };
        match tokio::time::timeout(self.stall, self.body.next()).await {
            Err(_) => failed(
                self,
                UpstreamError::Stalled {
                    url: self.url.clone(),
                    secs: self.stall.as_secs(),
                },
            ),
            Ok(Some(Err(message))) => failed(
                self,
                UpstreamError::Body {
                    url: self.url.clone(),
                    message,
                },
            ),
            Ok(None) => Ok(false),
            Ok(Some(Ok(piece))) => {
                if self.counting {
                    self.metrics.upstream_bytes.inc_by(piece.len() as u64);
                }
                self.buf = piece;
                Ok(true)
            }
        }
    }
}

impl iroh_io::AsyncStreamReader for BodyReader {
    async fn read_bytes(&mut self, len: usize) -> std::io::Result<bytes::Bytes> {
        if self.buf.is_empty() && !self.next_piece().await? {
            return Ok(bytes::Bytes::new());
        }
        if self.buf.len() >= len {
            return Ok(self.buf.split_to(len));
        }
        let mut out = bytes::BytesMut::with_capacity(len.min(1 << 20));
        loop {
            let take = (len - out.len()).min(self.buf.len());
            out.extend_from_slice(&self.buf.split_to(take));
            if out.len() == len || !self.next_piece().await? {
                return Ok(out.freeze());
            }
        }
    }

    async fn read<const L: usize>(&mut self) -> std::io::Result<[u8; L]> {
        let b = self.read_bytes(L).await?;
        b[..]
            .try_into()
            .map_err(|_| std::io::ErrorKind::UnexpectedEof.into())
    }
}
