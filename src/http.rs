//! HTTP surface: the router, shared state, and request metrics. One file per endpoint
//! group below; only this layer turns domain values into responses.

pub mod access;
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
pub mod uploads;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;

use crate::config::Config;
use crate::metrics::Metrics;
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
    /// Set on an origin with a bucket: where published content is written and where
    /// content missing locally is read from.
    pub bucket: Option<Arc<crate::bucket::BucketOrigin>>,
    /// Per-address limit on checks (`catalog.check_rate_per_ip`); None = no limit.
    pub check_limit: Option<Arc<ratelimit::IpLimiter>>,
}

impl AppState {
    /// Where content this node lacks is filled from: its upstream (an edge) or its
    /// bucket (an origin with one).
    pub fn fills(&self) -> Option<&Arc<crate::upstream::Upstream>> {
        self.upstream
            .as_ref()
            .or(self.bucket.as_ref().map(|b| &b.fills))
    }
}

/// Declares the route table once: [`routes`] (what [`router`] serves) and
/// [`ROUTE_PATHS`] (what the OpenAPI document is checked against).
macro_rules! route_table {
    ($($path:literal => $methods:expr,)+) => {
        /// Every route's path template, in registration order.
        pub const ROUTE_PATHS: &[&str] = &[$($path),+];

        fn routes() -> Vec<(&'static str, axum::routing::MethodRouter<AppState>)> {
            vec![$(($path, $methods)),+]
        }
    };
}

route_table! {
    "/v1/blobs" => post(blobs::post_blob),
    "/v1/blobs/{hash}" => get(blobs::get_blob),
    "/v1/blobs/{hash}/chunks" => get(blobs::get_chunks),
    "/v1/chunks/{hash}" => get(replication::get_chunk).put(uploads::put_chunk),
    "/v1/chunks/missing" => post(uploads::post_missing),
    "/v1/chunking" => get(uploads::get_chunking),
    "/v1/blobs/{hash}/manifest" => get(replication::get_manifest),
    "/v1/catalog/changes" => get(replication::get_changes),
    "/v1/check" => post(check::post_check),
    "/v1/keys" => get(check::get_keys),
    "/v1/tuf/{file}" => get(tuf::get_metadata),
    "/v1/tuf/targets/{*path}" => get(tuf::get_target),
    "/v1/products" => get(catalog::list_products),
    "/v1/products/{product}" => put(catalog::put_product).get(catalog::get_product),
    "/v1/products/{product}/builds" => get(catalog::list_builds),
    "/v1/products/{product}/builds/{version}" =>
        put(catalog::put_build).get(catalog::get_build).delete(catalog::delete_build),
    "/v1/products/{product}/rings" => get(catalog::list_rings),
    "/v1/products/{product}/rings/{ring}" => put(catalog::put_ring),
    "/v1/products/{product}/stats" => get(catalog::stats),
    "/v1/gc" => post(catalog::gc),
    "/v1/admin/backup" => post(catalog::backup),
    "/metrics" => get(ops::metrics),
    "/healthz" => get(ops::healthz),
    "/readyz" => get(ops::readyz),
    "/v1/openapi.json" => get(ops::openapi),
}

/// The OpenAPI 3.1 description of every route (`GET /v1/openapi.json`), with this
/// build's version; `tests/openapi.rs` checks it against the route table.
pub static OPENAPI: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| {
    bytes::Bytes::from(include_str!("http/openapi.json").replacen(
        "\"version\": \"VERSION\"",
        &format!("\"version\": \"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    ))
});

pub fn router(state: AppState) -> Router {
    let c = &state.config;
    let access = Arc::new(access::Access {
        metrics: state.metrics.clone(),
        log: c.log.access,
        trusted: c.log.trusted_proxies(),
        admin_token: c.server.admin_token.clone(),
        replication_token: c.server.replication_token.clone(),
    });
    let mut router = Router::new();
    for (path, methods) in routes() {
        router = router.route(path, methods);
    }
    router
        // Buffered (JSON) bodies; uploads stream and have their own limit.
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        // Around every route and the fallback (unmatched requests are counted and logged).
        .layer(axum::middleware::from_fn_with_state(access, access::layer))
        .with_state(state)
}
