//! The attack table: a real node behind a man-in-the-middle proxy that rewrites
//! responses, and the reference device client, which must refuse each attack with a clear
//! message and write nothing to `--out`. Plus key rotation end to end.
//!
//! Which check stops which row (src/client/trust.rs unless said otherwise):
//! forged answer → director key must be one root authorises; another device's answer →
//! device/product echo; replayed answer → nonce echo; signed downgrade → version greater
//! than running and than highest installed; target absent → target must be in the
//! verified targets metadata; mix-and-match → snapshot's signed version/length/hashes of
//! targets (tough); rollback → versions never below the state dir's (tough datastore);
//! freeze → expiry (tough); endless data → metadata size caps (`LIMITS`); swapped payload
//! → per-chunk blake3 against the signed chunk list, then length/sha256/blake3 of the
//! result (src/client.rs).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use update_edge::catalog::signing::Signer;
use update_edge::client::{self, ClientError, UpdateArgs};
use update_edge::repo::keys::KeyPair;

const LEN: usize = 200_000;

/// Three builds of the same length, each a few edits from the one before.
fn images() -> Vec<Vec<u8>> {
    let mut img = noise(LEN, 11);
    let mut out = vec![img.clone()];
    for i in 2..=3u64 {
        let at = (i as usize * 40_000) % (LEN - 5000);
        img[at..at + 4000].copy_from_slice(&noise(4000, 100 + i));
        out.push(img.clone());
    }
    out
}

