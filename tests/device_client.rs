//! The reference device client against hostile conditions: a node killed (SIGKILL) and
//! restarted mid-download, and an intermediary that corrupts payload bytes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use update_edge::client::{self, ClientError, UpdateArgs};

const SIZE: usize = 6 << 20;

/// A loopback port no one listens on, held (bound, never listening) for as long as the
/// returned socket lives: connections to it are refused, and nothing else can take it.
fn refused_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("edge.toml");
    init_keys(&dir.join("keys"), &dir.join("root-keys"));
    std::fs::write(
        &p,
        format!(
            "[store]\nchunk_min = \"16KiB\"\nchunk_avg = \"64KiB\"\nchunk_max = \"256KiB\"\n[delta]\nfrom_previous = 0\n[tuf]\nkeys_dir = {:?}\n",
            dir.join("keys")
        ),
    )
    .unwrap();
    p
}

async fn seed(url: &str) -> Vec<u8> {
    let put = |u: String, b: Vec<u8>| async move {
        client()
            .put(u)
            .bearer_auth(TOKEN)
            .body(b)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert!(put(
        format!("{url}/v1/products/gw"),
        br#"{"name":"gw"}"#.to_vec()
    )
    .await
    .is_success());
    assert_eq!(
        put(format!("{url}/v1/products/gw/builds/1.0.1"), noise(1000, 1)).await,
        StatusCode::CREATED
    );
    let v2 = noise(SIZE, 2);
    assert_eq!(
        put(format!("{url}/v1/products/gw/builds/1.0.2"), v2.clone()).await,
        StatusCode::CREATED
    );
    assert!(put(
        format!("{url}/v1/products/gw/rings/general"),
        br#"{"version":"1.0.2"}"#.to_vec()
    )
    .await
    .is_success());
    v2
}

fn args(url: &str, out: std::path::PathBuf, max_rate: u64, retry: u64) -> UpdateArgs {
    let dir = out.parent().unwrap().to_path_buf();
    UpdateArgs {
        root: dir.join("keys/root/1.root.json"),
        // One device per output file: its own verified metadata and installed version.
        state: dir.join(format!(
            "state-{}",
            out.file_stem().unwrap().to_string_lossy()
        )),
        server: url.into(),
        product: "gw".into(),
        device_id: "device-7".into(),
        version: "1.0.1".into(),
        ring: None,
        current: None,
        out,
        max_rate,
        retry_for: Duration::from_secs(retry),
        ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_resumes_across_a_killed_and_restarted_node_without_refetching_verified_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let front = Front::start().await;
    let url = front.url.clone();
    let mut node = spawn_serve(&config, &data).await;
    front.route_to(Some(Backend::Tcp(node.addr)));
    let v2 = seed(&url).await;

    // Phase 1: the client keeps going while the node is killed (once 1 MiB of the
    // payload has come through) and restarted (once the client has tried it down).
    let out = dir.path().join("a.img");
    let (relayed, _) = front.counts();
    let task = tokio::spawn(client::update(args(&url, out.clone(), 3 << 20, 60)));
    front.relayed_past(relayed, 1 << 20).await;
    front.route_to(None);
    let (_, tried) = front.counts();
    drop(node); // SIGKILL mid-transfer
    front.connection_after(tried).await;
    node = spawn_serve(&config, &data).await;
    front.route_to(Some(Backend::Tcp(node.addr)));
    let r = task.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    assert!(r.retries >= 1, "{r:?}");
    // Only the request cut by the kill is fetched twice (at most 4 MiB).
    assert!(r.bytes_downloaded <= (SIZE + (4 << 20)) as u64, "{r:?}");
    eprintln!("phase 1 (kill + restart, same client run): {r:?}");

    // Phase 2: the client itself gives up while the node is down, then a new run resumes
    // from the verified pieces on disk.
    let out = dir.path().join("b.img");
    let (relayed, _) = front.counts();
    let task = tokio::spawn(client::update(args(&url, out.clone(), 3 << 20, 1)));
    front.relayed_past(relayed, 1 << 20).await;
    front.route_to(None);
    drop(node);
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::GaveUp(..)), "{err}");
    assert!(!out.exists());
    let node = spawn_serve(&config, &data).await;
    front.route_to(Some(Backend::Tcp(node.addr)));
    let r = client::update(args(&url, out.clone(), 0, 30))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    assert!(r.bytes_resumed > 0, "{r:?}");
    assert_eq!(r.bytes_downloaded + r.bytes_resumed, SIZE as u64, "{r:?}");
    eprintln!("phase 2 (new client run after giving up): {r:?}");
}

