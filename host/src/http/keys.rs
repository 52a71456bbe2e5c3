//! The registry's routes: key definitions, loaded and failed plugins, and
//! resuming a quarantined key.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::request::Caller;
use super::request::path;
use super::{AppError, AuthErrors, ErrorBody};
use crate::registry::KeyDefinition;
use crate::runtime::Host;

/// Every key definition.
///
/// Needs role `query`. The definitions of the registered EventKeys, sorted
/// by key.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    responses(
        (status = 200, description = "An array of key definitions (key, description, event type, params, output schema, ...).", body = Vec<Object>),
        AuthErrors,
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn list_keys(State(host): State<Arc<Host>>) -> Result<Json<Value>, AppError> {
    let registry = host.registry();
    let keys: Vec<&KeyDefinition> = registry.list().map(|k| k.def.as_ref()).collect();
    Ok(Json(
        serde_json::to_value(keys).map_err(|e| AppError::Internal(e.into()))?,
    ))
}

/// One key definition.
///
/// Needs role `query`. The definition with its `quarantine` state.
#[utoipa::path(
    get,
    path = "/v1/keys/{key}",
    tag = "keys",
    params(("key" = String, Path, description = "The key, such as `fs.large_files`.")),
    responses(
        (status = 200, description = "The key definition and its `quarantine` state.", body = Object),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "No such key.", body = ErrorBody),
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn get_key(
    State(host): State<Arc<Host>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, AppError> {
    let key = path(key)?;
    let registry = host.registry();
    let k = registry
        .lookup(&key)
        .ok_or_else(|| AppError::NotFound(format!("no key `{key}`")))?;
    let mut def = serde_json::to_value(k.def.as_ref()).map_err(|e| AppError::Internal(e.into()))?;
    def["quarantine"] = serde_json::to_value(host.pipeline().quarantine(&key))
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(Json(def))
}

/// The plugins.
///
/// Needs role `admin`. Loaded plugins (file, SHA-256, keys, load time, call
/// and fault counters, limits) and failed ones with every reason. In a
/// cluster, also every live host with the plugin versions it runs, and the
/// plugins whose versions differ between hosts (`cluster.skew`).
#[utoipa::path(
    get,
    path = "/v1/plugins",
    tag = "plugins",
    responses(
        (status = 200, description = "`loaded` and `failed` plugins.", body = PluginList),
        AuthErrors,
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn list_plugins(
    State(host): State<Arc<Host>>,
    caller: Caller,
) -> Result<Json<PluginList>, AppError> {
    caller.host_level()?;
    let cluster = {
        let host = host.clone();
        tokio::task::spawn_blocking(move || host.cluster_plugins())
            .await
            .map_err(|e| AppError::Internal(e.into()))?
    };
    Ok(Json(PluginList {
        loaded: host.plugins(),
        failed: host.failed_plugins(),
        cluster,
    }))
}

/// The answer of `GET /v1/plugins`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct PluginList {
    /// Plugins running, by name.
    loaded: Vec<crate::wire::PluginInfo>,
    /// Plugin files that failed to load (a replacement that failed leaves
    /// the old version in `loaded`).
    failed: Vec<crate::runtime::FailedPlugin>,
    /// The live hosts of the cluster and the version skew between them
    /// (absent on a host alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::wire::ClusterPlugins>,
}

/// Lift a key's quarantine.
///
/// Needs role `admin`. Answers whether the key was quarantined.
#[utoipa::path(
    post,
    path = "/v1/keys/{key}/resume",
    tag = "keys",
    params(("key" = String, Path, description = "The key, such as `fs.large_files`.")),
    responses(
        (status = 200, description = "`key`, and `resumed`: whether it was quarantined.", body = Object),
        (status = 400, description = "A path that is not UTF-8.", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "No such key.", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn resume(
    State(host): State<Arc<Host>>,
    caller: Caller,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, AppError> {
    // A quarantine is the key's, for every datastore: a host-level admin's.
    caller.host_level()?;
    let key = path(key)?;
    if host.registry().lookup(&key).is_none() {
        return Err(AppError::NotFound(format!("no key `{key}`")));
    }
    let resumed = host.pipeline().resume(&key);
    Ok(Json(json!({ "key": key, "resumed": resumed })))
}
