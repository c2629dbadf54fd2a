//! Catalog and rollout end to end: publish, rings, signed checks, delta scheduling, the
//! reference device client, and the error answers.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use update_edge::client::{self, trust, ClientError, UpdateArgs};

const SIZE: usize = 600_000;

/// A node with product `gw`, builds 1.0.1 and 1.0.2 of `size` bytes, ring `general` at
/// 1.0.2 (100 %).
async fn node_targeting_v2(config: update_edge::config::Config, size: usize) -> TestNode {
    let node = TestNode::start(config).await;
    seed_product(&node, "gw", 2, size).await;
    assert_eq!(
        set_ring(&node, "gw", "general", r#"{"version":"1.0.2"}"#).await,
        StatusCode::OK
    );
    node
}

fn client_args(
    node: &TestNode,
    dir: &std::path::Path,
    version: &str,
    current: Option<std::path::PathBuf>,
) -> UpdateArgs {
    node.device_args(dir, "gw", "device-1", version, current)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_on_v1_gets_v3_as_full_then_as_delta_computed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.delta.zstd_level = 3;
    // Published with no deltas precomputed, then reopened with the policy covering
    // 1.0.1 → 1.0.3 (an operator raising `from_previous`; or a queue lost to a
    // restart): the first check must schedule it.
    config.delta.from_previous = 0;
    let node = TestNode::start(config.clone()).await;
    let builds = seed_product(&node, "gw", 3, SIZE).await;
    assert_eq!(
        set_ring(
            &node,
            "gw",
            "general",
            r#"{"version":"1.0.3","percent":100}"#
        )
        .await,
        StatusCode::OK
    );
    // Outside the policy, a check queues nothing (made-up old versions cost no work).
    let (status, a) = check(
        &node,
        json!({"product": "gw", "device_id": "d0", "version": "1.0.1"}),
    )
    .await;
    assert_eq!(
        (status, a["update"]["version"].as_str()),
        (StatusCode::OK, Some("1.0.3"))
    );
    let pending = |n: &TestNode| n.node.checker.scheduler.as_ref().unwrap().pending();
    assert_eq!(pending(&node), 0);
    node.stop().await;
    config.delta.from_previous = 2;
    let node = TestNode::start(config).await;
    let v1 = dir.path().join("v1.img");
    std::fs::write(&v1, &builds[0]).unwrap();

    // Many devices on v1 ask at once while no delta exists: every answer offers the full
    // payload (a delta first only once it is ready, which may already be the case for
    // the last of them), and the pair is computed once (asserted below).
    let answers = futures_util::future::join_all((0..20).map(|i| {
        check(
            &node,
            json!({"product": "gw", "device_id": format!("d{i}"), "version": "1.0.1"}),
        )
    }))
    .await;
    assert!(pending(&node) <= 1, "one job for the pair");
    for (status, a) in &answers {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(a["update"]["version"], "1.0.3");
        let arts = a["update"]["artifacts"].as_array().unwrap();
        assert_eq!(arts.last().unwrap()["type"], "full", "{a}");
        assert!(
            arts.len() == 1 || (arts.len() == 2 && arts[0]["type"] == "delta"),
            "{a}"
        );
    }
    // A device without its old image on disk cannot use a delta: the full payload.
    let got_full = client::update(client_args(&node, dir.path(), "1.0.1", None))
        .await
        .unwrap();
    assert_eq!(got_full.artifact.as_deref(), Some("full"));
    assert_eq!(
        std::fs::read(dir.path().join("out.img")).unwrap(),
        builds[2]
    );

    let ready = eventually(60, || async {
        let (_, a) = check(
            &node,
            json!({"product": "gw", "device_id": "d0", "version": "1.0.1"}),
        )
        .await;
        a["update"]["artifacts"][0]["type"] == "delta"
    })
    .await;
    assert!(ready, "delta never became available");
    assert_eq!(
        node.metric("update_edge_delta_compute_seconds_count").await,
        1.0
    );

    // Another device on v1 (the first one has installed 1.0.3 and would refuse it now).
    std::fs::remove_file(dir.path().join("out.img")).unwrap();
    let got =
        client::update(node.device_args(dir.path(), "gw", "device-2", "1.0.1", Some(v1.clone())))
            .await
            .unwrap();
    assert_eq!(got.artifact.as_deref(), Some("delta"));
    assert_eq!(
        std::fs::read(dir.path().join("out.img")).unwrap(),
        builds[2]
    );
    assert!(
        got.bytes_downloaded < (SIZE / 4) as u64,
        "delta download was {} bytes",
        got.bytes_downloaded
    );
    eprintln!(
        "full: {} bytes downloaded; delta: {} bytes downloaded",
        got_full.bytes_downloaded, got.bytes_downloaded
    );
    assert!(node.metric("update_edge_delta_bytes_saved_total").await > 0.0);

    // A device already on the target gets nothing.
    let (_, a) = check(
        &node,
        json!({"product": "gw", "device_id": "d0", "version": "1.0.3"}),
    )
    .await;
    assert!(a["update"].is_null());
    node.stop().await;
}

#[tokio::test]
async fn publish_schedules_deltas_from_previous_builds() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.delta.zstd_level = 3;
    let node = TestNode::start(config).await;
    seed_product(&node, "gw", 3, SIZE).await;
    // 1.0.2 <- 1.0.1; 1.0.3 <- 1.0.2, 1.0.1
    assert!(
        eventually(60, || async {
            node.metric("update_edge_delta_compute_seconds_count").await >= 3.0
        })
        .await
    );
    set_ring(&node, "gw", "general", r#"{"version":"1.0.3"}"#).await;
    let (_, a) = check(
        &node,
        json!({"product": "gw", "device_id": "x", "version": "1.0.2"}),
    )
    .await;
    assert_eq!(a["update"]["artifacts"][0]["type"], "delta");
    assert_eq!(a["update"]["artifacts"][0]["from"], "1.0.2");
    assert_eq!(a["update"]["artifacts"][1]["type"], "full");
    node.stop().await;
}

#[tokio::test]
async fn rollout_percentages_are_accurate_monotone_and_pausable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.catalog.check_rate_per_ip = 0; // a fleet of 10,000 from one address
    let node = TestNode::start(config).await;
    seed_product(&node, "gw", 2, 20_000).await;
    let offered = |percent: &'static str, paused: bool| {
        let node = &node;
        async move {
            set_ring(
                node,
                "gw",
                "general",
                &format!(r#"{{"version":"1.0.2","percent":{percent},"paused":{paused}}}"#),
            )
            .await;
            let mut ids = Vec::new();
            let c = client();
            let url = format!("{}/v1/check", node.url);
            use futures_util::StreamExt;
            let results: Vec<(String, bool)> = futures_util::stream::iter(0..10_000)
                .map(|i| {
                    let (c, url) = (c.clone(), url.clone());
                    async move {
                        let id = format!("device-{i}");
                        let r = c
                            .post(&url)
                            .json(&json!({"product": "gw", "device_id": id, "version": "1.0.1"}))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), StatusCode::OK, "check of {id}");
                        let a: serde_json::Value = r.json().await.unwrap();
                        (id, !a["update"].is_null())
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            for (id, got) in results {
                if got {
                    ids.push(id);
                }
            }
            ids.sort();
            ids
        }
    };
    let at10 = offered("10", false).await;
    assert!(
        (900..=1100).contains(&at10.len()),
        "10% offered to {}",
        at10.len()
    );
    let at20 = offered("20", false).await;
    assert!(
        (1800..=2200).contains(&at20.len()),
        "20% offered to {}",
        at20.len()
    );
    assert!(
        at10.iter().all(|d| at20.binary_search(d).is_ok()),
        "raising the percentage dropped devices"
    );
    let paused = offered("100", true).await;
    assert!(paused.is_empty());
    eprintln!(
        "offered: 10% -> {}, 20% -> {}, paused -> 0",
        at10.len(),
        at20.len()
    );
    node.stop().await;
}

#[tokio::test]
async fn tampered_or_expired_answers_are_rejected_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_targeting_v2(test_config(&dir.path().join("data")), 20_000).await;
    let root = node.node.repo.root().clone();
    let body = client()
        .post(format!("{}/v1/check", node.url))
        .json(
            &json!({"product": "gw", "device_id": "device-1", "version": "1.0.1", "nonce": "n-1"}),
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let now = update_edge::catalog::model::now_secs();
    let v101: update_edge::catalog::version::Version = "1.0.1".parse().unwrap();
    let req = |device: &'static str, nonce: &'static str| trust::Request {
        product: "gw",
        device_id: device,
        version: &v101,
        nonce,
    };
    trust::verify_answer(&root, &body, &req("device-1", "n-1"), now).unwrap();
    // One byte changed: the target version's last digit.
    let text = String::from_utf8(body.clone()).unwrap();
    let tampered = text.replacen("\"version\":\"1.0.2\"", "\"version\":\"1.0.9\"", 1);
    assert_ne!(tampered, text);
    assert!(matches!(
        trust::verify_answer(&root, tampered.as_bytes(), &req("device-1", "n-1"), now),
        Err(ClientError::Untrusted(_))
    ));
    // Expired, replayed to another device or another check, or from another repository.
    assert!(trust::verify_answer(&root, &body, &req("device-1", "n-1"), now + 7200).is_err());
    assert!(trust::verify_answer(&root, &body, &req("device-2", "n-1"), now).is_err());
    assert!(trust::verify_answer(&root, &body, &req("device-1", "n-2"), now).is_err());
    let other = tempfile::tempdir().unwrap();
    let other_root = test_config(other.path()).tuf.keys_dir;
    let (other_root, _) = update_edge::repo::root::load_chain(&other_root)
        .unwrap()
        .remove(0);
    assert!(trust::verify_answer(&other_root.signed, &body, &req("device-1", "n-1"), now).is_err());
    node.stop().await;

    // A node whose answers expire immediately: the client refuses them and writes nothing.
    let dir2 = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir2.path().join("data"));
    config.catalog.answer_ttl_secs = 0;
    let node = node_targeting_v2(config, 20_000).await;
    let err = client::update(client_args(&node, dir2.path(), "1.0.1", None))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
    assert!(!dir2.path().join("out.img").exists());
    node.stop().await;
}

