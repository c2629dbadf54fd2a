//! A chunk damaged on disk is reported by `blob verify` and never served as good data.

mod common;

use std::process::Command;

use common::*;
use reqwest::StatusCode;

/// Flips one byte of `needle`'s first occurrence in any RocksDB blob file under `dir`.
fn corrupt_on_disk(dir: &std::path::Path, needle: &[u8]) -> bool {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "blob") {
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
                bytes[pos + needle.len() / 2] ^= 0x55;
                std::fs::write(&path, bytes).unwrap();
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn corrupt_chunk_is_reported_by_verify_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let data = noise(120_000, 5);
    let hash = node.upload(data.clone()).await;
    let intact = noise(50_000, 6);
    let intact_hash = node.upload(intact.clone()).await;
    node.stop().await;

    let bin = env!("CARGO_BIN_EXE_update-edge");
    let clean = Command::new(bin)
        .args(["blob", "verify", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );

    // Damage bytes inside the first chunk (offset 100..164 is always in chunk 0).
    assert!(
        corrupt_on_disk(dir.path(), &data[100..164]),
        "chunk bytes not found in blob files"
    );
    let out = Command::new(bin)
        .args(["blob", "verify", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("corrupt blob {hash}")), "{stdout}");
    assert!(stdout.contains("corrupt chunk "), "{stdout}");
    assert!(!stdout.contains(&intact_hash), "{stdout}");

    let node = TestNode::start(test_config(dir.path())).await;
    let c = client();
    let whole = c.get(node.blob_url(&hash)).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = whole.text().await.unwrap();
    assert!(
        !body.contains("chunk"),
        "5xx body must not leak internals: {body}"
    );
    let part = c
        .get(node.blob_url(&hash))
        .header("Range", "bytes=0-200")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // The intact blob is still served, and the corruption was counted.
    let ok = c.get(node.blob_url(&intact_hash)).send().await.unwrap();
    assert_eq!(ok.bytes().await.unwrap().to_vec(), intact);
    assert!(node.metric("update_edge_store_corrupt_chunks_total").await >= 1.0);
    node.stop().await;
}

#[tokio::test]
async fn later_corrupt_chunk_aborts_the_download_instead_of_completing_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let data = noise(200_000, 15);
    let hash = node.upload(data.clone()).await;
    node.stop().await;
    assert!(corrupt_on_disk(dir.path(), &data[150_000..150_064]));
    let node = TestNode::start(test_config(dir.path())).await;
    let r = client().get(node.blob_url(&hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The body must fail (connection cut), never complete with wrong bytes.
    match r.bytes().await {
        Err(_) => {}
        Ok(b) => panic!(
            "download completed with {} bytes (matches: {})",
            b.len(),
            b[..] == data[..]
        ),
    }
    node.stop().await;
}

#[test]
fn cli_put_get_round_trip_and_bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_update-edge");
    let file = dir.path().join("payload.bin");
    let data = noise(300_000, 3);
    std::fs::write(&file, &data).unwrap();
    let data_dir = dir.path().join("data");
    let put = Command::new(bin)
        .args(["blob", "put"])
        .arg(&file)
        .arg("--data")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let hash = String::from_utf8(put.stdout).unwrap().trim().to_string();
    assert_eq!(hash, blake3::hash(&data).to_hex().as_str());
    let out = dir.path().join("out.bin");
    let get = Command::new(bin)
        .args(["blob", "get", &hash, "--data"])
        .arg(&data_dir)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Unknown hash and missing input: non-zero exit with a message, nothing written.
    let missing = dir.path().join("missing.bin");
    let get = Command::new(bin)
        .args(["blob", "get", &"00".repeat(32), "--data"])
        .arg(&data_dir)
        .arg("-o")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!get.status.success());
    assert!(String::from_utf8_lossy(&get.stderr).contains("not found"));
    assert!(!missing.exists());
    let put = Command::new(bin)
        .args(["blob", "put", "/nonexistent/file", "--data"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!put.status.success());
    assert!(String::from_utf8_lossy(&put.stderr).contains("/nonexistent/file"));
}

#[test]
fn demo_refuses_a_non_loopback_address_without_an_operator_token() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_update-edge");
    let mut child = Command::new(bin)
        .args(["serve", "--demo", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .env_remove("UPDATE_EDGE_ADMIN_TOKEN")
        .env("UPDATE_EDGE_TUF_KEYS_DIR", dir.path().join("keys"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A node that starts serving instead of refusing fails here, not by hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve --demo on 0.0.0.0 without a token kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("only on loopback"), "{stderr}");
    // Nothing was created: no keys, no store.
    assert!(!dir.path().join("keys").exists());
    assert!(!dir.path().join("data").exists());
}
