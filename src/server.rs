//! Node assembly: open the store, build the router, serve HTTP/1.1 and cleartext HTTP/2
//! (prior knowledge) on one socket, shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::catalog::check::Checker;
use crate::catalog::chunklist::ChunkLists;
use crate::catalog::scheduler::{DeltaScheduler, SchedulerOptions};
use crate::catalog::signing::Signer;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::repo::{Repo, Ttls};
use crate::store::{ChunkParams, Store, StoreError};
use crate::upstream::preseed::Preseeder;
use crate::upstream::Upstream;

/// Everything a running node shares.
#[derive(Clone)]
pub struct Node {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub checker: Arc<Checker>,
    pub repo: Arc<Repo>,
    /// Set on an edge.
    pub upstream: Option<Arc<Upstream>>,
    /// Set on an origin with a bucket (`[origin.s3]`).
    pub bucket: Option<Arc<crate::bucket::BucketOrigin>>,
    /// Per-address check limit (one table for the node's lifetime).
    pub check_limit: Option<Arc<crate::http::ratelimit::IpLimiter>>,
}

/// Why a node could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Bucket(#[from] crate::bucket::BucketError),
}

impl Node {
    /// Opens the RocksDB store named by the config, the catalog over it, the TUF
    /// repository (keys from `tuf.keys_dir`; metadata re-signed if the catalog or the keys
    /// changed), and starts the delta workers.
    pub fn open(config: Config) -> Result<Node, OpenError> {
        let parts = open_store(&config)?;
        let repo = Arc::new(Repo::open(
            parts.store.clone(),
            &config.tuf.keys_dir,
            &config.director_key_path(),
            ttls(&config),
            crate::catalog::targets::entries(&parts.catalog)?,
        )?);
        let bucket = match config.origin.s3.enabled() {
            true => Some(crate::bucket::BucketOrigin::open(
                &config,
                parts.store.clone(),
                parts.catalog.clone(),
            )?),
            false => None,
        };
        Ok(Node::assemble(config, parts, repo, None, bucket))
    }

    /// The check service and the node around the opened parts (`upstream` on an edge).
    fn assemble(
        config: Config,
        parts: StoreParts,
        repo: Arc<Repo>,
        upstream: Option<Arc<Upstream>>,
        bucket: Option<Arc<crate::bucket::BucketOrigin>>,
    ) -> Node {
        let StoreParts {
            metrics,
            store,
            catalog,
        } = parts;
        // Manifests of blobs not held here: upstream's (an edge), the bucket's (an origin
        // restored from it).
        let remote = upstream
            .clone()
            .or_else(|| bucket.as_ref().map(|b| b.fills.clone()))
            .map(|u| u as Arc<dyn crate::store::RemoteManifests>);
        let checker = Arc::new(Checker {
            catalog: catalog.clone(),
            chunk_lists: ChunkLists::new(store.clone(), remote),
            signer: Signer::new(repo.director()),
            scheduler: Some(delta_scheduler(&config, &catalog, &metrics)),
            edge: upstream.is_some(),
            delta_from_previous: config.delta.from_previous,
            answer_ttl_secs: config.catalog.answer_ttl_secs,
            devices: crate::catalog::check::DeviceLog::start(
                &catalog,
                crate::catalog::check::DeviceRetention {
                    ttl: config.catalog.device_ttl.0,
                    max: config.catalog.max_devices,
                },
            ),
        });
        let check_limit = crate::http::ratelimit::IpLimiter::new(
            config.catalog.check_rate_per_ip,
            config.catalog.check_burst_per_ip,
        )
        .map(Arc::new);
        Node {
            check_limit,
            config: Arc::new(config),
            metrics,
            store,
            catalog,
            checker,
            repo,
            upstream,
            bucket,
        }
    }

    /// Opens an origin ([`Node::open`]) or, with `edge.upstream` set, an edge.
    pub async fn open_any(config: Config) -> Result<Node, OpenError> {
        if config.edge.is_edge() {
            Node::open_edge(config).await
        } else {
            Node::open(config)
        }
    }

    /// Opens an edge: the store, the replicated catalog and repository (waiting for the
    /// first sync from upstream if nothing has been replicated yet) and this edge's own
    /// director key. No repository key is read.
    pub async fn open_edge(config: Config) -> Result<Node, OpenError> {
        let parts = open_store(&config)?;
        let upstream = Upstream::new(
            &config.edge,
            config.store.max_bytes.0 > 0,
            parts.store.clone(),
            parts.catalog.clone(),
        )?;
        if parts.store.cursor(crate::upstream::follow::CURSOR_KEY)? == 0 {
            upstream.first_sync().await?;
            parts.catalog.reload()?;
        }
        let repo = Arc::new(Repo::open_replica(
            parts.store.clone(),
            &config.director_key_path(),
            ttls(&config),
        )?);
        Ok(Node::assemble(config, parts, repo, Some(upstream), None))
    }

