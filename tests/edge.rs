//! The edge tier against real nodes on loopback: an origin, edges that replicate its
//! catalog and repository and fill content from it, devices updating through an edge.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use update_edge::client;

/// An origin with product `gw` (builds 1.0.1, 1.0.2; ring general → 1.0.2 at 100 %).
async fn origin(dir: &std::path::Path) -> (TestNode, Vec<Vec<u8>>) {
    let node = TestNode::start(origin_config(&dir.join("origin"))).await;
    let builds = gw_targeting_102(&node, 200_000).await;
    (node, builds)
}

/// An edge of `origin`, started once its director key is authorised by the root it has
/// replicated (the origin serves the new root within a re-sign tick).
async fn edge(dir: &std::path::Path, origin: &TestNode) -> TestNode {
    let edge = TestNode::start(edge_config(dir, origin)).await;
    let ready = eventually(20, || async {
        let r = client()
            .get(format!("{}/readyz", edge.url))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        v["director_key_authorised"] == json!(true) && v["ready"] == json!(true)
    })
    .await;
    assert!(
        ready,
        "edge never became ready with an authorised director key"
    );
    edge
}

fn blob_of(origin: &TestNode, version: &str) -> String {
    let v: update_edge::catalog::version::Version = version.parse().unwrap();
    origin
        .node
        .catalog
        .build("gw", &v)
        .unwrap()
        .unwrap()
        .blob
        .to_string()
}

