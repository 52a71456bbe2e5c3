//! The HTTP layer: a thin axum router over [`Host`].
//!
//! Every handler carries a `#[utoipa::path]` annotation, and the router is
//! built from those annotations (`OpenApiRouter` + `routes!`), so the
//! OpenAPI 3.1 document served at `GET /openapi.json` describes exactly the
//! routes served. That document is public, like `/healthz` and `/readyz`:
//! it is documentation and tells no secret. Every other route needs a key of
//! the right role (`X-API-Key`, or `Authorization: Bearer`; `admin` fits
//! every role). The route groups (see `/openapi.json` for each route):
//!
//! - `/healthz`, `/readyz`, `/openapi.json` (public), `/metrics` (query);
//! - `/v1/keys/...` (query; `resume`: admin), `POST /v1/events` (ingest),
//!   `/v1/subscriptions`, `/v1/dlq...`, `/v1/plugins`,
//!   `/v1/datastores/{datastore}/alarm` (admin);
//! - the Fustor agent routes `/api/v1/pipe/...` (ingest) and views
//!   `/api/v1/views/{datastore}/...` (query);
//! - the seed's `/ingestor-api/v1/...` (ingest) and `/views/fs/...` (query).

mod error;
mod events;
mod fustor;
mod seed;
mod server;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use utoipa::openapi::security::{
    ApiKey as ApiKeyScheme, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use error::{
    AppError, AuthErrors, DatastoreAuthErrors, ErrorBody, KeyDatastoreErrors, ViewsNotReady,
};
pub use server::ServerLimits;

use crate::auth::{ApiKey, Role};
use crate::registry::KeyDefinition;
use crate::runtime::Host;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Largest agent push accepted (100 events of 100 rows fit many times).
pub const MAX_PUSH_BYTES: usize = 64 * 1024 * 1024;

/// Largest `POST /v1/events` body.
pub const MAX_EVENTS_BYTES: usize = 16 * 1024 * 1024;

/// Name of the `X-API-Key` security scheme in the OpenAPI document.
const API_KEY_SCHEME: &str = "api_key";

/// Name of the `Authorization: Bearer` security scheme.
const BEARER_SCHEME: &str = "bearer";

/// The document's frame (info, tags, security schemes); its paths come from
/// the handlers as [`router`] registers them.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Weir",
        version = env!("CARGO_PKG_VERSION"),
        description = "Weir, a WebAssembly-pluggable event-processing host. Every route but \
            `/healthz`, `/readyz` and `/openapi.json` needs an API key (`X-API-Key`, or \
            `Authorization: Bearer`) of the role its description names (`x-weir-role`); \
            `admin` fits every role. Errors are JSON `{error, detail}` (`ErrorBody`)."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "system", description = "Health, readiness, metrics and this document."),
        (name = "keys", description = "EventKeys: definitions, streams of their output, quarantine."),
        (name = "events", description = "Publishing events, subscriptions and dead letters."),
        (name = "plugins", description = "The loaded plugins and the failed ones."),
        (name = "datastores", description = "Operator actions on datastores."),
        (name = "fustor", description = "The Fustor 0.8.17 agent routes: sessions, pushes, audits, sentinel."),
        (name = "fustor-views", description = "The Fustor views of a datastore."),
        (name = "seed", description = "The seed's routes, addressed by the API key's datastore."),
    ),
)]
struct ApiDoc;

/// Adds the two ways to present a key.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKeyScheme::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key of the role the route needs.",
            ))),
        );
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same API key as `Authorization: Bearer KEY`."))
                    .build(),
            ),
        );
    }
}

