//! Downloads and uploads against a real node on 127.0.0.1:0 (RFC 9110 semantics).

mod common;

use common::*;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::StatusCode;

const SIZE: usize = 40_000;

async fn node_with_payload() -> (tempfile::TempDir, TestNode, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let data = noise(SIZE, 42);
    let hash = node.upload(data.clone()).await;
    (dir, node, data, hash)
}

#[tokio::test]
async fn range_requests_follow_rfc_9110() {
    let (_dir, node, data, hash) = node_with_payload().await;
    let n = SIZE;
    // (Range header, status, expected body range, Content-Range)
    type Case<'a> = (&'a str, u16, Option<(usize, usize)>, Option<String>);
    let cases: Vec<Case> = vec![
        (
            "bytes=0-0",
            206,
            Some((0, 1)),
            Some(format!("bytes 0-0/{n}")),
        ),
        (
            "bytes=0-999",
            206,
            Some((0, 1000)),
            Some(format!("bytes 0-999/{n}")),
        ),
        (
            "bytes=-1",
            206,
            Some((n - 1, n)),
            Some(format!("bytes {}-{}/{n}", n - 1, n - 1)),
        ),
        (
            "bytes=-100",
            206,
            Some((n - 100, n)),
            Some(format!("bytes {}-{}/{n}", n - 100, n - 1)),
        ),
        (
            "bytes=39000-",
            206,
            Some((39000, n)),
            Some(format!("bytes 39000-{}/{n}", n - 1)),
        ),
        (
            "bytes=39990-99999",
            206,
            Some((39990, n)),
            Some(format!("bytes 39990-{}/{n}", n - 1)),
        ),
        (
            "bytes=-99999",
            206,
            Some((0, n)),
            Some(format!("bytes 0-{}/{n}", n - 1)),
        ),
        (
            "bytes=5000-20000",
            206,
            Some((5000, 20001)),
            Some(format!("bytes 5000-20000/{n}")),
        ),
        (
            "bytes=100-199,150-299",
            206,
            Some((100, 300)),
            Some(format!("bytes 100-299/{n}")),
        ),
        ("bytes=-0", 416, None, Some(format!("bytes */{n}"))),
        ("bytes=40000-", 416, None, Some(format!("bytes */{n}"))),
        ("bytes=50000-60000", 416, None, Some(format!("bytes */{n}"))),
        ("bytes=9-5", 200, Some((0, n)), None),
        ("bytes=abc", 200, Some((0, n)), None),
        ("pages=1-2", 200, Some((0, n)), None),
    ];
    let c = client();
    for (range, status, body, content_range) in cases {
        let resp = c
            .get(node.blob_url(&hash))
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "Range: {range}");
        assert_eq!(resp.headers()["accept-ranges"], "bytes");
        assert_eq!(
            resp.headers()
                .get(CONTENT_RANGE)
                .map(|v| v.to_str().unwrap().to_string()),
            content_range,
            "Range: {range}"
        );
        let got = resp.bytes().await.unwrap();
        match body {
            Some((s, e)) => assert_eq!(&got[..], &data[s..e], "Range: {range}"),
            None => assert!(got.is_empty(), "Range: {range}"),
        }
    }
    node.stop().await;
}

#[tokio::test]
async fn multiple_ranges_come_back_as_multipart_with_overlaps_coalesced() {
    let (_dir, node, data, hash) = node_with_payload().await;
    let resp = client()
        .get(node.blob_url(&hash))
        .header("Range", "bytes=30000-30009, 0-9, 5-19, -5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let ctype = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart")
        .to_string();
    let declared: usize = resp.headers()[CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    let expected = [(0usize, 20usize), (30000, 30010), (SIZE - 5, SIZE)];
    let mut want = Vec::new();
    for (s, e) in expected {
        want.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {s}-{}/{SIZE}\r\n\r\n", e - 1)
                .as_bytes(),
        );
        want.extend_from_slice(&data[s..e]);
    }
    want.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(&body[..], &want[..]);
    node.stop().await;
}

#[tokio::test]
async fn many_small_ranges_over_many_chunks_are_answered_whole_not_read_chunk_by_chunk() {
    use update_edge::config::ByteSize;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    (
        cfg.store.chunk_min,
        cfg.store.chunk_avg,
        cfg.store.chunk_max,
    ) = (ByteSize(512 << 10), ByteSize(1 << 20), ByteSize(2 << 20));
    let node = TestNode::start(cfg).await;
    let size = 24usize << 20;
    let data = noise(size, 11);
    let hash = node.upload(data.clone()).await;
    let get = |range: String| {
        client()
            .get(node.blob_url(&hash))
            .header("Range", range)
            .send()
    };
    // One byte every 2 MiB: 12 bytes asked, ≥ 12 chunks (≥ 8 MiB) to read: whole.
    let spread: Vec<String> = (0..12).map(|i| format!("{0}-{0}", i * (2 << 20))).collect();
    let r = get(format!("bytes={}", spread.join(","))).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_LENGTH], size.to_string().as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // Two such bytes (at most 4 MiB of chunks): multipart as asked.
    let r = get(format!("bytes={},{}", spread[0], spread[11]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("multipart/byteranges"));
    // Large ranges reading about what they send: multipart too, however many chunks.
    let r = get(format!("bytes=0-{},{}-", 10 << 20, 14 << 20))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    node.stop().await;
}

