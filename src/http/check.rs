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
