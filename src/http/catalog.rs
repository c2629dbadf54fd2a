//! Operator endpoints for the catalog: products, builds (publish streams the payload),
//! rings, fleet statistics, garbage collection. All need the operator token.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::auth::Operator;
use super::blobs::ingest_body;
use super::error::ApiError;
use super::AppState;
use crate::catalog::model::{Hardware, Kind};
use crate::catalog::version::Version;

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn version(text: &str) -> Result<Version, ApiError> {
    text.parse()
        .map_err(|e: crate::catalog::version::BadVersion| ApiError::BadRequest(e.to_string()))
}

/// Runs blocking catalog work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Signs the catalog's builds into the TUF repository (a no-op when nothing changed).
/// Called after every change that alters targets, before the change is acknowledged.
async fn publish_targets(s: &AppState) -> Result<(), ApiError> {
    let (c, r) = (s.catalog.clone(), s.repo.clone());
    blocking(move || {
        r.publish_from(|| crate::catalog::targets::entries(&c).map_err(ApiError::from))?;
        Ok(())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductBody {
    name: String,
    #[serde(default)]
    hardware: Hardware,
}

pub async fn put_product(
    _: Operator,
    State(s): State<AppState>,
    Path(product): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: ProductBody = json_body(&body)?;
    let c = s.catalog.clone();
    let (p, created) = blocking(move || Ok(c.put_product(&product, &b.name, b.hardware)?)).await?;
    publish_targets(&s).await?; // hardware is part of each target's signed custom data
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(p),
    )
        .into_response())
}

pub async fn get_product(
    _: Operator,
    State(s): State<AppState>,
    Path(product): Path<String>,
) -> Result<Response, ApiError> {
    let p = blocking(move || Ok(s.catalog.product(&product)?)).await?;
    Ok(Json(p).into_response())
}

pub async fn list_products(_: Operator, State(s): State<AppState>) -> Result<Response, ApiError> {
    let p = blocking(move || Ok(s.catalog.products()?)).await?;
    Ok(Json(json!({ "products": p })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    notes: Option<String>,
}

/// `PUT /v1/products/{product}/builds/{version}?kind=os`: the body is the payload,
/// streamed into the store (or, with the chunk-list media type, the list of chunks
/// uploaded before: see [`super::uploads`]); then the build is recorded and deltas from
/// the previous builds are scheduled.
pub async fn put_build(
    _: Operator,
    State(s): State<AppState>,
    Path((product, ver)): Path<(String, String)>,
    Query(q): Query<PublishQuery>,
    headers: http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let v = version(&ver)?;
    let kind_text = q.kind.unwrap_or_else(|| "os".into());
    let kind = Kind::parse(&kind_text).ok_or_else(|| {
        ApiError::BadRequest(format!("unknown kind {kind_text:?} (os, driver, app)"))
    })?;
    {
        let (c, p) = (s.catalog.clone(), product.clone());
        blocking(move || Ok(c.product(&p)?)).await?;
    }
    // Held until the build references the blob, so GC cannot sweep it in between.
    let guard = s.store.gc_guard().await;
    let put = if super::uploads::is_chunk_list(&headers) {
        super::uploads::assemble_body(&s, body).await?
    } else {
        ingest_body(&s.store, body, super::blobs::UploadLimits::from(&*s.config)).await?
    };
    // With a bucket, the build's content is there before the build exists anywhere.
    if let Some(b) = &s.bucket {
        b.mirror_blob(put.hash).await.map_err(bucket_failed)?;
    }
    let (c, p, vv, notes) = (
        s.catalog.clone(),
        product.clone(),
        v.clone(),
        q.notes.unwrap_or_default(),
    );
    let (build, created) =
        blocking(move || Ok(c.publish_build(&p, &vv, kind, &notes, &put)?)).await?;
    drop(guard);
    publish_targets(&s).await?;
    if created {
        schedule_from_previous(&s, &product, &v, kind).await;
    }
    // Acknowledged once the bucket's catalog (with its signed metadata) names it.
    if let Some(b) = &s.bucket {
        b.sync().await.map_err(|e| {
            ApiError::Unavailable(
                format!("build {product} {v} is published on this origin but not yet in its bucket ({e}); it is written there as soon as the bucket answers"),
                30,
            )
        })?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "hash": build.blob, "size": build.size, "version": build.version, "kind": build.kind }))).into_response())
}

/// A publish the bucket could not take: 503, nothing recorded.
fn bucket_failed(e: crate::bucket::BucketError) -> ApiError {
    match e {
        crate::bucket::BucketError::Store(e) => ApiError::Store(e),
        e => ApiError::Unavailable(
            format!("the origin's bucket did not take this build, so it was not published: {e}"),
            30,
        ),
    }
}

async fn schedule_from_previous(s: &AppState, product: &str, v: &Version, kind: Kind) {
    let k = s.config.delta.from_previous;
    let (c, p) = (s.catalog.clone(), product.to_string());
    let Ok(Ok(builds)) = tokio::task::spawn_blocking(move || c.builds(&p)).await else {
        return;
    };
    let Some(new) = builds.iter().find(|b| b.version == v.to_string()) else {
        return;
    };
    let mut older: Vec<_> = builds
        .iter()
        .filter(|b| b.kind == kind && b.version.parse::<Version>().is_ok_and(|x| x < *v))
        .collect();
    older.sort_by_key(|b| std::cmp::Reverse(b.version.parse::<Version>().ok()));
    for b in older.into_iter().take(k) {
        if let Some(sched) = &s.checker.scheduler {
            sched.enqueue(b.blob, new.blob);
        }
    }
}