    pub fn state(&self) -> AppState {
        AppState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            catalog: self.catalog.clone(),
            checker: self.checker.clone(),
            repo: self.repo.clone(),
            upstream: self.upstream.clone(),
            bucket: self.bucket.clone(),
            check_limit: self.check_limit.clone(),
        }
    }
}

/// Metadata lifetimes from `[tuf]`.
fn ttls(config: &Config) -> Ttls {
    let t = &config.tuf;
    Ttls {
        timestamp: t.timestamp_ttl.0,
        snapshot: t.snapshot_ttl.0,
        targets: t.targets_ttl.0,
    }
}

/// The delta workers, as configured (origin and edge alike).
fn delta_scheduler(
    config: &Config,
    catalog: &Arc<Catalog>,
    metrics: &Arc<Metrics>,
) -> DeltaScheduler {
    let d = &config.delta;
    DeltaScheduler::start(
        catalog.clone(),
        metrics.clone(),
        SchedulerOptions {
            workers: d.workers,
            worth_it_ratio: d.worth_it_ratio,
            memory_limit: d.memory_limit.0,
            zstd_level: d.zstd_level,
        },
    )
}

/// Opens the store and the catalog over it, nothing else: what offline commands (blob,
/// gc) need, without keys or delta workers.
pub fn open_store(config: &Config) -> Result<StoreParts, OpenError> {
    let metrics = Arc::new(Metrics::new());
    let s = &config.store;
    let params = ChunkParams {
        min: s.chunk_min.0 as usize,
        avg: s.chunk_avg.0 as usize,
        max: s.chunk_max.0 as usize,
    };
    let store = Store::open(
        &config.server.data_dir,
        params,
        s.cache_size.0,
        metrics.clone(),
        s.mmap_reads,
    )?;
    store.set_inline_reads(s.inline_reads);
    let catalog = Arc::new(Catalog::new(store.clone())?);
    let (dir, budget, reserve) = (
        config.server.data_dir.clone(),
        s.max_bytes.0,
        s.min_free_bytes.0,
    );
    metrics.add_source(Arc::new(move || {
        use crate::metrics::EngineStat;
        let mut v = vec![
            EngineStat {
                name: "update_edge_store_budget_bytes",
                help:
                    "store.max_bytes: the chunk bytes an edge keeps before evicting (0: no budget)",
                counter: false,
                value: budget as f64,
            },
            EngineStat {
                name: "update_edge_store_min_free_bytes",
                help: "store.min_free_bytes: free space uploads are refused below (507)",
                counter: false,
                value: reserve as f64,
            },
        ];
        if let Some(free) = crate::store::free_bytes(&dir) {
            v.push(EngineStat {
                name: "update_edge_data_dir_free_bytes",
                help: "Free bytes on the data directory's filesystem (for this user)",
                counter: false,
                value: free as f64,
            });
        }
        v
    }));
    Ok(StoreParts {
        metrics,
        store,
        catalog,
    })
}

/// What [`open_store`] opens.
pub struct StoreParts {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
}

/// A server running in the background; [`RunningServer::stop`] ends it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The TLS listener's address, when there is one.
    pub tls_addr: Option<SocketAddr>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    /// Holds the repository (and so the store) until it is stopped and awaited.
    resigner: JoinHandle<()>,
    /// Further node tasks (an edge's eviction), stopped with the server.
    background: Vec<JoinHandle<()>>,
    /// How long in-flight requests may finish after a stop (`server.drain_timeout`).
    drain: Duration,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (bounded), and waits.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        let served = match tokio::time::timeout(self.drain, &mut task).await {
            Ok(r) => r.map_err(std::io::Error::other).and_then(|r| r),
            Err(_) => {
                task.abort();
                Ok(())
            }
        };
        self.resigner.abort();
        let _ = self.resigner.await;
        for t in self.background {
            t.abort();
            let _ = t.await;
        }
        served
    }
}

/// Serves `node` on `listener` until stopped.
pub fn start(node: &Node, listener: TcpListener) -> std::io::Result<RunningServer> {
    start_with_tls(node, listener, None)
}

/// A listener for TLS connections and what completes their handshakes.
pub struct TlsListener {
    pub listener: TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Reloaded on SIGHUP and file changes while the server runs.
    pub certs: Arc<crate::tls::Certificates>,
}

