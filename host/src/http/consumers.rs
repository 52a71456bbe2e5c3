//! Named consumers over HTTP: list them, acknowledge what a consumer has
//! handled, delete one. A stream attaches to a name with
//! `GET /v1/keys/{key}/stream?consumer=NAME` (see `events.rs`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::request::Caller;
use super::{AppError, AuthErrors, ErrorBody, body_bytes, path, query};
use crate::pipeline::named::NamedConsumer;
use crate::runtime::Host;

fn listed(host: &Host, c: &NamedConsumer, connected: usize) -> Value {
    let last = host.pipeline().bus().stats().last_seq;
    let params: serde_json::Map<String, Value> = c
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    json!({
        "name": c.name,
        "datastore": c.scope,
        "key": c.key,
        "params": params,
        "acked_seq": c.acked_seq,
        "lag": last.saturating_sub(c.acked_seq),
        "connected": connected,
        "created_at": crate::time::rfc3339_ms(c.created_ms),
        "active_at": crate::time::rfc3339_ms(c.active_ms),
    })
}

/// The named consumers.
///
/// Needs role `query`. Those of the key's datastore (a host-level key sees
/// every one): key, params, acknowledged position, lag (events published
/// since), streams attached, and when each was made and last active.
#[utoipa::path(
    get,
    path = "/v1/consumers",
    tag = "consumers",
    responses(
        (status = 200, description = "`consumers`: `name`, `datastore`, `key`, `params`, `acked_seq`, `lag`, `connected`, `created_at`, `active_at`.", body = Object),
        AuthErrors,
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn list(State(host): State<Arc<Host>>, caller: Caller) -> Json<Value> {
    let scope = caller.key.datastore.as_deref();
    let filter = scope.map(Some);
    let consumers: Vec<Value> = host
        .pipeline()
        .named()
        .list(filter)
        .iter()
        .map(|(c, n)| listed(&host, c, *n))
        .collect();
    Json(json!({ "consumers": consumers }))
}

/// The body of an acknowledgement.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Ack {
    /// Everything up to this sequence number (an envelope's `seq`) is
    /// handled.
    seq: u64,
}

/// Acknowledge events of a named consumer.
///
/// Needs role `query`. Everything up to `seq` is handled: after a reconnect
/// or a restart the consumer resumes after it. Acknowledgements only move
/// forward (an older `seq` changes nothing).
#[utoipa::path(
    post,
    path = "/v1/consumers/{name}/ack",
    tag = "consumers",
    params(("name" = String, Path, description = "The consumer's name.")),
    request_body(content = Ack, content_type = "application/json"),
    responses(
        (status = 200, description = "The consumer, as listed.", body = Object),
        (status = 400, description = "A bad name or body, or a `seq` beyond the newest event.", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "No consumer of that name for this key's datastore.", body = ErrorBody),
        (status = 503, description = "The acknowledgement could not be stored (`unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn ack(
    State(host): State<Arc<Host>>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let name = path(name)?;
    let ack: Ack = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        AppError::BadRequest(format!("an acknowledgement is `{{\"seq\": N}}`: {e}"))
    })?;
    let last = host.pipeline().bus().stats().last_seq;
    let named = host.pipeline().named().clone();
    let scope = caller.key.datastore.clone();
    // The store's commit is a blocking write.
    let c = tokio::task::spawn_blocking(move || named.ack(scope.as_deref(), &name, ack.seq, last))
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    let connected = host
        .pipeline()
        .named()
        .list(Some(c.scope.as_deref()))
        .into_iter()
        .find(|(n, _)| n.name == c.name)
        .map_or(0, |(_, n)| n);
    Ok(Json(listed(&host, &c, connected)))
}

/// Query of `DELETE /v1/consumers/{name}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteParams {
    /// The datastore whose consumer to delete (host-level keys only;
    /// default: the host-level consumer of that name).
    datastore: Option<String>,
}

/// Delete a named consumer.
///
/// Needs role `admin` (on the datastore). Streams attached to it go on;
/// the name may be used again, from scratch.
#[utoipa::path(
    delete,
    path = "/v1/consumers/{name}",
    tag = "consumers",
    params(("name" = String, Path, description = "The consumer's name."), DeleteParams),
    responses(
        (status = 200, description = "`deleted`: the name.", body = Object),
        (status = 400, description = "A bad name or query.", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "No consumer of that name.", body = ErrorBody),
        (status = 503, description = "The deletion could not be stored (`unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn delete(
    State(host): State<Arc<Host>>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<DeleteParams>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let name = path(name)?;
    let q = query(q)?;
    let scope = match q.datastore {
        Some(ds) => {
            caller.datastore(&ds)?;
            Some(ds)
        }
        None => caller.key.datastore.clone(),
    };
    let named = host.pipeline().named().clone();
    let gone = name.clone();
    tokio::task::spawn_blocking(move || named.delete(scope.as_deref(), &gone))
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    Ok(Json(json!({ "deleted": name })))
}
