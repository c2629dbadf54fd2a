//! The origin's bucket against a real 3-node Garage cluster on loopback
//! (`tests/garage-cluster.sh`; Garage is an external process, never linked): publish
//! writes through to the bucket, a wiped origin is restored from it and serves every
//! build byte-exact to curl and to a device, a corrupt object is never served, and a
//! bucket that is down fails publishes cleanly while the origin keeps serving.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use reqwest::StatusCode;
use update_edge::bucket::Bucket;
use update_edge::config::{Config, Seconds};
use update_edge::hash::Hash;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/garage-cluster.sh");

/// A running cluster; stopped when dropped.
struct Garage {
    dir: PathBuf,
    env: HashMap<String, String>,
}

impl Garage {
    /// Starts a cluster on ports `base..base+40` (each test its own), or None when Garage
    /// is not installed outside CI (in CI, `UPDATE_EDGE_REQUIRE_TOOLS`, that fails).
    fn start(dir: &Path, base: u16) -> Option<Garage> {
        let installed = std::env::var_os("GARAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/update-edge-garage/bin/garage")
            });
        if !installed.exists() {
            assert!(
                std::env::var_os("UPDATE_EDGE_REQUIRE_TOOLS").is_none(),
                "garage is not installed at {} (./dev.sh setup installs it)",
                installed.display()
            );
            eprintln!("SKIPPED: garage not installed");
            return None;
        }
        let dir = dir.join("garage");
        let out = std::process::Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .env("GARAGE_PORT_BASE", base.to_string())
            .output()
            .unwrap();
        let g = Garage {
            dir: dir.clone(),
            env: HashMap::new(),
        };
        assert!(
            out.status.success(),
            "garage-cluster.sh start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        let mut g = g;
        g.env = env;
        Some(g)
    }

    fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("{k} not in garage env"))
    }

    /// Kills node `i` (1-based) of the cluster.
    fn kill_node(&self, i: usize) {
        let pids: Vec<&str> = self.var("GARAGE_PIDS").split_whitespace().collect();
        let st = std::process::Command::new("kill")
            .arg("-9")
            .arg(pids[i - 1])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn stop(&self) {
        let st = std::process::Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// An origin whose data directory is `dir/data` (its keys beside it, so wiping the data
/// leaves them) with the cluster's bucket; `endpoint` is one of its nodes.
fn origin_with_bucket(dir: &Path, g: &Garage, endpoint: &str) -> Config {
    let mut c = origin_config(dir);
    c.server.data_dir = dir.join("data");
    let s3 = &mut c.origin.s3;
    s3.bucket = g.var("S3_BUCKET").into();
    s3.endpoint = endpoint.into();
    s3.region = g.var("S3_REGION").into();
    s3.access_key_id = g.var("AWS_ACCESS_KEY_ID").into();
    s3.secret_access_key = g.var("AWS_SECRET_ACCESS_KEY").into();
    s3.max_retries = 2;
    s3.timeout = Seconds(5);
    c
}

fn bucket_of(c: &Config) -> std::sync::Arc<Bucket> {
    Bucket::open(
        &c.origin.s3,
        std::sync::Arc::new(update_edge::metrics::Metrics::new()),
    )
    .unwrap()
}

fn build_blob(node: &TestNode, version: &str) -> Hash {
    let v = version.parse().unwrap();
    node.node.catalog.build("gw", &v).unwrap().unwrap().blob
}

/// A blob's manifest and chunk locations, as the bucket holds them.
async fn bucket_manifest(
    bucket: &Bucket,
    blob: &Hash,
) -> (
    update_edge::store::Manifest,
    Vec<update_edge::bucket::Location>,
) {
    let raw = bucket
        .get(&Bucket::manifest_key(blob), 64 << 20)
        .await
        .unwrap();
    update_edge::bucket::decode_manifest(&raw).unwrap()
}

async fn get_bytes(url: &str) -> (StatusCode, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    (r.status(), r.bytes().await.unwrap().to_vec())
}

/// `update-edge ARGS` with `config` written as its config file.
fn cli(dir: &Path, config: &Config, args: &[&str]) -> std::process::Output {
    let file = dir.join("restore.toml");
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_update-edge"))
        .args(args)
        .arg("--config")
        .arg(&file)
        .env_remove("UPDATE_EDGE_LOG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_origin_restored_from_the_bucket_serves_every_build_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(dir.path(), 23900) else {
        return;
    };
    let odir = dir.path().join("origin");
    let config = origin_with_bucket(&odir, &g, g.var("S3_ENDPOINT"));
    let origin = TestNode::start(config.clone()).await;
    let builds = gw_targeting_102(&origin, 300_000).await;
    let blobs = [build_blob(&origin, "1.0.1"), build_blob(&origin, "1.0.2")];

    // Publish wrote through: each build's manifest, and every one of its chunks in a
    // pack, each chunk once however many builds share it (1.0.2's pack holds only what
    // 1.0.1's lacks); the catalog snapshot names both builds.
    let bucket = bucket_of(&config);
    let mut unique = std::collections::HashSet::new();
    for b in &blobs {
        let (m, locations) = bucket_manifest(&bucket, b).await;
        assert_eq!(m, *origin.node.store.manifest(*b).await.unwrap());
        for (c, l) in m.chunks.iter().zip(&locations) {
            if unique.insert(c.hash) {
                assert_eq!(l.pack, *b, "chunk {} is new in {b}, so in its pack", c.hash);
            } else {
                assert_eq!(l.pack, blobs[0], "a shared chunk points into 1.0.1's pack");
            }
            let got = bucket
                .get_range(&Bucket::pack_key(&l.pack), l.offset..l.offset + l.len)
                .await
                .unwrap();
            assert_eq!(got.len() as u64, l.len, "chunk {} of {b}", c.hash);
        }
    }
    let written = origin
        .metric("update_edge_bucket_chunks_written_total")
        .await as usize;
    assert!(
        written >= unique.len() && written <= origin.node.store.stats().chunks as usize,
        "{written} chunk objects written for {} unique build chunks ({} stored)",
        unique.len(),
        origin.node.store.stats().chunks
    );
    let (latest, page) = bucket.latest_snapshot().await.unwrap();
    assert!(latest.seq > 0 && page.reset);
    assert_eq!(
        page.changes.iter().filter(|c| c.cf == "builds").count(),
        2,
        "the snapshot names both builds"
    );
    origin.stop().await;

    // The disk is lost: the data directory goes; the keys (kept by the operator) stay.
    std::fs::remove_dir_all(&config.server.data_dir).unwrap();
    let out = cli(dir.path(), &config, &["restore", "--from-bucket"]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("2 builds"), "{said}");
    // Once more on the restored directory: refused, nothing changed.
    let again = cli(dir.path(), &config, &["restore", "--from-bucket"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // A corrupt chunk object in the bucket is detected and never served.
    let m1 = {
        let restored = TestNode::start(config.clone()).await;
        let first = restored.node.store.contains_blob(&blobs[0]).unwrap();
        assert!(!first, "restore brings the catalog, not the content");
        restored.stop().await;
        blobs[0]
    };
    let victim = {
        // A chunk of 1.0.1 only.
        let (m_old, loc_old) = bucket_manifest(&bucket, &m1).await;
        let (m_new, _) = bucket_manifest(&bucket, &blobs[1]).await;
        let newer: std::collections::HashSet<Hash> = m_new.chunks.iter().map(|c| c.hash).collect();
        let i = m_old
            .chunks
            .iter()
            .position(|c| !newer.contains(&c.hash))
            .expect("1.0.1 has a chunk of its own");
        loc_old[i]
    };
    let key = Bucket::pack_key(&victim.pack);
    let good = bucket.get(&key, 64 << 20).await.unwrap();
    let mut bad = good.to_vec();
    bad[(victim.offset + victim.len / 2) as usize] ^= 0x40;
    bucket.put(&key, vec![bad.into()]).await.unwrap();

    let origin = TestNode::start(config.clone()).await;
    // Either an error status, or a body cut short at the corrupt chunk (the head had
    // gone): never the bytes of 1.0.1 with the corrupt chunk in them.
    let r = client()
        .get(origin.blob_url(&blobs[0].to_string()))
        .send()
        .await
        .unwrap();
    let st = r.status();
    match r.bytes().await {
        Ok(body) => {
            assert!(
                st.is_server_error(),
                "a corrupt bucket object was served ({st})"
            );
            assert_ne!(&body[..], &builds[0][..]);
        }
        Err(e) => assert!(st.is_success(), "{st}: {e}"),
    }
    assert!(
        origin
            .metric("update_edge_bucket_corrupt_objects_total")
            .await
            >= 1.0
    );
    // Repaired in the bucket: served byte-exact (to curl, resuming), then to a device.
    bucket.put(&key, vec![good]).await.unwrap();
    let out_file = dir.path().join("old.curl");
    let st = curl_resume(&out_file, &origin.blob_url(&blobs[0].to_string())).await;
    assert!(st.success());
    assert_eq!(std::fs::read(&out_file).unwrap(), builds[0]);
    assert!(origin.metric("update_edge_bucket_get_bytes_total").await > 0.0);

    let old = dir.path().join("old.img");
    std::fs::write(&old, &builds[0]).unwrap();
    let args = origin.device_args(dir.path(), "gw", "dev-1", "1.0.1", Some(old));
    let r = update_edge::client::update(args.clone()).await.unwrap();
    assert_eq!(r.version.as_deref(), Some("1.0.2"));
    assert_eq!(std::fs::read(&args.out).unwrap(), builds[1]);

    // An edge of the restored origin serves it too (filled through the origin).
    let edge = TestNode::start(edge_config(&dir.path().join("edge"), &origin)).await;
    let (st, body) = get_bytes(&edge.blob_url(&blobs[1].to_string())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, builds[1]);
    edge.stop().await;

    // An edge whose content comes straight from the bucket (through another Garage
    // node): once it has replicated the catalog, the origin can be gone and downloads
    // still work.
    let mut c = edge_config(&dir.path().join("edge-s3"), &origin);
    c.edge.upstream_content = format!("s3://{}", g.var("S3_BUCKET"));
    let s3 = &mut c.edge.s3;
    s3.endpoint = g
        .var("S3_ENDPOINTS")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .into();
    s3.region = g.var("S3_REGION").into();
    s3.access_key_id = g.var("AWS_ACCESS_KEY_ID").into();
    s3.secret_access_key = g.var("AWS_SECRET_ACCESS_KEY").into();
    let edge = TestNode::start(c).await;
    origin.stop().await;
    for (blob, bytes) in blobs.iter().zip(&builds) {
        let (st, body) = get_bytes(&edge.blob_url(&blob.to_string())).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(&body, bytes);
    }
    assert!(edge.metric("update_edge_bucket_get_bytes_total").await >= builds[0].len() as f64);
    edge.stop().await;
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_survives_a_lost_garage_node_and_fails_cleanly_when_the_bucket_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(dir.path(), 24100) else {
        return;
    };
    let odir = dir.path().join("origin");
    let config = origin_with_bucket(&odir, &g, g.var("S3_ENDPOINT"));
    let origin = TestNode::start(config.clone()).await;
    let r = op_put(
        &format!("{}/v1/products/gw", origin.url),
        r#"{"name":"Test device"}"#,
    )
    .await;
    assert!(r.status().is_success());
    let one = noise(200_000, 5);
    let r = op_put(
        &format!("{}/v1/products/gw/builds/1.0.1?kind=os", origin.url),
        one.clone(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // One of three Garage nodes dies while a publish is writing its pack: the writes
    // still reach a quorum (2 of 3) and the publish completes.
    let two = noise(24 << 20, 6);
    let started = std::time::Instant::now();
    let put = {
        let (url, body) = (
            format!("{}/v1/products/gw/builds/1.0.2?kind=os", origin.url),
            two.clone(),
        );
        tokio::spawn(async move { op_put(&url, body).await })
    };
    // Ingest first, then the pack upload: node 3 is killed once its bytes flow.
    let sent_before = origin.metric("update_edge_bucket_put_bytes_total").await;
    let uploading = eventually(10, || async {
        origin.metric("update_edge_bucket_put_bytes_total").await > sent_before
    })
    .await;
    assert!(uploading, "the pack upload never started");
    g.kill_node(3);
    let killed_at = started.elapsed();
    let r = put.await.unwrap();
    eprintln!(
        "publish of 24 MiB: node 3 killed at {killed_at:?}, answered at {:?}",
        started.elapsed()
    );
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let bucket = bucket_of(&config);
    let h2 = build_blob(&origin, "1.0.2");
    // Its pack is whole (read through node 1, written while node 3 died).
    let (_, locations) = bucket_manifest(&bucket, &h2).await;
    let end = locations
        .iter()
        .filter(|l| l.pack == h2)
        .map(|l| l.offset + l.len)
        .max()
        .unwrap();
    let pack = bucket.get(&Bucket::pack_key(&h2), 64 << 20).await.unwrap();
    assert_eq!(pack.len() as u64, end);

    // The whole bucket is down: a publish fails with 503 naming it, and leaves no build.
    g.stop();
    let three = noise(200_000, 7);
    let r = op_put(
        &format!("{}/v1/products/gw/builds/1.0.3?kind=os", origin.url),
        three,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let msg = r.text().await.unwrap();
    assert!(msg.contains("bucket"), "{msg}");
    let v: update_edge::catalog::version::Version = "1.0.3".parse().unwrap();
    assert!(origin.node.catalog.build("gw", &v).unwrap().is_none());
    // What the origin holds is still served.
    let (st, body) = get_bytes(&origin.blob_url(&h2.to_string())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, two);
    assert!(
        origin
            .metric_labeled("update_edge_bucket_errors_total{reason=\"unavailable\"}")
            .await
            >= 1.0
    );
    origin.stop().await;
}