/// An HTTP intermediary that passes everything through but flips one byte in payload
/// range responses: once (`always == false`) or on every response.
async fn corrupting_proxy(upstream: String, always: bool) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let done = Arc::new(AtomicBool::new(false));
    let app = axum::Router::new().fallback(move |req: Request| {
        let (upstream, done) = (upstream.clone(), done.clone());
        async move {
            let path = req.uri().path().to_string();
            let method = req.method().clone();
            let range = req.headers().get("range").cloned();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let mut r = client()
                .request(method, format!("{upstream}{path}"))
                .body(body);
            if let Some(v) = range {
                r = r.header("range", v);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status();
            let ctype = resp.headers().get("content-type").cloned();
            let mut bytes = resp.bytes().await.unwrap().to_vec();
            let is_payload =
                path.starts_with("/v1/blobs/") && !path.ends_with("/chunks") && !bytes.is_empty();
            if is_payload && (always || !done.swap(true, Ordering::SeqCst)) {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
            }
            let mut b = Response::builder().status(status);
            if let Some(c) = ctype {
                b = b.header("content-type", c);
            }
            b.body(Body::from(bytes)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn corrupted_payload_bytes_are_refetched_or_rejected_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    let v2 = seed(&node.url).await;
    std::fs::create_dir_all(dir.path().join("keys/root")).unwrap();
    std::fs::copy(
        root_path(&node.node.config),
        dir.path().join("keys/root/1.root.json"),
    )
    .unwrap();

    let once = corrupting_proxy(node.url.clone(), false).await;
    let out = dir.path().join("once.img");
    let r = client::update(args(&once, out.clone(), 0, 10))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        v2,
        "a corrupted piece was trusted"
    );
    assert!(r.retries >= 1, "{r:?}");

    let always = corrupting_proxy(node.url.clone(), true).await;
    let out = dir.path().join("always.img");
    let err = client::update(args(&always, out.clone(), 0, 10))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Verification(_)), "{err}");
    assert!(!out.exists(), "corrupted download was written to --out");
    node.stop().await;
}

/// The device binary (`update-edge-device update`) with `args`' settings.
fn device_binary_update(a: &UpdateArgs) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_update-edge-device"))
        .args(["update", "--server", &a.server, "--product", &a.product])
        .args(["--device-id", &a.device_id, "--version", &a.version])
        .arg("--root")
        .arg(&a.root)
        .arg("--state")
        .arg(&a.state)
        .arg("--out")
        .arg(&a.out)
        .args(["--retry-secs", &a.retry_for.as_secs().to_string()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_binary_updates_byte_exact_then_finds_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let node = spawn_serve(&config, &dir.path().join("data")).await;
    let url = format!("http://{}", node.addr);
    let v2 = seed(&url).await;
    let out = dir.path().join("d.img");
    let mut a = args(&url, out.clone(), 0, 10);
    let run = tokio::task::spawn_blocking({
        let a = args(&url, out.clone(), 0, 10);
        move || device_binary_update(&a)
    });
    let st = run.await.unwrap();
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(String::from_utf8_lossy(&st.stdout).contains("updated to 1.0.2"));
    assert!(
        std::fs::read(&out).unwrap() == v2,
        "the update's bytes differ"
    );
    // Now on 1.0.2: nothing to do (exit 3), and the output is left as it was.
    a.version = "1.0.2".into();
    let st = tokio::task::spawn_blocking(move || device_binary_update(&a))
        .await
        .unwrap();
    assert_exit(&st, 3);
    assert!(std::fs::read(&out).unwrap() == v2);
    drop(node);
}

#[test]
fn cli_device_update_exit_codes() {
    // No server at all: exit 2 after giving up; nothing written. Both binaries.
    for (bin, device) in [
        (env!("CARGO_BIN_EXE_update-edge"), &["device"][..]),
        (env!("CARGO_BIN_EXE_update-edge-device"), &[][..]),
    ] {
        cli_device_update_without_a_server(bin, device);
    }
}

fn cli_device_update_without_a_server(bin: &str, device: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.img");
    init_keys(&dir.path().join("keys"), &dir.path().join("root-keys"));
    let (_held, port) = refused_port();
    let st = Command::new(bin)
        .args(device)
        .args(["update", "--server", &format!("http://127.0.0.1:{port}")])
        .arg("--root")
        .arg(dir.path().join("keys/root/1.root.json"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .args([
            "--product",
            "gw",
            "--device-id",
            "d",
            "--version",
            "1.0.1",
            "--retry-secs",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_exit(&st, 2);
    assert!(!out.exists());
}
