//! What an operator reads: the access log (one JSON line per request, the client as
//! the trusted proxy forwarded it, the request id echoed), the audit log of operator
//! actions (the token named by a fingerprint, never shown), and exact status codes in
//! the request metrics. Against `update-edge serve` as a process, its stderr parsed.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// The node's JSON log lines for `target` so far.
fn lines_for(node: &Served, target: &str) -> Vec<Value> {
    node.log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == target)
        .collect()
}

/// Waits until the access line of request `id` is written (lines follow the body's end).
async fn access_line(node: &Served, id: &str) -> Value {
    for _ in 0..100 {
        if let Some(v) = lines_for(node, "update_edge::access")
            .into_iter()
            .find(|v| v["request_id"] == id)
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no access line for request {id}");
}

#[tokio::test]
async fn every_request_is_logged_once_as_json_with_its_client_id_status_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_node_config(dir.path(), "[log]\ntrusted_proxies = [\"127.0.0.1\"]");
    let node = spawn_serve_env(
        &config,
        &dir.path().join("data"),
        &[("UPDATE_EDGE_LOG_FORMAT", "json")],
    )
    .await;
    let url = format!("http://{}", node.addr);
    let c = client();

    // An operator action: audited, the token named by role and fingerprint.
    let data = noise(300_000, 9);
    let r = c
        .post(format!("{url}/v1/blobs"))
        .bearer_auth(TOKEN)
        .header("x-request-id", "upload-1")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "upload: {}", r.status());
    let hash = r.json::<Value>().await.unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .put(format!("{url}/v1/products/gw"))
        .bearer_auth("not-the-token")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A ranged download through the trusted proxy, with the client's request id.
    let blob = format!("{url}/v1/blobs/{hash}");
    let r = c
        .get(&blob)
        .header("range", "bytes=1000-1999")
        .header("x-forwarded-for", "198.51.100.9")
        .header("x-request-id", "range-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["x-request-id"], "range-1");
    assert_eq!(r.bytes().await.unwrap(), &data[1000..2000]);
    // Without an id, one is made and echoed.
    let r = c
        .get(&blob)
        .header("if-none-match", format!("\"{hash}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        made.len() == 16 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    let r = c
        .get(&blob)
        .header("range", "bytes=999999999-")
        .header("x-request-id", "past-end")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = c
        .get(format!("{url}/no/such/route"))
        .header("x-request-id", "nowhere")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let range = access_line(&node, "range-1").await;
    assert_eq!(range["method"], "GET");
    assert_eq!(range["route"], "/v1/blobs/{hash}");
    assert_eq!(range["status"], 206);
    assert_eq!(range["bytes"], 1000);
    assert_eq!(range["client"], "198.51.100.9", "{range}");
    assert_eq!(range["complete"], true);
    assert!(
        range["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{range}"
    );
    let upload = access_line(&node, "upload-1").await;
    assert_eq!(
        (upload["route"].clone(), upload["client"].clone()),
        ("/v1/blobs".into(), "127.0.0.1".into())
    );
    assert_eq!(access_line(&node, &made).await["status"], 304);
    assert_eq!(access_line(&node, "past-end").await["status"], 416);
    let nowhere = access_line(&node, "nowhere").await;
    assert_eq!(
        (nowhere["route"].clone(), nowhere["status"].clone()),
        ("unmatched".into(), 404.into())
    );
    // Exactly one access line per request.
    assert_eq!(
        lines_for(&node, "update_edge::access")
            .iter()
            .filter(|v| v["request_id"] == "range-1")
            .count(),
        1
    );

    let audit = lines_for(&node, "update_edge::audit");
    let up = audit
        .iter()
        .find(|v| v["request_id"] == "upload-1")
        .unwrap_or_else(|| panic!("upload not audited: {audit:?}"));
    assert_eq!(
        (up["method"].clone(), up["path"].clone()),
        ("POST".into(), "/v1/blobs".into())
    );
    let who = up["token"].as_str().unwrap();
    assert!(who.starts_with("admin:") && who.len() == 18, "{who}");
    let refused = audit
        .iter()
        .find(|v| v["path"] == "/v1/products/gw")
        .expect("a refused action is audited too");
    assert_eq!(refused["status"], 401);
    assert!(refused["token"].as_str().unwrap().starts_with("unknown:"));
    // Downloads are not operator actions.
    assert!(!audit.iter().any(|v| v["request_id"] == "range-1"));
    // Tokens never appear in the log.
    for line in node.log_lines() {
        assert!(
            !line.contains(TOKEN) && !line.contains("not-the-token"),
            "{line}"
        );
    }

    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"update_edge_http_requests_total{route="/v1/blobs/{hash}",status="2xx",code="206"} 1"#,
        r#"update_edge_http_requests_total{route="/v1/blobs/{hash}",status="3xx",code="304"} 1"#,
        r#"update_edge_http_requests_total{route="/v1/blobs/{hash}",status="4xx",code="416"} 1"#,
        r#"update_edge_http_requests_total{route="unmatched",status="4xx",code="404"} 1"#,
        r#"update_edge_http_response_duration_seconds_count{route="/v1/blobs/{hash}"} 3"#,
        "update_edge_build_info{version=",
    ] {
        assert!(metrics.contains(series), "missing {series}");
    }
}

#[tokio::test]
async fn the_access_log_can_be_turned_off_and_text_lines_carry_the_same_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_node_config(dir.path(), "");
    let text = spawn_serve(&config, &dir.path().join("text")).await;
    let url = format!("http://{}", text.addr);
    let r = client()
        .get(format!("{url}/healthz"))
        .header("x-request-id", "plain-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut found = None;
    for _ in 0..100 {
        found = text
            .log_lines()
            .into_iter()
            .find(|l| l.contains("request_id=plain-1"));
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = found.expect("a text access line");
    for field in [
        "update_edge::access",
        "route=/healthz",
        "status=200",
        "client=127.0.0.1",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    drop(text);

    let off = spawn_serve_env(
        &config,
        &dir.path().join("off"),
        &[("UPDATE_EDGE_LOG_ACCESS", "false")],
    )
    .await;
    let url = format!("http://{}", off.addr);
    let r = client()
        .put(format!("{url}/v1/products/gw"))
        .bearer_auth(TOKEN)
        .header("x-request-id", "quiet-1")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error() || r.status().is_success());
    // The audit line is written when the response head is; the access line would have
    // been by the time the body ended, which it has.
    let mut audited = false;
    for _ in 0..100 {
        audited = off
            .log_lines()
            .iter()
            .any(|l| l.contains("update_edge::audit") && l.contains("request_id=quiet-1"));
        if audited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(audited, "the audit log stays on");
    assert!(
        !off.log_lines()
            .iter()
            .any(|l| l.contains("update_edge::access")),
        "access lines with log.access = false"
    );
}