#[tokio::test]
async fn validators_give_304_and_if_range_picks_partial_or_whole() {
    let (_dir, node, data, hash) = node_with_payload().await;
    let c = client();
    let etag = format!("\"{hash}\"");
    let r = c.get(node.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let r = c
        .get(node.blob_url(&hash))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .get(node.blob_url(&hash))
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(node.blob_url(&hash))
        .header("Range", "bytes=10-19")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[10..20]);
    let r = c
        .get(node.blob_url(&hash))
        .header("Range", "bytes=10-19")
        .header("If-Range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), SIZE);
    node.stop().await;
}

#[tokio::test]
async fn head_reports_exact_length_and_no_body() {
    let (_dir, node, _data, hash) = node_with_payload().await;
    let c = client();
    let r = c.head(node.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_LENGTH], SIZE.to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .head(node.blob_url(&hash))
        .header("Range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_LENGTH], "10");
    node.stop().await;
}

#[tokio::test]
async fn unknown_hash_is_404_and_malformed_hash_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let c = client();
    let r = c.get(node.blob_url(&"ab".repeat(32))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(node.blob_url("not-a-hash")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A stored blob's address in uppercase is not a second URL for it (caches would keep
    // two copies): 400, naming the lowercase form wanted.
    let data = noise(20_000, 3);
    let hash = node.upload(data).await;
    let r = c.get(node.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(node.blob_url(&hash.to_uppercase()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("lowercase"));
    node.stop().await;
}

#[tokio::test]
async fn upload_without_or_with_wrong_token_is_401_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let data = noise(20_000, 7);
    let hash = blake3::hash(&data).to_hex().to_string();
    let c = client();
    let url = format!("{}/v1/blobs", node.url);
    let r = c.post(&url).body(data.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.get(node.blob_url(&hash)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(node.metric("update_edge_store_chunks").await, 0.0);
    assert_eq!(node.metric("update_edge_ingest_bytes_total").await, 0.0);
    node.stop().await;
}

#[tokio::test]
async fn operator_routes_are_refused_when_no_token_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.admin_token.clear();
    let node = TestNode::start(config).await;
    let r = client()
        .post(format!("{}/v1/blobs", node.url))
        .bearer_auth("")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    node.stop().await;
}

#[tokio::test]
async fn upload_answers_201_then_200_with_hash_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let data = noise(70_000, 9);
    let c = client();
    let url = format!("{}/v1/blobs", node.url);
    let first = c
        .post(&url)
        .bearer_auth(TOKEN)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let a: serde_json::Value = first.json().await.unwrap();
    let second = c
        .post(&url)
        .bearer_auth(TOKEN)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let b: serde_json::Value = second.json().await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a["hash"], blake3::hash(&data).to_hex().as_str());
    assert_eq!(a["size"], 70_000);
    node.stop().await;
}

#[tokio::test]
async fn boundary_sizes_round_trip_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let c = client();
    for len in [
        0,
        1,
        CHUNK_MIN - 1,
        CHUNK_MIN,
        CHUNK_MIN + 1,
        CHUNK_MAX - 1,
        CHUNK_MAX,
        CHUNK_MAX + 1,
        20 * CHUNK_MAX + 3,
    ] {
        let data = noise(len, len as u64 + 100);
        let hash = node.upload(data.clone()).await;
        assert_eq!(hash, blake3::hash(&data).to_hex().as_str());
        let r = c.get(node.blob_url(&hash)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_LENGTH], len.to_string().as_str());
        assert_eq!(r.bytes().await.unwrap().to_vec(), data, "size {len}");
    }
    node.stop().await;
}

#[tokio::test]
async fn content_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let data = noise(100_000, 77);
    let hash = node.upload(data.clone()).await;
    node.stop().await;
    let node = TestNode::start(test_config(dir.path())).await;
    let r = client().get(node.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    assert!(node.metric("update_edge_store_chunks").await > 1.0);
    node.stop().await;
}

#[tokio::test]
async fn bytes_served_counter_equals_bytes_clients_received() {
    let (_dir, node, _data, hash) = node_with_payload().await;
    let c = client();
    let before = node.metric("update_edge_bytes_served_total").await;
    let mut received = 0usize;
    for range in [
        None,
        Some("bytes=0-99"),
        Some("bytes=-7"),
        Some("bytes=0-9,100-109"),
    ] {
        let mut req = c.get(node.blob_url(&hash));
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        received += req.send().await.unwrap().bytes().await.unwrap().len();
    }
    let after = node.metric("update_edge_bytes_served_total").await;
    assert_eq!((after - before) as usize, received);
    node.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_and_http1_share_the_port() {
    let (_dir, node, data, hash) = node_with_payload().await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(node.blob_url(&hash))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[100..200]);
    let r = client().get(node.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    node.stop().await;
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/healthz", node.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(format!("{}/readyz", node.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let m = c
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("update_edge_http_requests_total"), "{m}");
    node.stop().await;
}
