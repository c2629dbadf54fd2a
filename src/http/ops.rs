//! Operations endpoints: `/metrics`, `/healthz` (process up), `/readyz` (store answers;
//! on an edge also: replicated state unexpired, with upstream reachability and staleness
//! reported).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};

use super::AppState;
use crate::store::Cf;

pub async fn metrics(State(state): State<AppState>, headers: http::HeaderMap) -> Response {
    // OpenMetrics for scrapers that ask for it (Prometheus does); the classic text
    // format for everything else (promtool, curl, older scrapers).
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if open_metrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.encode_text(),
        )
            .into_response()
    }
}

/// `GET /v1/openapi.json`: the API description.
pub async fn openapi() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI.clone(),
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let probe =
        tokio::task::spawn_blocking(move || store.kv().get(Cf::Meta, b"schema_version")).await;
    let store_ok = matches!(probe, Ok(Ok(Some(_))));
    let Some(up) = &state.upstream else {
        return match store_ok {
            true => (StatusCode::OK, "ready\n").into_response(),
            false => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response(),
        };
    };
    let now = crate::protocol::unix_now();
    let contact = up.contact();
    let expires = state.repo.timestamp_expires();
    let fresh = expires > now as i64;
    let status = if store_ok && fresh {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let report = serde_json::json!({
        "role": "edge",
        "ready": status == StatusCode::OK,
        "store": store_ok,
        "upstream": up.base().as_str(),
        "upstream_reachable": contact.last_ok > 0 && contact.last_error.is_none(),
        "upstream_last_error": contact.last_error,
        "seconds_since_upstream_contact": (contact.last_ok > 0).then(|| now.saturating_sub(contact.last_ok)),
        "replicated_sequence": state.store.cursor(crate::upstream::follow::CURSOR_KEY).unwrap_or(0),
        "metadata_expires_in_seconds": expires - now as i64,
        "director_key_authorised": state.repo.director_authorised(),
    });
    (status, axum::Json(report)).into_response()
}
