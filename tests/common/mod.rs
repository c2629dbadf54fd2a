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
        let dir = config.server.data_dir.clone();
        let node = Node::open(config).expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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

    /// Value of one labelled series, given exactly as exported (`name{a="b"}`).
    pub async fn metric_labeled(&self, series: &str) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0.0)
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
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
