//! The one error type of the HTTP layer and its mapping to status codes.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;

/// An error answered as `{error, detail}` JSON. Internal details are logged,
/// never sent.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 401 / 403.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 500; the cause is logged only.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Auth(AuthError::Missing | AuthError::Unknown) => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::Auth(AuthError::Forbidden { .. }) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(cause) = &self {
            tracing::error!("internal error: {cause:#}");
        }
        (
            status,
            Json(json!({ "error": code, "detail": self.to_string() })),
        )
            .into_response()
    }
}
