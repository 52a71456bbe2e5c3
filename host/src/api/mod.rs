//! The HTTP layer: a thin axum router over [`Host`]. Every route but
//! `/healthz` and `/readyz` needs a key of the right role (`X-API-Key`, or
//! `Authorization: Bearer`).
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz` | public |
//! | `GET /readyz` | public |
//! | `GET /metrics` (Prometheus text; `Authorization: Bearer` works) | query |
//! | `GET /v1/keys` | query |
//! | `GET /v1/keys/{key}` | query |
//! | `GET /v1/keys/{key}/stream` (SSE or NDJSON) | query |
//! | `POST /v1/keys/{key}/resume` | admin |
//! | `POST /v1/events` | ingest |
//! | `GET /v1/subscriptions` | admin |
//! | `GET /v1/dlq`, `POST /v1/dlq/replay`, `DELETE /v1/dlq` | admin |
//! | `GET /v1/plugins` | admin |
//! | `POST /api/v1/pipe/session/` | ingest |
//! | `POST /api/v1/pipe/session/{sid}/heartbeat` | ingest |
//! | `DELETE /api/v1/pipe/session/{sid}` | ingest |
//! | `POST /api/v1/pipe/ingest/{sid}/events` | ingest |
//! | `POST /api/v1/pipe/consistency/audit/{start,end}` | ingest |
//! | `GET /api/v1/pipe/consistency/sentinel/tasks` | ingest |
//! | `POST /api/v1/pipe/consistency/sentinel/feedback` | ingest |
//! | `GET /api/v1/views/{datastore}/{tree,stats,search,suspect-list,blind-spots}` | query |
//! | `POST /ingestor-api/v1/sessions/`, `.../{sid}/heartbeat`, `DELETE .../{sid}` | ingest |
//! | `POST /ingestor-api/v1/events/` (session id in the body) | ingest |
//! | `POST /ingestor-api/v1/consistency/alarm` | ingest |
//! | `GET /views/fs/{tree,stats}` (the key's datastore) | query |
//! | `POST /v1/datastores/{datastore}/alarm` | admin |

mod error;
mod events;
mod fustor;
mod seed;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use error::AppError;

use crate::auth::{ApiKey, Role};
use crate::host::Host;
use crate::registry::KeyDefinition;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Largest agent push accepted (100 events of 100 rows fit many times).
pub const MAX_PUSH_BYTES: usize = 64 * 1024 * 1024;

/// Largest `POST /v1/events` body.
pub const MAX_EVENTS_BYTES: usize = 16 * 1024 * 1024;

/// The router over `host`.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/{key}", get(get_key))
        .route("/v1/keys/{key}/stream", get(events::stream_key))
        .route("/v1/keys/{key}/resume", post(events::resume))
        .route(
            "/v1/events",
            post(events::publish).layer(DefaultBodyLimit::max(MAX_EVENTS_BYTES)),
        )
        .route("/v1/subscriptions", get(events::subscriptions))
        .route("/v1/dlq", get(events::dlq_list).delete(events::dlq_delete))
        .route("/v1/dlq/replay", post(events::dlq_replay))
        .route("/v1/plugins", get(list_plugins))
        .route("/api/v1/pipe/session/", post(fustor::create_session))
        .route("/api/v1/pipe/session", post(fustor::create_session))
        .route(
            "/api/v1/pipe/session/{sid}/heartbeat",
            post(fustor::heartbeat),
        )
        .route("/api/v1/pipe/session/{sid}", delete(fustor::delete_session))
        .route(
            "/api/v1/pipe/ingest/{sid}/events",
            post(fustor::ingest).layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)),
        )
        .route(
            "/api/v1/pipe/consistency/audit/start",
            post(fustor::audit_start),
        )
        .route(
            "/api/v1/pipe/consistency/audit/end",
            post(fustor::audit_end),
        )
        .route("/api/v1/views/{datastore}/tree", get(fustor::tree))
        .route("/api/v1/views/{datastore}/stats", get(fustor::stats))
        .route("/api/v1/views/{datastore}/search", get(fustor::search))
        .route(
            "/api/v1/views/{datastore}/suspect-list",
            get(fustor::suspect_list),
        )
        .route(
            "/api/v1/views/{datastore}/blind-spots",
            get(fustor::blind_spots),
        )
        .route(
            "/api/v1/pipe/consistency/sentinel/tasks",
            get(fustor::sentinel_tasks),
        )
        .route(
            "/api/v1/pipe/consistency/sentinel/feedback",
            post(fustor::sentinel_feedback),
        )
        .route("/ingestor-api/v1/sessions/", post(fustor::create_session))
        .route(
            "/ingestor-api/v1/sessions/{sid}/heartbeat",
            post(fustor::heartbeat),
        )
        .route(
            "/ingestor-api/v1/sessions/{sid}",
            delete(fustor::delete_session),
        )
        .route(
            "/ingestor-api/v1/events/",
            post(seed::push).layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)),
        )
        .route(
            "/ingestor-api/v1/consistency/alarm",
            post(seed::agent_alarm),
        )
        .route("/views/fs/tree", get(seed::tree))
        .route("/views/fs/stats", get(seed::stats))
        .route("/v1/datastores/{datastore}/alarm", post(seed::admin_alarm))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(host)
}

/// How long each shutdown step (draining queues, ending subscriptions) may
/// take.
pub const SHUTDOWN_STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `host` on `listener` until `shutdown` completes; then stops
/// accepting, drains the ingestion queues, ends every stream with a reason
/// (running cleanups), and finishes the requests in flight.
pub async fn run(
    listener: TcpListener,
    host: Arc<Host>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let winding = host.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        // Streams end only when the host ends them, so the server's own
        // graceful wait needs this to run beside it.
        tokio::spawn(async move {
            let _ = done_tx.send(winding.shutdown(SHUTDOWN_STEP).await);
        });
    };
    axum::serve(listener, router(host))
        .with_graceful_shutdown(graceful)
        .await?;
    if let Ok(clean) = done_rx.await {
        tracing::info!(clean, "host wound down");
    }
    Ok(())
}

/// The key a request presents: `X-API-Key`, or `Authorization: Bearer`
/// (what scrapers and generic HTTP clients can send).
fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
        })
}

/// Checks the request's key for `role`; returns the key.
fn authorize(host: &Host, headers: &HeaderMap, role: Role) -> Result<ApiKey, AppError> {
    Ok(host
        .keys()
        .authorize(presented(headers), role, None)?
        .clone())
}

/// Checks the request's key for `role` on datastore `name`.
fn authorize_datastore(
    host: &Host,
    headers: &HeaderMap,
    role: Role,
    name: &str,
) -> Result<ApiKey, AppError> {
    Ok(host
        .keys()
        .authorize(presented(headers), role, Some(name))?
        .clone())
}

/// The body, or a JSON 413/400 naming the problem.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, AppError> {
    body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(e.body_text())
        } else {
            AppError::BadRequest(e.body_text())
        }
    })
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready for traffic: 200 while serving, 503 once shutting down. Public
/// (probes), so it tells counts only, never names.
async fn readyz(State(host): State<Arc<Host>>) -> Result<Json<Value>, AppError> {
    if host.pipeline().is_closed() {
        return Err(AppError::Unavailable("the host is shutting down".into()));
    }
    Ok(Json(json!({
        "status": "ready",
        "keys": host.registry().len(),
        "failed_plugins": host.failed_plugins().len(),
        "datastores_ready": host.datastores().filter(|d| d.readiness().is_ok()).count(),
        "datastores": host.datastores().count(),
    })))
}

async fn metrics(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<axum::response::Response, AppError> {
    use axum::response::IntoResponse;
    authorize(&host, &headers, Role::Query)?;
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&host))
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

async fn list_keys(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    authorize(&host, &headers, Role::Query)?;
    let registry = host.registry();
    let keys: Vec<&KeyDefinition> = registry.list().map(|k| k.def.as_ref()).collect();
    Ok(Json(
        serde_json::to_value(keys).map_err(|e| AppError::Internal(e.into()))?,
    ))
}

async fn get_key(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, AppError> {
    authorize(&host, &headers, Role::Query)?;
    let registry = host.registry();
    let k = registry
        .lookup(&key)
        .ok_or_else(|| AppError::NotFound(format!("no key `{key}`")))?;
    let mut def = serde_json::to_value(k.def.as_ref()).map_err(|e| AppError::Internal(e.into()))?;
    def["quarantine"] = serde_json::to_value(host.pipeline().quarantine(&key))
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(Json(def))
}

async fn list_plugins(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    authorize(&host, &headers, Role::Admin)?;
    Ok(Json(
        json!({ "loaded": host.plugins(), "failed": host.failed_plugins() }),
    ))
}
