//! The Fustor 0.8.17 routes, so that the published `fustor-agent` syncs into
//! Weir unchanged: sessions, ingestion, audit signals, and the views. A thin
//! adapter over [`Datastore`]; the datastore is the API key's.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::request::{Scoped, View};
use super::{
    AppError, DatastoreAuthErrors, ErrorBody, KeyDatastoreErrors, QueueFull, ViewsNotReady,
    body_bytes, path, query,
};
use crate::datastore::Datastore;
use crate::index::view::{TreeQuery, ViewError};
use crate::rows::{parse_batch, parse_feedback};
use crate::text::echo;
use crate::time::now_secs;
use crate::wire::DatastoreStats;

/// Longest `task_id` an agent may name its session with (Fustor's are
/// `AGENT:PIPE`, a few dozen bytes).
pub const MAX_TASK_ID_BYTES: usize = 1024;

/// Header of a list answer: how many items there are in all.
const TOTAL_COUNT: &str = "x-total-count";

/// Header of a list answer: `true` when items were left out to keep the
/// answer within the datastore's `max_tree_items` and `max_tree_bytes`.
const TRUNCATED: &str = "x-weir-truncated";

/// The parts of an annotation a Fustor session route and its Fusion twin
/// share (everything but method, path, tag and operation id), written once:
/// `session_doc! { create | heartbeat | delete, #[utoipa::path(HEAD)] fn }`
/// with the route's own head (ending in a comma), then the handler with its
/// doc comment. Every session route is `ingest`.
macro_rules! session_doc {
    (create, $($rest:tt)*) => {
        $crate::http::fustor::session_doc!(@emit [
            request_body(content = CreateSession, content_type = "application/json"),
            responses(
                (status = 200, description = "The new session.", body = SessionGrant),
                (status = 400, description = "A body without a non-empty string `task_id` of at most 1024 bytes.", body = ErrorBody),
                KeyDatastoreErrors,
                (status = 413, description = "The body is larger than 4 MiB.", body = ErrorBody),
            ),
        ] $($rest)*);
    };
    (heartbeat, $($rest:tt)*) => {
        $crate::http::fustor::session_doc!(@emit [
            params(("sid" = String, Path, description = "The session id.")),
            responses(
                (status = 200, description = "`status` `ok`, `role` `leader`, and `commands`: a `{type: scan, path, recursive, job_id, created_at}` for each on-demand scan job not handed out yet.", body = Object),
                (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
                KeyDatastoreErrors,
                (status = 419, description = "The session is unknown, obsolete or expired (`session_unknown`, `session_obsolete`, `session_expired`).", body = ErrorBody),
            ),
        ] $($rest)*);
    };
    (delete, $($rest:tt)*) => {
        $crate::http::fustor::session_doc!(@emit [
            params(("sid" = String, Path, description = "The session id.")),
            responses(
                (status = 200, description = "`status` `terminated` and the `session_id`.", body = Object),
                (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
                KeyDatastoreErrors,
            ),
        ] $($rest)*);
    };
    (@emit [$($shared:tt)*] #[utoipa::path($($head:tt)*)] $item:item) => {
        #[utoipa::path(
            $($head)*
            $($shared)*
            extensions(("x-weir-role" = json!("ingest"))),
        )]
        $item
    };
}
pub(super) use session_doc;

/// The body of a session creation.
#[derive(Deserialize, ToSchema)]
pub(super) struct CreateSession {
    /// The agent's task, such as `agent-1:pipe`; not empty. Other fields
    /// the agent sends are ignored.
    #[schema(example = "agent-1:pipe")]
    task_id: String,
}

/// What the agent is told when its session is created.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(super) struct SessionGrant {
    /// The new session id.
    pub session_id: String,
    /// Always `leader`: the newest session is authoritative.
    #[schema(value_type = String, example = "leader")]
    pub role: &'static str,
    /// Seconds without heartbeat or push before it expires.
    pub session_timeout_seconds: u64,
    /// How often to audit.
    pub audit_interval_sec: f64,
    /// How often to ask for sentinel tasks.
    pub sentinel_interval_sec: f64,
    /// Human text.
    pub message: String,
}

