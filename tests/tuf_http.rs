//! The TUF repository over HTTP: metadata names and caching, target files with the same
//! range/conditional semantics as `/v1/blobs`, re-signing on publish and delete, and a
//! catalog change that reached the store before a crash signed on the next start.

mod common;

use common::*;
use reqwest::StatusCode;

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

async fn get(url: String, range: Option<&str>) -> reqwest::Response {
    let mut r = client().get(url);
    if let Some(v) = range {
        r = r.header("range", v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn metadata_and_targets_are_served_with_tuf_names_ranges_and_cache_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.delta.from_previous = 0;
    let node = TestNode::start(config).await;
    let builds = seed_product(&node, "gw", 2, 100_000).await;
    let base = format!("{}/v1/tuf", node.url);

    let r = get(format!("{base}/1.root.json"), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let r = get(format!("{base}/timestamp.json"), None).await;
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let ts: serde_json::Value = r.json().await.unwrap();
    let snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let snap: serde_json::Value = get(format!("{base}/{snap_v}.snapshot.json"), None)
        .await
        .json()
        .await
        .unwrap();
    let targets_v = snap["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap();
    let targets: serde_json::Value = get(format!("{base}/{targets_v}.targets.json"), None)
        .await
        .json()
        .await
        .unwrap();
    let t = &targets["signed"]["targets"]["gw/1.0.2/os"];
    let sha = sha256_hex(&builds[1]);
    assert_eq!(t["length"], builds[1].len());
    assert_eq!(t["hashes"]["sha256"], sha.as_str());
    assert_eq!(
        t["custom"]["blake3"],
        blake3::hash(&builds[1]).to_hex().as_str()
    );
    assert_eq!(t["custom"]["version"], "1.0.2");
    assert_eq!(t["custom"]["hardware"]["manufacturer"], "Contoso");
    for missing in [
        "999.targets.json",
        "9.root.json",
        "mirrors.json",
        "0.snapshot.json",
    ] {
        assert_eq!(
            get(format!("{base}/{missing}"), None).await.status(),
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }

    // The target file, both URL forms, whole, ranged, conditional.
    let url = format!("{base}/targets/gw/1.0.2/{sha}.os");
    let whole = get(url.clone(), None).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let etag = whole.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(whole.bytes().await.unwrap(), builds[1]);
    let part = get(url.clone(), Some("bytes=1000-1999")).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), builds[1][1000..2000]);
    let r = client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = get(
        format!("{base}/targets/{sha}.gw/1.0.2/os"),
        Some("bytes=-10"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), builds[1][builds[1].len() - 10..]);
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(
        r.headers()["content-length"],
        builds[1].len().to_string().as_str()
    );
    // Another build's hash, an unknown name, a malformed path: 404.
    let other = sha256_hex(&builds[0]);
    for bad in [
        format!("{base}/targets/gw/1.0.2/{other}.os"),
        format!("{base}/targets/gw/9.9.9/{sha}.os"),
        format!("{base}/targets/gw/1.0.2/os"),
    ] {
        assert_eq!(
            get(bad.clone(), None).await.status(),
            StatusCode::NOT_FOUND,
            "{bad}"
        );
    }

    // Deleting a build re-signs targets without it.
    let before = node.node.repo.current_version("targets");
    let r = client()
        .delete(format!("{}/v1/products/gw/builds/1.0.1", node.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(node.node.repo.current_version("targets"), before + 1);
    assert!(node.node.repo.target("gw/1.0.1/os").is_none());
    assert_eq!(
        get(format!("{base}/targets/gw/1.0.1/{other}.os"), None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    node.stop().await;
}

#[tokio::test]
async fn a_build_recorded_before_a_crash_is_signed_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.delta.from_previous = 0;
    let node = TestNode::start(config.clone()).await;
    seed_product(&node, "gw", 1, 50_000).await;
    // The catalog commit of a publish, without the repository step that follows it.
    let img = noise(60_000, 77);
    let put = node.node.store.put_reader(&img[..], |_| {}).unwrap();
    let v: update_edge::catalog::version::Version = "2.0.0".parse().unwrap();
    node.node
        .catalog
        .publish_build("gw", &v, update_edge::catalog::model::Kind::Os, "", &put)
        .unwrap();
    assert!(node.node.repo.target("gw/2.0.0/os").is_none());
    node.stop().await;
    let node = TestNode::start(config).await;
    let t = node
        .node
        .repo
        .target("gw/2.0.0/os")
        .expect("not signed at start");
    assert_eq!(
        (t.length, hex::encode(t.sha256)),
        (60_000, sha256_hex(&img))
    );
    node.stop().await;
}

#[tokio::test]
async fn check_requests_with_a_bad_nonce_are_refused_and_a_good_one_is_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    seed_product(&node, "gw", 1, 20_000).await;
    for bad in [
        serde_json::json!(""),
        serde_json::json!("x".repeat(129)),
        serde_json::json!("has space"),
        serde_json::json!(7),
    ] {
        let (status, body) = check(
            &node,
            serde_json::json!({"product": "gw", "device_id": "d", "version": "1.0.0", "nonce": bad}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = check(
        &node,
        serde_json::json!({"product": "gw", "device_id": "d", "version": "1.0.0", "nonce": "abc123"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["nonce"], "abc123");
    assert_eq!(body["current_version"], "1.0.0");
    assert_eq!(body["key_id"], node.node.repo.director_ids()[0].as_str());
    node.stop().await;
}

#[tokio::test]
async fn metrics_are_exported_with_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    let text = node.metrics_text().await;
    // Every family the node registers, with its type: a new metric must be added here.
    let families = [
        ("update_edge_http_requests", "counter"),
        ("update_edge_http_request_duration_seconds", "histogram"),
        ("update_edge_http_response_duration_seconds", "histogram"),
        ("update_edge_http_requests_in_flight", "gauge"),
        ("update_edge_build_info", "gauge"),
        ("update_edge_bytes_served", "counter"),
        ("update_edge_artifact_bytes_served", "counter"),
        ("update_edge_cache_hits", "counter"),
        ("update_edge_cache_misses", "counter"),
        ("update_edge_store_bytes", "gauge"),
        ("update_edge_store_chunks", "gauge"),
        ("update_edge_store_evicted_bytes", "counter"),
        ("update_edge_store_corrupt_chunks", "counter"),
        ("update_edge_store_chunk_read_bytes", "counter"),
        ("update_edge_store_chunk_hashed_bytes", "counter"),
        ("update_edge_ingest_bytes", "counter"),
        ("update_edge_delta_jobs", "gauge"),
        ("update_edge_delta_compute_seconds", "histogram"),
        ("update_edge_delta_bytes_saved", "counter"),
        ("update_edge_delta_job_panics", "counter"),
        ("update_edge_deltas_obtained", "counter"),
        ("update_edge_checks", "counter"),
        ("update_edge_ring_checks", "counter"),
        ("update_edge_ring_percent", "gauge"),
        ("update_edge_device_record_errors", "counter"),
        ("update_edge_device_records", "gauge"),
        ("update_edge_device_records_expired", "counter"),
        ("update_edge_connections_open", "gauge"),
        ("update_edge_connections_refused", "counter"),
        (
            "update_edge_tuf_metadata_expires_timestamp_seconds",
            "gauge",
        ),
        ("update_edge_tuf_metadata_version", "gauge"),
        ("update_edge_upstream_fetches", "counter"),
        ("update_edge_upstream_bytes", "counter"),
        ("update_edge_upstream_coalesced", "counter"),
        ("update_edge_upstream_errors", "counter"),
        ("update_edge_bucket_put_bytes", "counter"),
        ("update_edge_bucket_get_bytes", "counter"),
        ("update_edge_bucket_chunks_written", "counter"),
        ("update_edge_bucket_corrupt_objects", "counter"),
        ("update_edge_bucket_errors", "counter"),
        ("update_edge_bucket_synced_sequence", "gauge"),
        ("update_edge_upstream_artifact_bytes", "counter"),
        ("update_edge_upstream_last_sync_timestamp_seconds", "gauge"),
        ("update_edge_upstream_replicated_sequence", "gauge"),
        ("update_edge_upstream_prefetched_blobs", "counter"),
        // Read at scrape time: the process (the names every client library uses) and
        // RocksDB.
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("update_edge_rocksdb_live_sst_bytes", "gauge"),
        ("update_edge_rocksdb_blob_file_bytes", "gauge"),
        ("update_edge_rocksdb_blob_garbage_bytes", "gauge"),
        ("update_edge_rocksdb_memtable_bytes", "gauge"),
        ("update_edge_rocksdb_pending_compaction_bytes", "gauge"),
        ("update_edge_rocksdb_running_compactions", "gauge"),
        ("update_edge_rocksdb_write_stopped", "gauge"),
        ("update_edge_rocksdb_delayed_write_rate", "gauge"),
        ("update_edge_rocksdb_stall_seconds", "counter"),
        ("update_edge_rocksdb_block_cache_hits", "counter"),
        ("update_edge_rocksdb_block_cache_misses", "counter"),
        ("update_edge_store_budget_bytes", "gauge"),
        ("update_edge_store_min_free_bytes", "gauge"),
        ("update_edge_data_dir_free_bytes", "gauge"),
    ];
    for (name, kind) in families {
        // The classic text format names a counter family with its `_total`.
        let family = match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_string(),
        };
        let line = format!("# TYPE {family} {kind}");
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
    }
    let exported = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(
        exported,
        families.len(),
        "a family without a pinned type:\n{text}"
    );
    // Prometheus asks for OpenMetrics and gets it: families named without `_total`.
    let om = client()
        .get(format!("{}/metrics", node.url))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(om.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let om = om.text().await.unwrap();
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE update_edge_checks counter"));
    // `promtool check metrics` (Prometheus' own linter) passes a live scrape.
    if require_tools(&["promtool"]) {
        use std::io::Write;
        let mut p = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Scrape-time figures are real: this process's memory and files, RocksDB's memtable
    // holding what the node wrote at start (schema, TUF metadata).
    assert!(node.metric("process_resident_memory_bytes").await > 1e6);
    assert!(node.metric("process_open_fds").await >= 3.0);
    assert!(node.metric("process_cpu_seconds_total").await > 0.0);
    assert!(node.metric("update_edge_rocksdb_memtable_bytes").await > 0.0);
    assert!(node.metric("update_edge_data_dir_free_bytes").await > 0.0);
    // The repository's gauges carry real values from the start.
    let ts = node
        .metric_labeled("update_edge_tuf_metadata_version{role=\"timestamp\"}")
        .await;
    assert!(ts >= 1.0, "timestamp version {ts}");
    node.stop().await;
}
