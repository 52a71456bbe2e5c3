//! What every handler does with a request before its own work: the key and
//! its role, checked from the headers before any body is read
//! ([`key_before_body`], each route's role taken from the OpenAPI
//! document), the datastore scope, and extractor rejections turned into
//! [`AppError`]s that name the problem.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::AppError;
use crate::auth::{ApiKey, Role};
use crate::runtime::Host;

/// The key a request presents: `X-API-Key`, or `Authorization: Bearer`
/// (what scrapers and generic HTTP clients can send).
pub(super) fn presented(headers: &HeaderMap) -> Option<&str> {
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

/// The body, or a JSON 413/400 naming the problem.
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, AppError> {
    body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(e.body_text())
        } else {
            AppError::BadRequest(e.body_text())
        }
    })
}

/// The query string as `T`, or a JSON 400 naming the problem.
pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t)
        .map_err(|e| AppError::BadRequest(format!("query string: {}", e.body_text())))
}

/// The path parameter(s) as `T`, or a JSON 400 naming the problem (such as
/// a percent-encoding that is not UTF-8).
pub(super) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, AppError> {
    p.map(|Path(t)| t)
        .map_err(|e| AppError::BadRequest(format!("path: {}", e.body_text())))
}

/// The role each operation needs, from the `x-weir-role` its annotation
/// carries in the document the router is built with: (method, path
/// template) -> role, `None` for public routes.
pub(super) struct RouteRoles(std::collections::HashMap<(String, String), Option<Role>>);

impl RouteRoles {
    pub(super) fn from_document(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut roles = std::collections::HashMap::new();
        let value = serde_json::to_value(doc).unwrap_or_default();
        if let Some(paths) = value["paths"].as_object() {
            for (path, item) in paths {
                let Some(ops) = item.as_object() else {
                    continue;
                };
                for (method, op) in ops {
                    // `public` (or none) is no role: no key needed.
                    let role = serde_json::from_value::<Role>(op["x-weir-role"].clone()).ok();
                    roles.insert((method.to_ascii_uppercase(), path.clone()), role);
                }
            }
        }
        Self(roles)
    }
}

/// Checks the presented key against the route's role from the headers
/// alone, before the handler reads any body: a client without a valid key
/// of the right role cannot make the host buffer a body. The key and the
/// role go to the handler as its [`Caller`]; handlers check the datastore.
pub(super) async fn key_before_body(
    State((host, roles)): State<(Arc<Host>, Arc<RouteRoles>)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let template = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    let role = template.and_then(|t| {
        roles
            .0
            .get(&(req.method().as_str().to_string(), t))
            .copied()
    });
    let mut req = req;
    if let Some(Some(role)) = role {
        match host.keys().authorize(presented(req.headers()), role, None) {
            Ok(key) => {
                let caller = Caller {
                    key: key.clone(),
                    role,
                };
                req.extensions_mut().insert(caller);
            }
            Err(e) => return AppError::from(e).into_response(),
        }
    }
    next.run(req).await
}

/// Who calls a route that needs a key: the key, already checked by
/// [`key_before_body`] against the role the route's annotation states
/// (`x-weir-role`, the one place a route's role is written), and that role.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// The key.
    pub key: ApiKey,
    /// The role the route needs.
    pub role: Role,
}

impl Caller {
    /// Checks that the key may act on datastore `name` (its own, or any for
    /// a host-level key).
    pub fn datastore(&self, name: &str) -> Result<(), AppError> {
        Ok(self.key.permits(self.role, Some(name))?)
    }

    /// The key's own datastore (the agent routes and Fusion's views act on
    /// it); a host-level key has none.
    pub fn own_datastore(&self) -> Result<&str, AppError> {
        Ok(self.key.own_datastore(self.role)?)
    }

    /// Checks for a host-level key (the host-wide routes).
    pub fn host_level(&self) -> Result<(), AppError> {
        Ok(self.key.permits_host(self.role)?)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, AppError> {
        // Only a route without `x-weir-role` lacks it: a public route that
        // asks for a caller is a bug, refused rather than served.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(AppError::Auth(crate::auth::AuthError::Missing))
    }
}

/// The header that names the datastore of a route without a `{datastore}`
/// parameter (the agent routes, the seed's views).
pub const DATASTORE_HEADER: &str = "x-weir-datastore";

/// The datastore a route acts on: the one its `{datastore}` parameter
/// names, or, on a route without one (the agent routes, Fusion's
/// `/views/fs/...`), the one the `X-Weir-Datastore` header names, else the
/// key's own. Checked in the order the documents
/// promise: a path that is not UTF-8 (400), the key's scope (403), then the
/// datastore (404).
pub(super) struct Scoped(pub Arc<crate::datastore::Datastore>);

impl FromRequestParts<Arc<Host>> for Scoped {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        host: &Arc<Host>,
    ) -> Result<Self, AppError> {
        let caller = Caller::from_request_parts(parts, host).await?;
        let params = path(
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, host)
                .await,
        )?;
        let ds = match params.get("datastore") {
            Some(name) => {
                caller.datastore(name)?;
                host.datastore(name)
                    .ok_or_else(|| AppError::NotFound(format!("no datastore `{name}`")))?
            }
            None => {
                let name = match parts.headers.get(DATASTORE_HEADER) {
                    // Named by the agent (`weir agent --datastore`): a
                    // host-level key may name any, a datastore key its own.
                    Some(named) => {
                        let name = named.to_str().map_err(|_| {
                            AppError::BadRequest(format!(
                                "the {DATASTORE_HEADER} header is not visible ASCII"
                            ))
                        })?;
                        caller.datastore(name)?;
                        name
                    }
                    None => caller.own_datastore()?,
                };
                host.datastore(name).ok_or_else(|| {
                    AppError::NotFound(format!(
                        "datastore `{}` is not configured",
                        crate::text::echo(name)
                    ))
                })?
            }
        };
        Ok(Scoped(ds.clone()))
    }
}

/// A [`Scoped`] datastore whose views may be read: READY, else 503.
pub(super) struct View(pub Arc<crate::datastore::Datastore>);

impl FromRequestParts<Arc<Host>> for View {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        host: &Arc<Host>,
    ) -> Result<Self, AppError> {
        let Scoped(ds) = Scoped::from_request_parts(parts, host).await?;
        ds.readiness()?;
        Ok(View(ds))
    }
}
