//! Crash consistency: the node is killed (SIGKILL) at random moments while it publishes,
//! computes deltas, collects garbage and serves; after each kill, the store must verify
//! clean offline (chunks, blobs, counters against a recount), every listed build must
//! download byte-exact, every acknowledged publish must be there (and every
//! acknowledged delete gone), and every delta offered must download to its hash.
//!
//! `UPDATE_EDGE_CRASH_POINTS` kills (default 6: CI); `UPDATE_EDGE_CRASH_SEED` replays a
//! run (the seed is printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use update_edge::hash::Hash;

/// xorshift64*: the run is replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    init_keys(&dir.join("keys"), &dir.join("root-keys"));
    let p = dir.join("node.toml");
    std::fs::write(
        &p,
        format!(
            "[store]\nchunk_min = \"16KiB\"\nchunk_avg = \"64KiB\"\nchunk_max = \"256KiB\"\nmin_free_bytes = \"0\"\n\
             [delta]\nfrom_previous = 1\nzstd_level = 3\n[catalog]\ncheck_rate_per_ip = 0\n[tuf]\nkeys_dir = {:?}\n",
            dir.join("keys")
        ),
    )
    .unwrap();
    p
}

/// Payload of build 1.0.`n`: each an edit of the previous, so deltas are worth computing.
fn payload(n: u64) -> Vec<u8> {
    let mut img = noise(6 << 20, 7);
    for i in 1..=n {
        let at = (i as usize * 104_729) % (2 << 20);
        img[at..at + 4096].copy_from_slice(&noise(4096, 100 + i));
        img.extend_from_slice(&noise(64 << 10, 1000 + i));
    }
    img
}