#[tokio::test]
async fn a_device_updates_through_an_edge_byte_exact_and_the_edge_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, builds) = origin(dir.path()).await;
    let edge = edge(&dir.path().join("edge-a"), &origin).await;

    // Operator writes go to the origin; the edge says where.
    let r = op_put(&format!("{}/v1/products/other", edge.url), "{}").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let msg = r.text().await.unwrap();
    assert!(msg.contains(&origin.url), "403 must name the origin: {msg}");
    // Reads of the replicated catalog work.
    let r = client()
        .get(format!("{}/v1/products/gw/builds", edge.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["builds"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let old = dir.path().join("old.img");
    std::fs::write(&old, &builds[0]).unwrap();
    let args = edge.device_args(dir.path(), "gw", "dev-1", "1.0.1", Some(old));
    let args = client::UpdateArgs {
        root: root_path(&origin.node.config),
        ..args
    };
    let r = client::update(args.clone()).await.unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.2"));
    assert_eq!(std::fs::read(&args.out).unwrap(), builds[1]);
    assert!(edge.metric("update_edge_upstream_fetches_total").await > 0.0);
    // A second edge of the same origin, its own director key: another device through it.
    let edge_b = self::edge(&dir.path().join("edge-b"), &origin).await;
    let d2 = dir.path().join("dev-2");
    std::fs::create_dir_all(&d2).unwrap();
    let args2 = client::UpdateArgs {
        root: root_path(&origin.node.config),
        ..edge_b.device_args(&d2, "gw", "dev-2", "1.0.1", None)
    };
    let r = client::update(args2.clone()).await.unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.2"));
    assert_eq!(std::fs::read(&args2.out).unwrap(), builds[1]);
    edge_b.stop().await;
    // The answer was the edge's own: signed by its director key, not the origin's.
    let o_checks = origin
        .metric_labeled("update_edge_checks_total{result=\"update\"}")
        .await;
    assert_eq!(o_checks, 0.0, "the check must be answered by the edge");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_thousand_cold_requests_fetch_each_chunk_once_and_bytes_flow_before_the_fill_ends() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestNode::start(origin_config(&dir.path().join("origin"))).await;
    let data = noise(256 << 10, 77);
    let hash = origin.upload(data.clone()).await;
    let chunks = manifest_of(&origin, &hash).await.chunks.len();
    let edge = edge(&dir.path().join("edge"), &origin).await;

    let url = edge.blob_url(&hash);
    let data = Arc::new(data);
    let c = client();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (c, url, data) = (c.clone(), url.clone(), data.clone());
            tokio::spawn(async move {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let per_chunk = origin
        .metric_labeled(
            "update_edge_http_requests_total{route=\"/v1/chunks/{hash}\",status=\"2xx\",code=\"200\"}",
        )
        .await;
    // The first chunk comes with the manifest, every other one by itself, once.
    assert_eq!(
        per_chunk + 1.0,
        chunks as f64,
        "exactly one upstream fetch per chunk"
    );
    let lists = origin
        .metric_labeled(
            "update_edge_http_requests_total{route=\"/v1/blobs/{hash}/manifest\",status=\"2xx\",code=\"200\"}",
        )
        .await;
    assert_eq!(lists, 1.0, "the manifest is fetched once");
    assert!(edge.metric("update_edge_upstream_coalesced_total").await > 0.0);
    // Complete here now: served with the origin's exact headers semantics, locally.
    let r = c
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    edge.stop().await;

    // Streaming: with the last chunk held back upstream, a whole-blob GET still delivers
    // its first bytes (a fill that made clients wait for the whole object would not).
    let data2 = noise(128 << 10, 78);
    let hash2 = origin.upload(data2.clone()).await;
    let m = manifest_of(&origin, &hash2).await;
    let last = m.chunks.last().unwrap().hash.to_string();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let proxy = rewriting_proxy(
        origin.url.clone(),
        hook!(|req| {
            let (g, last) = (g.clone(), last.clone());
            async move {
                if req.path.contains(&format!("/v1/chunks/{last}")) {
                    g.notified().await;
                }
                None
            }
        }),
    )
    .await;
    let mut cfg = edge_config(&dir.path().join("edge2"), &origin);
    cfg.edge.upstream = proxy;
    let edge2 = TestNode::start(cfg).await;
    let r = c.get(edge2.blob_url(&hash2)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
        .await
        .expect("first bytes must arrive while the fill is incomplete")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], &data2[..first.len()]);
    gate.notify_one();
    let mut got = first.to_vec();
    while let Some(piece) = body.next().await {
        got.extend_from_slice(&piece.unwrap());
    }
    assert_eq!(got, data2);
    edge2.stop().await;
    origin.stop().await;
}

/// The manifest of a blob stored at `node`.
async fn manifest_of(node: &TestNode, hash: &str) -> std::sync::Arc<update_edge::store::Manifest> {
    node.node
        .store
        .manifest(hash.parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chunk_goes_to_edges_with_its_blake3_tree_and_a_bad_format_is_400() {
    use update_edge::config::ByteSize;
    use update_edge::protocol::bao;
    let dir = tempfile::tempdir().unwrap();
    // Chunks of several 16 KiB groups, so each has a tree (an outboard) to keep.
    let mut oc = origin_config(&dir.path().join("origin"));
    (oc.store.chunk_min, oc.store.chunk_avg, oc.store.chunk_max) =
        (ByteSize(32 << 10), ByteSize(64 << 10), ByteSize(128 << 10));
    let origin = TestNode::start(oc).await;
    let data = noise(600 << 10, 81);
    let hash = origin.upload(data.clone()).await;
    let m = manifest_of(&origin, &hash).await;
    assert!(m.chunks.len() >= 4 && m.chunks[0].len > 16 << 10);
    let c = client();
    let mut whole = Vec::new();
    for ch in &m.chunks {
        let base = whole.len() as u64;
        let r = c
            .get(format!("{}/v1/chunks/{}?format=bao", origin.url, ch.hash))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], bao::CONTENT_TYPE);
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len() as u64, bao::encoded_len(ch.len as u64));
        let (size, tree) = bao::decode(ch.hash, body, 1 << 30, |at, group| {
            assert_eq!(base + at, whole.len() as u64, "groups in order");
            whole.extend_from_slice(&group);
        })
        .await
        .unwrap();
        assert_eq!(size, ch.len as u64);
        let at = base as usize;
        assert_eq!(tree, bao::outboard(&data[at..at + ch.len as usize]).1);
    }
    assert_eq!(whole, data, "the groups make up the blob");
    let first = m.chunks[0].hash;
    for query in ["format=zip", "format="] {
        let r = c
            .get(format!("{}/v1/chunks/{first}?{query}", origin.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let raw = c
        .get(format!("{}/v1/chunks/{first}?format=raw", origin.url))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(
        raw.bytes().await.unwrap().as_ref(),
        &data[..m.chunks[0].len as usize]
    );
    // From an offset: the group holding it first (the header says where), then the rest;
    // the receiver ends up with the whole chunk and its whole tree.
    let ch = &m.chunks[1];
    let at = m.start_of(1) as usize;
    for from in [0u64, 1, 20_000, ch.len as u64 - 1, ch.len as u64 + 9] {
        let r = c
            .get(format!(
                "{}/v1/chunks/{}?format=bao&from={from}",
                origin.url, ch.hash
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "from {from}");
        let start = bao::group_start(ch.len as u64, from);
        let said = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(said, bao::content_type_from(start), "from {from}");
        assert_eq!(bao::start_of(&said), start, "from {from}");
        let body = r.bytes().await.unwrap();
        assert_eq!(
            body.len() as u64,
            bao::encoded_len_from(ch.len as u64, from)
        );
        let mut first = None;
        let mut got = vec![0u8; ch.len as usize];
        let (size, tree) = bao::decode_from(ch.hash, body, 1 << 30, start, |off, group| {
            first.get_or_insert(off);
            got[off as usize..off as usize + group.len()].copy_from_slice(&group);
        })
        .await
        .unwrap();
        assert_eq!(size, ch.len as u64);
        assert_eq!(first, Some(start), "from {from}: its group first");
        assert_eq!(got, &data[at..at + ch.len as usize]);
        assert_eq!(tree, bao::outboard(&got).1);
    }
    for query in ["format=raw&from=5", "format=bao&from=x", "from=1"] {
        let r = c
            .get(format!("{}/v1/chunks/{}?{query}", origin.url, ch.hash))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    // An edge that fills the blob keeps each chunk's tree as it arrived, so it can send
    // it on (to edges below it) without hashing: its store verifies with every tree
    // present and right.
    let edge = edge(&dir.path().join("edge"), &origin).await;
    let r = c.get(edge.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), data);
    let r = c
        .get(format!(
            "{}/v1/chunks/{}?format=bao",
            edge.url, m.chunks[1].hash
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (size, _) = bao::decode(
        m.chunks[1].hash,
        r.bytes().await.unwrap(),
        1 << 30,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(size, m.chunks[1].len as u64);
    let edge_data = edge.node.config.server.data_dir.clone();
    edge.stop().await;
    origin.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_update-edge"))
        .args(["blob", "verify", "--data"])
        .arg(&edge_data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("checked {} chunks", m.chunks.len()))
            && text.contains("0 corrupt outboards (0 chunks without one)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_cold_chunk_reaches_readers_group_by_group_before_upstream_has_sent_all_of_it() {
    use update_edge::config::ByteSize;
    let dir = tempfile::tempdir().unwrap();
    // Production chunk sizes (64 KiB to 1 MiB): every chunk but the last spans several
    // 16 KiB groups.
    let mut oc = origin_config(&dir.path().join("origin"));
    (oc.store.chunk_min, oc.store.chunk_avg, oc.store.chunk_max) =
        (ByteSize(64 << 10), ByteSize(256 << 10), ByteSize(1 << 20));
    let origin = TestNode::start(oc).await;
    let data = noise(2 << 20, 80);
    let hash = origin.upload(data.clone()).await;
    let m = manifest_of(&origin, &hash).await;
    assert!(
        m.chunks.len() >= 3,
        "chunk 1 is a whole chunk (64 KiB at least)"
    );
    let second = m.chunks[1].hash.to_string();
    let second_at = m.start_of(1) as usize;
    // A range in the last 16 KiB group of chunk 2: its fill asks for the chunk from that
    // group, so the bytes before it in the chunk (sent last) are not waited for.
    let third = m.chunks[2].hash.to_string();
    let third_tail = (m.start_of(2) + m.chunks[2].len as u64) as usize - 100;
    // Upstream sends every chunk transfer but its last 1000 bytes, then stalls until the
    // test lets it go on: the chunk that rides with the manifest (chunk 0) and chunk 1
    // fetched by itself.
    let (gate0, gate1, gate2) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let (g0, g1, g2, o) = (
        gate0.clone(),
        gate1.clone(),
        gate2.clone(),
        origin.url.clone(),
    );
    let proxy = rewriting_proxy(
        origin.url.clone(),
        hook!(|req| {
            let (g0, g1, g2, o) = (g0.clone(), g1.clone(), g2.clone(), o.clone());
            let (second, third) = (second.clone(), third.clone());
            async move {
                let gate = if req.path.contains("/manifest?with_chunk_at=") {
                    g0
                } else if req.path.contains(&format!("/v1/chunks/{second}")) {
                    g1
                } else if req.path.contains(&format!("/v1/chunks/{third}")) {
                    g2
                } else {
                    return None;
                };
                let mut reply = forward(&o, &req).await;
                reply.hold = Some((reply.body.len() - 1000, gate));
                Some(reply)
            }
        }),
    )
    .await;
    let mut cfg = edge_config(&dir.path().join("edge"), &origin);
    cfg.edge.upstream = proxy;
    // Longer than the test waits: a held transfer is never given up and refetched.
    cfg.edge.stall_timeout = update_edge::config::Seconds(60);
    let edge = TestNode::start(cfg).await;
    let c = client();
    let ranged = |from: usize| {
        let (c, url) = (c.clone(), edge.blob_url(&hash));
        async move {
            let r = c
                .get(url)
                .header("range", format!("bytes={from}-{}", from + 99))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            r.bytes().await.unwrap()
        }
    };
    // The first request's range (whose chunk rides with the manifest) also starts in its
    // chunk's last group.
    let first_tail = m.chunks[0].len as usize - 100;
    for (from, gate) in [
        (first_tail, &gate0),
        (second_at, &gate1),
        (third_tail, &gate2),
    ] {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), ranged(from))
            .await
            .unwrap_or_else(|_| {
                panic!("the first bytes of cold chunk at {from} waited for the whole chunk")
            });
        assert_eq!(got.as_ref(), &data[from..from + 100]);
        gate.notify_one();
    }
    // Both transfers then finish, and the blob reads whole.
    let r = c.get(edge.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(
        edge.metric_labeled("update_edge_upstream_errors_total{reason=\"corrupt\"}")
            .await,
        0.0
    );
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_chunk_corrupted_upstream_is_caught_and_refetched_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestNode::start(origin_config(&dir.path().join("origin"))).await;
    let data = noise(64 << 10, 79);
    let hash = origin.upload(data.clone()).await;
    let m = manifest_of(&origin, &hash).await;
    let victim = m.chunks[2].hash.to_string();
    let flips = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let (f, s, o) = (flips.clone(), seen.clone(), origin.url.clone());
    let proxy = rewriting_proxy(
        origin.url.clone(),
        hook!(|req| {
            let (f, s, o, victim) = (f.clone(), s.clone(), o.clone(), victim.clone());
            async move {
                if req.path.contains("/manifest?with_chunk_at=") {
                    // The chunk riding along with the manifest, damaged (its last byte).
                    let mut reply = forward(&o, &req).await;
                    let last = reply.body.len() - 1;
                    reply.body[last] ^= 0x01;
                    return Some(reply);
                }
                if !req.path.contains(&format!("/v1/chunks/{victim}")) {
                    return None;
                }
                s.fetch_add(1, Ordering::SeqCst);
                let mut reply = forward(&o, &req).await;
                if f.fetch_add(1, Ordering::SeqCst) == 0 {
                    let mid = reply.body.len() / 2;
                    reply.body[mid] ^= 0x40; // once
                }
                Some(reply)
            }
        }),
    )
    .await;
    let mut cfg = edge_config(&dir.path().join("edge"), &origin);
    cfg.edge.upstream = proxy;
    let edge = TestNode::start(cfg).await;
    let r = client().get(edge.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the corrupt chunk is fetched again"
    );
    assert_eq!(
        edge.metric_labeled("update_edge_upstream_errors_total{reason=\"corrupt\"}")
            .await,
        2.0,
        "the damaged chunk and the damaged chunk that came with the manifest"
    );
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn with_the_origin_down_an_edge_serves_what_it_holds_and_answers_checks_until_metadata_expires(
) {
    let dir = tempfile::tempdir().unwrap();
    let (origin, builds) = origin(dir.path()).await;
    let edge = edge(&dir.path().join("edge"), &origin).await;
    // Warm the edge: one device updates through it.
    let a = client::UpdateArgs {
        root: root_path(&origin.node.config),
        ..edge.device_args(dir.path(), "gw", "dev-1", "1.0.1", None)
    };
    assert_eq!(
        client::update(a.clone()).await.unwrap().version.as_deref(),
        Some("1.0.2")
    );
    let full = blob_of(&origin, "1.0.2");
    assert!(
        eventually(10, || async {
            edge.node
                .store
                .contains_blob(&full.parse().unwrap())
                .unwrap()
        })
        .await,
        "the blob becomes local at the edge once read whole"
    );
    let root = root_path(&origin.node.config);
    origin.stop().await;

    // Another device, same edge, origin gone.
    let b = client::UpdateArgs {
        root,
        ..edge.device_args(&dir.path().join("b"), "gw", "dev-2", "1.0.1", None)
    };
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let r = client::update(b.clone()).await.unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.2"));
    assert_eq!(std::fs::read(&b.out).unwrap(), builds[1]);
    let ready = client()
        .get(format!("{}/readyz", edge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let v: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(v["upstream_reachable"], json!(false), "{v}");
    edge.stop().await;
}

#[tokio::test]
async fn an_edge_cut_off_past_the_timestamp_expiry_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut oc = origin_config(&dir.path().join("origin"));
    oc.tuf.timestamp_ttl = update_edge::config::Seconds(3);
    let origin = TestNode::start(oc).await;
    seed_product(&origin, "gw", 1, 20_000).await;
    let edge = edge(&dir.path().join("edge"), &origin).await;
    let body = json!({"product": "gw", "device_id": "d1", "version": "1.0.0"});
    let (st, _) = check(&edge, body.clone()).await;
    assert_eq!(st, StatusCode::OK);
    origin.stop().await;
    let expired = eventually(10, || async {
        let r = client()
            .post(format!("{}/v1/check", edge.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.status() == StatusCode::SERVICE_UNAVAILABLE
            && r.headers().get("retry-after").is_some_and(|v| v == "60")
    })
    .await;
    assert!(
        expired,
        "checks must be refused once the replicated timestamp expired"
    );
    let ready = client()
        .get(format!("{}/readyz", edge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    edge.stop().await;
}

#[tokio::test]
async fn the_change_feed_needs_a_token_and_edges_follow_ring_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, _) = origin(dir.path()).await;
    let feed = format!("{}/v1/catalog/changes?after=0", origin.url);
    let r = client().get(&feed).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client()
        .get(&feed)
        .bearer_auth(REPLICATION_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["reset"], json!(true));
    // The replication token opens nothing else.
    let r = client()
        .put(format!("{}/v1/products/x", origin.url))
        .bearer_auth(REPLICATION_TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let edge = edge(&dir.path().join("edge"), &origin).await;
    let body = json!({"product": "gw", "device_id": "d1", "version": "1.0.1"});
    let (_, a) = check(&edge, body.clone()).await;
    assert_eq!(a["update"]["version"], json!("1.0.2"), "{a}");
    let st = set_ring(
        &origin,
        "gw",
        "general",
        r#"{"version":"1.0.2","paused":true}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let followed = eventually(10, || async {
        let (_, a) = check(&edge, body.clone()).await;
        a["update"].is_null()
    })
    .await;
    assert!(followed, "the edge must follow the paused ring");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_retargeted_ring_is_pre_seeded_at_the_edge_before_any_device_asks() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, builds) = origin(dir.path()).await;
    let edge = edge(&dir.path().join("edge"), &origin).await;
    // A device of this edge runs 1.0.1 (the edge learns versions from checks).
    let (st, _) = check(
        &edge,
        json!({"product": "gw", "device_id": "d1", "version": "1.0.1"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let mut next = builds[1].clone();
    next[5000..7000].copy_from_slice(&noise(2000, 991));
    let r = op_put(
        &format!("{}/v1/products/gw/builds/1.0.3?kind=os", origin.url),
        next.clone(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (b1, b3) = (blob_of(&origin, "1.0.1"), blob_of(&origin, "1.0.3"));
    let delta = {
        let cat = origin.node.catalog.clone();
        let (f, t) = (b1.parse().unwrap(), b3.parse().unwrap());
        let ready = eventually(60, || {
            let cat = cat.clone();
            async move { matches!(cat.delta(&f, &t), Ok(Some(d)) if d.delta.is_some()) }
        })
        .await;
        assert!(ready, "the origin computes the delta 1.0.1 → 1.0.3");
        cat.delta(&f, &t).unwrap().unwrap().delta.unwrap()
    };
    let st = set_ring(
        &origin,
        "gw",
        "general",
        r#"{"version":"1.0.3","percent":100}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let store = edge.node.store.clone();
    let full = b3.parse().unwrap();
    let seeded = eventually(30, || {
        let store = store.clone();
        async move { store.contains_blob(&full).unwrap() && store.contains_blob(&delta).unwrap() }
    })
    .await;
    assert!(
        seeded,
        "the new target and the delta its devices need are resident"
    );
    assert!(
        edge.metric("update_edge_upstream_prefetched_blobs_total")
            .await
            >= 2.0
    );
    let got = edge.node.store.read_all(full).await.unwrap();
    assert_eq!(got, next);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn under_a_small_disk_budget_an_edge_keeps_pinned_builds_and_refills_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, builds) = origin(dir.path()).await;
    let others: Vec<Vec<u8>> = (0..6).map(|i| noise(256 << 10, 500 + i)).collect();
    let mut hashes = Vec::new();
    for o in &others {
        hashes.push(origin.upload(o.clone()).await);
    }
    let mut cfg = edge_config(&dir.path().join("edge"), &origin);
    let budget = 700u64 << 10;
    cfg.store.max_bytes = update_edge::config::ByteSize(budget);
    let edge = TestNode::start(cfg).await;
    let pinned: update_edge::hash::Hash = blob_of(&origin, "1.0.2").parse().unwrap();
    let store = edge.node.store.clone();
    assert!(
        eventually(20, || {
            let store = store.clone();
            async move { store.contains_blob(&pinned).unwrap() }
        })
        .await,
        "the ring's target is pre-seeded"
    );
    let c = client();
    for round in 0..2 {
        for (h, data) in hashes.iter().zip(&others) {
            let r = c.get(edge.blob_url(h)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                data.as_slice(),
                "round {round}"
            );
        }
    }
    // Eviction runs in the background, and filled chunks are written after they are
    // served: first its counter moves, then the store is back under its budget.
    let edge_ref = &edge;
    assert!(
        eventually(10, || async move {
            edge_ref
                .metric("update_edge_store_evicted_bytes_total")
                .await
                > 0.0
        })
        .await,
        "nothing was evicted"
    );
    let under = eventually(10, || {
        let store = store.clone();
        async move { store.stats().bytes <= budget }
    })
    .await;
    assert!(
        under,
        "store at {} bytes over a {budget}-byte budget",
        store.stats().bytes
    );
    // Refills happened: more chunks fetched than the payloads hold once.
    let per_chunk = origin
        .metric_labeled(
            "update_edge_http_requests_total{route=\"/v1/chunks/{hash}\",status=\"2xx\",code=\"200\"}",
        )
        .await;
    let once: usize = {
        let mut n = 0;
        for h in &hashes {
            n += manifest_of(&origin, h).await.chunks.len();
        }
        n
    };
    assert!(
        per_chunk > once as f64,
        "{per_chunk} fetches for {once} chunks: nothing refilled"
    );
    // The pinned build is whole on disk.
    let m = store.manifest(pinned).await.unwrap();
    for ch in &m.chunks {
        assert!(store
            .kv()
            .contains(update_edge::store::Cf::Chunks, ch.hash.as_bytes())
            .unwrap());
    }
    assert_eq!(store.read_all(pinned).await.unwrap(), builds[1]);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn an_edge_holding_both_builds_computes_a_missing_delta_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut oc = origin_config(&dir.path().join("origin"));
    oc.delta.from_previous = 0; // the origin computes nothing on publish
    let origin = TestNode::start(oc).await;
    let builds = gw_targeting_102(&origin, 200_000).await;
    let edge = edge(&dir.path().join("edge"), &origin).await;
    // Both builds whole at the edge: 1.0.2 pre-seeded, 1.0.1 read through it.
    let old = blob_of(&origin, "1.0.1");
    let r = client().get(edge.blob_url(&old)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), builds[0].as_slice());
    let (store, b1, b2) = (
        edge.node.store.clone(),
        old.parse().unwrap(),
        blob_of(&origin, "1.0.2").parse().unwrap(),
    );
    assert!(
        eventually(20, || {
            let store = store.clone();
            async move { store.contains_blob(&b1).unwrap() && store.contains_blob(&b2).unwrap() }
        })
        .await
    );
    let body = json!({"product": "gw", "device_id": "d1", "version": "1.0.1"});
    let offered = eventually(60, || async {
        let (_, a) = check(&edge, body.clone()).await;
        a["update"]["artifacts"][0]["type"] == json!("delta")
    })
    .await;
    assert!(offered, "the edge offers a delta it computed");
    let computed = edge
        .metric_labeled("update_edge_deltas_obtained_total{source=\"computed\"}")
        .await;
    assert_eq!(computed, 1.0);
    let at_origin = origin
        .metric_labeled("update_edge_deltas_obtained_total{source=\"computed\"}")
        .await;
    assert_eq!(at_origin, 0.0);
    let cur = dir.path().join("cur.img");
    std::fs::write(&cur, &builds[0]).unwrap();
    let args = client::UpdateArgs {
        root: root_path(&origin.node.config),
        ..edge.device_args(dir.path(), "gw", "d1", "1.0.1", Some(cur))
    };
    let r = client::update(args.clone()).await.unwrap();
    assert_eq!(r.artifact.as_deref(), Some("delta"));
    assert_eq!(std::fs::read(&args.out).unwrap(), builds[1]);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_manifest_of_another_blob_is_refused_for_a_build_before_any_byte_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, _) = origin(dir.path()).await;
    let (b1, b2) = (blob_of(&origin, "1.0.1"), blob_of(&origin, "1.0.2"));
    // Upstream answers 1.0.2's manifest with 1.0.1's (every chunk of it genuine).
    let (from, to, o) = (b2.clone(), b1.clone(), origin.url.clone());
    let proxy = rewriting_proxy(
        origin.url.clone(),
        hook!(|req| {
            let (from, to, o) = (from.clone(), to.clone(), o.clone());
            async move {
                if !req.path.contains(&format!("/v1/blobs/{from}/manifest")) {
                    return None;
                }
                let mut swapped = req.clone();
                swapped.path = req.path.replace(&from, &to);
                Some(forward(&o, &swapped).await)
            }
        }),
    )
    .await;
    let mut cfg = edge_config(&dir.path().join("edge"), &origin);
    cfg.edge.upstream = proxy;
    cfg.edge.prefetch_rate = update_edge::config::ByteSize(0);
    let edge = TestNode::start(cfg).await;
    let r = client().get(edge.blob_url(&b2)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(
        edge.metric_labeled("update_edge_upstream_errors_total{reason=\"corrupt\"}")
            .await
            >= 1.0
    );
    assert!(!edge.node.store.contains_blob(&b2.parse().unwrap()).unwrap());
    // The honest blob next to it is served.
    let r = client().get(edge.blob_url(&b1)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    edge.stop().await;
    origin.stop().await;
}