session_doc! {
    create,
    #[utoipa::path(
        post,
        path = "/api/v1/pipe/session/",
        tag = "fustor",
    )]
    /// Create an agent session.
    ///
    /// Needs role `ingest`. A new authoritative session on the key's datastore:
    /// the previous one is obsolete at once and the index is cleared for the new
    /// snapshot. Answers the session id, its timeout and the audit and sentinel
    /// intervals.
    pub(super) async fn create_session(
        Scoped(ds): Scoped,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Json<SessionGrant>, AppError> {
        let body = body_bytes(body)?;
        let req: CreateSession = serde_json::from_slice(&body).map_err(|e| {
            AppError::BadRequest(format!("session request needs a string `task_id`: {e}"))
        })?;
        if req.task_id.trim().is_empty() {
            return Err(AppError::BadRequest("`task_id` is empty".into()));
        }
        if req.task_id.len() > MAX_TASK_ID_BYTES {
            return Err(AppError::BadRequest(format!(
                "`task_id` is longer than {MAX_TASK_ID_BYTES} bytes"
            )));
        }
        let c = ds.config().sessions;
        let session_id = blocking(move || ds.create_session(&req.task_id)).await??;
        Ok(Json(SessionGrant {
            session_id,
            role: "leader",
            session_timeout_seconds: c.timeout.as_secs(),
            audit_interval_sec: c.audit_interval.as_secs_f64(),
            sentinel_interval_sec: c.sentinel_interval.as_secs_f64(),
            message: "Session created successfully".into(),
        }))
    }
}

/// Create an agent session (the path without its final slash).
///
/// Needs role `ingest`. The same as `POST /api/v1/pipe/session/`.
#[utoipa::path(
    post,
    path = "/api/v1/pipe/session",
    tag = "fustor",
    operation_id = "create_session_unslashed",
    request_body(content = CreateSession, content_type = "application/json"),
    responses(
        (status = 200, description = "The new session.", body = SessionGrant),
        (status = 400, description = "A body without a non-empty string `task_id` of at most 1024 bytes.", body = ErrorBody),
        KeyDatastoreErrors,
        (status = 413, description = "The body is larger than 4 MiB.", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn create_session_unslashed(
    agent: Scoped,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SessionGrant>, AppError> {
    create_session(agent, body).await
}

session_doc! {
    heartbeat,
    #[utoipa::path(
        post,
        path = "/api/v1/pipe/session/{sid}/heartbeat",
        tag = "fustor",
    )]
    /// Keep an agent session alive.
    ///
    /// Needs role `ingest`. 419 when the session is unknown, obsolete or
    /// expired: the agent then creates a new one.
    pub(super) async fn heartbeat(
        Scoped(ds): Scoped,
        sid: Result<Path<String>, PathRejection>,
    ) -> Result<Json<Value>, AppError> {
        let sid = path(sid)?;
        let commands = blocking(move || ds.heartbeat(&sid)).await??;
        Ok(Json(
            json!({"status": "ok", "role": "leader", "message": null, "can_realtime": null, "commands": commands}),
        ))
    }
}

session_doc! {
    delete,
    #[utoipa::path(
        delete,
        path = "/api/v1/pipe/session/{sid}",
        tag = "fustor",
    )]
    /// End an agent session.
    ///
    /// Needs role `ingest`. Ending a session that is not there is not an error.
    pub(super) async fn delete_session(
        Scoped(ds): Scoped,
        sid: Result<Path<String>, PathRejection>,
    ) -> Result<Json<Value>, AppError> {
        let sid = path(sid)?;
        let gone = sid.clone();
        blocking(move || ds.delete_session(&gone)).await??;
        Ok(Json(json!({"status": "terminated", "session_id": sid})))
    }
}

