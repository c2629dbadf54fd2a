//! The remote admin CLI against a real node: `update-edge admin … publish` sends only
//! the chunks the node lacks (so an interrupted publish resumes), the published build
//! downloads byte-exact, the other subcommands answer in text and `--json`, and each
//! failure has its documented exit status. The upload API's refusals are checked
//! directly: wrong bytes, oversized chunks, missing chunks, a wrong declared blob,
//! no token.

mod common;

use std::path::Path;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use update_edge::hash::Hash;
use update_edge::store::chunker::{ChunkParams, Chunker};

const LIST_TYPE: &str = "application/vnd.update-edge.chunk-list+json";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

async fn admin(url: &str, token_file: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_update-edge"))
        .arg("admin")
        .arg("--server")
        .arg(url)
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .output()
        .await
        .expect("run update-edge admin");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn params() -> ChunkParams {
    ChunkParams {
        min: CHUNK_MIN,
        avg: CHUNK_AVG,
        max: CHUNK_MAX,
    }
}

/// (offset, len, hash) of each chunk as the node would cut `data`.
fn chunks(data: &[u8]) -> Vec<(u64, u32, Hash)> {
    let mut at = 0u64;
    Chunker::new(params())
        .lengths(data)
        .into_iter()
        .map(|n| {
            let c = (at, n as u32, Hash::of(&data[at as usize..][..n]));
            at += n as u64;
            c
        })
        .collect()
}

async fn put_chunk(url: &str, hash: &Hash, body: Vec<u8>) -> reqwest::Response {
    client()
        .put(format!("{url}/v1/chunks/{hash}"))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn missing(url: &str, hashes: &[Hash]) -> Vec<Hash> {
    let r = client()
        .post(format!("{url}/v1/chunks/missing"))
        .bearer_auth(TOKEN)
        .json(&json!({ "chunks": hashes }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    serde_json::from_value(v["missing"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_publish_resumes_and_every_subcommand_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&dir.path().join("node"));
    cfg.server.backup_dir = dir.path().join("backups");
    let node = TestNode::start(cfg).await;
    let url = node.url.clone();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();

    let r = admin(
        &url,
        &token,
        &["product", "put", "gw", "--name", "Gateway 100"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "created product gw (Gateway 100)\n");

    // An earlier publish of this image was cut off after its first third of chunks.
    let image = noise(700_000, 5);
    let file = dir.path().join("image.bin");
    std::fs::write(&file, &image).unwrap();
    let all = chunks(&image);
    let third = all.len() / 3;
    for (off, len, hash) in &all[..third] {
        let r = put_chunk(&url, hash, image[*off as usize..][..*len as usize].to_vec()).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let sent_before: u64 = all[..third].iter().map(|c| u64::from(c.1)).sum();

    let r = admin(
        &url,
        &token,
        &[
            "--json",
            "publish",
            "gw",
            "1.0.1",
            file.to_str().unwrap(),
            "--notes",
            "first",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["hash"], json!(Hash::of(&image)));
    assert_eq!(v["created"], json!(true));
    assert_eq!(v["upload"]["chunks"], json!(all.len()));
    assert_eq!(v["upload"]["uploaded_chunks"], json!(all.len() - third));
    assert_eq!(
        v["upload"]["uploaded_bytes"],
        json!(image.len() as u64 - sent_before)
    );
    let got = client()
        .get(node.blob_url(v["hash"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(
        got.bytes().await.unwrap(),
        image,
        "the published build, downloaded"
    );

    // The next build shares most chunks: only the edited ones travel.
    let mut next = image.clone();
    next[300_000..302_000].copy_from_slice(&noise(2000, 6));
    std::fs::write(&file, &next).unwrap();
    let r = admin(
        &url,
        &token,
        &[
            "publish",
            "gw",
            "1.0.2",
            file.to_str().unwrap(),
            "--kind",
            "os",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let changed = {
        let old: std::collections::HashSet<Hash> = all.iter().map(|c| c.2).collect();
        chunks(&next).iter().filter(|c| !old.contains(&c.2)).count()
    };
    assert!(changed > 0 && changed < 6, "{changed} chunks changed");
    assert!(
        r.stdout.starts_with("published gw 1.0.2 (os): blob ")
            && r.stdout.contains(&format!(
                "uploaded {changed} of {} chunks",
                chunks(&next).len()
            )),
        "{}",
        r.stdout
    );
    // Publishing it again sends nothing and changes nothing.
    let r = admin(
        &url,
        &token,
        &["--json", "publish", "gw", "1.0.2", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        (
            r.json()["created"].clone(),
            r.json()["upload"]["uploaded_chunks"].clone()
        ),
        (json!(false), json!(0))
    );

    let r = admin(&url, &token, &["builds", "ls", "gw"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(
        lines[1].starts_with("1.0.1 ") && lines[1].ends_with(" first"),
        "{}",
        r.stdout
    );
    let r = admin(&url, &token, &["--json", "builds", "ls", "gw"]).await;
    assert_eq!(r.json()["builds"].as_array().unwrap().len(), 2);

    let r = admin(
        &url,
        &token,
        &["ring", "set", "gw", "general", "1.0.2", "--percent", "25"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "ring general of gw: 1.0.2 at 25.0 %\n");
    let r = admin(&url, &token, &["--json", "ring", "ls", "gw"]).await;
    let general = r.json()["rings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "general")
        .cloned()
        .unwrap();
    assert_eq!(
        (general["version"].clone(), general["percent"].clone()),
        (json!("1.0.2"), json!(25.0))
    );

    let r = admin(&url, &token, &["--json", "stats", "gw"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.json()["bytes_served_by_kind"]["os"].as_u64().unwrap() >= image.len() as u64);
    let r = admin(&url, &token, &["--json", "gc"]).await;
    assert_eq!((r.code, r.json()["blobs_deleted"].clone()), (0, json!(0)));
    assert!(
        r.json()["blobs_kept"].as_u64().unwrap() >= 2,
        "{}",
        r.stdout
    );
    let r = admin(&url, &token, &["--json", "backup"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(Path::new(r.json()["path"].as_str().unwrap()).is_dir());

    // Exit statuses: refused 1 (with the node's message), bad local input 2,
    // unreachable 3.
    let r = admin(&url, &token, &["builds", "ls", "nope"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("404") && r.stderr.contains("nope"),
        "{}",
        r.stderr
    );
    let r = admin(
        &url,
        &token,
        &["--json", "ring", "set", "gw", "general", "9.9.9"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["status"], json!(404), "{}", r.stdout);
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let r = admin(&url, &wrong, &["gc"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let r = admin(
        &url,
        &token,
        &["publish", "gw", "1.0.3", "/nonexistent/image"],
    )
    .await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent/image"), "{}", r.stderr);
    let r = admin(&url, &dir.path().join("no-token-file"), &["gc"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = admin(&format!("http://{closed}"), &token, &["gc"]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("cannot reach"), "{}", r.stderr);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_api_refuses_what_it_cannot_keep_and_keeps_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("node"))).await;
    let url = node.url.clone();
    let r = op_put(&format!("{url}/v1/products/gw"), r#"{"name":"Gateway"}"#).await;
    assert!(r.status().is_success());
    let image = noise(100_000, 8);
    let all = chunks(&image);
    let hashes: Vec<Hash> = all.iter().map(|c| c.2).collect();
    let bytes_of = |i: usize| image[all[i].0 as usize..][..all[i].1 as usize].to_vec();

    // The node's parameters.
    let r = client()
        .get(format!("{url}/v1/chunking"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["min"].clone(), v["avg"].clone(), v["max"].clone()),
        (json!(CHUNK_MIN), json!(CHUNK_AVG), json!(CHUNK_MAX))
    );

    // Operators only.
    for r in [
        client()
            .get(format!("{url}/v1/chunking"))
            .send()
            .await
            .unwrap(),
        client()
            .post(format!("{url}/v1/chunks/missing"))
            .json(&json!({"chunks": []}))
            .send()
            .await
            .unwrap(),
        client()
            .put(format!("{url}/v1/chunks/{}", hashes[0]))
            .body(bytes_of(0))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Answered in the order asked.
    assert_eq!(missing(&url, &hashes).await, hashes);

    // Bytes that are not the chunk named: 400, nothing kept.
    let r = put_chunk(&url, &hashes[0], bytes_of(1)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("nothing was kept"),
        "{e}"
    );
    assert!(missing(&url, &hashes[..1]).await.contains(&hashes[0]));
    // Over the node's largest chunk: 413.
    let big = noise(CHUNK_MAX + 1, 9);
    let r = put_chunk(&url, &Hash::of(&big), big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Too many hashes in one query: 400 naming the limit.
    let many = vec![hashes[0]; 4097];
    let r = client()
        .post(format!("{url}/v1/chunks/missing"))
        .bearer_auth(TOKEN)
        .json(&json!({ "chunks": many }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // All but the last chunk uploaded: a publish by list is 409 naming exactly it.
    for (i, hash) in hashes.iter().enumerate().take(all.len() - 1) {
        let r = put_chunk(&url, hash, bytes_of(i)).await;
        assert_eq!(r.status(), StatusCode::CREATED, "chunk {i}");
    }
    let r = put_chunk(&url, &hashes[0], bytes_of(0)).await;
    assert_eq!(r.status(), StatusCode::OK, "a chunk sent twice");
    let list = |blob: Hash| {
        let entries: Vec<Value> = all
            .iter()
            .map(|(o, l, h)| json!({"offset": o, "length": l, "blake3": h}))
            .collect();
        serde_json::to_vec(&json!({"blob": blob, "size": image.len(), "chunks": entries})).unwrap()
    };
    let publish = |body: Vec<u8>| {
        let url = url.clone();
        async move {
            client()
                .put(format!("{url}/v1/products/gw/builds/1.0.1?kind=os"))
                .bearer_auth(TOKEN)
                .header("content-type", LIST_TYPE)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = publish(list(Hash::of(&image))).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["missing"], json!([hashes[hashes.len() - 1]]), "{e}");
    let last = all.len() - 1;
    let r = put_chunk(&url, &hashes[last], bytes_of(last)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // A declared blob the chunks do not make: 400, no build, no blob.
    let wrong = Hash::of(b"another image");
    let r = publish(list(wrong)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("not the declared"),
        "{e}"
    );
    let r = client()
        .get(format!("{url}/v1/products/gw/builds/1.0.1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client()
        .get(node.blob_url(&wrong.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // A list whose pieces do not join up: 400.
    let mut gap: Value = serde_json::from_slice(&list(Hash::of(&image))).unwrap();
    gap["chunks"][1]["offset"] = json!(gap["chunks"][1]["offset"].as_u64().unwrap() + 1);
    let r = publish(serde_json::to_vec(&gap).unwrap()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The right list publishes the build, whose payload downloads byte-exact.
    let r = publish(list(Hash::of(&image))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["hash"], json!(Hash::of(&image)));
    let got = client()
        .get(node.blob_url(&Hash::of(&image).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), image);
    assert!(missing(&url, &hashes).await.is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_by_chunk_list_is_held_to_the_upload_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&dir.path().join("node"));
    cfg.server.max_upload_bytes = update_edge::config::ByteSize(50_000);
    let node = TestNode::start(cfg).await;
    let url = node.url.clone();
    let r = op_put(&format!("{url}/v1/products/gw"), r#"{"name":"Gateway"}"#).await;
    assert!(r.status().is_success());
    let image = noise(100_000, 10);
    let all = chunks(&image);
    for (off, len, hash) in &all {
        let r = put_chunk(&url, hash, image[*off as usize..][..*len as usize].to_vec()).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let entries: Vec<Value> = all
        .iter()
        .map(|(o, l, h)| json!({"offset": o, "length": l, "blake3": h}))
        .collect();
    let r = client()
        .put(format!("{url}/v1/products/gw/builds/1.0.1"))
        .bearer_auth(TOKEN)
        .header("content-type", LIST_TYPE)
        .body(
            serde_json::to_vec(
                &json!({"blob": Hash::of(&image), "size": image.len(), "chunks": entries}),
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("max_upload_bytes"),
        "{e}"
    );
    let r = client()
        .get(node.blob_url(&Hash::of(&image).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing committed");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_publish_at_once_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&dir.path().join("node"));
    // More free space kept than any disk has: every upload is refused with 507.
    cfg.store.min_free_bytes = update_edge::config::ByteSize(1 << 60);
    let node = TestNode::start(cfg).await;
    let url = node.url.clone();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let r = op_put(&format!("{url}/v1/products/gw"), r#"{"name":"Gateway"}"#).await;
    assert!(r.status().is_success());
    let file = dir.path().join("image.bin");
    std::fs::write(&file, noise(200_000, 12)).unwrap();
    let r = admin(
        &url,
        &token,
        &["publish", "gw", "1.0.1", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("507"), "{}", r.stderr);
    // Each of the (at most 4) chunk uploads in flight was sent once: a full disk does
    // not clear by itself, so it is not retried.
    let refused = node
        .metric_labeled(
            r#"update_edge_http_requests_total{route="/v1/chunks/{hash}",status="5xx",code="507"}"#,
        )
        .await;
    assert!((1.0..=4.0).contains(&refused), "{refused} uploads refused");
    node.stop().await;
}
