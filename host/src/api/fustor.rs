//! The Fustor 0.8.17 routes, so that the published `fustor-agent` syncs into
//! Weir unchanged: sessions, ingestion, audit signals, and the views. A thin
//! adapter over [`Datastore`]; the datastore is the API key's.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppError, authorize_datastore, body_bytes};
use crate::auth::Role;
use crate::datastore::{Datastore, now_secs};
use crate::host::Host;
use crate::index::view::TreeQuery;
use crate::index::{Feedback, Meta, normalize};
use crate::ingest::rows::parse_batch;

/// The datastore of the presented key, checked for `role`.
pub(super) fn datastore_of(
    host: &Host,
    headers: &HeaderMap,
    role: Role,
) -> Result<Arc<Datastore>, AppError> {
    let key = super::authorize(host, headers, role)?;
    host.datastore(&key.datastore).cloned().ok_or_else(|| {
        AppError::NotFound(format!("datastore `{}` is not configured", key.datastore))
    })
}

#[derive(Deserialize)]
struct CreateSession {
    task_id: String,
}

pub(super) async fn create_session(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let ds = datastore_of(&host, &headers, Role::Ingest)?;
    let body = body_bytes(body)?;
    let req: CreateSession = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(format!("session request needs a string `task_id`: {e}"))
    })?;
    if req.task_id.trim().is_empty() {
        return Err(AppError::BadRequest("`task_id` is empty".into()));
    }
    let grant = ds.create_session(&req.task_id);
    Ok(Json(
        serde_json::to_value(grant).map_err(|e| AppError::Internal(e.into()))?,
    ))
}

