//! The host's own routes: the service root, liveness, readiness, the
//! OpenAPI document (all four public), `/metrics`, and the JSON 404 for everything else.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::request::Caller;
use super::{AppError, AuthErrors, ErrorBody};
use crate::runtime::Host;

/// The document `GET /openapi.json` serves: the one made with the router.
#[derive(Clone)]
pub(super) struct Document(pub(super) Arc<utoipa::openapi::OpenApi>);

/// The service root: what answers here, and where its API is described.
///
/// Public, like Fusion's `GET /` (which tools such as `fustor-benchmark`
/// call for a network-only baseline): no names, no counts.
#[utoipa::path(
    get,
    path = "/",
    tag = "system",
    responses((status = 200, description = "`{\"message\", \"name\": \"weir\", \"version\", \"openapi\": \"/openapi.json\"}`.", body = Object)),
    extensions(("x-weir-role" = json!("public"))),
)]
pub(super) async fn root() -> Json<Value> {
    Json(json!({
        "message": "Weir: WebAssembly-pluggable event processing; the API is described at /openapi.json",
        "name": "weir",
        "version": env!("CARGO_PKG_VERSION"),
        "openapi": "/openapi.json",
    }))
}

/// Liveness.
///
/// Public: answers `{"status": "ok"}` while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`.", body = Object)),
    extensions(("x-weir-role" = json!("public"))),
)]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness.
///
/// Public (probes), so it tells counts only, never names: 200 while
/// serving, 503 once shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    responses(
        (status = 200, description = "Ready: `status`, counts of keys, failed plugins, datastores and ready datastores, and the `store`: `state` (`ok`, `failing`: publishing answers 503 until a write succeeds, or `ephemeral`) and `size_bytes`, and the `cluster`: `state` (`none` on a host alone, `connected`, or `unreachable`: NATS is out of reach, publishing answers 503 and views serve what was last applied), `name`, `host_id`.", body = Object),
        (status = 503, description = "Shutting down (`unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("public"))),
)]
pub(super) async fn readyz(State(host): State<Arc<Host>>) -> Result<Json<Value>, AppError> {
    if host.pipeline().is_closed() {
        return Err(AppError::Unavailable("the host is shutting down".into()));
    }
    Ok(Json(json!({
        "status": "ready",
        "keys": host.registry().len(),
        "failed_plugins": host.failed_plugins().len(),
        "datastores_ready": host.datastores().filter(|d| d.readiness().is_ok()).count(),
        "datastores": host.datastores().count(),
        "cluster": match host.cluster_state() {
            Some((name, host_id, connected)) => json!({
                "name": name,
                "host_id": host_id,
                "state": if connected { "connected" } else { "unreachable" },
                "detail": if connected {
                    "NATS is within reach"
                } else {
                    "NATS is out of reach: publishing and agent pushes answer 503; views serve the state last applied; reconnecting"
                },
            }),
            None => json!({"state": "none"}),
        },
        "store": match host.store() {
            Some(store) => {
                let summary = store.summary();
                json!({"state": summary.state, "size_bytes": summary.size_bytes})
            }
            None => json!({"state": "ephemeral"}),
        },
    })))
}

/// This OpenAPI 3.1 document.
///
/// Public: it describes every route (it is generated from the code that
/// serves them) and tells no secret.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of every route.", body = Object),
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("public"))),
)]
pub(super) async fn openapi_json(
    Extension(Document(document)): Extension<Document>,
) -> Result<Response, AppError> {
    let body = serde_json::to_vec(&*document).map_err(|e| AppError::Internal(e.into()))?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// Prometheus metrics.
///
/// Needs role `query`. Per plugin calls and faults; per key events by
/// outcome, faults, latency and quarantine; per subscription consumers and
/// drops; bus, dead letters; per datastore queue, rows, files, sessions,
/// readiness. Scrapers can send the key as `Authorization: Bearer`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses(
        (status = 200, description = "Prometheus text exposition format.", body = String,
            content_type = crate::metrics::CONTENT_TYPE),
        AuthErrors,
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn metrics(
    State(host): State<Arc<Host>>,
    caller: Caller,
) -> Result<Response, AppError> {
    let who = caller.key;
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&host, who.scope()))
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// Any path no route serves: a JSON 404 (`no such route`).
pub(super) async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}
