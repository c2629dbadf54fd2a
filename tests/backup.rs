//! Backup while serving and restore: `POST /v1/admin/backup` takes a RocksDB checkpoint
//! under load (downloads and a publish running), `update-edge restore` makes a new data
//! directory from it, and a node on that directory serves every build it lists byte-exact.

mod common;

use std::process::Command;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_node_serving_every_build_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("node");
    let mut cfg = test_config(&old);
    cfg.server.backup_dir = dir.path().join("backups");
    let node = TestNode::start(cfg.clone()).await;
    let builds = seed_product(&node, "gw", 3, 300_000).await;
    let c = client();
    let backup_url = format!("{}/v1/admin/backup", node.url);

    // Operators only.
    let r = c.post(&backup_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Load: every build downloaded over and over, and a fourth build published, while
    // the checkpoint is taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listed = list_builds(&node.url, "gw").await;
    let mut load = Vec::new();
    for (i, want) in builds.iter().cloned().enumerate() {
        let blob = listed["builds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["version"] == format!("1.0.{}", i + 1))
            .and_then(|b| b["blob"].as_str())
            .unwrap()
            .to_string();
        let (stop, url, c) = (stop.clone(), node.blob_url(&blob), c.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = c.get(&url).send().await.unwrap().bytes().await.unwrap();
                assert_eq!(got, want, "a download during the backup");
                n += 1;
            }
            n
        }));
    }
    let fourth = noise(300_000, 44);
    let publish = {
        let (c, url, body) = (
            c.clone(),
            format!("{}/v1/products/gw/builds/1.0.4", node.url),
            fourth.clone(),
        );
        tokio::spawn(async move {
            c.put(url)
                .bearer_auth(TOKEN)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let r = c.post(&backup_url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let b: Value = r.json().await.unwrap();
    let path = std::path::PathBuf::from(b["path"].as_str().unwrap());
    assert!(path.starts_with(dir.path().join("backups")), "{b}");
    // At least the first build's bytes (the later ones are edits of it, mostly shared).
    assert!(b["bytes"].as_u64().unwrap() > 300_000, "{b}");
    assert!(publish.await.unwrap().is_success());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        assert!(t.await.unwrap() >= 1, "downloads ran");
    }
    node.stop().await;

    // A new data directory from the checkpoint (the keys are kept apart, as operators do).
    let bin = env!("CARGO_BIN_EXE_update-edge");
    let new = dir.path().join("restored");
    let restore = |data: &std::path::Path| {
        Command::new(bin)
            .arg("restore")
            .arg(&path)
            .arg("--data")
            .arg(data)
            .output()
            .unwrap()
    };
    let out = restore(&new);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 products"),
        "{out:?}"
    );
    // Not over a directory holding anything.
    let again = restore(&new);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let verify = Command::new(bin)
        .args(["blob", "verify", "--data"])
        .arg(&new)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");

    let mut restored = cfg.clone();
    restored.server.data_dir = new;
    let node = TestNode::start(restored).await;
    let listed = list_builds(&node.url, "gw").await;
    let versions: Vec<String> = listed["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version"].as_str().unwrap().to_string())
        .collect();
    // The checkpoint is one moment: the fourth build is in it whole or not at all.
    assert!(versions.len() == 3 || versions.len() == 4, "{versions:?}");
    for b in listed["builds"].as_array().unwrap() {
        let version = b["version"].as_str().unwrap();
        let want = match version {
            "1.0.4" => &fourth,
            v => &builds[v.trim_start_matches("1.0.").parse::<usize>().unwrap() - 1],
        };
        let got = c
            .get(node.blob_url(b["blob"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{version}");
        assert_eq!(&got.bytes().await.unwrap(), want, "{version}");
    }
    node.stop().await;
}

#[tokio::test]
async fn without_a_backup_dir_online_backups_are_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let r = client()
        .post(format!("{}/v1/admin/backup", node.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("backup_dir") && text.contains("update-edge backup"),
        "{text}"
    );
    node.stop().await;
    // Offline, the same checkpoint from the CLI.
    let out_dir = dir.path().join("offline-backup");
    let out = Command::new(env!("CARGO_BIN_EXE_update-edge"))
        .args(["backup", "--data"])
        .arg(dir.path())
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out_dir.join("CURRENT").is_file());
}