/// Push rows of a session.
///
/// Needs role `ingest`. A batch of events of rows (`source_type`
/// `snapshot`, `message`, `audit` or `on_demand_job`; `is_end` ends a
/// snapshot), or `job_complete` with `metadata: {job_id, scan_path}` after an
/// on-demand scan's rows; bad rows are
/// rejected one by one and listed in the answer. Nothing of the push is
/// accepted on 419 or 503.
#[utoipa::path(
    post,
    path = "/api/v1/pipe/ingest/{sid}/events",
    tag = "fustor",
    params(("sid" = String, Path, description = "The session id; a `session_id` in the body must be the same.")),
    request_body(content = Object, content_type = "application/json",
        description = "A Fustor push: `events` (each `event_type` `update` or `delete`, `index`, `rows`), `source_type`, `is_end`, optional `session_id`."),
    responses(
        (status = 200, description = "`status` `ok`, the `count` of rows queued and the `rejected` rows with reasons.", body = Object),
        (status = 400, description = "A body that is not a push, or whose `session_id` differs from the path's.", body = ErrorBody),
        KeyDatastoreErrors,
        (status = 413, description = "The body is larger than 64 MiB.", body = ErrorBody),
        (status = 419, description = "The session may not push (`session_unknown`, `session_obsolete`, `session_expired`).", body = ErrorBody),
        (status = 503, description = "The ingestion queue is full (`busy`), or the host is shutting down (`unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn ingest(
    Scoped(ds): Scoped,
    sid: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    push(ds, Some(path(sid)?), body).await
}

/// A push; the session id comes from the path (Fustor) or the body (seed).
/// The body (up to 64 MiB of JSON) is parsed on a blocking thread, so that
/// large pushes do not hold the runtime's workers.
pub(super) async fn push(
    ds: Arc<Datastore>,
    path_sid: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let body = body_bytes(body)?;
    tracing::trace!(session = ?path_sid.as_deref().map(echo), body = %echo(&String::from_utf8_lossy(&body[..body.len().min(1024)])), "push");
    let limits = ds.config().rows;
    let at = now_secs();
    let (batch, body) = blocking(move || (parse_batch(&body, at, &limits), body)).await?;
    let batch = batch.map_err(|e| AppError::BadRequest(e.to_string()))?;
    let sid = match (path_sid, &batch.session_id) {
        (Some(path), Some(body_sid)) if &path != body_sid => {
            return Err(AppError::BadRequest(format!(
                "the body's session_id `{}` differs from the path's `{}`",
                echo(body_sid),
                echo(&path)
            )));
        }
        (Some(path), _) => path,
        (None, Some(body_sid)) => body_sid.clone(),
        (None, None) => return Err(AppError::BadRequest("the push has no `session_id`".into())),
    };
    let completes = batch.job_complete.is_some();
    let receipt = blocking(move || ds.accept(&sid, batch, &body, at)).await??;
    if completes {
        // Fusion's answer to a `job_complete` push.
        return Ok(Json(json!({"status": "ok", "phase": "job_complete"})));
    }
    Ok(Json(
        json!({"status": "ok", "count": receipt.count, "rejected": receipt.rejected}),
    ))
}

/// Runs `f` on a blocking thread: in a cluster, datastore calls wait for
/// NATS (and a push's parse may take a while on its own).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(e.into()))
}

