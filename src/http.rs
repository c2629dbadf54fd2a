//! HTTP surface: the router, shared state, and request metrics. One file per endpoint
//! group below; only this layer turns domain values into responses.

pub mod auth;
pub mod blobs;
pub mod catalog;
pub mod check;
pub mod error;
pub mod linger;
pub mod ops;
pub mod range;
pub mod ratelimit;
pub mod replication;
pub mod tuf;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;

use crate::config::Config;
use crate::metrics::{status_class, Metrics, RouteLabels, RouteOnly};
use crate::store::Store;

/// Largest JSON body an operator route buffers (products, rings).
pub const MAX_JSON_BYTES: usize = 64 << 10;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub catalog: Arc<crate::catalog::Catalog>,
    pub checker: Arc<crate::catalog::check::Checker>,
    pub repo: Arc<crate::repo::Repo>,
    /// Set on an edge: where missing content and catalog changes come from.
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Per-address limit on checks (`catalog.check_rate_per_ip`); None = no limit.
    pub check_limit: Option<Arc<ratelimit::IpLimiter>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/blobs", post(blobs::post_blob))
        .route("/v1/blobs/{hash}", get(blobs::get_blob))
        .route("/v1/blobs/{hash}/chunks", get(blobs::get_chunks))
        .route("/v1/chunks/{hash}", get(replication::get_chunk))
        .route("/v1/blobs/{hash}/manifest", get(replication::get_manifest))
        .route("/v1/catalog/changes", get(replication::get_changes))
        .route("/v1/check", post(check::post_check))
        .route("/v1/keys", get(check::get_keys))
        .route("/v1/tuf/{file}", get(tuf::get_metadata))
        .route("/v1/tuf/targets/{*path}", get(tuf::get_target))
        .route("/v1/products", get(catalog::list_products))
        .route(
            "/v1/products/{product}",
            put(catalog::put_product).get(catalog::get_product),
        )
        .route("/v1/products/{product}/builds", get(catalog::list_builds))
        .route(
            "/v1/products/{product}/builds/{version}",
            put(catalog::put_build)
                .get(catalog::get_build)
                .delete(catalog::delete_build),
        )
        .route("/v1/products/{product}/rings", get(catalog::list_rings))
        .route(
            "/v1/products/{product}/rings/{ring}",
            put(catalog::put_ring),
        )
        .route("/v1/products/{product}/stats", get(catalog::stats))
        .route("/v1/gc", post(catalog::gc))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        // Buffered (JSON) bodies; uploads stream and have their own limit.
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            track,
        ))
        .with_state(state)
}

/// Counts requests by route template and status class and times them to the head.
async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics
        .http_duration
        .get_or_create(&RouteOnly {
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&RouteLabels {
            route,
            status: status_class(resp.status().as_u16()).into(),
        })
        .inc();
    resp
}
