//! Operator authentication: `Authorization: Bearer <token>`, compared in constant time.
//! With no token configured every operator route is refused (never open by default).

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::error::ApiError;
use super::AppState;

/// Extractor that succeeds only for a request carrying the operator token.
pub struct Operator;

/// `subtle`'s constant-time comparison (the length, which is not secret here, may leak).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Pure check used by the extractor.
pub fn authorize(configured: &str, header: Option<&str>) -> Result<(), ApiError> {
    if configured.is_empty() {
        return Err(ApiError::Forbidden(
            "operator API disabled: no admin token configured (set UPDATE_EDGE_ADMIN_TOKEN)".into(),
        ));
    }
    let presented = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), configured.as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The `Authorization` header's text, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // An edge's catalog is a replica: changes are made at the origin, never here.
        if let Some(up) = &state.upstream {
            if !matches!(parts.method, http::Method::GET | http::Method::HEAD) {
                return Err(ApiError::Forbidden(format!(
                    "this node is an edge of {}: send operator changes to that origin",
                    up.base()
                )));
            }
        }
        authorize(&state.config.server.admin_token, bearer(parts)).map(|_| Operator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        assert!(authorize("t0k", Some("Bearer t0k")).is_ok());
        assert!(matches!(
            authorize("t0k", Some("Bearer t0K")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize("t0k", Some("t0k")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize("t0k", None),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize("", Some("Bearer ")),
            Err(ApiError::Forbidden(_))
        ));
    }
}
