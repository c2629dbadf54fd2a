//! Device plane: `POST /v1/check` (the director's signed, request-bound update decision)
//! and `GET /v1/keys` (a convenience listing, never a root of trust).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::catalog::check::{CheckRequest, Outcome};
use crate::metrics::ResultLabel;

/// Largest check request body accepted.
const MAX_CHECK_BYTES: usize = 16 << 10;

pub async fn post_check(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let result = async {
        if s.repo.is_replica() {
            replica_fresh(&s)?;
        }
        if body.len() > MAX_CHECK_BYTES {
            return Err(ApiError::BadRequest(format!(
                "check request over {MAX_CHECK_BYTES} bytes"
            )));
        }
        let req: CheckRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid check request: {e}")))?;
        Ok(s.checker.check(&req).await?)
    }
    .await;
    let label = match &result {
        Ok((_, Outcome::Update, _)) => "update",
        Ok((_, Outcome::None, _)) => "none",
        Err(_) => "error",
    };
    s.metrics
        .checks
        .get_or_create(&ResultLabel {
            result: label.into(),
        })
        .inc();
    let (answer, _, saved) = result?;
    s.metrics.delta_bytes_saved.inc_by(saved);
    Ok(Json(answer).into_response())
}

/// Seconds a device is asked to wait when this edge cannot answer.
const RETRY_AFTER_SECS: u64 = 60;

/// An edge answers from its replicated state only while the replicated timestamp
/// metadata is unexpired: past that, devices would reject the repository anyway, and an
/// edge cut off from its origin must not keep steering them.
fn replica_fresh(s: &AppState) -> Result<(), ApiError> {
    let expires = s.repo.timestamp_expires();
    if expires <= crate::protocol::unix_now() as i64 {
        return Err(ApiError::Unavailable(
            if expires == 0 {
                "this edge has not replicated the repository yet".into()
            } else {
                "this edge's replicated repository metadata has expired (upstream unreachable); retry later".into()
            },
            RETRY_AFTER_SECS,
        ));
    }
    Ok(())
}

/// A convenience listing of the director key this node signs answers with. Devices must
/// not trust it: they trust the director keys root.json authorises.
pub async fn get_keys(State(s): State<AppState>) -> Response {
    let signer = &s.checker.signer;
    Json(json!({
        "keys": [{ "id": signer.id(), "role": "director", "alg": "ed25519", "public_key": signer.public_hex() }],
        "root_versions": s.repo.root().version.get(),
        "note": "convenience only: devices trust the keys that /v1/tuf/{N}.root.json authorises, never this listing",
    }))
    .into_response()
}
