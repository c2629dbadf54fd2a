//! Device plane: `POST /v1/check` (the director's signed, request-bound update decision)
//! and `GET /v1/keys` (a convenience listing, never a root of trust).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::catalog::check::{CheckRequest, Outcome};
use crate::metrics::ResultLabel;

/// Largest check request body accepted: enforced while the body is read (a declared
/// or streamed larger body is `413` without buffering more).
pub const MAX_CHECK_BYTES: usize = 16 << 10;

pub async fn post_check(
    State(s): State<AppState>,
    client: Option<Extension<super::access::ClientAddr>>,
    headers: http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // Before anything else is done for it: a flood from one address costs a table
    // lookup each.
    // The client as the access layer attributes it (past trusted proxies).
    if let (Some(limit), Some(Extension(client))) = (&s.check_limit, &client) {
        if let Err(wait) = limit.check(client.0) {
            s.metrics
                .checks
                .get_or_create(&ResultLabel {
                    result: "limited".into(),
                })
                .inc();
            return Err(ApiError::TooMany(
                "too many checks from this address; retry later".into(),
                wait.as_secs_f64().ceil().max(1.0) as u64,
            ));
        }
    }
    let result = async {
        if s.repo.is_replica() {
            replica_fresh(&s)?;
        }
        let too_large =
            || ApiError::TooLarge(format!("check request over {MAX_CHECK_BYTES} bytes"));
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_CHECK_BYTES as u64) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(body, MAX_CHECK_BYTES)
            .await
            .map_err(|e| {
                super::error::body_read_error(e, too_large, "reading the check request")
            })?;
        let req: CheckRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid check request: {e}")))?;
        Ok::<_, ApiError>(s.checker.check(&req).await?)
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
