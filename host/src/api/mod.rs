//! The HTTP layer: a thin axum router over [`Host`]. Every route but
//! `/healthz` needs an `X-API-Key` of the right role.
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz` | public |
//! | `GET /v1/keys` | query |
//! | `GET /v1/keys/{key}` | query |
//! | `GET /v1/plugins` | admin |

mod error;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use error::AppError;

use crate::auth::Role;
use crate::host::Host;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The router over `host`.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/{key}", get(get_key))
        .route("/v1/plugins", get(list_plugins))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(host)
}

/// Serves `host` on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn run(
    listener: TcpListener,
    host: Arc<Host>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(host))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

fn authorize(host: &Host, headers: &HeaderMap, role: Role) -> Result<(), AppError> {
    let presented = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    host.keys().authorize(presented, role, None)?;
    Ok(())
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
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
    let keys: Vec<_> = registry.list().map(|k| k.def.as_ref().clone()).collect();
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
    Ok(Json(
        serde_json::to_value(k.def.as_ref()).map_err(|e| AppError::Internal(e.into()))?,
    ))
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