/// A node with product `gw`, builds 1.0.1..=1.0.3 of equal length, ring general at `ring`.
async fn node_with(config: update_edge::config::Config, ring: &str) -> (TestNode, Vec<Vec<u8>>) {
    let node = TestNode::start(config).await;
    let r = op_put(&format!("{}/v1/products/gw", node.url), r#"{"name":"gw"}"#).await;
    assert!(r.status().is_success());
    let imgs = images();
    for (i, img) in imgs.iter().enumerate() {
        let r = op_put(
            &format!("{}/v1/products/gw/builds/1.0.{}?kind=os", node.url, i + 1),
            img.clone(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let body = format!(r#"{{"version":"{ring}"}}"#);
    assert_eq!(
        set_ring(&node, "gw", "general", &body).await,
        StatusCode::OK
    );
    (node, imgs)
}

fn args_via(
    node: &TestNode,
    dir: &std::path::Path,
    server: &str,
    device: &str,
    version: &str,
) -> UpdateArgs {
    let mut a = node.device_args(dir, "gw", device, version, None);
    a.server = server.to_string();
    a.retry_for = Duration::from_secs(5);
    a
}

/// The client refuses with a message containing `needle` and leaves `--out` absent.
async fn refused(args: UpdateArgs, needle: &str) {
    let out = args.out.clone();
    let err = client::update(args)
        .await
        .expect_err("the attack was accepted");
    assert!(
        matches!(
            err,
            ClientError::Untrusted(_) | ClientError::Verification(_)
        ),
        "not a refusal: {err}"
    );
    assert!(
        err.to_string().contains(needle),
        "expected {needle:?} in: {err}"
    );
    assert!(!out.exists(), "a refused update wrote --out");
    eprintln!("refused as expected: {err}");
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

fn body_json(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn director(node: &TestNode) -> Arc<Signer> {
    Arc::new(Signer::new(node.node.repo.director()))
}

/// A compromised director or a forger in the middle: every check answer is changed by
/// `edit` and re-signed with `signer`.
async fn resigning_proxy(
    node: &TestNode,
    signer: Arc<Signer>,
    edit: impl Fn(&mut Value) + Send + Sync + 'static,
) -> String {
    let (up, edit) = (node.url.clone(), Arc::new(edit));
    let hook = hook!(|req| {
        let (up, signer, edit) = (up.clone(), signer.clone(), edit.clone());
        async move {
            if req.path != "/v1/check" {
                return None;
            }
            let mut v = body_json(&forward(&up, &req).await);
            edit(&mut v);
            Some(Reply::json(&signer.sign(v)))
        }
    });
    rewriting_proxy(node.url.clone(), hook).await
}

/// A mirror that answers `path` with `body` (a captured, frozen or endless file).
async fn replacing_proxy(node: &TestNode, path: String, body: Vec<u8>) -> String {
    let hook = hook!(|req| {
        let (path, body) = (path.clone(), body.clone());
        async move {
            (req.path == path).then(|| Reply {
                status: 200,
                body,
                headers: vec![],
                hold: None,
            })
        }
    });
    rewriting_proxy(node.url.clone(), hook).await
}

/// A mirror that serves what is at `to` when `from` is asked for.
async fn redirecting_proxy(node: &TestNode, from: String, to: String) -> String {
    let up = node.url.clone();
    let hook = hook!(|req| {
        let (up, from, to) = (up.clone(), from.clone(), to.clone());
        async move {
            if req.path != from {
                return None;
            }
            let mut other = req.clone();
            other.path = to;
            Some(forward(&up, &other).await)
        }
    });
    rewriting_proxy(node.url.clone(), hook).await
}

async fn fetch(url: String) -> Vec<u8> {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn genuine_update_through_a_passive_proxy_succeeds() {
    // The control row: the same proxy, rewriting nothing, lets the update through.
    let dir = tempfile::tempdir().unwrap();
    let (node, imgs) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let proxy = rewriting_proxy(node.url.clone(), hook!(|_req| async move { None })).await;
    let r = client::update(args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1"))
        .await
        .unwrap();
    assert_eq!(
        (r.version.as_deref(), r.target.as_deref()),
        (Some("1.0.3"), Some("gw/1.0.3/os"))
    );
    assert_eq!(std::fs::read(dir.path().join("out.img")).unwrap(), imgs[2]);
    node.stop().await;
}

#[tokio::test]
async fn forged_answer_signed_by_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let key = KeyPair::create(&dir.path().join("forger.pk8")).unwrap();
    let proxy = resigning_proxy(&node, Arc::new(Signer::new(Arc::new(key))), |_| {}).await;
    let args = args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1");
    refused(args, "does not authorise as director").await;
    node.stop().await;
}

#[tokio::test]
async fn another_devices_answer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let up = node.url.clone();
    let proxy = rewriting_proxy(
        node.url.clone(),
        hook!(|req| {
            let up = up.clone();
            async move {
                if req.path != "/v1/check" {
                    return None;
                }
                // Same request (same nonce), asked for another device.
                let mut body: Value = serde_json::from_slice(&req.body).unwrap();
                body["device_id"] = json!("dev-2");
                let mut other = req.clone();
                other.body = serde_json::to_vec(&body).unwrap();
                Some(forward(&up, &other).await)
            }
        }),
    )
    .await;
    refused(
        args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1"),
        "another device",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn replayed_answer_with_an_old_nonce_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    // A genuine answer for this very device, captured from an earlier check.
    let (status, captured) = check(
        &node,
        json!({"product": "gw", "device_id": "dev-1", "version": "1.0.1", "nonce": "0123456789abcdef"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(captured["nonce"], "0123456789abcdef");
    let body = serde_json::to_vec(&captured).unwrap();
    let proxy = replacing_proxy(&node, "/v1/check".into(), body).await;
    refused(
        args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1"),
        "nonce",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn validly_signed_downgrade_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, imgs) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    // A compromised director (it holds the real director key) offers 1.0.1, a target the
    // repository did sign, to a device running 1.0.2 — target and artifacts rewritten.
    let (len, sha) = (imgs[0].len(), sha256_hex(&imgs[0]));
    let h1 = blake3::hash(&imgs[0]).to_hex().to_string();
    let list = fetch(format!("{}/v1/blobs/{h1}/chunks", node.url)).await;
    let artifacts = json!([{
        "type": "full", "url": format!("/v1/blobs/{h1}"), "size": len, "blake3": h1,
        "chunks_url": format!("/v1/blobs/{h1}/chunks"), "chunks_blake3": blake3::hash(&list).to_hex().to_string(),
    }]);
    let proxy = resigning_proxy(&node, director(&node), move |v| {
        v["update"]["version"] = json!("1.0.1");
        v["update"]["target"] =
            json!({"name": "gw/1.0.1/os", "length": len, "hashes": {"sha256": sha}});
        v["update"]["artifacts"] = artifacts.clone();
    })
    .await;
    let args = args_via(&node, dir.path(), &proxy, "dev-1", "1.0.2");
    refused(args, "not newer than the running 1.0.2").await;

    // Rollback below what the device once installed: it installed 1.0.3, was reflashed
    // to 1.0.1, and the (genuine) ring now offers 1.0.2.
    let a = node.device_args(dir.path(), "gw", "dev-9", "1.0.1", None);
    let r = client::update(a.clone()).await.unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.3"));
    std::fs::remove_file(&a.out).unwrap();
    let ring = set_ring(&node, "gw", "general", r#"{"version":"1.0.2"}"#).await;
    assert_eq!(ring, StatusCode::OK);
    refused(a, "highest ever installed").await;
    node.stop().await;
}

#[tokio::test]
async fn answer_naming_a_target_the_repository_never_signed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let proxy = resigning_proxy(&node, director(&node), |v| {
        v["update"]["version"] = json!("9.9.9");
        v["update"]["target"]["name"] = json!("gw/9.9.9/os");
    })
    .await;
    let args = args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1");
    refused(args, "not in the repository's signed targets").await;
    node.stop().await;
}

#[tokio::test]
async fn mix_and_match_targets_from_another_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let n = node.node.repo.current_version("targets");
    assert!(n >= 2, "targets version {n}");
    // The snapshot names targets version n; the mirror serves version n-1 under its name.
    let from = format!("/v1/tuf/{n}.targets.json");
    let proxy = redirecting_proxy(&node, from, format!("/v1/tuf/{}.targets.json", n - 1)).await;
    refused(
        args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1"),
        "Hash mismatch",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn metadata_rollback_below_what_the_device_has_seen_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, imgs) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let old_ts = fetch(format!("{}/v1/tuf/timestamp.json", node.url)).await;
    // A newer build is published: timestamp, snapshot and targets move on.
    let mut v4 = imgs[2].clone();
    v4[..100].copy_from_slice(&noise(100, 4));
    let r = op_put(&format!("{}/v1/products/gw/builds/1.0.4", node.url), v4).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // The device sees the new metadata (it runs 1.0.3: nothing to install).
    let seen = client::update(node.device_args(dir.path(), "gw", "dev-1", "1.0.3", None)).await;
    assert_eq!(seen.unwrap().result, "no_update");
    // Then a mirror serves the older (still unexpired, validly signed) timestamp.
    let proxy = replacing_proxy(&node, "/v1/tuf/timestamp.json".into(), old_ts).await;
    let args = args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1");
    refused(args, "when we had previously fetched version").await;
    node.stop().await;
}

#[tokio::test]
async fn frozen_timestamp_past_its_expiry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.tuf.timestamp_ttl = update_edge::config::Seconds(4);
    let (node, _) = node_with(config, "1.0.3").await;
    let frozen = fetch(format!("{}/v1/tuf/timestamp.json", node.url)).await;
    let expires: Value = serde_json::from_slice(&frozen).unwrap();
    eprintln!("frozen timestamp expires {}", expires["signed"]["expires"]);
    tokio::time::sleep(Duration::from_millis(5500)).await;
    // The node itself keeps re-signing: a device talking to it directly is fine.
    let fresh = client::update(node.device_args(dir.path(), "gw", "dev-2", "1.0.3", None)).await;
    assert_eq!(fresh.unwrap().result, "no_update");
    let proxy = replacing_proxy(&node, "/v1/tuf/timestamp.json".into(), frozen).await;
    let args = args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1");
    refused(args, "timestamp metadata is expired").await;
    node.stop().await;
}

#[tokio::test]
async fn endless_metadata_is_cut_off_at_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let endless = vec![b' '; 16 << 20];
    let proxy = replacing_proxy(&node, "/v1/tuf/timestamp.json".into(), endless).await;
    let args = args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1");
    refused(args, "Maximum size 65536").await;
    node.stop().await;
}

#[tokio::test]
async fn endless_check_answer_and_chunk_list_are_cut_off_at_their_caps() {
    let dir = tempfile::tempdir().unwrap();
    let (node, imgs) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    let endless = vec![b' '; 1 << 20];
    let proxy = replacing_proxy(&node, "/v1/check".into(), endless).await;
    let args = args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1");
    refused(args, "response body over 262144 bytes").await;
    let h3 = blake3::hash(&imgs[2]).to_hex();
    let endless = vec![b' '; 40 << 20];
    let proxy = replacing_proxy(&node, format!("/v1/blobs/{h3}/chunks"), endless).await;
    let args = args_via(&node, dir.path(), &proxy, "dev-2", "1.0.1");
    refused(args, "response body over 33554432 bytes").await;
    node.stop().await;
}

#[tokio::test]
async fn payload_swapped_for_another_signed_build_of_the_same_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, imgs) = node_with(test_config(&dir.path().join("data")), "1.0.3").await;
    assert_eq!(imgs[1].len(), imgs[2].len());
    let (h2, h3) = (
        blake3::hash(&imgs[1]).to_hex(),
        blake3::hash(&imgs[2]).to_hex(),
    );
    let proxy =
        redirecting_proxy(&node, format!("/v1/blobs/{h3}"), format!("/v1/blobs/{h2}")).await;
    refused(
        args_via(&node, dir.path(), &proxy, "dev-1", "1.0.1"),
        "verification",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn rotated_director_and_targets_keys_are_followed_and_the_revoked_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    let (node, imgs) = node_with(config.clone(), "1.0.2").await;
    // Device A updates under root version 1.
    let a = node.device_args(dir.path(), "gw", "dev-a", "1.0.1", None);
    assert_eq!(
        client::update(a.clone()).await.unwrap().version.as_deref(),
        Some("1.0.2")
    );
    let old_director = node.node.repo.director();
    let old_targets_version = node.node.repo.current_version("targets");
    node.stop().await;

    let offline = root_keys_dir(&config);
    let d =
        update_edge::repo::root::rotate(&config.tuf.keys_dir, &offline, "director", 30).unwrap();
    let t = update_edge::repo::root::rotate(&config.tuf.keys_dir, &offline, "targets", 30).unwrap();
    assert_eq!((d.version, t.version), (2, 3));
    assert_ne!(d.old_ids, d.new_ids);

    let node = TestNode::start(config.clone()).await;
    assert!(
        node.node.repo.current_version("targets") > old_targets_version,
        "targets not re-signed with the new key"
    );
    assert_eq!(node.node.repo.director_ids(), d.new_ids);
    for (n, want) in [(3, StatusCode::OK), (4, StatusCode::NOT_FOUND)] {
        let r = client()
            .get(format!("{}/v1/tuf/{n}.root.json", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "root {n}");
    }
    assert_eq!(
        set_ring(&node, "gw", "general", r#"{"version":"1.0.3"}"#).await,
        StatusCode::OK
    );

    // Device A (state from root 1) and device B (only the shipped root 1) both follow
    // the chain and update.
    let mut a = a;
    a.server = node.url.clone();
    a.version = "1.0.2".into();
    std::fs::remove_file(&a.out).unwrap();
    assert_eq!(
        client::update(a.clone()).await.unwrap().version.as_deref(),
        Some("1.0.3")
    );
    assert_eq!(std::fs::read(&a.out).unwrap(), imgs[2]);
    let b = node.device_args(&dir.path().join("b"), "gw", "dev-b", "1.0.1", None);
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    assert_eq!(
        client::update(b).await.unwrap().version.as_deref(),
        Some("1.0.3")
    );

    // An answer signed by the revoked director key is refused.
    let proxy = resigning_proxy(&node, Arc::new(Signer::new(old_director)), |_| {}).await;
    let c = dir.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    refused(
        args_via(&node, &c, &proxy, "dev-c", "1.0.1"),
        "does not authorise as director",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn an_edge_with_its_own_director_key_is_trusted_until_that_key_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.delta.from_previous = 0;
    let (node, imgs) = node_with(config.clone(), "1.0.3").await;
    node.stop().await;
    let offline = root_keys_dir(&config);
    let edge_key = dir.path().join("edge/director.pk8");
    let added =
        update_edge::repo::root::add_director(&config.tuf.keys_dir, &offline, &edge_key, 30);
    assert_eq!(added.unwrap().new_ids.len(), 2);
    // The node now signs answers with the edge's key; a device with root 1 follows to
    // root 2, which authorises it.
    let mut edge = config.clone();
    edge.tuf.director_key = edge_key.clone();
    let node = TestNode::start(edge.clone()).await;
    let edge_id = KeyPair::load(&edge_key).unwrap().id().to_string();
    assert_eq!(node.node.checker.signer.id(), edge_id);
    let r = client::update(node.device_args(dir.path(), "gw", "dev-1", "1.0.1", None)).await;
    assert_eq!(r.unwrap().version.as_deref(), Some("1.0.3"));
    assert_eq!(std::fs::read(dir.path().join("out.img")).unwrap(), imgs[2]);
    node.stop().await;

    // Revoked: the node refuses to start with it, and its signatures are refused.
    let revoked =
        update_edge::repo::root::revoke_director(&config.tuf.keys_dir, &offline, &edge_id, 30);
    assert_eq!(revoked.unwrap().version, 3);
    let err = open_node(edge)
        .await
        .err()
        .expect("opened with a revoked key");
    assert!(
        err.to_string().contains("not authorised for director"),
        "{err}"
    );
    let node = TestNode::start(config).await;
    let signer = Arc::new(Signer::new(Arc::new(KeyPair::load(&edge_key).unwrap())));
    let proxy = resigning_proxy(&node, signer, |_| {}).await;
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let args = args_via(&node, &b, &proxy, "dev-2", "1.0.1");
    refused(args, "does not authorise as director").await;
    node.stop().await;
}

#[tokio::test]
async fn a_missing_or_unauthorised_key_file_stops_the_node_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    let path = config.tuf.keys_dir.join("timestamp.pk8");
    let saved = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = update_edge::server::Node::open(config.clone())
        .err()
        .expect("opened without a key")
        .to_string();
    assert!(
        err.contains("timestamp.pk8") && err.contains("missing"),
        "{err}"
    );
    assert!(!path.exists(), "a key was created implicitly");
    // Another key in its place is not the one root authorises.
    KeyPair::create(&path).unwrap();
    let err = update_edge::server::Node::open(config.clone())
        .err()
        .expect("opened with a foreign key")
        .to_string();
    assert!(err.contains("not authorised for timestamp"), "{err}");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, saved).unwrap();
    let node = TestNode::start(config).await;
    node.stop().await;
}

#[test]
fn keys_cli_initialises_once_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_update-edge");
    let run = |args: &[&str]| {
        std::process::Command::new(exe)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["keys", "init", "--keys", "online", "--root-keys", "offline"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("online/root/1.root.json"));
    let again = run(&["keys", "init", "--keys", "online", "--root-keys", "offline"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let inside = run(&["keys", "init", "--keys", "k2", "--root-keys", "k2/root"]);
    assert_eq!(inside.status.code(), Some(2));
    let rot = run(&[
        "keys",
        "rotate",
        "--role",
        "timestamp",
        "--keys",
        "online",
        "--root-keys",
        "offline",
    ]);
    assert!(
        rot.status.success(),
        "{}",
        String::from_utf8_lossy(&rot.stderr)
    );
    assert!(dir.path().join("online/root/2.root.json").exists());
    let bad = run(&[
        "keys",
        "rotate",
        "--role",
        "mirror",
        "--keys",
        "online",
        "--root-keys",
        "offline",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role"));
    let renew = run(&[
        "keys",
        "renew-root",
        "--keys",
        "online",
        "--root-keys",
        "offline",
    ]);
    assert!(
        renew.status.success(),
        "{}",
        String::from_utf8_lossy(&renew.stderr)
    );
    assert!(dir.path().join("online/root/3.root.json").exists());
    let add = run(&[
        "keys",
        "add-director",
        "--out",
        "edge.pk8",
        "--keys",
        "online",
        "--root-keys",
        "offline",
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(
        dir.path().join("edge.pk8").exists() && dir.path().join("online/root/4.root.json").exists()
    );
    let unknown = run(&[
        "keys",
        "revoke-director",
        "--key-id",
        "00000000000000000",
        "--keys",
        "online",
        "--root-keys",
        "offline",
    ]);
    assert_eq!(unknown.status.code(), Some(2));
}
