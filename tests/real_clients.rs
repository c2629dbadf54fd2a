//! Stock clients against a real node: `curl -C -` resume, `aria2c -x 8 -s 8`, `b3sum`.
//! Each test says so and passes vacuously only when its tool is not installed
//! (`./dev.sh test` and CI install them).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PAYLOAD: usize = 12 << 20;

fn b3sum(path: &std::path::Path) -> String {
    let out = Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn curl_resumes_an_interrupted_download() {
    if !require_tools(&["curl", "b3sum"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    let hash = node.upload(noise(PAYLOAD, 1)).await;
    let out = dir.path().join("dl.img");
    // Start a throttled download and cut it once some bytes have arrived.
    let mut slow = Command::new("curl")
        .args(["-s", "--limit-rate", "2M", "-o"])
        .arg(&out)
        .arg(node.blob_url(&hash))
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if out.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.kill().unwrap();
    slow.wait().unwrap();
    let partial = out.metadata().unwrap().len() as usize;
    assert!(
        partial > 0 && partial < PAYLOAD,
        "partial download of {partial} bytes"
    );
    assert!(curl_resume(&out, &node.blob_url(&hash)).await.success());
    assert_eq!(out.metadata().unwrap().len() as usize, PAYLOAD);
    assert_eq!(b3sum(&out), hash);
    eprintln!("curl resumed from byte {partial} of {PAYLOAD}");
    node.stop().await;
}

#[tokio::test]
async fn aria2c_segmented_download_matches_the_hash() {
    if !require_tools(&["aria2c", "b3sum"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    let hash = node.upload(noise(PAYLOAD, 2)).await;
    let url = node.blob_url(&hash);
    let dl = dir.path().to_path_buf();
    let status = tokio::task::spawn_blocking(move || {
        Command::new("aria2c")
            .args([
                "-q",
                "-x",
                "8",
                "-s",
                "8",
                "-k",
                "1M",
                "--allow-overwrite=true",
                "--file-allocation=none",
                "-d",
            ])
            .arg(&dl)
            .args(["-o", "aria.img", &url])
            .stdout(Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let out = dir.path().join("aria.img");
    assert_eq!(out.metadata().unwrap().len() as usize, PAYLOAD);
    assert_eq!(b3sum(&out), hash);
    // aria2c really split the download into ranged requests.
    let gets = node
        .metric_labeled(
            "update_edge_http_requests_total{route=\"/v1/blobs/{hash}\",status=\"2xx\",code=\"206\"}",
        )
        .await;
    assert!(gets >= 2.0, "aria2c made {gets} download requests");
    eprintln!("aria2c used {gets} ranged requests");
    node.stop().await;
}
