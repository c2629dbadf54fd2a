//! Shared helpers: a real node on 127.0.0.1:0 with a temp data dir, small chunks so
//! small payloads cross chunk boundaries, and a real HTTP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use update_edge::config::{ByteSize, Config};
use update_edge::server::{self, Node, RunningServer};

pub const TOKEN: &str = "test-operator-token";
pub const CHUNK_MIN: usize = 1024;
pub const CHUNK_AVG: usize = 4096;
pub const CHUNK_MAX: usize = 16384;

/// Defaults for any test node in `data_dir`: loopback, operator token, small chunks.
fn base_config(data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.data_dir = data_dir.to_path_buf();
    c.server.admin_token = TOKEN.into();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.store.chunk_min = ByteSize(CHUNK_MIN as u64);
    c.store.chunk_avg = ByteSize(CHUNK_AVG as u64);
    c.store.chunk_max = ByteSize(CHUNK_MAX as u64);
    c.store.cache_size = ByteSize(8 << 20);
    c
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = base_config(dir);
    c.tuf.keys_dir = dir.join("tuf-keys");
    if !root_path(&c).exists() {
        init_keys(&c.tuf.keys_dir, &dir.join("tuf-root-keys"));
    }
    c
}

/// Repository keys for a test node: 2-of-3 root keys (beside the online ones, as tests
/// have no offline place) and the four online keys.
pub fn init_keys(keys_dir: &Path, root_keys: &Path) {
    update_edge::repo::root::init(
        keys_dir,
        root_keys,
        update_edge::repo::root::InitOptions {
            root_keys: 3,
            root_threshold: 2,
            root_days: 30,
        },
    )
    .expect("keys init");
}

/// The root.json version 1 a device of this node ships with.
pub fn root_path(c: &Config) -> PathBuf {
    c.tuf.keys_dir.join("root/1.root.json")
}

/// Where [`test_config`] put the root private keys.
pub fn root_keys_dir(c: &Config) -> PathBuf {
    c.tuf.keys_dir.with_file_name("tuf-root-keys")
}

/// `Node::open`, waiting (bounded, on RocksDB's lock error only) while a delta job of a
/// node stopped just before still holds the store.
pub async fn open_node(config: Config) -> Result<Node, update_edge::server::OpenError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match Node::open_any(config.clone()).await {
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            r => return r,
        }
    }
}

/// A node serving on an ephemeral loopback port.
pub struct TestNode {
    pub node: Node,
    pub server: Option<RunningServer>,
    pub url: String,
    pub dir: PathBuf,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        Self::start_at(config, "127.0.0.1:0").await
    }

    /// Starts on a given address (to restart a node on the port it had).
    pub async fn start_at(config: Config, addr: &str) -> TestNode {
        let dir = config.server.data_dir.clone();
        let node = open_node(config)
            .await
            .unwrap_or_else(|e| panic!("open node: {e}"));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let server = server::start(&node, listener).unwrap();
        let url = format!("http://{}", server.addr);
        TestNode {
            node,
            server: Some(server),
            url,
            dir,
        }
    }

    /// Client arguments for a device of product `product` on `version`, with its state
    /// in `dir/state-{device}` and the node's root.json pinned.
    pub fn device_args(
        &self,
        dir: &Path,
        product: &str,
        device: &str,
        version: &str,
        current: Option<PathBuf>,
    ) -> update_edge::client::UpdateArgs {
        update_edge::client::UpdateArgs {
            server: self.url.clone(),
            product: product.into(),
            device_id: device.into(),
            version: version.into(),
            ring: None,
            current,
            out: dir.join("out.img"),
            root: root_path(&self.node.config),
            state: dir.join(format!("state-{device}")),
            max_rate: 0,
            retry_for: std::time::Duration::from_secs(20),
            ca: None,
        }
    }

    pub fn blob_url(&self, hash: &str) -> String {
        format!("{}/v1/blobs/{hash}", self.url)
    }

    /// Stops the server and closes the store (so the data dir can be reopened).
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
        self.node.store.flush().unwrap();
        drop(self.node);
    }

    pub async fn upload(&self, data: Vec<u8>) -> String {
        let resp = client()
            .post(format!("{}/v1/blobs", self.url))
            .bearer_auth(TOKEN)
            .body(data)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "upload: {}", resp.status());
        let v: serde_json::Value = resp.json().await.unwrap();
        v["hash"].as_str().unwrap().to_string()
    }

    /// The node's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        let resp = client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    }

    /// Value of one labelled series, given exactly as exported (`name{a="b"}`); a series
    /// the node does not export fails the test (it is never read as 0).
    pub async fn metric_labeled(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .filter(|v| v.starts_with(' '))
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("the node exports no series {series}"))
    }

    /// Value of an unlabelled series; a missing one fails the test.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|v| v.parse().unwrap())
            .unwrap_or_else(|| panic!("the node exports no series {name}"))
    }
}

