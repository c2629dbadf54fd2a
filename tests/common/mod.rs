//! Shared helpers: a real node on 127.0.0.1:0 with a temp data dir, small chunks so
//! small payloads cross chunk boundaries, and a real HTTP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use update_edge::config::{ByteSize, Config};
use update_edge::server::{self, Node, RunningServer};

pub const TOKEN: &str = "test-token";
pub const CHUNK_MIN: usize = 1024;
pub const CHUNK_AVG: usize = 4096;
pub const CHUNK_MAX: usize = 16384;

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.data_dir = dir.to_path_buf();
    c.server.admin_token = TOKEN.into();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.store.chunk_min = ByteSize(CHUNK_MIN as u64);
    c.store.chunk_avg = ByteSize(CHUNK_AVG as u64);
    c.store.chunk_max = ByteSize(CHUNK_MAX as u64);
    c.store.cache_size = ByteSize(8 << 20);
    c
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
        let node = Node::open(config).expect("open store");
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

    async fn metrics_text(&self) -> String {
        let resp = client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    }

    /// Value of one labelled series, given exactly as exported (`name{a="b"}`).
    pub async fn metric_labeled(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0.0)
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|v| v.parse().unwrap())
            .unwrap_or(0.0)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
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
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
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