/// Signal the start of an audit.
///
/// Needs role `ingest`.
#[utoipa::path(
    post,
    path = "/api/v1/pipe/consistency/audit/start",
    tag = "fustor",
    responses(
        (status = 200, description = "`status` `audit_started`.", body = Object),
        KeyDatastoreErrors,
        QueueFull,
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn audit_start(Scoped(ds): Scoped) -> Result<Json<Value>, AppError> {
    blocking(move || ds.audit_start()).await??;
    Ok(Json(json!({"status": "audit_started"})))
}

/// Signal the end of an audit.
///
/// Needs role `ingest`. Files the audit did not see are deleted as blind
/// spots.
#[utoipa::path(
    post,
    path = "/api/v1/pipe/consistency/audit/end",
    tag = "fustor",
    responses(
        (status = 200, description = "`status` `audit_ended`.", body = Object),
        KeyDatastoreErrors,
        QueueFull,
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn audit_end(Scoped(ds): Scoped) -> Result<Json<Value>, AppError> {
    blocking(move || ds.audit_end()).await??;
    Ok(Json(json!({"status": "audit_ended"})))
}

/// Query of `GET .../tree`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TreeParams {
    /// The directory (or file) to show; default `/`.
    path: Option<String>,
    /// Whether to descend into subdirectories; default true.
    recursive: Option<bool>,
    /// How deep to descend; default unlimited.
    max_depth: Option<u32>,
    /// Paths only, without metadata; default false.
    only_path: Option<bool>,
    /// Ask the agent for a fresh scan of `path` (an on-demand job; see
    /// `.../jobs`); default false. The answer is the tree as it is now,
    /// with the job's `job_id` and `job_pending`.
    on_demand_scan: Option<bool>,
    /// Answer `{"message": "dry-run", "view_id"}` once the key and the
    /// views' readiness are checked, without writing the tree (as Fusion
    /// does, for benchmarks of everything around the tree); default false.
    dry_run: Option<bool>,
}

/// The parts of a Fustor view's annotation every view shares (tag, the
/// `datastore` parameter, the key and READY answers, the role), written
/// once: `view_doc! { PATH, [EXTRA PARAMS], [OWN ANSWERS], fn }`.
macro_rules! view_doc {
    ($path:literal, [$($params:tt)*], [$($answers:tt)*], $item:item) => {
        #[utoipa::path(
            get,
            path = $path,
            tag = "fustor-views",
            params(("datastore" = String, Path, description = "The datastore."), $($params)*),
            responses($($answers)* DatastoreAuthErrors, ViewsNotReady),
            extensions(("x-weir-role" = json!("query"))),
        )]
        $item
    };
}

/// The end of a tree answer with Fusion's `job_id` and `job_pending`
/// added to its root object (the answer's last `}`).
fn with_job(mut body: Vec<u8>, job: Option<&str>) -> Vec<u8> {
    if body.last() == Some(&b'}') {
        body.pop();
        let fields = json!({"job_id": job, "job_pending": job.is_some()}).to_string();
        // `{"job_id":..,"job_pending":..}` without its braces.
        body.push(b',');
        body.extend_from_slice(&fields.as_bytes()[1..]);
    }
    body
}