/// Every route with its OpenAPI operation, from the handlers'
/// `#[utoipa::path]` annotations: the router and the document are both made
/// from this one list. Routes are added only through `routes!` (never a
/// plain `.route(...)`), so a route cannot be served undocumented. One
/// `routes!` per path: it mounts every handler it lists on every path they
/// name.
fn api() -> OpenApiRouter<Arc<Host>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
        .routes(routes!(list_keys))
        .routes(routes!(get_key))
        .routes(routes!(events::stream_key))
        .routes(routes!(events::resume))
        .routes(routes!(events::publish).layer(DefaultBodyLimit::max(MAX_EVENTS_BYTES)))
        .routes(routes!(events::subscriptions))
        .routes(routes!(events::dlq_list, events::dlq_delete))
        .routes(routes!(events::dlq_replay))
        .routes(routes!(list_plugins))
        .routes(routes!(seed::admin_alarm))
        .routes(routes!(fustor::create_session))
        .routes(routes!(fustor::create_session_unslashed))
        .routes(routes!(fustor::heartbeat))
        .routes(routes!(fustor::delete_session))
        .routes(routes!(fustor::ingest).layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)))
        .routes(routes!(fustor::audit_start))
        .routes(routes!(fustor::audit_end))
        .routes(routes!(fustor::sentinel_tasks))
        .routes(routes!(fustor::sentinel_feedback))
        .routes(routes!(fustor::tree))
        .routes(routes!(fustor::stats))
        .routes(routes!(fustor::search))
        .routes(routes!(fustor::suspect_list))
        .routes(routes!(fustor::blind_spots))
        .routes(routes!(seed::create_session))
        .routes(routes!(seed::heartbeat))
        .routes(routes!(seed::delete_session))
        .routes(routes!(seed::push).layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)))
        .routes(routes!(seed::agent_alarm))
        .routes(routes!(seed::tree))
        .routes(routes!(seed::stats))
}

/// The OpenAPI 3.1 document of every route, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The router over `host`: the routes of `api()`, the document they make
/// (served at `/openapi.json`), the JSON 404 fallback, the body limit, the
/// key check that runs before any body is read, and the request deadline.
pub fn router(host: Arc<Host>, limits: ServerLimits) -> Router {
    let (routes, document) = api().split_for_parts();
    let roles = Arc::new(RouteRoles::from_document(&document));
    let deadline = limits.request_timeout;
    routes
        // Per route, after matching: the route's role is known, and the
        // handler (with its body extractor) has not run yet.
        .route_layer(axum::middleware::from_fn_with_state(
            (host.clone(), roles),
            key_before_body,
        ))
        .fallback(not_found)
        .layer(Extension(Document(Arc::new(document))))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(move |req, next| {
            server::request_deadline(deadline, req, next)
        }))
        .with_state(host)
}

/// The role each operation needs, from the `x-weir-role` its annotation
/// carries in the document the router is built with: (method, path
/// template) -> role, `None` for public routes.
struct RouteRoles(std::collections::HashMap<(String, String), Option<Role>>);

impl RouteRoles {
    fn from_document(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut roles = std::collections::HashMap::new();
        let value = serde_json::to_value(doc).unwrap_or_default();
        if let Some(paths) = value["paths"].as_object() {
            for (path, item) in paths {
                let Some(ops) = item.as_object() else {
                    continue;
                };
                for (method, op) in ops {
                    let role = match op["x-weir-role"].as_str() {
                        Some("ingest") => Some(Role::Ingest),
                        Some("query") => Some(Role::Query),
                        Some("admin") => Some(Role::Admin),
                        _ => None,
                    };
                    roles.insert((method.to_ascii_uppercase(), path.clone()), role);
                }
            }
        }
        Self(roles)
    }
}

/// Checks the presented key against the route's role from the headers
/// alone, before the handler reads any body: a client without a valid key
/// of the right role cannot make the host buffer a body. Handlers still
/// make their own full check (the datastore).
async fn key_before_body(
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
    if let Some(Some(role)) = role
        && let Err(e) = host.keys().authorize(presented(req.headers()), role, None)
    {
        return AppError::from(e).into_response();
    }
    next.run(req).await
}

