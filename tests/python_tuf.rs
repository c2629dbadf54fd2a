//! Compatibility with the TUF ecosystem: python-tuf's reference client (`ngclient`,
//! PyPI `tuf` 7.x, installed into a venv by `dev.sh setup`) refreshes the node's
//! metadata from nothing but root.json and downloads a published build byte-exact.
//! The test fails, never skips, when the venv is missing.

mod common;

use common::*;
use reqwest::StatusCode;

/// The venv's interpreter: `UPDATE_EDGE_PYTHON`, else where `dev.sh setup` puts it.
fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("UPDATE_EDGE_PYTHON") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    std::path::Path::new(&home).join(".cache/update-edge-venv/bin/python3")
}

#[tokio::test]
async fn python_tuf_ngclient_downloads_a_published_build_byte_exact() {
    let py = python();
    assert!(
        py.exists(),
        "{} is missing: run ./dev.sh setup (it creates the venv with python-tuf)",
        py.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.delta.from_previous = 0; // no delta job may hold the store across the restart
    let node = TestNode::start(config.clone()).await;
    let builds = seed_product(&node, "gw", 2, 300_000).await;
    // Rotate a key after publishing, so the client also walks a root chain.
    node.stop().await;
    update_edge::repo::root::rotate(
        &config.tuf.keys_dir,
        &root_keys_dir(&config),
        "snapshot",
        30,
    )
    .unwrap();
    let node = TestNode::start(config.clone()).await;
    assert_eq!(
        client()
            .get(format!("{}/v1/tuf/2.root.json", node.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let script = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
        .join("tests/tuf_client.py");
    let work = dir.path().join("py");
    let out = tokio::process::Command::new(&py)
        .arg(&script)
        .arg(root_path(&config))
        .arg(format!("{}/v1/tuf/", node.url))
        .arg(format!("{}/v1/tuf/targets/", node.url))
        .arg("gw/1.0.2/os")
        .arg(&work)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python-tuf failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        std::fs::read(path.trim()).unwrap(),
        builds[1],
        "python-tuf's download differs"
    );
    // It kept the newest root it verified: version 2.
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("metadata/root.json")).unwrap()).unwrap();
    assert_eq!(kept["signed"]["version"], 2);
    node.stop().await;
}
