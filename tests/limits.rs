//! Connection limits and timeouts (`[server]`), over real sockets.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use update_edge::config::Seconds;

/// Reads until the peer closes; fails the test if it has not within `secs`.
async fn read_until_closed(tcp: &mut TcpStream, secs: u64) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(secs), tcp.read_to_end(&mut got)).await;
    match read {
        Ok(Ok(_)) => got,
        // A reset after the server gave up is a close too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Ok(Err(e)) => panic!("reading: {e}"),
        Err(_) => panic!("the node kept the connection open past {secs} s"),
    }
}

#[tokio::test]
async fn a_half_sent_header_and_an_idle_keep_alive_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.server.header_read_timeout = Seconds(1);
    let node = TestNode::start(cfg).await;
    let addr = node.url.trim_start_matches("http://").to_string();

    // Slowloris: half a header, then nothing.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_until_closed(&mut slow, 10).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "a half header was answered"
    );

    // Keep-alive: one request answered, then the idle connection is closed.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle, 10).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // The node still serves.
    assert_healthy(&node.url).await;
    node.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_the_node_serves_again_when_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.server.max_connections = 3;
    let node = TestNode::start(cfg).await;
    let addr = node.url.trim_start_matches("http://").to_string();

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        // A request answered proves the connection holds a slot.
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&read_until_closed(&mut extra, 10).await).to_lowercase();
    assert!(got.starts_with("http/1.1 503"), "{got}");
    assert!(got.contains("retry-after: 1"), "{got}");

    let healthy = || async {
        reqwest::Client::new()
            .get(format!("{}/healthz", node.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    };
    drop(held.pop());
    assert!(eventually(10, healthy).await, "a freed slot is used again");
    drop(held);
    assert!(eventually(10, healthy).await);
    // At least the one above (a probe that raced a slot's release may add to it).
    assert!(node.metric("update_edge_connections_refused_total").await >= 1.0);
    node.stop().await;
}

#[tokio::test]
async fn an_upload_over_the_cap_is_413_and_a_stalled_one_is_408_and_neither_keeps_anything_or_blocks_gc(
) {
    use update_edge::config::ByteSize;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.server.max_upload_bytes = ByteSize(100_000);
    cfg.server.upload_idle_timeout = Seconds(1);
    let node = TestNode::start(cfg).await;
    let c = client();
    let post = |data: Vec<u8>| {
        c.post(format!("{}/v1/blobs", node.url))
            .bearer_auth(TOKEN)
            .body(data)
            .send()
    };
    let big = noise(200_000, 5);
    let r = post(big.clone()).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().await.unwrap().contains("max_upload_bytes"));
    let h = update_edge::hash::Hash::of(&big);
    let r = c
        .get(format!("{}/v1/blobs/{h}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::NOT_FOUND,
        "nothing of it kept"
    );

    // Half an upload, then silence: aborted, and a GC queued behind it runs.
    let addr = node.url.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /v1/blobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 50000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&[7u8; 1000]).await.unwrap();
    let gc = tokio::time::timeout(
        Duration::from_secs(15),
        c.post(format!("{}/v1/gc", node.url))
            .bearer_auth(TOKEN)
            .send(),
    )
    .await
    .expect("a stalled upload blocked garbage collection")
    .unwrap();
    assert_eq!(gc.status(), reqwest::StatusCode::OK);
    let got = String::from_utf8_lossy(&read_until_closed(&mut slow, 10).await).to_string();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");

    // Within the cap: stored.
    let small = noise(50_000, 6);
    let r = post(small.clone()).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let r = c
        .get(format!(
            "{}/v1/blobs/{}",
            node.url,
            update_edge::hash::Hash::of(&small)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), small.as_slice());
    node.stop().await;
}