/// How long each shutdown step (draining queues, ending subscriptions) may
/// take.
pub const SHUTDOWN_STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `host` on `listener` with the default [`ServerLimits`] until
/// `shutdown` completes; see [`run_with`].
pub async fn run(
    listener: TcpListener,
    host: Arc<Host>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(listener, host, shutdown, ServerLimits::default()).await
}

/// Serves `host` on `listener` within `limits` until `shutdown` completes;
/// then stops accepting, drains the ingestion queues, ends every stream
/// with a reason (running cleanups), and finishes the requests in flight,
/// waiting at most `limits.shutdown_timeout` for connections.
pub async fn run_with(
    listener: TcpListener,
    host: Arc<Host>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServerLimits,
) -> anyhow::Result<()> {
    let winding = host.clone();
    server::serve(
        listener,
        router(host, limits),
        limits,
        shutdown,
        move || async move {
            let clean = winding.shutdown(SHUTDOWN_STEP).await;
            tracing::info!(clean, "host wound down");
        },
    )
    .await?;
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

/// The query string as `T`, or a JSON 400 naming the problem.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t)
        .map_err(|e| AppError::BadRequest(format!("query string: {}", e.body_text())))
}

/// The path parameter(s) as `T`, or a JSON 400 naming the problem (such as
/// a percent-encoding that is not UTF-8).
fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, AppError> {
    p.map(|Path(t)| t)
        .map_err(|e| AppError::BadRequest(format!("path: {}", e.body_text())))
}

/// The document `GET /openapi.json` serves: the one made with the router.
#[derive(Clone)]
struct Document(Arc<utoipa::openapi::OpenApi>);

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
async fn healthz() -> Json<Value> {
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
        (status = 200, description = "Ready: `status`, and counts of keys, failed plugins, datastores and ready datastores.", body = Object),
        (status = 503, description = "Shutting down (`unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("public"))),
)]
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
async fn openapi_json(
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
    security(("api_key" = []), ("bearer" = [])),
    extensions(("x-weir-role" = json!("query"))),
)]
async fn metrics(State(host): State<Arc<Host>>, headers: HeaderMap) -> Result<Response, AppError> {
    let who = authorize(&host, &headers, Role::Query)?;
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&host, who.scope()))
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// Any path no route serves: a JSON 404 (`no such route`).
async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

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
    security(("api_key" = []), ("bearer" = [])),
    extensions(("x-weir-role" = json!("query"))),
)]
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
    security(("api_key" = []), ("bearer" = [])),
    extensions(("x-weir-role" = json!("query"))),
)]
async fn get_key(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, AppError> {
    authorize(&host, &headers, Role::Query)?;
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
/// and fault counters, limits) and failed ones with every reason.
#[utoipa::path(
    get,
    path = "/v1/plugins",
    tag = "plugins",
    responses(
        (status = 200, description = "`loaded` and `failed` plugins.", body = PluginList),
        AuthErrors,
    ),
    security(("api_key" = []), ("bearer" = [])),
    extensions(("x-weir-role" = json!("admin"))),
)]
async fn list_plugins(
    State(host): State<Arc<Host>>,
    headers: HeaderMap,
) -> Result<Json<PluginList>, AppError> {
    host.keys()
        .authorize_host(presented(&headers), Role::Admin)?;
    Ok(Json(PluginList {
        loaded: host.plugins(),
        failed: host.failed_plugins(),
    }))
}

