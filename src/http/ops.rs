//! Operations endpoints: `/metrics`, `/healthz` (process up), `/readyz` (store answers).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};

use super::AppState;
use crate::store::Cf;

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
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
    match probe {
        Ok(Ok(Some(_))) => (StatusCode::OK, "ready\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response(),
    }
}
