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

/// Runs nginx with the shipped config, in front of `upstream` (host:port), listening on
/// a unix socket (no port to pick, so no race), reached through a [`Front`].
struct Nginx {
    child: Child,
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

/// nginx in front of `upstream`, and a front that reaches it: its URL is `front.url`.
async fn nginx(dir: &std::path::Path, upstream: &str) -> (Nginx, Front) {
    let front = Front::start().await;
    let cache = nginx_at(dir, upstream, &front).await;
    (cache, front)
}

/// Starts nginx and routes `front` to it once it answers.
async fn nginx_at(dir: &std::path::Path, upstream: &str, front: &Front) -> Nginx {
    let run = dir.join("nginx-run");
    std::fs::create_dir_all(&run).unwrap();
    let sock = dir.join("nginx.sock");
    let _ = std::fs::remove_file(&sock);
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx-cache.conf"),
    )
    .unwrap();
    let conf = template
        .replace("@RUN_DIR@", run.to_str().unwrap())
        .replace("@CACHE_DIR@", dir.join("nginx-cache").to_str().unwrap())
        .replace("@UPSTREAM@", upstream)
        .replace("@LISTEN@", &format!("unix:{}", sock.display()));
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
    front.route_to(Some(Backend::Unix(sock.clone())));
    let url = format!("{}/healthz", front.url);
    let up = eventually(10, || async { client().get(&url).send().await.is_ok() }).await;
    assert!(up, "nginx did not start");
    Nginx { child }
}

// Multi-threaded: curl runs as a blocking child while the front relays on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_updates_through_nginx_proxy_cache_and_curl_resumes_through_it() {
    if !require_tools(&[nginx_bin(), "curl", "b3sum"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    let builds = gw_targeting_102(&node, 300_000).await;
    let (cache, front) = nginx(dir.path(), node.url.trim_start_matches("http://")).await;

    for device in ["dev-1", "dev-2"] {
        let d = dir.path().join(device);
        std::fs::create_dir_all(&d).unwrap();
        let args = client::UpdateArgs {
            server: front.url.clone(),
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
    let url = format!("{}/v1/blobs/{blob}", front.url);
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
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_download_through_nginx_resumes_after_the_cache_restarts() {
    if !require_tools(&[nginx_bin()]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    // Larger than the loopback socket buffers, so stopping nginx cuts the transfer.
    let builds = gw_targeting_102(&node, 24 << 20).await;
    let upstream = node.url.trim_start_matches("http://").to_string();
    let (cache, front) = nginx(dir.path(), &upstream).await;
    let args = client::UpdateArgs {
        server: front.url.clone(),
        max_rate: 4 << 20,
        retry_for: Duration::from_secs(30),
        ca: None,
        ..node.device_args(dir.path(), "gw", "dev-1", "1.0.1", None)
    };
    let (relayed, _) = front.counts();
    let task = tokio::spawn(client::update(args.clone()));
    // The cache goes away once 2 MiB of the download have come through it, and comes
    // back once the device has tried it while it was gone.
    front.relayed_past(relayed, 2 << 20).await;
    front.route_to(None);
    let (_, tried) = front.counts();
    drop(cache);
    front.connection_after(tried).await;
    let _cache = nginx_at(dir.path(), &upstream, &front).await;
    let r = task.await.unwrap().unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.2"));
    assert_eq!(std::fs::read(&args.out).unwrap(), builds[1]);
    assert!(r.retries >= 1, "the download was interrupted: {r:?}");
    // Verified pieces are kept: at most the piece in flight is fetched twice.
    let size = builds[1].len() as u64;
    assert!(r.bytes_downloaded <= size + (4 << 20), "{r:?}");
    node.stop().await;
}