/// A view rendered on a blocking thread (it walks the index under its read
/// lock, up to the datastore's byte bound) and answered as JSON.
async fn json_off_runtime(
    render: impl FnOnce() -> Result<Vec<u8>, ViewError> + Send + 'static,
) -> Result<Response, AppError> {
    let body = tokio::task::spawn_blocking(render)
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

view_doc! {
    "/api/v1/views/{datastore}/tree",
    [TreeParams],
    [
        (status = 200, description = "The tree under `path`.", body = Object),
        (status = 400, description = "A bad query, a path that is not clean, or a subtree larger than `max_tree_items`.", body = ErrorBody),
        (status = 404, description = "No such datastore, or no such path in it.", body = ErrorBody),
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
    ],
    /// The tree view of a datastore.
    ///
    /// Needs role `query` on the datastore. Written from the index. The root
    /// node also carries `job_id` and `job_pending`: the on-demand scan
    /// pending for it (or a directory above it), the one `on_demand_scan`
    /// just asked for, or `null` and `false`. A path not in the index with
    /// a scan pending answers `{job_id, job_pending, message}`.
    pub(super) async fn tree(
        View(ds): View,
        params: Result<Query<TreeParams>, QueryRejection>,
    ) -> Result<Response, AppError> {
        let params = query(params)?;
        if params.dry_run == Some(true) {
            return Ok(Json(json!({"message": "dry-run", "view_id": ds.name()})).into_response());
        }
        let on_demand = params.on_demand_scan.unwrap_or(false);
        let query = TreeQuery::from_params(
            params.path,
            params.recursive,
            params.max_depth,
            params.only_path,
        )
        .map_err(AppError::BadRequest)?;
        // The tree is written on a blocking thread and sent as it is
        // written (chunks through a channel, so writing never waits for the
        // client while it holds the index); the first message says whether
        // the answer is a tree or not.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TreePart>();
        tokio::task::spawn_blocking(move || {
            let answer = (|| {
                let asked = if on_demand {
                    ds.request_scan(&query.path, query.recursive)?
                } else {
                    None
                };
                let job = asked.or_else(|| ds.pending_job(&query.path));
                let chunks = tx.clone();
                let sent = ds.tree_chunks(&query, TREE_CHUNK_BYTES, move |c| {
                    let _ = chunks.send(TreePart::Chunk(c));
                });
                Ok::<_, AppError>(match sent {
                    Ok(last) => TreePart::Chunk(with_job(last, job.as_deref())),
                    Err(ViewError::NotFound(_)) if job.is_some() => TreePart::Pending(json!({
                        "job_id": job,
                        "job_pending": true,
                        "message": "the path is not in the index; an on-demand scan of it is pending",
                    })),
                    Err(e) => TreePart::Failed(e.into()),
                })
            })();
            let _ = tx.send(answer.unwrap_or_else(TreePart::Failed));
        });
        let first = match rx.recv().await {
            Some(TreePart::Chunk(chunk)) => chunk,
            Some(TreePart::Pending(body)) => return Ok(Json(body).into_response()),
            Some(TreePart::Failed(e)) => return Err(e),
            None => return Err(AppError::Internal(anyhow::anyhow!("the tree writer stopped"))),
        };
        let rest = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await? {
                TreePart::Chunk(chunk) => Some((Ok(bytes::Bytes::from(chunk)), rx)),
                // Errors come before the first chunk only.
                _ => Some((Err(std::io::Error::other("the tree writer failed")), rx)),
            }
        });
        use futures_util::StreamExt;
        let body = futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(bytes::Bytes::from(first))
        })
        .chain(rest);
        Ok((
            [(CONTENT_TYPE, "application/json")],
            axum::body::Body::from_stream(body),
        )
            .into_response())
    }
}

/// What the tree writer sends the handler: a chunk of the answer, or
/// (first and alone) a pending job's note or an error.
enum TreePart {
    Chunk(Vec<u8>),
    Pending(Value),
    Failed(AppError),
}

/// Bytes per chunk of a streamed tree answer.
const TREE_CHUNK_BYTES: usize = 1 << 20;

view_doc! {
    "/api/v1/views/{datastore}/stats",
    [],
    [
        (status = 200, description = "The datastore's stats.", body = DatastoreStats),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        (status = 404, description = "No such datastore.", body = ErrorBody),
    ],
    /// The stats of a datastore.
    ///
    /// Needs role `query` on the datastore.
    pub(super) async fn stats(View(ds): View) -> Json<DatastoreStats> {
        Json(ds.stats())
    }
}

view_doc! {
    "/api/v1/views/{datastore}/suspect-list",
    [],
    [
        (status = 200, description = "An array of `{path, suspect_until}`, sorted by path, at most `max_tree_items` entries and `max_tree_bytes` bytes; `X-Total-Count` tells how many suspects there are, `X-Weir-Truncated` whether some were left out.", body = Vec<Object>,
            headers(("X-Total-Count" = u64, description = "Suspect files in all."),
                    ("X-Weir-Truncated" = bool, description = "Whether entries were left out."))),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        (status = 404, description = "No such datastore.", body = ErrorBody),
    ],
    /// The suspect files of a datastore.
    ///
    /// Needs role `query` on the datastore. Files changed too recently to be
    /// trusted, with the time they stop being suspect.
    pub(super) async fn suspect_list(
        View(ds): View,
    ) -> Result<Response, AppError> {
        let listing = ds.suspects(ds.config().max_tree_items);
        let truncated = listing.truncated();
        let list: Vec<Value> = listing
            .items
            .into_iter()
            .map(|(path, until)| json!({"path": path, "suspect_until": until}))
            .collect();
        Ok((
            [
                (TOTAL_COUNT, listing.total.to_string()),
                (TRUNCATED, truncated.to_string()),
            ],
            Json(Value::Array(list)),
        )
            .into_response())
    }
}