pub(super) async fn heartbeat(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Result<Json<Value>, AppError> {
    let ds = datastore_of(&host, &headers, Role::Ingest)?;
    ds.heartbeat(&sid)?;
    Ok(Json(
        json!({"status": "ok", "role": "leader", "message": null, "can_realtime": null, "commands": []}),
    ))
}

pub(super) async fn delete_session(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Result<Json<Value>, AppError> {
    let ds = datastore_of(&host, &headers, Role::Ingest)?;
    ds.delete_session(&sid);
    Ok(Json(json!({"status": "terminated", "session_id": sid})))
}

pub(super) async fn ingest(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    push(&host, &headers, Some(sid), body)
}

/// A push; the session id comes from the path (Fustor) or the body (seed).
pub(super) fn push(
    host: &Host,
    headers: &HeaderMap,
    path_sid: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let ds = datastore_of(host, headers, Role::Ingest)?;
    let body = body_bytes(body)?;
    tracing::trace!(session = ?path_sid, body = %String::from_utf8_lossy(&body), "push");
    let batch = parse_batch(&body, now_secs()).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let sid = match (path_sid, &batch.session_id) {
        (Some(path), Some(body_sid)) if &path != body_sid => {
            return Err(AppError::BadRequest(format!(
                "the body's session_id `{body_sid}` differs from the path's `{path}`"
            )));
        }
        (Some(path), _) => path,
        (None, Some(body_sid)) => body_sid.clone(),
        (None, None) => return Err(AppError::BadRequest("the push has no `session_id`".into())),
    };
    let receipt = ds.push(&sid, batch)?;
    Ok(Json(
        json!({"status": "ok", "count": receipt.count, "rejected": receipt.rejected}),
    ))
}

pub(super) async fn audit_start(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    datastore_of(&host, &headers, Role::Ingest)?.audit_start();
    Ok(Json(json!({"status": "audit_started"})))
}

pub(super) async fn audit_end(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    datastore_of(&host, &headers, Role::Ingest)?.audit_end();
    Ok(Json(json!({"status": "audit_ended"})))
}

/// Query of `GET .../tree`.
#[derive(Deserialize)]
pub(super) struct TreeParams {
    path: Option<String>,
    recursive: Option<bool>,
    max_depth: Option<u32>,
    only_path: Option<bool>,
}

/// The datastore `name`, if the key may query it and its views are ready.
fn ready_view(host: &Host, headers: &HeaderMap, name: &str) -> Result<Arc<Datastore>, AppError> {
    authorize_datastore(host, headers, Role::Query, name)?;
    let ds = host
        .datastore(name)
        .cloned()
        .ok_or_else(|| AppError::NotFound(format!("no datastore `{name}`")))?;
    ds.readiness()?;
    Ok(ds)
}

pub(super) async fn tree(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(params): Query<TreeParams>,
) -> Result<Response, AppError> {
    tree_of(&host, &headers, &name, params).await
}

/// The tree view of datastore `name`.
pub(super) async fn tree_of(
    host: &Host,
    headers: &HeaderMap,
    name: &str,
    params: TreeParams,
) -> Result<Response, AppError> {
    let ds = ready_view(host, headers, name)?;
    let query = TreeQuery::from_params(
        params.path,
        params.recursive,
        params.max_depth,
        params.only_path,
    )
    .map_err(AppError::BadRequest)?;
    let body = tokio::task::spawn_blocking(move || ds.tree_json(&query))
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

pub(super) async fn stats(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    stats_of(&host, &headers, &name)
}

/// The stats view of datastore `name`.
pub(super) fn stats_of(
    host: &Host,
    headers: &HeaderMap,
    name: &str,
) -> Result<Json<Value>, AppError> {
    let ds = ready_view(host, headers, name)?;
    Ok(Json(
        serde_json::to_value(ds.stats()).map_err(|e| AppError::Internal(e.into()))?,
    ))
}

pub(super) async fn suspect_list(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    let ds = ready_view(&host, &headers, &name)?;
    let now = now_secs();
    let list: Vec<Value> = ds.read_index(|ix| {
        ix.suspect_paths(now)
            .into_iter()
            .map(|(path, until)| json!({"path": path, "suspect_until": until}))
            .collect()
    });
    Ok(Json(Value::Array(list)))
}

pub(super) async fn blind_spots(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    let ds = ready_view(&host, &headers, &name)?;
    Ok(Json(ds.read_index(|ix| {
        json!({
            "additions_count": ix.blind_additions().len(),
            "additions": ix.blind_additions(),
            "deletion_count": ix.blind_deletions().len(),
            "deletions": ix.blind_deletions(),
        })
    })))
}

/// Query of `GET .../search`.
#[derive(Deserialize)]
pub(super) struct SearchParams {
    pattern: String,
}

pub(super) async fn search(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(params): Query<SearchParams>,
) -> Result<Response, AppError> {
    let ds = ready_view(&host, &headers, &name)?;
    if params.pattern.is_empty() {
        return Err(AppError::BadRequest("`pattern` is empty".into()));
    }
    let body = tokio::task::spawn_blocking(move || ds.search_json(&params.pattern))
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

pub(super) async fn sentinel_tasks(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let ds = datastore_of(&host, &headers, Role::Ingest)?;
    let paths = ds.sentinel_paths();
    if paths.is_empty() {
        return Ok(Json(json!({})));
    }
    Ok(Json(
        json!({"type": "suspect_check", "paths": paths, "view_id": ds.name()}),
    ))
}

#[derive(Deserialize)]
struct FeedbackBody {
    updates: Vec<FeedbackUpdate>,
}

#[derive(Deserialize)]
struct FeedbackUpdate {
    path: String,
    status: String,
    mtime: Option<f64>,
    size: Option<u64>,
}

pub(super) async fn sentinel_feedback(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let ds = datastore_of(&host, &headers, Role::Ingest)?;
    let body: FeedbackBody = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        AppError::BadRequest(format!(
            "feedback needs `updates`: [{{path, status, mtime, size}}]: {e}"
        ))
    })?;
    let mut updates = Vec::new();
    let mut rejected = Vec::new();
    for (i, u) in body.updates.into_iter().enumerate() {
        let Some(path) = normalize(&u.path) else {
            rejected
                .push(json!({"update": i, "reason": format!("path `{}` is not clean", u.path)}));
            continue;
        };
        let feedback = match (u.status.as_str(), u.mtime) {
            ("missing", _) => Feedback::Missing,
            ("exists", Some(mtime)) => Feedback::Exists(Meta {
                is_dir: false,
                size: u.size.unwrap_or(0),
                mtime,
                ctime: mtime,
            }),
            ("exists", None) => {
                rejected.push(json!({"update": i, "reason": "`exists` needs `mtime`"}));
                continue;
            }
            (other, _) => {
                rejected.push(json!({"update": i, "reason": format!("status `{other}` is not exists or missing")}));
                continue;
            }
        };
        updates.push((path, feedback));
    }
    let count = updates.len();
    ds.sentinel_feedback(updates);
    Ok(Json(
        json!({"status": "processed", "drivers_updated": count, "rejected": rejected}),
    ))
}
