//! The shipped Prometheus alert rules (`config/alerts.yml`) are valid and their unit
//! tests (`config/alerts.test.yml`: each alert fires on its condition after its `for`,
//! and not on a healthy node) pass, checked by Prometheus' own `promtool`. The Grafana
//! dashboard's queries (`config/grafana-dashboard.json`) are valid PromQL (promtool
//! parses each as a recording rule). The metric names both use are ones a node exports.

mod common;

use std::process::Command;

use common::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .unwrap()
}

#[test]
fn the_alert_rules_check_and_their_unit_tests_pass() {
    if !require_tools(&["promtool"]) {
        return;
    }
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"][..],
    ] {
        let out = promtool(args);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every PromQL query of the dashboard, as Prometheus would receive it from Grafana
/// (`$instance` = all, `$__rate_interval` = 1m), with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{DIR}/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_string();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(p["gridPos"]["w"].as_u64().unwrap() > 0, "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m");
            out.push((title.clone(), expr));
        }
    }
    out
}

#[test]
fn the_dashboard_queries_are_valid_promql_and_cover_what_an_operator_watches() {
    let queries = dashboard_queries();
    let titles: std::collections::BTreeSet<&str> = queries.iter().map(|q| q.0.as_str()).collect();
    for topic in [
        "Throughput by artifact kind",
        "Delta bytes saved",
        "Chunk cache hit ratio",
        "Update check latency",
        "Rollout progress per ring",
        "Delta queue",
        "Upstream fills (edges)",
        "Errors",
    ] {
        assert!(titles.contains(topic), "no panel {topic:?}: {titles:?}");
    }
    if !require_tools(&["promtool"]) {
        return;
    }
    // Each query as a recording rule: promtool parses every expression.
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": expr }))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(
        &file,
        serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] }).to_string(),
    )
    .unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "promtool check rules (dashboard queries):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} rules found", queries.len())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported_by_a_node() {
    let rules = std::fs::read_to_string(format!("{DIR}/alerts.yml")).unwrap();
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("update_edge_") || w.starts_with("process_"))
            .map(str::to_string)
            .collect()
    };
    let from_rules = names(&rules);
    assert!(from_rules.len() >= 8, "{from_rules:?}");
    let dashboard: String = dashboard_queries()
        .into_iter()
        .map(|q| q.1 + "\n")
        .collect();
    let from_dashboard = names(&dashboard);
    assert!(from_dashboard.len() >= 20, "{from_dashboard:?}");
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    // A request, a product with a ring and a check of it, so that the request and ring
    // families have samples.
    assert_healthy(&node.url).await;
    gw_targeting_102(&node, 50_000).await;
    let (status, answer) = check(
        &node,
        serde_json::json!({"product": "gw", "device_id": "d1", "version": "1.0.1"}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    let text = node.metrics_text().await;
    for (name, user) in from_rules
        .iter()
        .map(|n| (n, "alert rules"))
        .chain(from_dashboard.iter().map(|n| (n, "dashboard")))
    {
        assert!(
            text.lines().any(|l| !l.starts_with('#')
                && l.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))),
            "the {user} use {name}, which the node does not export"
        );
    }
    node.stop().await;
}
