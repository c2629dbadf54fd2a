//! Running under a service manager: `update-edge health` (what a container's
//! HEALTHCHECK runs), readiness and stopping told to systemd through `NOTIFY_SOCKET`
//! (`Type=notify`), and a SIGTERM that drains and exits cleanly.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;

fn health(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_update-edge"))
        .args(["health", "--timeout", "5", "--url", url])
        .output()
        .unwrap()
}

/// The next datagram on `sock` (the node's notification), as text.
fn next_notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn health_says_ready_or_not_and_systemd_hears_ready_then_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_node_config(dir.path(), "[server]\ndrain_timeout = \"3s\"");
    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut node = spawn_serve_env(
        &config,
        &dir.path().join("data"),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    )
    .await;
    let ready = tokio::task::spawn_blocking({
        let sock = sock.try_clone().unwrap();
        move || next_notification(&sock)
    })
    .await
    .unwrap();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    let url = format!("http://{}", node.addr);
    let ok = health(&url);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ready"));

    // SIGTERM: systemd hears STOPPING=1, the node drains and exits 0.
    let pid = node.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopping = tokio::task::spawn_blocking(move || next_notification(&sock))
        .await
        .unwrap();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = node.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("the node exits after SIGTERM and its drain time");
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(
        node.log_lines()
            .iter()
            .any(|l| l.contains("shutting down") && l.contains("drain_secs=3")),
        "{:?}",
        node.log_lines()
    );

    // Nothing listening any more: not healthy, and the reason is given.
    let down = health(&url);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("no answer"));
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if !require_tools(&["systemd-analyze"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The unit names the installed path; verify it against the binary under test.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/update-edge.service"
    ))
    .unwrap()
    .replace(
        "/usr/local/bin/update-edge",
        env!("CARGO_BIN_EXE_update-edge"),
    );
    let path = dir.path().join("update-edge.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for update-edge.service: ")
                .nth(1)
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (OK is below 2.0):\n{text}"
    );
    for key in ["Type=notify", "LimitNOFILE=", "TimeoutStopSec="] {
        assert!(
            std::fs::read_to_string(&path).unwrap().contains(key),
            "{key}"
        );
    }
}

#[test]
fn config_show_prints_the_effective_config_masked_and_config_check_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("admin");
    std::fs::write(&secret, "admin-token-from-a-file-42\n").unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "[server]\nmax_connections = 7\n").unwrap();
    let bin = env!("CARGO_BIN_EXE_update-edge");
    let show = Command::new(bin)
        .args(["config", "show", "--config"])
        .arg(&file)
        .env("UPDATE_EDGE_SERVER_ADMIN_TOKEN_FILE", &secret)
        .env("UPDATE_EDGE_STORE_CACHE_SIZE", "1GiB")
        .output()
        .unwrap();
    assert_eq!(show.status.code(), Some(0), "{show:?}");
    let text = String::from_utf8_lossy(&show.stdout);
    // File, then environment; the secret set but not shown.
    assert!(text.contains("max_connections = 7"), "{text}");
    assert!(
        text.contains(&format!("cache_size = {}", 1u64 << 30)),
        "{text}"
    );
    assert!(
        text.contains("admin_token = \"(set; not shown)\""),
        "{text}"
    );
    assert!(!text.contains("admin-token-from-a-file"), "{text}");

    let ok = Command::new(bin)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    std::fs::write(&file, "[server]\nmax_conections = 7\n").unwrap();
    let typo = Command::new(bin)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    assert!(String::from_utf8_lossy(&typo.stderr).contains("max_conections"));
    std::fs::write(&file, "").unwrap();
    let env_typo = Command::new(bin)
        .args(["config", "check"])
        .arg(&file)
        .env("UPDATE_EDGE_SERVER_LISTN", "0.0.0.0:80")
        .output()
        .unwrap();
    assert_eq!(env_typo.status.code(), Some(2), "{env_typo:?}");
    assert!(String::from_utf8_lossy(&env_typo.stderr).contains("UPDATE_EDGE_SERVER_LISTN"));
}