#[tokio::test]
async fn checks_past_an_addresses_rate_get_429_with_retry_after_and_other_addresses_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.catalog.check_rate_per_ip = 1;
    cfg.catalog.check_burst_per_ip = 3;
    let node = TestNode::start(cfg).await;
    seed_product(&node, "gw", 1, 10_000).await;
    let check_from = |c: reqwest::Client, device: &str| {
        let body = serde_json::json!({"product": "gw", "device_id": device, "version": "1.0.0"});
        let url = format!("{}/v1/check", node.url);
        async move { c.post(url).json(&body).send().await.unwrap() }
    };
    let flood = client_from("127.0.0.1");
    for i in 0..3 {
        let r = check_from(flood.clone(), &format!("made-up-{i}")).await;
        assert_eq!(r.status(), reqwest::StatusCode::OK, "burst check {i}");
    }
    let r = check_from(flood.clone(), "made-up-3").await;
    assert_eq!(r.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "retry-after {wait}");
    assert!(r.text().await.unwrap().contains("too many checks"));
    // Another address has its own bucket.
    let r = check_from(client_from("127.0.0.2"), "legit").await;
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert_eq!(
        node.metric_labeled(r#"update_edge_checks_total{result="limited"}"#)
            .await,
        1.0
    );
    // After the wait, the flooding address may check again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = check_from(flood, "made-up-4").await;
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    node.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_limit_counts_the_forwarded_client_and_nobody_else_may_claim_one(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.catalog.check_rate_per_ip = 1;
    cfg.catalog.check_burst_per_ip = 2;
    // 127.0.0.1 is the load balancer; 127.0.0.2 is a device talking to the node directly.
    cfg.log.trusted_proxies = vec!["127.0.0.1".into()];
    let node = TestNode::start(cfg).await;
    seed_product(&node, "gw", 1, 10_000).await;
    let check = |c: reqwest::Client, forwarded: &'static str, device: String| {
        let body = serde_json::json!({"product": "gw", "device_id": device, "version": "1.0.0"});
        let url = format!("{}/v1/check", node.url);
        async move {
            c.post(url)
                .header("x-forwarded-for", forwarded)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let proxy = client_from("127.0.0.1");
    for i in 0..2 {
        let s = check(proxy.clone(), "198.51.100.7", format!("a-{i}")).await;
        assert_eq!(s, reqwest::StatusCode::OK, "burst check {i}");
    }
    // The same device again: limited, although the proxy's own address is fine.
    let s = check(proxy.clone(), "198.51.100.7", "a-2".into()).await;
    assert_eq!(s, reqwest::StatusCode::TOO_MANY_REQUESTS);
    // Another device behind the same proxy has its own bucket (a spoofed entry it put
    // in front of the proxy's is not believed either).
    let s = check(proxy.clone(), "198.51.100.7, 198.51.100.8", "b-0".into()).await;
    assert_eq!(s, reqwest::StatusCode::OK);
    // A direct client cannot escape its own limit by naming others: not a trusted peer.
    let direct = client_from("127.0.0.2");
    for (i, claimed) in ["192.0.2.1", "192.0.2.2"].into_iter().enumerate() {
        let s = check(direct.clone(), claimed, format!("c-{i}")).await;
        assert_eq!(s, reqwest::StatusCode::OK, "direct check {i}");
    }
    let s = check(direct, "192.0.2.3", "c-2".into()).await;
    assert_eq!(s, reqwest::StatusCode::TOO_MANY_REQUESTS);
    node.stop().await;
}

#[tokio::test]
async fn a_check_body_over_16_kib_is_413_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    // Declared too large: refused on the header, before the body is sent.
    let addr = node.url.trim_start_matches("http://").to_string();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
        .await
        .expect("no answer to a declared 1 GB check")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // Streamed (no length) past the limit: refused too.
    let big = format!(r#"{{"product":"{}"}}"#, "x".repeat(20_000));
    let r = client()
        .post(format!("{}/v1/check", node.url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(big.into_bytes()),
        ])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().await.unwrap().contains("16384 bytes"));
    node.stop().await;
}

/// Sends a request with a `len`-byte body whole, then reads the status line: what a
/// simple client does. Fails on a broken pipe.
async fn send_whole_then_read(addr: &str, head: &str, len: usize) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("{head}Content-Length: {len}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        if let Err(e) = tcp.write_all(&chunk[..n]).await {
            panic!("the node closed under the body after {sent} bytes: {e}");
        }
        sent += n;
    }
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut status))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&status).into_owned()
}

#[tokio::test]
async fn a_refused_upload_is_drained_so_a_client_writing_its_whole_body_sees_the_status() {
    use update_edge::config::ByteSize;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.server.max_upload_bytes = ByteSize(100_000);
    let node = TestNode::start(cfg).await;
    let addr = node.url.trim_start_matches("http://").to_string();
    // 6 MiB: far past what socket buffers absorb, within the 8 MiB drained.
    let len = 6 << 20;
    let no_token = "POST /v1/blobs HTTP/1.1\r\nHost: x\r\n";
    assert_eq!(
        send_whole_then_read(&addr, no_token, len).await,
        "HTTP/1.1 401"
    );
    let too_big =
        format!("POST /v1/blobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n");
    assert_eq!(
        send_whole_then_read(&addr, &too_big, len).await,
        "HTTP/1.1 413"
    );
    assert_healthy(&node.url).await;
    node.stop().await;
}

#[tokio::test]
async fn the_device_client_waits_out_a_429_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&dir.path().join("data"));
    cfg.catalog.check_rate_per_ip = 1;
    cfg.catalog.check_burst_per_ip = 1;
    let node = TestNode::start(cfg).await;
    let builds = gw_targeting_102(&node, 30_000).await;
    // This address's one check is spent: the client's check is answered 429 first.
    let (status, _) = check(
        &node,
        serde_json::json!({"product": "gw", "device_id": "other", "version": "1.0.1"}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let started = std::time::Instant::now();
    let r = update_edge::client::update(node.device_args(dir.path(), "gw", "d1", "1.0.1", None))
        .await
        .unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.2"));
    assert!(r.retries >= 1, "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "retried before Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(
        std::fs::read(dir.path().join("out.img")).unwrap(),
        builds[1]
    );
    assert!(
        node.metric_labeled(r#"update_edge_checks_total{result="limited"}"#)
            .await
            >= 1.0
    );
    node.stop().await;
}