/// The token edges in tests read the origin's change feed with.
pub const REPLICATION_TOKEN: &str = "test-replication-token";

/// An origin for edge tests: accepts the replication token, and re-signs often enough
/// (every 2 s) that a root version written while it runs is served within seconds.
pub fn origin_config(dir: &Path) -> Config {
    let mut c = test_config(dir);
    c.server.replication_token = REPLICATION_TOKEN.into();
    c.tuf.timestamp_ttl = update_edge::config::Seconds(20);
    c
}

/// An edge of `origin` in `dir`: no repository keys, its own director key authorised by
/// a new root version written to the origin's keys (as `keys add-edge` does).
pub fn edge_config(dir: &Path, origin: &TestNode) -> Config {
    let mut c = base_config(&dir.join("data"));
    c.tuf.keys_dir = dir.join("no-repository-keys");
    c.tuf.director_key = dir.join("edge.director.pk8");
    let o = &origin.node.config;
    update_edge::repo::root::add_director(
        &o.tuf.keys_dir,
        &root_keys_dir(o),
        &c.tuf.director_key,
        30,
    )
    .expect("add edge director key");
    c.edge.upstream = origin.url.clone();
    c.edge.token = REPLICATION_TOKEN.into();
    c.edge.poll_wait = update_edge::config::Seconds(5);
    c.edge.stall_timeout = update_edge::config::Seconds(3);
    c
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Asserts a finished command's exit status, showing its stderr when it differs.
pub fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies `patch` to `old` both ways apply reads old: from memory (as a mapped file)
/// and piece by piece (as a large file). Asserts they agree (the same bytes, or the
/// same error) and returns the result.
pub fn apply_both(old: &[u8], patch: &[u8]) -> Result<Vec<u8>, update_edge::delta::DeltaError> {
    use update_edge::delta;
    let (mut out, mut piecewise) = (Vec::new(), Vec::new());
    let in_memory = delta::apply(&old.to_vec(), &mut &patch[..], &mut out).map(|_| out);
    let read =
        delta::apply(&delta::Unmapped(old), &mut &patch[..], &mut piecewise).map(|_| piecewise);
    match (&in_memory, &read) {
        (Ok(a), Ok(b)) => assert!(a == b, "the two ways of reading old disagree"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!(
            "in memory: {:?}, piece by piece: {:?}",
            a.as_ref().map(Vec::len),
            b.as_ref().map(Vec::len)
        ),
    }
    in_memory
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    update_edge::cli::demo::noise(len, seed)
}

pub fn tool(name: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when every tool is installed. A missing one fails the test when
/// `UPDATE_EDGE_REQUIRE_TOOLS` is set (`dev.sh test` and CI set it, after installing
/// them); elsewhere the test says it skipped and returns early.
pub fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names.iter().copied().filter(|n| !tool(n)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("UPDATE_EDGE_REQUIRE_TOOLS").is_none(),
        "required tools missing: {missing:?} (./dev.sh setup installs them)"
    );
    eprintln!("SKIPPED: {missing:?} not installed");
    false
}

/// PUT with the operator token.
pub async fn op_put(url: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client()
        .put(url)
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Creates `product` with builds 1.0.1..=1.0.n (edited images) and returns their bytes.
pub async fn seed_product(node: &TestNode, product: &str, n: u32, size: usize) -> Vec<Vec<u8>> {
    let r = op_put(
        &format!("{}/v1/products/{product}", node.url),
        r#"{"name":"Test device","hardware":{"manufacturer":"Contoso"}}"#,
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    let mut builds = Vec::new();
    let mut img = noise(size, 1);
    for i in 1..=n {
        if i > 1 {
            let at = (i as usize * 7919) % (size / 2);
            img[at..at + 2000].copy_from_slice(&noise(2000, i as u64 + 50));
            img.splice(size / 3..size / 3, noise(3000, i as u64 + 90));
        }
        let r = op_put(
            &format!("{}/v1/products/{product}/builds/1.0.{i}?kind=os", node.url),
            img.clone(),
        )
        .await;
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
        builds.push(img.clone());
    }
    builds
}

/// Product `gw` with builds 1.0.1 and 1.0.2 of `size` bytes, ring `general` → 1.0.2 at
/// 100 %; returns the build payloads.
pub async fn gw_targeting_102(node: &TestNode, size: usize) -> Vec<Vec<u8>> {
    let builds = seed_product(node, "gw", 2, size).await;
    let st = set_ring(
        node,
        "gw",
        "general",
        r#"{"version":"1.0.2","percent":100}"#,
    )
    .await;
    assert_eq!(st, reqwest::StatusCode::OK);
    builds
}

/// `curl -sf -C - -o OUT URL` (resume into OUT), off the async runtime.
pub async fn curl_resume(out: &Path, url: &str) -> std::process::ExitStatus {
    let (out, url) = (out.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sf", "-C", "-", "-o"])
            .arg(&out)
            .arg(url)
            .status()
            .unwrap()
    })
    .await
    .unwrap()
}

pub async fn set_ring(
    node: &TestNode,
    product: &str,
    ring: &str,
    body: &str,
) -> reqwest::StatusCode {
    op_put(
        &format!("{}/v1/products/{product}/rings/{ring}", node.url),
        body.to_string(),
    )
    .await
    .status()
}

pub async fn check(
    node: &TestNode,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let r = client()
        .post(format!("{}/v1/check", node.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.bytes().await.expect("check: body");
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "check answered {status} with a body that is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

/// Polls `cond` until it holds or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// What a rewriting proxy saw: the request a device sent.
#[derive(Debug, Clone)]
pub struct Intercept {
    pub method: reqwest::Method,
    pub path: String,
    pub body: Vec<u8>,
    pub range: Option<String>,
    /// Passed through, so an edge behind the proxy can read the feed.
    pub authorization: Option<String>,
}

/// A response as the proxy returns it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Send only the body's first N bytes until the gate is notified, then the rest
    /// (a transfer that stalls mid-body).
    pub hold: Option<(usize, std::sync::Arc<tokio::sync::Notify>)>,
}

impl Reply {
    pub fn json(v: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            body: serde_json::to_vec(v).unwrap(),
            headers: vec![("content-type".into(), "application/json".into())],
            hold: None,
        }
    }
}

pub type Hook = std::sync::Arc<
    dyn Fn(Intercept) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Reply>> + Send>>
        + Send
        + Sync,
>;

/// Sends a request to `upstream` as the proxy would, keeping the headers a download needs.
pub async fn forward(upstream: &str, req: &Intercept) -> Reply {
    let mut r = client()
        .request(req.method.clone(), format!("{upstream}{}", req.path))
        .body(req.body.clone());
    if let Some(v) = &req.range {
        r = r.header("range", v);
    }
    if let Some(v) = &req.authorization {
        r = r.header("authorization", v);
    }
    let resp = r.send().await.expect("proxy: upstream request");
    let status = resp.status().as_u16();
    let headers = ["content-type", "content-range", "etag", "accept-ranges"]
        .iter()
        .filter_map(|h| {
            resp.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    let body = resp.bytes().await.expect("proxy: upstream body").to_vec();
    Reply {
        status,
        body,
        headers,
        hold: None,
    }
}

/// A man in the middle on loopback: every request goes to `hook` first; `None` forwards
/// it unchanged. Returns the proxy's base URL.
pub async fn rewriting_proxy(upstream: String, hook: Hook) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    let app = axum::Router::new().fallback(move |req: Request| {
        let (upstream, hook) = (upstream.clone(), hook.clone());
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let method = req.method().clone();
            let range = req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let authorization = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap()
                .to_vec();
            let seen = Intercept {
                method,
                path,
                body,
                range,
                authorization,
            };
            let reply = match hook(seen.clone()).await {
                Some(r) => r,
                None => forward(&upstream, &seen).await,
            };
            let mut b = Response::builder().status(reply.status);
            for (k, v) in &reply.headers {
                b = b.header(k.as_str(), v.as_str());
            }
            match reply.hold {
                None => b.body(Body::from(reply.body)).unwrap(),
                Some((n, gate)) => {
                    use futures_util::StreamExt;
                    let mut body = reply.body;
                    let total = body.len();
                    let rest = body.split_off(n.min(total));
                    let frames = futures_util::stream::iter([Ok::<_, std::io::Error>(body)]).chain(
                        futures_util::stream::once(async move {
                            gate.notified().await;
                            Ok(rest)
                        }),
                    );
                    b.header("content-length", total.to_string())
                        .body(Body::from_stream(frames))
                        .unwrap()
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Builds a [`Hook`] from an async closure.
#[macro_export]
macro_rules! hook {
    (|$req:ident| $body:expr) => {
        std::sync::Arc::new(move |$req: Intercept| {
            let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Option<Reply>> + Send>> =
                Box::pin($body);
            fut
        }) as Hook
    };
}

/// Online and root keys under `dir` and a config file for a `serve` process using them
/// (no free-space reserve, so tmp filesystems do), with `extra` TOML prepended.
pub fn write_node_config(dir: &std::path::Path, extra: &str) -> PathBuf {
    init_keys(&dir.join("keys"), &dir.join("root-keys"));
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}\n[store]\nmin_free_bytes = \"0\"\n[tuf]\nkeys_dir = {:?}\n",
            dir.join("keys")
        ),
    )
    .unwrap();
    config
}

/// A client whose connections come from `ip` (a loopback address: 127.0.0.2 is not
/// 127.0.0.1 to a per-address limit).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// `update-edge serve` as a child process, killed (SIGKILL) when dropped.
pub struct Served {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// Every line it has written to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `update-edge serve` on an ephemeral port and waits until it is ready; its
/// address is read from its "serving" log line (no port picked beforehand, no race).
pub async fn spawn_serve(config: &std::path::Path, data: &std::path::Path) -> Served {
    spawn_serve_env(config, data, &[]).await
}

/// [`spawn_serve`] with extra environment variables.
pub async fn spawn_serve_env(
    config: &std::path::Path,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> Served {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_update-edge"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .env("UPDATE_EDGE_ADMIN_TOKEN", TOKEN)
        .env("UPDATE_EDGE_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("serving") {
                let _ = tx.send(line.clone());
            }
            eprintln!("node: {line}");
            lines.lock().unwrap().push(line);
        }
    });
    let line =
        tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("the node never logged its address");
    let at = line
        .find("127.0.0.1:")
        .expect("an address in the serving line");
    let addr: std::net::SocketAddr = line[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let url = format!("http://{addr}/readyz");
    assert!(
        eventually(30, || async {
            client()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
    );
    Served { child, addr, log }
}

/// Fails unless the node at `url` answers `/healthz` with 200.
pub async fn assert_healthy(url: &str) {
    let r = client()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz: no answer");
    assert_eq!(r.status(), reqwest::StatusCode::OK, "healthz");
}

/// The operator's listing of `product`'s builds (`{"builds": [...]}`); fails on a non-200.
pub async fn list_builds(url: &str, product: &str) -> serde_json::Value {
    let r = client()
        .get(format!("{url}/v1/products/{product}/builds"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK, "listing builds");
    r.json().await.unwrap()
}

/// Where a [`Front`] relays to.
#[derive(Clone, Debug)]
pub enum Backend {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// A TCP front a client talks to, bound once for the whole test: it relays each
/// connection to the server currently running (none: closed at once) and counts the
/// bytes relayed to the client, the test's view of download progress. Servers behind it
/// can come and go on new ports or sockets without a port race.
pub struct Front {
    pub url: String,
    backend: std::sync::Arc<std::sync::Mutex<Option<Backend>>>,
    relayed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Front {
    pub async fn start() -> Front {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let backend = std::sync::Arc::new(std::sync::Mutex::new(None));
        let relayed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (b, r, c) = (backend.clone(), relayed.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((device, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let to: Option<Backend> = b.lock().unwrap().clone();
                let r = r.clone();
                tokio::spawn(async move {
                    type Half = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
                    type WHalf = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
                    let (mut nr, mut nw): (Half, WHalf) = match to {
                        None => return,
                        Some(Backend::Tcp(a)) => match tokio::net::TcpStream::connect(a).await {
                            Ok(s) => {
                                let (r, w) = s.into_split();
                                (Box::new(r), Box::new(w))
                            }
                            Err(_) => return,
                        },
                        Some(Backend::Unix(p)) => match tokio::net::UnixStream::connect(p).await {
                            Ok(s) => {
                                let (r, w) = s.into_split();
                                (Box::new(r), Box::new(w))
                            }
                            Err(_) => return,
                        },
                    };
                    let (mut dr, mut dw) = device.into_split();
                    let up = async move {
                        let _ = tokio::io::copy(&mut dr, &mut nw).await;
                        let _ = nw.shutdown().await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n) = nr.read(&mut buf).await {
                            if n == 0 || dw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            r.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    };
                    // Whichever side ends (the node killed, the device done) ends both.
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        Front {
            url,
            backend,
            relayed,
            connections,
        }
    }

    /// Relays new connections to `to` from now on (None: refuses them).
    pub fn route_to(&self, to: Option<Backend>) {
        *self.backend.lock().unwrap() = to;
    }

    /// Waits until `n` more bytes have been relayed to the device than `from`.
    pub async fn relayed_past(&self, from: u64, n: u64) {
        let r = self.relayed.clone();
        assert!(
            eventually(60, || {
                let r = r.clone();
                async move { r.load(std::sync::atomic::Ordering::SeqCst) >= from + n }
            })
            .await,
            "no progress through the front"
        );
    }

    /// Waits until the device has opened a connection since `from` connections.
    pub async fn connection_after(&self, from: u64) {
        let c = self.connections.clone();
        assert!(
            eventually(60, || {
                let c = c.clone();
                async move { c.load(std::sync::atomic::Ordering::SeqCst) > from }
            })
            .await,
            "the client never tried again"
        );
    }

    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.relayed.load(Ordering::SeqCst),
            self.connections.load(Ordering::SeqCst),
        )
    }
}
