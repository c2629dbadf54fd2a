//! A full disk: the data dir on a small tmpfs. A publish that does not fit is `507` with
//! a clear message and leaves nothing visible; what was published before still serves;
//! once space returns, publishing works again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use reqwest::StatusCode;
use update_edge::config::ByteSize;

/// A tmpfs of `mib` MiB at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None (and the test skipped, outside CI) where mounting is not allowed.
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                // dev.sh test and CI run as root: there, not mounting is a failure.
                assert!(
                    std::env::var_os("UPDATE_EDGE_REQUIRE_TOOLS").is_none(),
                    "cannot mount a tmpfs (needs root): {other:?}"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {other:?}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn put_build(node: &TestNode, version: &str, body: reqwest::Body) -> (StatusCode, String) {
    let r = client()
        .put(format!("{}/v1/products/gw/builds/{version}", node.url))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// A body of `len` bytes sent without a declared length, in 1 MiB frames.
fn streamed(data: Vec<u8>) -> reqwest::Body {
    let frames: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(frames))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_does_not_fit_is_507_keeps_nothing_and_works_again_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    // RocksDB preallocates its log (~70 MiB at the default 64 MiB write buffer).
    let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), 400) else {
        return;
    };
    // Space taken by something else on the disk; freed later.
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; 150 << 20]).unwrap();
    let mut cfg = test_config(&fs.0.join("data"));
    // Above what one memtable flush writes at once (64 MiB): the engine never runs out.
    cfg.store.min_free_bytes = ByteSize(80 << 20);
    cfg.delta.from_previous = 0;
    let node = TestNode::start(cfg).await;
    let r = op_put(
        &format!("{}/v1/products/gw", node.url),
        r#"{"name":"gw"}"#.to_string(),
    )
    .await;
    assert!(r.status().is_success());
    let v1 = noise(8 << 20, 1);
    let (status, text) = put_build(&node, "1.0.1", v1.clone().into()).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");

    // Declared too large for what is free: refused before a byte is stored.
    let big = noise(48 << 20, 2);
    let (status, text) = put_build(&node, "1.0.2", big.clone().into()).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{text}");
    assert!(text.contains("not enough free space"), "{text}");
    // No declared length, more than there is room for: aborted while streaming, once
    // the reserve is reached.
    let (status, text) = put_build(&node, "1.0.2", streamed(noise(200 << 20, 3))).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{text}");
    assert!(text.contains("nothing was kept"), "{text}");

    // Nothing of it is visible; what was there still serves, byte-exact.
    let builds = list_builds(&node.url, "gw").await.to_string();
    assert!(
        builds.contains("1.0.1") && !builds.contains("1.0.2"),
        "{builds}"
    );
    let big_hash = update_edge::hash::Hash::of(&big).to_hex();
    let r = client().get(node.blob_url(&big_hash)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v1_hash = update_edge::hash::Hash::of(&v1).to_hex();
    let r = client().get(node.blob_url(&v1_hash)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), v1.as_slice());

    // Space returns: the same publish goes through.
    std::fs::remove_file(&filler).unwrap();
    let (status, text) = put_build(&node, "1.0.2", big.clone().into()).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let r = client().get(node.blob_url(&big_hash)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());
    node.stop().await;
    drop(fs);
}
