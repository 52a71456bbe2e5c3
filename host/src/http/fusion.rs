//! Fusion's routes as the design seed gives them (`/ingestor-api/v1/...`,
//! `/views/fs/...`): the same core as the Fustor routes, addressed by the API key's datastore.
//! The session routes are thin wrappers over the Fustor handlers, so that
//! each path has its own documented operation.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::response::Response;
use serde_json::{Value, json};

use super::fustor::{self, CreateSession, SessionGrant, TreeParams};
use super::request::{Scoped, View};
use super::{AppError, AuthErrors, ErrorBody, KeyDatastoreErrors, ViewsNotReady};
use crate::wire::DatastoreStats;

fustor::session_doc! {
    create,
    #[utoipa::path(
        post,
        path = "/ingestor-api/v1/sessions/",
        tag = "seed",
        operation_id = "seed_create_session",
    )]
    /// Create an agent session (the seed's path).
    ///
    /// Needs role `ingest`. The same as `POST /api/v1/pipe/session/`.
    pub(super) async fn create_session(
        agent: Scoped,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Json<SessionGrant>, AppError> {
        fustor::create_session(agent, body).await
    }
}

fustor::session_doc! {
    heartbeat,
    #[utoipa::path(
        post,
        path = "/ingestor-api/v1/sessions/{sid}/heartbeat",
        tag = "seed",
        operation_id = "seed_heartbeat",
    )]
    /// Keep an agent session alive (the seed's path).
    ///
    /// Needs role `ingest`. The same as
    /// `POST /api/v1/pipe/session/{sid}/heartbeat`.
    pub(super) async fn heartbeat(
        agent: Scoped,
        sid: Result<Path<String>, PathRejection>,
    ) -> Result<Json<Value>, AppError> {
        fustor::heartbeat(agent, sid).await
    }
}

fustor::session_doc! {
    delete,
    #[utoipa::path(
        delete,
        path = "/ingestor-api/v1/sessions/{sid}",
        tag = "seed",
        operation_id = "seed_delete_session",
    )]
    /// End an agent session (the seed's path).
    ///
    /// Needs role `ingest`. The same as `DELETE /api/v1/pipe/session/{sid}`.
    pub(super) async fn delete_session(
        agent: Scoped,
        sid: Result<Path<String>, PathRejection>,
    ) -> Result<Json<Value>, AppError> {
        fustor::delete_session(agent, sid).await
    }
}

/// Push rows (the seed's form).
///
/// Needs role `ingest`. Like `POST /api/v1/pipe/ingest/{sid}/events`, with
/// the session id in the body (`session_id`) and `is_snapshot_end` to end a
/// snapshot.
#[utoipa::path(
    post,
    path = "/ingestor-api/v1/events/",
    tag = "seed",
    request_body(content = Object, content_type = "application/json",
        description = "A push: `session_id`, `events` (each `event_type` `update` or `delete`, `index`, `rows`), `source_type`, `is_snapshot_end`."),
    responses(
        (status = 200, description = "`status` `ok`, the `count` of rows queued and the `rejected` rows with reasons.", body = Object),
        (status = 400, description = "A body that is not a push, or has no `session_id`.", body = ErrorBody),
        KeyDatastoreErrors,
        (status = 413, description = "The body is larger than 64 MiB.", body = ErrorBody),
        (status = 419, description = "The session may not push (`session_unknown`, `session_obsolete`, `session_expired`).", body = ErrorBody),
        (status = 503, description = "The ingestion queue is full (`busy`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn push(
    Scoped(ds): Scoped,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    fustor::push(ds, None, body).await
}

/// The tree view of the key's datastore.
///
/// Needs role `query`. Like `GET /api/v1/views/{datastore}/tree` for the
/// datastore of the key.
#[utoipa::path(
    get,
    path = "/views/fs/tree",
    tag = "seed",
    operation_id = "seed_tree",
    params(TreeParams),
    responses(
        (status = 200, description = "The tree under `path`.", body = Object),
        (status = 400, description = "A bad query, a path that is not clean, or a subtree larger than `max_tree_items`.", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "The key's datastore is not configured, or no such path in it.", body = ErrorBody),
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
        ViewsNotReady,
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn tree(
    view: View,
    params: Result<Query<TreeParams>, QueryRejection>,
) -> Result<Response, AppError> {
    fustor::tree(view, params).await
}

/// The stats of the key's datastore.
///
/// Needs role `query`. Like `GET /api/v1/views/{datastore}/stats` for the
/// datastore of the key.
#[utoipa::path(
    get,
    path = "/views/fs/stats",
    tag = "seed",
    operation_id = "seed_stats",
    responses(
        (status = 200, description = "The datastore's stats.", body = DatastoreStats),
        KeyDatastoreErrors,
        ViewsNotReady,
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn stats(view: View) -> Json<DatastoreStats> {
    fustor::stats(view).await
}

/// Raise a consistency alarm (the agent).
///
/// Needs role `ingest`. The authoritative agent signals that the tree is
/// wrong: the views answer 503 until the next complete snapshot.
#[utoipa::path(
    post,
    path = "/ingestor-api/v1/consistency/alarm",
    tag = "seed",
    responses(
        (status = 200, description = "`status` `alarm_raised` and the `datastore`.", body = Object),
        KeyDatastoreErrors,
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn agent_alarm(Scoped(ds): Scoped) -> Result<Json<Value>, AppError> {
    ds.raise_alarm();
    Ok(Json(
        json!({"status": "alarm_raised", "datastore": ds.name()}),
    ))
}