#[tokio::test]
async fn bad_requests_answer_as_specified_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_targeting_v2(test_config(&dir.path().join("data")), 20_000).await;
    let c = client();
    let snapshot = || async {
        let b: serde_json::Value = c
            .get(format!("{}/v1/products/gw/builds", node.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r: serde_json::Value = c
            .get(format!("{}/v1/products/gw/rings", node.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (b, r)
    };
    let before = snapshot().await;
    let post = |body: &'static str| c.post(format!("{}/v1/check", node.url)).body(body).send();
    assert_eq!(
        post("{not json").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(r#"{"product":"gw","version":"1.0.1"}"#)
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(r#"{"product":"gw","device_id":"d","version":"one"}"#)
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    let r = post(r#"{"product":"nope","device_id":"d","version":"1.0.1"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("nope"));
    // Operator routes without / with a wrong token.
    let r = c
        .put(format!("{}/v1/products/gw/rings/general", node.url))
        .body(r#"{"version":"1.0.1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .put(format!("{}/v1/products/gw/builds/1.0.9", node.url))
        .bearer_auth("wrong")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Same version, different bytes.
    let r = op_put(
        &format!("{}/v1/products/gw/builds/1.0.2?kind=os", node.url),
        noise(5000, 99),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Ring to an unknown version; delete a build a ring targets.
    assert_eq!(
        set_ring(&node, "gw", "general", r#"{"version":"9.9.9"}"#).await,
        StatusCode::NOT_FOUND
    );
    let r = c
        .delete(format!("{}/v1/products/gw/builds/1.0.2", node.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        set_ring(
            &node,
            "gw",
            "general",
            r#"{"version":"1.0.1","percent":140}"#
        )
        .await,
        StatusCode::BAD_REQUEST
    );
    let r = op_put(
        &format!("{}/v1/products/gw/builds/1.0.5?kind=firmware", node.url),
        "x",
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(snapshot().await, before);
    node.stop().await;
}

#[tokio::test]
async fn stats_keys_and_gc_work() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_targeting_v2(test_config(&dir.path().join("data")), 50_000).await;
    check(
        &node,
        json!({"product": "gw", "device_id": "a", "version": "1.0.1"}),
    )
    .await;
    check(
        &node,
        json!({"product": "gw", "device_id": "b", "version": "1.0.2"}),
    )
    .await;
    let c = client();
    let stats = || async {
        let r = c
            .get(format!("{}/v1/products/gw/stats", node.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        r.json::<serde_json::Value>().await.unwrap()
    };
    // Device records are written behind the answers, in batches.
    assert!(eventually(10, || async { stats().await["devices"] == 2 }).await);
    let st = stats().await;
    assert_eq!(st["versions"]["1.0.1"], 1);
    assert_eq!(st["rings"]["general"], 2);
    let keys: serde_json::Value = c
        .get(format!("{}/v1/keys", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys["keys"][0]["public_key"],
        node.node.checker.signer.public_hex().as_str()
    );
    // An uploaded blob nothing references is collected; builds survive.
    let stray = node.upload(noise(40_000, 1234)).await;
    let r: serde_json::Value = c
        .post(format!("{}/v1/gc", node.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["blobs_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(
        c.get(node.blob_url(&stray)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let (_, a) = check(
        &node,
        json!({"product": "gw", "device_id": "a", "version": "1.0.1"}),
    )
    .await;
    let url = format!(
        "{}{}",
        node.url,
        a["update"]["artifacts"].as_array().unwrap().last().unwrap()["url"]
            .as_str()
            .unwrap()
    );
    assert_eq!(c.get(url).send().await.unwrap().status(), StatusCode::OK);
    node.stop().await;
}