view_doc! {
    "/api/v1/views/{datastore}/blind-spots",
    [],
    [
        (status = 200, description = "`additions_count`, `additions`, `additions_truncated`, `deletion_count`, `deletions`, `deletions_truncated`: each list at most `max_tree_items` entries and half of `max_tree_bytes`; the counts are of all.", body = Object),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        (status = 404, description = "No such datastore.", body = ErrorBody),
    ],
    /// The blind spots of a datastore.
    ///
    /// Needs role `query` on the datastore. Files first seen by an audit
    /// (additions, as tree nodes without children, like Fusion's) and files
    /// deleted because an audit missed them (deletions, as paths).
    pub(super) async fn blind_spots(
        View(ds): View,
    ) -> Result<Response, AppError> {
        json_off_runtime(move || Ok(ds.blind_spots_json())).await
    }
}

/// The on-demand scan jobs of a datastore.
///
/// Needs role `query` on the datastore. Fusion's agent jobs, oldest first:
/// `{jobs: [{job_id, view_id, path, recursive, status, progress, created_at,
/// completed_at, error?}]}`; `status` is `PENDING`, `COMPLETED` or `FAILED`.
/// Answered whether or not the views are READY.
#[utoipa::path(
    get,
    path = "/api/v1/views/{datastore}/jobs",
    tag = "fustor-views",
    params(("datastore" = String, Path, description = "The datastore.")),
    responses(
        (status = 200, description = "`{jobs: [...]}`, at most 1,000, finished ones for an hour.", body = Object),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        DatastoreAuthErrors,
        (status = 404, description = "No such datastore.", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn jobs(Scoped(ds): Scoped) -> Json<Value> {
    Json(json!({ "jobs": ds.jobs_list() }))
}

/// One on-demand scan job.
///
/// Needs role `query` on the datastore. Answered whether or not the views
/// are READY.
#[utoipa::path(
    get,
    path = "/api/v1/views/{datastore}/jobs/{job_id}",
    tag = "fustor-views",
    params(
        ("datastore" = String, Path, description = "The datastore."),
        ("job_id" = String, Path, description = "The job's id."),
    ),
    responses(
        (status = 200, description = "`{job_id, view_id, path, recursive, status, progress, created_at, completed_at, error?}`.", body = Object),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        DatastoreAuthErrors,
        (status = 404, description = "No such datastore, or no such job in it.", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn job(
    Scoped(ds): Scoped,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, AppError> {
    let (_, id) = path(ids)?;
    let job = ds.job(&id).ok_or_else(|| {
        AppError::NotFound(format!(
            "no on-demand scan job `{}` in datastore `{}`",
            echo(&id),
            ds.name()
        ))
    })?;
    Ok(Json(json!(job)))
}

/// Query of `GET .../search`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchParams {
    /// A glob pattern, such as `*.log`; not empty.
    pattern: String,
}

view_doc! {
    "/api/v1/views/{datastore}/search",
    [SearchParams],
    [
        (status = 200, description = "The matching files.", body = Object),
        (status = 400, description = "No or an empty `pattern`, or more matches than `max_tree_items`.", body = ErrorBody),
        (status = 404, description = "No such datastore.", body = ErrorBody),
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
    ],
    /// Search a datastore.
    ///
    /// Needs role `query` on the datastore. The files whose path matches a glob
    /// pattern, streamed from the index.
    pub(super) async fn search(
        View(ds): View,
        params: Result<Query<SearchParams>, QueryRejection>,
    ) -> Result<Response, AppError> {
        let params = query(params)?;
        if params.pattern.is_empty() {
            return Err(AppError::BadRequest("`pattern` is empty".into()));
        }
        json_off_runtime(move || ds.search_json(&params.pattern)).await
    }
}

/// The sentinel's task.
///
/// Needs role `ingest`. Suspect paths the agent should check, or `{}` when
/// there are none.
#[utoipa::path(
    get,
    path = "/api/v1/pipe/consistency/sentinel/tasks",
    tag = "fustor",
    responses(
        (status = 200, description = "`{type: suspect_check, paths, view_id}`, or `{}`.", body = Object),
        KeyDatastoreErrors,
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn sentinel_tasks(Scoped(ds): Scoped) -> Result<Json<Value>, AppError> {
    let paths = ds.sentinel_paths();
    if paths.is_empty() {
        return Ok(Json(json!({})));
    }
    Ok(Json(
        json!({"type": "suspect_check", "paths": paths, "view_id": ds.name()}),
    ))
}

/// The body of sentinel feedback, as the OpenAPI document describes it
/// (it is read by `weir_core::rows::parse_feedback`, update by update).
#[allow(dead_code)]
#[derive(ToSchema)]
pub(super) struct FeedbackBody {
    /// What the agent found, one path each.
    updates: Vec<FeedbackUpdate>,
}

/// What the agent found at one suspect path.
#[allow(dead_code)]
#[derive(ToSchema)]
pub(super) struct FeedbackUpdate {
    /// The path checked.
    path: String,
    /// `exists` or `missing`.
    #[schema(example = "exists")]
    status: String,
    /// Modification time, seconds since the epoch (needed with `exists`).
    mtime: Option<f64>,
    /// Size in bytes (with `exists`; default 0).
    size: Option<u64>,
}

/// Report what the sentinel found.
///
/// Needs role `ingest`. Updates that are not usable are rejected one by one
/// and listed in the answer.
#[utoipa::path(
    post,
    path = "/api/v1/pipe/consistency/sentinel/feedback",
    tag = "fustor",
    request_body(content = FeedbackBody, content_type = "application/json"),
    responses(
        (status = 200, description = "`status` `processed`, `drivers_updated` and the `rejected` updates with reasons.", body = Object),
        (status = 400, description = "A body without `updates`.", body = ErrorBody),
        KeyDatastoreErrors,
        (status = 413, description = "The body is larger than 4 MiB.", body = ErrorBody),
        QueueFull,
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn sentinel_feedback(
    Scoped(ds): Scoped,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let body = body_bytes(body)?;
    let (updates, rejected) = parse_feedback(&body, &ds.config().rows)
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    let rejected: Vec<Value> = rejected
        .into_iter()
        .map(|r| json!({"update": r.event, "reason": r.reason}))
        .collect();
    let count = updates.len();
    blocking(move || ds.sentinel_feedback(updates, &body)).await??;
    Ok(Json(
        json!({"status": "processed", "drivers_updated": count, "rejected": rejected}),
    ))
}

/// Raise a consistency alarm (an operator).
///
/// Needs role `admin` on the datastore. The views answer 503 until the next
/// complete snapshot.
#[utoipa::path(
    post,
    path = "/v1/datastores/{datastore}/alarm",
    tag = "datastores",
    params(("datastore" = String, Path, description = "The datastore.")),
    responses(
        (status = 200, description = "`status` `alarm_raised` and the `datastore`.", body = Object),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        DatastoreAuthErrors,
        (status = 404, description = "No such datastore.", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn admin_alarm(Scoped(ds): Scoped) -> Result<Json<Value>, AppError> {
    ds.raise_alarm();
    Ok(Json(
        json!({"status": "alarm_raised", "datastore": ds.name()}),
    ))
}
