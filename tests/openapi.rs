//! `GET /v1/openapi.json` describes exactly the routes the node serves: the same path
//! templates as the router's table, the same methods per path (the router's `405 Allow`
//! is the truth), the security each operation declares is what an unauthenticated
//! request meets, and the status that request gets is one the document lists.
//! (`.ci/run` lints the same file with `redocly lint`.)

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A concrete URL path for a route template.
fn sample(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{hash}" => "0".repeat(64),
            "{*path}" | "{path}" => "a/b".into(),
            s if s.starts_with('{') => "x".into(),
            s => s.into(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_methods_and_security() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(&dir.path().join("node"))).await;
    let c = client();

    let r = c
        .get(format!("{}/v1/openapi.json", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // The same path templates (OpenAPI has no catch-all syntax: `{*path}` is `{path}`).
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    let served: BTreeSet<String> = update_edge::http::ROUTE_PATHS
        .iter()
        .map(|p| p.replace("{*", "{"))
        .collect();
    assert_eq!(documented, served, "documented vs served paths");

    let mut probed = 0;
    for template in update_edge::http::ROUTE_PATHS {
        let item = &paths[&template.replace("{*", "{")];
        let url = format!("{}{}", node.url, sample(template));
        let doc_methods: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
            .map(|k| k.to_uppercase())
            .collect();
        // A method no route has: the router answers 405 and lists what the path allows.
        let r = c.request(Method::TRACE, &url).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "TRACE {template}"
        );
        let allow: BTreeSet<String> = r.headers()["allow"]
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(allow, doc_methods, "methods of {template}");

        for method in &doc_methods {
            let op = &item[method.to_lowercase()];
            assert!(op["operationId"].is_string(), "{method} {template}");
            let schemes: BTreeSet<String> = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {template} declares no security"))
                .iter()
                .flat_map(|s| s.as_object().unwrap().keys().cloned())
                .collect();
            let r = c
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = r.status();
            if schemes.is_empty() {
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {template} is public"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {template} needs {schemes:?}"
                );
            }
            assert!(
                op["responses"].get(status.as_str()).is_some(),
                "{method} {template} answered {status}, which the document does not list"
            );
            probed += 1;
        }
    }
    assert_eq!(probed, 29, "operations probed");
    node.stop().await;
}
