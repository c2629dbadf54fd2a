//! The shipped Prometheus alert rules (`config/alerts.yml`) are valid and their unit
//! tests (`config/alerts.test.yml`: each alert fires on its condition after its `for`,
//! and not on a healthy node) pass, checked by Prometheus' own `promtool`. The metric
//! names the rules use are ones a node exports.

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

#[tokio::test]
async fn every_metric_the_rules_use_is_exported_by_a_node() {
    let rules = std::fs::read_to_string(format!("{DIR}/alerts.yml")).unwrap();
    let used: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("update_edge_"))
        .collect();
    assert!(used.len() >= 8, "{used:?}");
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("data"))).await;
    // One request, so the request families have a sample.
    assert_healthy(&node.url).await;
    let text = node.metrics_text().await;
    for name in used {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && !l.starts_with('#')),
            "the rules use {name}, which the node does not export"
        );
    }
    node.stop().await;
}