/// The answer of `GET /v1/plugins`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct PluginList {
    /// Plugins running, by name.
    loaded: Vec<crate::wire::PluginInfo>,
    /// Plugin files that failed to load (a replacement that failed leaves
    /// the old version in `loaded`).
    failed: Vec<crate::runtime::FailedPlugin>,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;

    fn document() -> Value {
        serde_json::to_value(openapi()).expect("the document serializes")
    }

    #[test]
    fn the_plugins_answer_is_described_field_by_field() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let ok = &doc["paths"]["/v1/plugins"]["get"]["responses"]["200"];
        assert_eq!(
            ok["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/PluginList"
        );
        let names = |schema: &str| -> BTreeSet<String> {
            schemas[schema]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{schema} has properties"))
                .keys()
                .cloned()
                .collect()
        };
        // What is sent has exactly the fields the schema names.
        let info = crate::wire::PluginInfo {
            name: "p".into(),
            file: None,
            hash: "h".into(),
            version: "h".into(),
            limits: crate::wire::PluginLimits {
                memory_mib: 1,
                matches_deadline_ms: 1,
                call_deadline_ms: 1,
                max_output_kib: 1,
            },
            keys: vec![],
            loaded_at_ms: 0,
            calls: 0,
            faults: 0,
            instances_created: 0,
            memory_bytes: 0,
            memory_peak_bytes: 0,
            state: "loaded",
            quarantined_keys: vec![],
        };
        let sent = serde_json::to_value(&info).expect("serializes");
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object().expect("an object").keys().cloned().collect()
        };
        assert_eq!(keys(&sent), names("PluginInfo"));
        assert_eq!(keys(&sent["limits"]), names("PluginLimits"));
        assert_eq!(
            names("PluginList"),
            BTreeSet::from(["failed".to_string(), "loaded".to_string()])
        );
        assert!(names("FailedPlugin").contains("errors"));
    }

    #[test]
    fn the_document_is_openapi_3_1_of_weir() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("an openapi version");
        assert!(version.starts_with("3.1."), "{version}");
        assert_eq!(doc["info"]["title"], "Weir");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes[API_KEY_SCHEME]["type"], "apiKey");
        assert_eq!(schemes[API_KEY_SCHEME]["in"], "header");
        assert_eq!(schemes[API_KEY_SCHEME]["name"], "X-API-Key");
        assert_eq!(schemes[BEARER_SCHEME]["type"], "http");
        assert_eq!(schemes[BEARER_SCHEME]["scheme"], "bearer");
    }

    #[test]
    fn every_operation_is_described_consistently() {
        let doc = document();
        let tags: HashSet<&str> = doc["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        let secured = json!([{ "api_key": [] }, { "bearer": [] }]);
        let mut ids = HashSet::new();
        let mut public = BTreeSet::new();
        let mut count = 0;
        for (route, item) in doc["paths"].as_object().expect("paths") {
            let in_route: BTreeSet<&str> = route
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, op) in item.as_object().expect("a path item") {
                count += 1;
                let what = format!("{method} {route}");
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(ids.insert(id), "{what}: operationId `{id}` is not unique");
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{what}: no summary"
                );
                for tag in op["tags"].as_array().expect("tags") {
                    let tag = tag.as_str().unwrap_or_default();
                    assert!(tags.contains(tag), "{what}: tag `{tag}` is not declared");
                }
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, in_route, "{what}: path parameters");
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{what}: no success answer"
                );
                for (status, response) in responses {
                    if status.as_str() >= "400" {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{what}: answer {status}"
                        );
                    }
                }
                match op["x-weir-role"].as_str() {
                    Some("public") => {
                        assert!(op.get("security").is_none(), "{what}: public but secured");
                        public.insert(what);
                    }
                    Some(role @ ("query" | "ingest" | "admin")) => {
                        assert_eq!(op["security"], secured, "{what}: security");
                        let description = op["description"].as_str().unwrap_or_default();
                        assert!(
                            description.contains(&format!("Needs role `{role}`")),
                            "{what}: the description does not name role `{role}`"
                        );
                        for status in ["401", "403"] {
                            assert!(responses.contains_key(status), "{what}: no {status}");
                        }
                    }
                    other => panic!("{what}: x-weir-role {other:?}"),
                }
            }
        }
        assert_eq!(
            public,
            BTreeSet::from([
                "get /healthz".to_string(),
                "get /openapi.json".to_string(),
                "get /readyz".to_string(),
            ])
        );
        assert!(count >= 36, "only {count} operations");
    }
}