/// [`start`], with a second listener speaking TLS.
pub fn start_with_tls(
    node: &Node,
    listener: TcpListener,
    tls: Option<TlsListener>,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let tls_addr = tls.as_ref().map(|t| t.listener.local_addr()).transpose()?;
    let app = router(node.state());
    let (tx, rx) = oneshot::channel::<()>();
    let mut background = Vec::new();
    if let Some(b) = &node.bucket {
        background.push(tokio::spawn(b.clone().run()));
    }
    let resigner = match &node.upstream {
        None => tokio::spawn(resign_loop(node.repo.clone())),
        Some(up) => {
            let (catalog, repo) = (node.catalog.clone(), node.repo.clone());
            let wait = Duration::from_secs(node.config.edge.poll_wait.0);
            let rate = node.config.edge.prefetch_rate.0;
            let seeder = (rate > 0).then(|| Preseeder::start(up.clone(), catalog.clone(), rate));
            let budget = node.config.store.max_bytes.0;
            if budget > 0 {
                let (u, c) = (up.clone(), catalog.clone());
                background.push(tokio::spawn(crate::upstream::evict::enforce(u, c, budget)));
            }
            tokio::spawn(up.clone().follow(wait, move |page| {
                if let Err(e) = catalog.reload() {
                    tracing::error!(error = %e, "reloading the replicated catalog failed");
                }
                if let Err(e) = repo.reload() {
                    tracing::error!(error = %e, "reloading the replicated repository failed");
                }
                if let Some(s) = &seeder {
                    s.page_applied(page);
                }
            }))
        }
    };
    let limits = Limits::from(&node.config.server);
    let metrics = node.metrics.clone();
    let tls = tls.map(|t| {
        background.push(tokio::spawn(t.certs.clone().watch()));
        (t.listener, t.acceptor)
    });
    let task = tokio::spawn(serve(listener, tls, app, limits, metrics, rx));
    Ok(RunningServer {
        addr,
        tls_addr,
        shutdown: tx,
        task,
        resigner,
        background,
        drain: Duration::from_secs(node.config.server.drain_timeout.0),
    })
}

/// Connection limits and timeouts (`[server]`).
#[derive(Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    tcp_keepalive: Option<Duration>,
    h2_keepalive: Option<Duration>,
    h2_max_streams: u32,
}

impl From<&crate::config::ServerConfig> for Limits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Limits {
            max_connections: c.max_connections,
            header_read_timeout: Duration::from_secs(c.header_read_timeout.0),
            tcp_keepalive: secs(c.tcp_keepalive.0),
            h2_keepalive: secs(c.h2_keepalive.0),
            h2_max_streams: c.h2_max_streams,
        }
    }
}

/// What a connection past `server.max_connections` is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The accept loop: HTTP/1.1 and cleartext HTTP/2 on one socket, hyper's timers on (a
/// header must arrive within `header_read_timeout`, which also ends idle HTTP/1
/// keep-alives; HTTP/2 pings), at most `max_connections` served at once. On `stop`,
/// stops accepting and lets open connections finish their requests.
async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    app: axum::Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .keep_alive_interval(limits.h2_keepalive);
    if let Some(every) = limits.h2_keepalive {
        builder.http2().keep_alive_timeout(every);
    }
    let keepalive = limits.tcp_keepalive.map(|t| {
        socket2::TcpKeepalive::new()
            .with_time(t)
            .with_interval(t / 4)
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let tls_accept = async {
            match &tls {
                Some((l, acceptor)) => (l.accept().await, Some(acceptor.clone())),
                None => std::future::pending().await,
            }
        };
        let (accepted, secure) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => (accepted, None),
            accepted = tls_accept => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or a connection reset before accept): back
                // off instead of spinning; serving connections continue.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Some(k) = &keepalive {
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(k);
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            // The answer, then a lingering close (within the same one second): what the
            // client already sent is read and dropped, so closing does not reset the
            // connection under the 503 before the client has read it.
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut tcp = tcp;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    tcp.write_all(BUSY).await?;
                    tcp.shutdown().await?;
                    let mut sink = [0u8; 4096];
                    let mut left = 64usize << 10;
                    while left > 0 {
                        match tcp.read(&mut sink).await? {
                            0 => break,
                            n => left = left.saturating_sub(n),
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
            });
            continue;
        };
        // Handlers see the peer address (per-address limits) as axum's `ConnectInfo`.
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request(
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                // A body refused unread is drained (bounded) before the close.
                crate::http::linger::wrap(req)
            },
        ));
        let open = metrics.connections_open.clone();
        open.inc();
        match secure {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    open.dec();
                    drop(slot);
                });
            }
            Some(acceptor) => {
                // The handshake, within the header timeout (a stalled one is dropped),
                // then the same HTTP serving as in the clear.
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
                    {
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        let _ = watcher.watch(conn).await;
                    }
                    open.dec();
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    drop(tls);
    graceful.shutdown().await;
    Ok(())
}

/// Re-signs online TUF metadata before it expires: checks every tenth of the timestamp
/// lifetime (1 s to 5 min), re-signs at half a lifetime; a failure is logged and retried.
async fn resign_loop(repo: Arc<Repo>) {
    let every = Duration::from_secs((repo.ttls().timestamp / 10).clamp(1, 300));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = repo.clone();
        match tokio::task::spawn_blocking(move || r.refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "re-signing TUF metadata failed"),
            Err(e) => tracing::error!(error = %e, "re-signing task failed"),
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