fn verify_offline(config: &Path, data: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_update-edge"))
        .args(["blob", "verify", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "blob verify after a kill: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("counters match"), "{text}");
}

struct World {
    /// Versions whose publish was sent (answered or not).
    attempted: BTreeSet<u64>,
    /// Publishes answered 201, deletes answered 204.
    acked: BTreeSet<u64>,
    deleted: BTreeSet<u64>,
    /// Deletes sent (answered or not): such a build may be gone.
    delete_sent: BTreeSet<u64>,
    next: u64,
}

/// Everything a client can see must be whole and right.
async fn check_world(url: &str, w: &World) {
    let c = client();
    let builds = list_builds(url, "gw").await;
    let mut listed = BTreeMap::new();
    for b in builds["builds"].as_array().unwrap() {
        let v = b["version"].as_str().unwrap().to_string();
        let n: u64 = v.strip_prefix("1.0.").unwrap().parse().unwrap();
        listed.insert(n, b["blob"].as_str().unwrap().to_string());
    }
    for n in &w.acked {
        if !w.delete_sent.contains(n) {
            assert!(listed.contains_key(n), "acknowledged build 1.0.{n} lost");
        }
    }
    for (n, blob) in &listed {
        assert!(w.attempted.contains(n), "build 1.0.{n} never published");
        assert!(!w.deleted.contains(n), "deleted build 1.0.{n} is back");
        let want = Hash::of(&payload(*n)).to_hex();
        assert_eq!(blob, &want, "build 1.0.{n} names the wrong blob");
        let body = c
            .get(format!("{url}/v1/blobs/{blob}"))
            .send()
            .await
            .unwrap();
        assert_eq!(body.status(), StatusCode::OK, "build 1.0.{n}");
        let got = Hash::of(&body.bytes().await.unwrap()).to_hex();
        assert_eq!(got, want, "build 1.0.{n} is not byte-exact");
    }
    // Offered deltas download to their hash.
    let Some((&newest, _)) = listed.last_key_value() else {
        return;
    };
    let ring = op_put(
        &format!("{url}/v1/products/gw/rings/general"),
        format!(r#"{{"version":"1.0.{newest}"}}"#),
    )
    .await;
    assert!(ring.status().is_success(), "{}", ring.status());
    for n in listed.keys().filter(|&&n| n != newest) {
        let r = c
            .post(format!("{url}/v1/check"))
            .json(&serde_json::json!({"product": "gw", "device_id": "crash", "version": format!("1.0.{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let a: serde_json::Value = r.json().await.unwrap();
        for art in a["update"]["artifacts"].as_array().unwrap() {
            let body = c
                .get(format!("{url}{}", art["url"].as_str().unwrap()))
                .send()
                .await
                .unwrap();
            assert_eq!(body.status(), StatusCode::OK, "{art}");
            let got = Hash::of(&body.bytes().await.unwrap()).to_hex();
            assert_eq!(got, art["blake3"].as_str().unwrap(), "{art}");
        }
    }
}

async fn listed_versions(url: &str) -> Vec<u64> {
    list_builds(url, "gw").await["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version"].as_str().unwrap()[4..].parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_acknowledged_and_shows_nothing_half_done() {
    let points: u64 = std::env::var("UPDATE_EDGE_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("UPDATE_EDGE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash run: {points} points, UPDATE_EDGE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let mut w = World {
        attempted: BTreeSet::new(),
        acked: BTreeSet::new(),
        deleted: BTreeSet::new(),
        delete_sent: BTreeSet::new(),
        next: 1,
    };
    {
        let node = spawn_serve(&config, &data).await;
        let r = op_put(
            &format!("http://{}/v1/products/gw", node.addr),
            r#"{"name":"gw"}"#.to_string(),
        )
        .await;
        assert!(r.status().is_success());
    }
    let mut kinds = BTreeMap::<&str, u32>::new();
    let mut cut = BTreeMap::<&str, u32>::new();
    for point in 0..points {
        let node = spawn_serve(&config, &data).await;
        let url = format!("http://{}", node.addr);
        check_world(&url, &w).await;
        // What the node holds now (an unanswered publish may or may not have landed).
        let live: Vec<u64> = listed_versions(&url).await;
        let kind = match rng.below(10) {
            _ if live.len() > 5 => "delete+gc",
            0..=5 => "publish",
            6..=7 => "publish+delta",
            _ => "serve",
        };
        *kinds.entry(kind).or_default() += 1;
        let delay = Duration::from_millis(match kind {
            // A publish answers in tens of ms here; its delta takes some hundreds more.
            "publish" => rng.below(120),
            "publish+delta" => 40 + rng.below(700),
            "delete+gc" => rng.below(150),
            _ => rng.below(300),
        });
        let c = client();
        let work = {
            let (url, c) = (url.clone(), c.clone());
            match kind {
                "publish" | "publish+delta" => {
                    let n = w.next;
                    w.next += 1;
                    w.attempted.insert(n);
                    tokio::spawn(async move {
                        let r = c
                            .put(format!("{url}/v1/products/gw/builds/1.0.{n}"))
                            .bearer_auth(TOKEN)
                            .body(payload(n))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == StatusCode::CREATED => Some((n, true)),
                            _ => None,
                        }
                    })
                }
                "delete+gc" => {
                    let n = live[0];
                    w.delete_sent.insert(n);
                    tokio::spawn(async move {
                        let r = c
                            .delete(format!("{url}/v1/products/gw/builds/1.0.{n}"))
                            .bearer_auth(TOKEN)
                            .send()
                            .await;
                        let deleted = matches!(&r, Ok(r) if r.status() == StatusCode::NO_CONTENT);
                        let _ = c
                            .post(format!("{url}/v1/gc"))
                            .bearer_auth(TOKEN)
                            .send()
                            .await;
                        deleted.then_some((n, false))
                    })
                }
                _ => {
                    let blobs: Vec<String> = live
                        .iter()
                        .map(|n| Hash::of(&payload(*n)).to_hex())
                        .collect();
                    tokio::spawn(async move {
                        for b in blobs.iter().cycle().take(8) {
                            let _ = c.get(format!("{url}/v1/blobs/{b}")).send().await;
                        }
                        None
                    })
                }
            }
        };
        tokio::time::sleep(delay).await;
        drop(node); // SIGKILL, wherever it is
        let answered = match work.await {
            Ok(Some((n, true))) => w.acked.insert(n),
            Ok(Some((n, false))) => w.deleted.insert(n),
            _ => false,
        };
        *cut.entry(kind).or_default() += u32::from(!answered);
        verify_offline(&config, &data);
        eprintln!(
            "point {point}: {kind} killed after {delay:?} ({}): clean",
            if answered {
                "after its answer"
            } else {
                "before its answer"
            }
        );
    }
    let node = spawn_serve(&config, &data).await;
    check_world(&format!("http://{}", node.addr), &w).await;
    eprintln!(
        "crash run done: {points} kills {kinds:?}, of which before the answer {cut:?}; {} builds published ({} acknowledged), {} deleted",
        w.attempted.len(),
        w.acked.len(),
        w.deleted.len()
    );
}