pub async fn list_builds(
    _: Operator,
    State(s): State<AppState>,
    Path(product): Path<String>,
) -> Result<Response, ApiError> {
    let b = blocking(move || Ok(s.catalog.builds(&product)?)).await?;
    Ok(Json(json!({ "builds": b })).into_response())
}

pub async fn get_build(
    _: Operator,
    State(s): State<AppState>,
    Path((product, ver)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = version(&ver)?;
    let b = blocking(move || {
        s.catalog.product(&product)?;
        s.catalog
            .build(&product, &v)?
            .ok_or_else(|| ApiError::NotFound(format!("product {product:?} has no build {v}")))
    })
    .await?;
    Ok(Json(b).into_response())
}

pub async fn delete_build(
    _: Operator,
    State(s): State<AppState>,
    Path((product, ver)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = version(&ver)?;
    let c = s.catalog.clone();
    blocking(move || Ok(c.delete_build(&product, &v)?)).await?;
    publish_targets(&s).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RingBody {
    version: String,
    #[serde(default = "hundred")]
    percent: f64,
    #[serde(default)]
    paused: bool,
}

fn hundred() -> f64 {
    100.0
}

pub async fn put_ring(
    _: Operator,
    State(s): State<AppState>,
    Path((product, ring)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: RingBody = json_body(&body)?;
    let v = version(&b.version)?;
    let (m, slug) = (s.metrics.clone(), product.clone());
    let r = blocking(move || {
        Ok(s.catalog
            .set_ring(&product, &ring, &v, b.percent, b.paused)?)
    })
    .await?;
    m.ring_percent
        .get_or_create(&crate::metrics::RingLabels {
            product: slug,
            ring: r.name.clone(),
        })
        .set(r.percent);
    Ok(Json(r).into_response())
}

pub async fn list_rings(
    _: Operator,
    State(s): State<AppState>,
    Path(product): Path<String>,
) -> Result<Response, ApiError> {
    let r = blocking(move || Ok(s.catalog.rings(&product)?)).await?;
    Ok(Json(json!({ "rings": r })).into_response())
}

/// Version histogram and ring counts of devices seen; bytes served by artifact kind
/// (node-wide, since this process started).
pub async fn stats(
    _: Operator,
    State(s): State<AppState>,
    Path(product): Path<String>,
) -> Result<Response, ApiError> {
    let c = s.catalog.clone();
    let st = blocking(move || Ok(c.device_stats(&product)?)).await?;
    let mut by_kind = serde_json::Map::new();
    for kind in ["os", "driver", "app", "delta", "other"] {
        let n = s
            .metrics
            .artifact_bytes
            .get_or_create(&crate::metrics::KindLabel { kind: kind.into() })
            .get();
        by_kind.insert(kind.into(), json!(n));
    }
    Ok(Json(json!({ "devices": st.devices, "versions": st.versions, "rings": st.rings, "bytes_served_by_kind": by_kind })).into_response())
}

pub async fn gc(_: Operator, State(s): State<AppState>) -> Result<Response, ApiError> {
    let report = run_gc(&s.catalog).await?;
    Ok(Json(report).into_response())
}

/// `POST /v1/admin/backup`: a consistent checkpoint of the whole store in a new
/// directory under `server.backup_dir`, taken while the node serves → `201` with its
/// path, bytes and seconds; `409` when no backup directory is configured.
pub async fn backup(_: Operator, State(s): State<AppState>) -> Result<Response, ApiError> {
    let root = s.config.server.backup_dir.clone();
    if root.as_os_str().is_empty() {
        return Err(ApiError::Conflict(
            "no server.backup_dir configured: set it, or stop the node and run `update-edge backup`".into(),
        ));
    }
    let name = format!(
        "update-edge-{}-{:04x}",
        crate::protocol::unix_now(),
        rand::random::<u16>()
    );
    let dir = root.join(name);
    let store = s.store.clone();
    let backup = crate::store::blocking(move || {
        std::fs::create_dir_all(&root)
            .map_err(|e| crate::store::StoreError::Io(root.display().to_string(), e))?;
        store.checkpoint(&dir)
    })
    .await?;
    tracing::info!(path = %backup.path.display(), bytes = backup.bytes, seconds = backup.seconds, "backup written");
    Ok((http::StatusCode::CREATED, Json(backup)).into_response())
}

/// Mark from the catalog's roots, sweep the rest.
pub async fn run_gc(
    catalog: &std::sync::Arc<crate::catalog::Catalog>,
) -> Result<crate::store::gc::GcReport, ApiError> {
    let c = catalog.clone();
    let report = catalog
        .store()
        .gc_exclusive(move || {
            c.roots().map_err(|e| match e {
                crate::catalog::CatalogError::Store(s) => s,
                other => crate::store::StoreError::Engine(other.to_string()),
            })
        })
        .await?;
    Ok(report)
}
