//! The hostile-input table: malformed, oversized and abusive requests over a real
//! socket, each with the status it must get; afterwards the node is healthy, its memory
//! is back near where it was, and nothing stored has changed.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use update_edge::config::{ByteSize, Seconds};

/// What a case must get: an HTTP status, or the connection closed without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status(u16),
    Closed,
}
use Expect::*;

/// Sends `request` as raw bytes and reads the answer's status line.
async fn raw(addr: &str, request: &[u8]) -> Expect {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // A node may answer (and close) before a body is all sent; what counts is the answer.
    let _ = tcp.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if got.windows(2).any(|w| w == b"\r\n") {
                return;
            }
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer and no close within 15 s");
    let line = String::from_utf8_lossy(&got);
    match line.split(' ').nth(1).and_then(|s| s.parse().ok()) {
        Some(code) if line.starts_with("HTTP/1.") => Status(code),
        _ if got.is_empty() => Closed,
        _ => panic!("not an HTTP answer: {line:?}"),
    }
}

/// An HTTP/1.1 request with `Connection: close`; a body gets its `Content-Length`.
fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb << 10
}

/// What must not change: the builds, the stored bytes and chunks, and a blob's content.
async fn stored_state(node: &TestNode, hash: &str) -> (String, f64, f64, Vec<u8>) {
    let builds = client()
        .get(format!("{}/v1/products/gw/builds", node.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(builds.status(), reqwest::StatusCode::OK);
    let blob = client().get(node.blob_url(hash)).send().await.unwrap();
    assert_eq!(blob.status(), reqwest::StatusCode::OK);
    (
        builds.text().await.unwrap(),
        node.metric("update_edge_store_bytes").await,
        node.metric("update_edge_store_chunks").await,
        blob.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_status_and_the_node_stays_healthy_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.server.max_upload_bytes = ByteSize(32 << 20);
    cfg.server.header_read_timeout = Seconds(1);
    cfg.server.h2_max_streams = 32;
    let node = TestNode::start(cfg).await;
    let payload = seed_product(&node, "gw", 1, 40_000).await.remove(0);
    let hash = update_edge::hash::Hash::of(&payload).to_hex();
    let size = payload.len();
    let blob = format!("/v1/blobs/{hash}");
    let addr = node.url.trim_start_matches("http://").to_string();
    let auth = format!("Bearer {TOKEN}");
    let auth = auth.as_str();
    let json = ("Content-Type", "application/json");
    // Larger than socket buffers: a reader that never reads leaves its answer pending.
    let big = node.upload(noise(16 << 20, 77)).await;
    let before = stored_state(&node, &hash).await;
    let rss_before = rss_bytes();

    let many_ranges = format!(
        "bytes={}",
        (0..65)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let empty_elements = format!("bytes={}0-1", ",".repeat(6000));
    let past_end = format!("bytes={size}-");
    let big_check = format!(r#"{{"product":"{}"}}"#, "x".repeat(20_000));
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_ring = format!("{{\"version\":{}}}", "[".repeat(3000) + &"]".repeat(3000));
    let big_json = format!(r#"{{"name":"{}"}}"#, "x".repeat(100_000));
    let good_check = r#"{"product":"gw","device_id":"d1","version":"1.0.0"}"#;
    let many_headers: Vec<(String, String)> =
        (0..200).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many_headers: Vec<(&str, &str)> = many_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let huge_header = "a".repeat(1 << 20);
    let upper = hash.to_uppercase();
    let small_body = vec![7u8; 100];

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // Range headers.
        ("range: one byte", req("GET", &blob, &[("Range", "bytes=0-0")], b""), Status(206)),
        ("range: not a number", req("GET", &blob, &[("Range", "bytes=abc-")], b""), Status(200)),
        // A first byte past any size: unsatisfiable; a last byte past it: up to the end.
        ("range: overflowing start", req("GET", &blob, &[("Range", "bytes=99999999999999999999999-")], b""), Status(416)),
        ("range: overflowing end", req("GET", &blob, &[("Range", "bytes=0-99999999999999999999999")], b""), Status(206)),
        ("range: backwards", req("GET", &blob, &[("Range", "bytes=5-1")], b""), Status(200)),
        ("range: other unit", req("GET", &blob, &[("Range", "items=0-1")], b""), Status(200)),
        ("range: past the end", req("GET", &blob, &[("Range", &past_end)], b""), Status(416)),
        ("range: empty suffix", req("GET", &blob, &[("Range", "bytes=-0")], b""), Status(416)),
        ("range: 65 ranges", req("GET", &blob, &[("Range", &many_ranges)], b""), Status(200)),
        ("range: 6000 empty list elements", req("GET", &blob, &[("Range", &empty_elements)], b""), Status(206)),
        ("range: two headers", req("GET", &blob, &[("Range", "bytes=0-1"), ("Range", "bytes=2-3")], b""), Status(206)),
        ("if-range: a date", req("GET", &blob, &[("Range", "bytes=0-1"), ("If-Range", "Wed, 21 Oct 2015 07:28:00 GMT")], b""), Status(200)),
        ("if-range: another etag", req("GET", &blob, &[("Range", "bytes=0-1"), ("If-Range", "\"0000\"")], b""), Status(200)),
        ("if-range: weak etag", req("GET", &blob, &[("Range", "bytes=0-1"), ("If-Range", &format!("W/\"{hash}\""))], b""), Status(200)),
        ("if-none-match: *", req("GET", &blob, &[("If-None-Match", "*")], b""), Status(304)),
        // Hashes.
        ("hash: too short", req("GET", "/v1/blobs/abc", &[], b""), Status(400)),
        ("hash: too long", req("GET", &format!("/v1/blobs/{hash}0"), &[], b""), Status(400)),
        ("hash: uppercase", req("GET", &format!("/v1/blobs/{upper}"), &[], b""), Status(400)),
        ("hash: not hex", req("GET", &format!("/v1/blobs/{}", "g".repeat(64)), &[], b""), Status(400)),
        ("hash: unknown", req("GET", &format!("/v1/blobs/{}", "0".repeat(64)), &[], b""), Status(404)),
        ("hash: chunks of unknown", req("GET", &format!("/v1/blobs/{}/chunks", "0".repeat(64)), &[], b""), Status(404)),
        // Paths.
        ("path: dot-dot", req("GET", "/v1/blobs/../../etc/passwd", &[], b""), Status(404)),
        ("path: encoded dot-dot", req("GET", "/v1/blobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", &[], b""), Status(400)),
        ("path: double slash", req("GET", &format!("//v1/blobs/{hash}"), &[], b""), Status(404)),
        ("path: tuf target dot-dot", req("GET", "/v1/tuf/targets/../../keys/targets.pk8", &[], b""), Status(404)),
        ("path: tuf encoded slash", req("GET", "/v1/tuf/..%2Froot.json", &[], b""), Status(404)),
        ("path: tuf metadata name", req("GET", "/v1/tuf/99999999999999999999999.root.json", &[], b""), Status(404)),
        ("path: unknown route", req("GET", "/admin", &[], b""), Status(404)),
        ("method: DELETE a blob", req("DELETE", &blob, &[], b""), Status(405)),
        // Check bodies.
        ("check: valid", req("POST", "/v1/check", &[json], good_check.as_bytes()), Status(200)),
        ("check: no content type", req("POST", "/v1/check", &[], good_check.as_bytes()), Status(200)),
        ("check: over 16 KiB", req("POST", "/v1/check", &[json], big_check.as_bytes()), Status(413)),
        ("check: declared 1 GB", req("POST", "/v1/check", &[json, ("Content-Length", "1000000000")], b""), Status(413)),
        ("check: not JSON", req("POST", "/v1/check", &[json], b"{not json"), Status(400)),
        ("check: 5000 deep", req("POST", "/v1/check", &[json], deep.as_bytes()), Status(400)),
        ("check: unknown field", req("POST", "/v1/check", &[json], br#"{"product":"gw","device_id":"d","version":"1.0","admin":true}"#), Status(400)),
        ("check: device id 300 bytes", req("POST", "/v1/check", &[json], format!(r#"{{"product":"gw","device_id":"{}","version":"1.0"}}"#, "d".repeat(300)).as_bytes()), Status(400)),
        ("check: control chars in nonce", req("POST", "/v1/check", &[json], br#"{"product":"gw","device_id":"d","version":"1.0","nonce":"a\u0001b"}"#), Status(400)),
        ("check: ring path", req("POST", "/v1/check", &[json], br#"{"product":"gw","device_id":"d","version":"1.0","ring":"../x"}"#), Status(400)),
        ("check: version overflow", req("POST", "/v1/check", &[json], br#"{"product":"gw","device_id":"d","version":"99999999999999999999999"}"#), Status(400)),
        ("check: unknown product", req("POST", "/v1/check", &[json], br#"{"product":"nope","device_id":"d","version":"1.0"}"#), Status(404)),
        ("check: GET", req("GET", "/v1/check", &[], b""), Status(405)),
        // Operator routes and bodies.
        ("product: no token", req("PUT", "/v1/products/x", &[json], br#"{"name":"x"}"#), Status(401)),
        ("product: wrong token", req("PUT", "/v1/products/x", &[json, ("Authorization", "Bearer wrong-token-wrong-token")], br#"{"name":"x"}"#), Status(401)),
        ("product: 100 KB body", req("PUT", "/v1/products/x", &[json, ("Authorization", auth)], big_json.as_bytes()), Status(413)),
        // JSON whatever the declared type (`curl -d` sends a form type): the same product
        // again is a no-op.
        ("product: form content type", req("PUT", "/v1/products/gw", &[("Content-Type", "application/x-www-form-urlencoded"), ("Authorization", auth)], br#"{"name":"Test device","hardware":{"manufacturer":"Contoso"}}"#), Status(200)),
        ("product: bad name", req("PUT", "/v1/products/..%2Fx", &[json, ("Authorization", auth)], br#"{"name":"x"}"#), Status(400)),
        ("ring: deep JSON", req("PUT", "/v1/products/gw/rings/general", &[json, ("Authorization", auth)], deep_ring.as_bytes()), Status(400)),
        ("ring: unknown version", req("PUT", "/v1/products/gw/rings/general", &[json, ("Authorization", auth)], br#"{"version":"9.9.9"}"#), Status(404)),
        ("build: bad version", req("PUT", "/v1/products/gw/builds/1..2", &[("Authorization", auth)], &small_body), Status(400)),
        ("build: unknown kind", req("PUT", "/v1/products/gw/builds/2.0?kind=rootkit", &[("Authorization", auth)], &small_body), Status(400)),
        ("build: unknown product", req("PUT", "/v1/products/nope/builds/2.0", &[("Authorization", auth)], &small_body), Status(404)),
        ("upload: no token", req("POST", "/v1/blobs", &[], &small_body), Status(401)),
        ("upload: declared over the cap", req("POST", "/v1/blobs", &[("Authorization", auth), ("Content-Length", "64000000")], b""), Status(413)),
        ("gc: no token", req("POST", "/v1/gc", &[], b""), Status(401)),
        ("feed: no token", req("GET", "/v1/catalog/changes", &[], b""), Status(401)),
        // The protocol itself.
        ("http: garbage request line", b"GARBAGE\r\n\r\n".to_vec(), Status(400)),
        ("http: bad header bytes", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: \x01\x02\r\n\r\n".to_vec(), Status(400)),
        ("http: 200 headers", req("GET", "/healthz", &many_headers, b""), Status(431)),
        ("http: 1 MiB header", req("GET", "/healthz", &[("X-Big", &huge_header)], b""), Status(431)),
        ("http: length and chunked", b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), Status(400)),
        ("http: bad content length", b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), Status(400)),
        ("http: two content lengths", b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), Status(400)),
        ("http: 1.0", b"GET /healthz HTTP/1.0\r\n\r\n".to_vec(), Status(200)),
        ("http: slowloris half header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(), Closed),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for (name, request, want) in &cases {
        let got = raw(&addr, request).await;
        if got != *want {
            wrong.push(format!("{name}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} case(s) wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // A reader that never reads: its answer stays pending, the node serves others.
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let path = format!("/v1/blobs/{big}");
        tcp.write_all(&req("GET", &path, &[], b"")).await.unwrap();
        stuck.push(tcp);
    }
    let r = client().get(node.blob_url(&big)).send().await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().len(),
        16 << 20,
        "served beside 20 stuck readers"
    );
    drop(stuck);

    // HTTP/2: a flood of streams past the limit, and a flood of resets.
    h2_floods(&addr, &blob).await;

    // Afterwards: healthy, unchanged, memory near where it was.
    assert_healthy(&node.url).await;
    let after = stored_state(&node, &hash).await;
    assert!(before == after, "something stored changed");
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 128 << 20, "RSS grew by {} MiB", grown >> 20);

    // Shutdown begins: new connections are refused, not hung.
    let server = node.server.as_ref().unwrap().addr;
    let node_dir = node.dir.clone();
    let stopping = tokio::spawn(node.stop());
    let refused = async {
        for _ in 0..100 {
            if TcpStream::connect(server).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(
        refused.await,
        "connections still accepted after shutdown began"
    );
    stopping.await.unwrap();
    assert!(node_dir.exists());
}

/// One HTTP/2 connection opens 500 streams at once (the node allows 32 at a time), then
/// another opens and resets 5,000 (the rapid-reset attack): every answered stream is
/// right, and the node is still up.
async fn h2_floods(addr: &str, path: &str) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // One request answered first: the node's SETTINGS (sent before any response) are
    // then known to the client, so how many streams get refused does not depend on how
    // fast this machine is (under load the whole flood could go out before them).
    let mut c = client.clone().ready().await.unwrap();
    let (first, _) = c
        .send_request(
            http::Request::get(format!("http://node{path}"))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let first = tokio::select! {
        r = first => r.unwrap(),
        e = &mut conn => panic!("the connection ended first: {e:?}"),
    };
    assert_eq!(first.status(), 200);
    assert_eq!(
        conn.max_concurrent_send_streams(),
        32,
        "the node's stream limit, as it advertises it"
    );
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for _ in 0..500 {
        let mut c = client.clone().ready().await.unwrap();
        let request = http::Request::get(format!("http://node{path}"))
            .body(())
            .unwrap();
        let (resp, _) = c.send_request(request, true).unwrap();
        answers.push(resp);
    }
    // The client keeps to the node's 32 streams once it knows them: none is refused.
    let (mut ok, mut refused) = (0, 0);
    for a in answers {
        match a.await {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                ok += 1;
            }
            Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => refused += 1,
            Err(e) => panic!("stream failed: {e}"),
        }
    }
    assert_eq!((ok, refused), (500, 0), "answered, refused");

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..5000 {
        let Ok(mut c) = client.clone().ready().await else {
            break; // the node sent GOAWAY: the attack is cut off
        };
        let request = http::Request::get(format!("http://node{path}"))
            .body(())
            .unwrap();
        let Ok((resp, _)) = c.send_request(request, true) else {
            break;
        };
        drop(resp); // RST_STREAM(CANCEL) at once
    }
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
}
