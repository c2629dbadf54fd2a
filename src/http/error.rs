//! The one place domain errors become HTTP statuses. Internal causes are logged here,
//! once; 5xx bodies never echo internal text.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;

use crate::store::StoreError;

/// An error answer. Client faults carry a message for the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A publish by chunk list names chunks the node does not hold (409, listing them).
    #[error("{} chunks of the list are not on this node: upload them, then publish again", .0.len())]
    MissingChunks(Vec<crate::hash::Hash>),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Upstream(std::sync::Arc<crate::upstream::UpstreamError>),
    /// Temporarily unable to answer; the client should retry after the given seconds.
    #[error("{0}")]
    Unavailable(String, u64),
    /// A request body over its limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// A client too slow to send its request (408).
    #[error("{0}")]
    Timeout(String),
    /// A client over its rate limit (429); it may retry after the given seconds.
    #[error("{0}")]
    TooMany(String, u64),
    /// Not enough room in the store for this (507); the message says what was needed.
    #[error("{0}")]
    NoSpace(String),
}

impl From<std::sync::Arc<crate::upstream::UpstreamError>> for ApiError {
    fn from(e: std::sync::Arc<crate::upstream::UpstreamError>) -> Self {
        if e.is_not_found() {
            return ApiError::NotFound("not found upstream".into());
        }
        ApiError::Upstream(e)
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        use crate::catalog::CatalogError as C;
        match e {
            C::UnknownProduct(_) | C::UnknownBuild { .. } => ApiError::NotFound(e.to_string()),
            C::Invalid(m) => ApiError::BadRequest(m),
            C::Conflict(m) => ApiError::Conflict(m),
            C::Store(s) => ApiError::Store(s),
            C::Corrupt(m) => ApiError::Internal(m),
        }
    }
}

impl From<crate::repo::RepoError> for ApiError {
    fn from(e: crate::repo::RepoError) -> Self {
        match e {
            crate::repo::RepoError::Store(s) => ApiError::Store(s),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A body read under a byte limit (`axum::body::to_bytes`) failed: `too_large` (413) when
/// the limit was hit, otherwise 400 saying what was being read.
pub fn body_read_error(
    e: axum::Error,
    too_large: impl FnOnce() -> ApiError,
    what: &str,
) -> ApiError {
    if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
        too_large()
    } else {
        ApiError::BadRequest(format!("{what}: {e}"))
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::MissingChunks(_) => StatusCode::CONFLICT,
            ApiError::Store(StoreError::BlobNotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Store(StoreError::ChunkCorrupt(_) | StoreError::ChunkMissing(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            // Upstream's fault, not ours: a gateway error (a timeout when it stalled).
            ApiError::Store(StoreError::Upstream(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Upstream(e)
                if matches!(**e, crate::upstream::UpstreamError::Stalled { .. }) =>
            {
                StatusCode::GATEWAY_TIMEOUT
            }
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooMany(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoSpace(_) | ApiError::Store(StoreError::NoSpace(_)) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::Unavailable(_, secs) | ApiError::TooMany(_, secs) => Some(*secs),
            _ => None,
        };
        let message = if let ApiError::Unavailable(m, _) | ApiError::NoSpace(m) = &self {
            m.clone()
        } else if let ApiError::Store(StoreError::NoSpace(_)) = &self {
            tracing::error!(error = %self, "storage full");
            "the node's storage is full; nothing of this request was kept".to_string()
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error".to_string()
        } else {
            self.to_string()
        };
        let body = match &self {
            ApiError::MissingChunks(missing) => {
                serde_json::json!({ "error": message, "missing": missing })
            }
            _ => serde_json::json!({ "error": message }),
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
