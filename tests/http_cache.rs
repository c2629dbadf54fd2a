//! A real standard HTTP cache (nginx `proxy_cache`, config/nginx-cache.conf) in front of
//! a node: the device client updates through it byte-exact, immutable URLs are served
//! from the cache, and curl resumes a download through it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use update_edge::client;

fn nginx_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// Runs nginx with the shipped config, in front of `upstream` (host:port).
struct Nginx {
    child: Child,
    url: String,
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master then stops its workers (a killed master leaves
    /// them running).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

async fn nginx(dir: &std::path::Path, upstream: &str) -> Nginx {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    nginx_at(dir, upstream, port).await
}

async fn nginx_at(dir: &std::path::Path, upstream: &str, port: u16) -> Nginx {
    let run = dir.join("nginx-run");
    std::fs::create_dir_all(&run).unwrap();
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx-cache.conf"),
    )
    .unwrap();
    let conf = template
        .replace("@RUN_DIR@", run.to_str().unwrap())
        .replace("@CACHE_DIR@", dir.join("nginx-cache").to_str().unwrap())
        .replace("@UPSTREAM@", upstream)
        .replace("@LISTEN@", &format!("127.0.0.1:{port}"));
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx_bin())
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&run)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let url = format!("http://127.0.0.1:{port}");
    let up = eventually(10, || async {
        client().get(format!("{url}/healthz")).send().await.is_ok()
    })
    .await;
    assert!(up, "nginx did not start");
    Nginx { child, url }
}

#[tokio::test]
async fn a_device_updates_through_nginx_proxy_cache_and_curl_resumes_through_it() {
    if !require_tools(&[nginx_bin(), "curl", "b3sum"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    let builds = gw_targeting_102(&node, 300_000).await;
    let cache = nginx(dir.path(), node.url.trim_start_matches("http://")).await;

    for device in ["dev-1", "dev-2"] {
        let d = dir.path().join(device);
        std::fs::create_dir_all(&d).unwrap();
        let args = client::UpdateArgs {
            server: cache.url.clone(),
            ..node.device_args(&d, "gw", device, "1.0.1", None)
        };
        let r = client::update(args.clone()).await.unwrap();
        assert_eq!(r.version.as_deref(), Some("1.0.2"));
        assert_eq!(std::fs::read(&args.out).unwrap(), builds[1], "{device}");
    }
    // The full image came from the node once; the second device got it from nginx.
    let blob = node
        .node
        .catalog
        .build("gw", &"1.0.2".parse().unwrap())
        .unwrap()
        .unwrap()
        .blob
        .to_string();
    let url = format!("{}/v1/blobs/{blob}", cache.url);
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-cache-status"], "HIT");
    let served = node.metric("update_edge_bytes_served_total").await;
    assert_eq!(served, builds[1].len() as f64, "one copy left the node");

    // Resume through the cache: the first part, then `curl -C -` for the rest.
    let out = dir.path().join("resumed.img");
    let first = Command::new("curl")
        .args(["-sf", "-r", "0-99999", "-o"])
        .arg(&out)
        .arg(&url)
        .status()
        .unwrap();
    assert!(first.success());
    assert_eq!(out.metadata().unwrap().len(), 100_000);
    assert!(curl_resume(&out, &url).await.success());
    assert_eq!(std::fs::read(&out).unwrap(), builds[1]);
    let b3 = Command::new("b3sum")
        .args(["--no-names"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(b3.stdout).unwrap().trim(), blob);
    drop(cache);
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.stop().await;
}

#[tokio::test]
async fn a_device_download_through_nginx_resumes_after_the_cache_restarts() {
    if !require_tools(&[nginx_bin()]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    // Larger than the loopback socket buffers, so stopping nginx cuts the transfer.
    let builds = gw_targeting_102(&node, 24 << 20).await;
    let upstream = node.url.trim_start_matches("http://").to_string();
    let cache = nginx(dir.path(), &upstream).await;
    let port: u16 = cache.url.rsplit(':').next().unwrap().parse().unwrap();
    let args = client::UpdateArgs {
        server: cache.url.clone(),
        max_rate: 4 << 20,
        retry_for: Duration::from_secs(30),
        ca: None,
        ..node.device_args(dir.path(), "gw", "dev-1", "1.0.1", None)
    };
    let task = tokio::spawn(client::update(args.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(cache); // the cache goes away mid-download, for long enough to be noticed
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _cache = nginx_at(dir.path(), &upstream, port).await;
    let r = task.await.unwrap().unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.2"));
    assert_eq!(std::fs::read(&args.out).unwrap(), builds[1]);
    assert!(r.retries >= 1, "the download was interrupted: {r:?}");
    // Verified pieces are kept: at most the piece in flight is fetched twice.
    let size = builds[1].len() as u64;
    assert!(r.bytes_downloaded <= size + (4 << 20), "{r:?}");
    node.stop().await;
}
