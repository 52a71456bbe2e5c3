//! The seed's Fusion routes (`/ingestor-api/v1/...`, `/views/fs/...`): the
//! same core as the Fustor routes, addressed by the API key's datastore.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::fustor::{self, TreeParams, datastore_of};
use super::{AppError, authorize};
use crate::auth::Role;
use crate::host::Host;

pub(super) async fn push(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    fustor::push(&host, &headers, None, body)
}

fn own_datastore(host: &Host, headers: &HeaderMap) -> Result<String, AppError> {
    Ok(authorize(host, headers, Role::Query)?.datastore)
}

pub(super) async fn tree(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Query(params): Query<TreeParams>,
) -> Result<Response, AppError> {
    let name = own_datastore(&host, &headers)?;
    fustor::tree_of(&host, &headers, &name, params).await
}

pub(super) async fn stats(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let name = own_datastore(&host, &headers)?;
    fustor::stats_of(&host, &headers, &name)
}

/// The authoritative agent (ingest key) signals that the tree is wrong:
/// views answer 503 until the next complete snapshot.
pub(super) async fn agent_alarm(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let ds = datastore_of(&host, &headers, Role::Ingest)?;
    ds.raise_alarm();
    Ok(Json(
        json!({"status": "alarm_raised", "datastore": ds.name()}),
    ))
}

/// An operator (admin key) raises a consistency alarm on a datastore.
pub(super) async fn admin_alarm(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    super::authorize_datastore(&host, &headers, Role::Admin, &name)?;
    let ds = host
        .datastore(&name)
        .ok_or_else(|| AppError::NotFound(format!("no datastore `{name}`")))?;
    ds.raise_alarm();
    Ok(Json(
        json!({"status": "alarm_raised", "datastore": ds.name()}),
    ))
}
