//! The one error type of the HTTP layer and its mapping to status codes.

use axum::Json;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::datastore::session::SessionError;
use crate::datastore::{NotReady, PushError};
use crate::index::view::ViewError;
use crate::pipeline::SubscribeError;
use crate::pipeline::named::NamedError;

/// Seconds a client is asked to wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "2";

/// The answers every keyed route may give before it runs: 401 and 403 (the
/// key's role). Listed in each route's `responses(...)`.
#[derive(utoipa::IntoResponses)]
pub enum AuthErrors {
    /// 401.
    #[response(status = 401, description = "No key, or an unknown one.")]
    Unauthorized(ErrorBody),
    /// 403.
    #[response(status = 403, description = "The key's role does not fit.")]
    Forbidden(ErrorBody),
}

/// [`AuthErrors`] of a route scoped to a datastore: 403 also when the key
/// is another datastore's.
#[derive(utoipa::IntoResponses)]
pub enum DatastoreAuthErrors {
    /// 401.
    #[response(status = 401, description = "No key, or an unknown one.")]
    Unauthorized(ErrorBody),
    /// 403.
    #[response(
        status = 403,
        description = "The key's role or datastore does not fit."
    )]
    Forbidden(ErrorBody),
}

/// [`AuthErrors`] of a route on the key's own datastore: 404 when that
/// datastore is not configured.
#[derive(utoipa::IntoResponses)]
pub enum KeyDatastoreErrors {
    /// 401.
    #[response(status = 401, description = "No key, or an unknown one.")]
    Unauthorized(ErrorBody),
    /// 403.
    #[response(status = 403, description = "The key's role does not fit.")]
    Forbidden(ErrorBody),
    /// 404.
    #[response(status = 404, description = "The key's datastore is not configured.")]
    NoDatastore(ErrorBody),
}

/// The 503 of a datastore view that is not READY, with `Retry-After`.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "The views are not ready (`not_ready`).",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))
)]
pub struct ViewsNotReady(pub ErrorBody);

/// The 503 of an agent signal the datastore could not queue, with
/// `Retry-After`.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "The datastore's queue is full, or the host is shutting down.",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))
)]
pub struct QueueFull(pub ErrorBody);

/// The JSON body of every error answer: `{error, detail}`, and `rejected`
/// when no event of a publish was accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `unauthorized`, `forbidden`, `not_found`,
    /// `bad_request`, `too_large`, `session_unknown`, `session_obsolete`,
    /// `session_expired`, `not_ready`, `busy`, `unavailable`,
    /// `not_acceptable`, `conflict`, `rejected`, `invalid_param`, `pre_consume_failed`,
    /// `plugin_fault`, `shutting_down` or `internal`.
    #[schema(value_type = String, example = "not_found")]
    pub error: &'static str,
    /// What went wrong, for people.
    #[schema(example = "no key `nope`")]
    pub detail: String,
    /// Only with `rejected` (422 of `POST /v1/events`): every event refused,
    /// with its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::producer::RejectedEvent>>, nullable = false)]
    pub rejected: Option<serde_json::Value>,
}

/// An error answered as `{error, detail}` JSON ([`ErrorBody`]). Internal details are logged,
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
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 408: the request did not arrive (or was not answered) in time.
    #[error("{0}")]
    Timeout(String),
    /// 419: the agent must create a new session.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// 503 with `Retry-After`: views not ready.
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// 503 with `Retry-After`: the ingestion queue is full.
    #[error("{0}")]
    Busy(String),
    /// 503 with `Retry-After`: the host cannot serve this now.
    #[error("{0}")]
    Unavailable(String),
    /// 406: the client accepts none of the formats offered.
    #[error("{0}")]
    NotAcceptable(String),
    /// 422: none of the events in a request was accepted.
    #[error("{detail}")]
    Rejected {
        /// The first reason.
        detail: String,
        /// Every rejected event with its reason.
        rejected: serde_json::Value,
    },
    /// A subscription was refused (400, 404, 409, 502 or 503 by cause).
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// A named-consumer request was refused (400, 404, 409 or 503).
    #[error(transparent)]
    Named(#[from] NamedError),
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
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            Self::Session(SessionError::Unknown(_)) => (session_gone(), "session_unknown"),
            Self::Session(SessionError::Obsolete(_)) => (session_gone(), "session_obsolete"),
            Self::Session(SessionError::Expired(_)) => (session_gone(), "session_expired"),
            Self::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            Self::Rejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Self::Subscribe(e) => match e {
                SubscribeError::UnknownKey(_) => (StatusCode::NOT_FOUND, "not_found"),
                SubscribeError::Param(_) | SubscribeError::Normalize { .. } => {
                    (StatusCode::BAD_REQUEST, "invalid_param")
                }
                SubscribeError::PreConsume { .. } => {
                    (StatusCode::BAD_GATEWAY, "pre_consume_failed")
                }
                SubscribeError::Fault { .. } => (StatusCode::BAD_GATEWAY, "plugin_fault"),
                SubscribeError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                SubscribeError::Named(e) => named_status(e),
            },
            Self::Named(e) => named_status(e),
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
        let detail = self.to_string();
        let rejected = match self {
            Self::Rejected { rejected, .. } => Some(rejected),
            _ => None,
        };
        let body = Json(ErrorBody {
            error: code,
            detail,
            rejected,
        });
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(RETRY_AFTER, RETRY_AFTER_SECS)], body).into_response();
        }
        (status, body).into_response()
    }
}

fn named_status(e: &NamedError) -> (StatusCode, &'static str) {
    match e {
        NamedError::BadName(_) | NamedError::AckAhead { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        NamedError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        NamedError::Bound { .. } | NamedError::TooMany => (StatusCode::CONFLICT, "conflict"),
        NamedError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

/// 419, the status Fustor agents read as "create a new session".
fn session_gone() -> StatusCode {
    StatusCode::from_u16(419).unwrap_or(StatusCode::GONE)
}

impl From<PushError> for AppError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Session(s) => Self::Session(s),
            full @ (PushError::QueueFull { .. } | PushError::TooManyJobs(_)) => {
                Self::Busy(full.to_string())
            }
            closing @ PushError::ShuttingDown(_) => Self::Unavailable(closing.to_string()),
            gone @ PushError::Unavailable { .. } => Self::Unavailable(gone.to_string()),
        }
    }
}

impl From<crate::bus::PublishError> for AppError {
    fn from(e: crate::bus::PublishError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<ViewError> for AppError {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::NotFound(_) => Self::NotFound(e.to_string()),
            ViewError::TooLarge { .. }
            | ViewError::TooManyBytes { .. }
            | ViewError::PatternTooLong { .. } => Self::BadRequest(e.to_string()),
            ViewError::Io(io) => Self::Internal(io.into()),
        }
    }
}
