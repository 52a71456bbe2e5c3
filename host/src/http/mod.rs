//! The HTTP layer: a thin axum router over [`Host`].
//!
//! Every handler carries a `#[utoipa::path]` annotation, and the router is
//! built from those annotations (`OpenApiRouter` + `routes!`), so the
//! OpenAPI 3.1 document served at `GET /openapi.json` describes exactly the
//! routes served. That document is public, like `/`, `/healthz` and `/readyz`:
//! it is documentation and tells no secret. Every other route needs a key of
//! the right role (`X-API-Key`, or `Authorization: Bearer`; `admin` fits
//! every role). The route groups (see `/openapi.json` for each route):
//!
//! - `/`, `/healthz`, `/readyz`, `/openapi.json` (public), `/metrics` (query);
//! - `/v1/keys/...` (query; `resume`: admin), `POST /v1/events` (ingest),
//!   `/v1/consumers` (query; delete: admin), `/v1/subscriptions`,
//!   `/v1/dlq...`, `/v1/plugins`,
//!   `/v1/datastores/{datastore}/alarm` (admin);
//! - the Fustor agent routes `/api/v1/pipe/...` (ingest) and views
//!   `/api/v1/views/{datastore}/...` (query);
//! - Fusion's paths `/ingestor-api/v1/...` (ingest) and `/views/fs/...`
//!   (query), the same handlers addressed by the key's datastore.
//!
//! Files: `request.rs` (key before body, scopes, rejections), `error.rs`
//! (`AppError`, the one place errors become status codes), `system.rs`,
//! `keys.rs`, `events.rs`, `consumers.rs`, `fustor.rs`, `fusion.rs` (route families),
//! `server.rs` (the connection layer).

mod consumers;
mod error;
mod events;
mod fusion;
mod fustor;
mod keys;
mod request;
mod server;
mod system;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use tokio::net::TcpListener;
use utoipa::openapi::security::{
    ApiKey as ApiKeyScheme, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use error::{
    AppError, AuthErrors, DatastoreAuthErrors, ErrorBody, KeyDatastoreErrors, QueueFull,
    ViewsNotReady,
};
pub use server::ServerLimits;

use request::{body_bytes, path, query};

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
        (name = "consumers", description = "Named consumers: where each resumes, acknowledgements."),
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
        .routes(routes!(system::root))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::openapi_json))
        .routes(routes!(system::metrics))
        .routes(routes!(keys::list_keys))
        .routes(routes!(keys::get_key))
        .routes(routes!(events::stream_key))
        .routes(routes!(keys::resume))
        .routes(routes!(events::publish).layer(DefaultBodyLimit::max(MAX_EVENTS_BYTES)))
        .routes(routes!(events::subscriptions))
        .routes(routes!(consumers::list))
        .routes(routes!(consumers::ack))
        .routes(routes!(consumers::delete))
        .routes(routes!(events::dlq_list, events::dlq_delete))
        .routes(routes!(events::dlq_replay))
        .routes(routes!(keys::list_plugins))
        .routes(routes!(fustor::admin_alarm))
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
        .routes(routes!(fustor::jobs))
        .routes(routes!(fustor::job))
        .routes(routes!(fusion::create_session))
        .routes(routes!(fusion::heartbeat))
        .routes(routes!(fusion::delete_session))
        .routes(routes!(fusion::push).layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)))
        .routes(routes!(fusion::agent_alarm))
        .routes(routes!(fusion::tree))
        .routes(routes!(fusion::stats))
}

/// The OpenAPI 3.1 document of every route, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().1
}

/// The routes of `api()` and the document they make, its security
/// requirements derived from each operation's role: what the router serves
/// and what `/openapi.json` says, made the same way.
fn documented_routes() -> (axum::Router<Arc<Host>>, utoipa::openapi::OpenApi) {
    let (routes, mut document) = api().split_for_parts();
    secure_keyed_operations(&mut document);
    (routes, document)
}

/// Every operation whose `x-weir-role` is not `public` takes a key, either
/// way ([`API_KEY_SCHEME`] or [`BEARER_SCHEME`]): written here once rather
/// than in each annotation, from the role the annotation states.
fn secure_keyed_operations(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::SecurityRequirement;
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in operations.into_iter().flatten() {
            let keyed = op
                .extensions
                .as_ref()
                .and_then(|e| e.get("x-weir-role"))
                .and_then(|role| role.as_str())
                .is_some_and(|role| role != "public");
            if keyed {
                let none: [&str; 0] = [];
                op.security = Some(vec![
                    SecurityRequirement::new(API_KEY_SCHEME, none),
                    SecurityRequirement::new(BEARER_SCHEME, none),
                ]);
            }
        }
    }
}

/// The router over `host`: the routes of `api()`, the document they make
/// (served at `/openapi.json`), the JSON 404 fallback, the body limit, the
/// key check that runs before any body is read, and the request deadline.
pub fn router(host: Arc<Host>, limits: ServerLimits) -> Router {
    let (routes, document) = documented_routes();
    let roles = Arc::new(request::RouteRoles::from_document(&document));
    let deadline = limits.request_timeout;
    routes
        // Per route, after matching: the route's role is known, and the
        // handler (with its body extractor) has not run yet.
        .route_layer(axum::middleware::from_fn_with_state(
            (host.clone(), roles),
            request::key_before_body,
        ))
        .fallback(system::not_found)
        .layer(Extension(system::Document(Arc::new(document))))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(move |req, next| {
            server::request_deadline(deadline, req, next)
        }))
        .with_state(host)
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use serde_json::{Value, json};

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
            BTreeSet::from(["cluster", "failed", "loaded"].map(String::from))
        );
        assert!(names("ClusterPlugins").is_superset(&BTreeSet::from(
            ["hosts", "skew", "host_id", "name"].map(String::from)
        )));
        assert!(names("HostPresence").contains("plugins"));
        assert!(names("PluginSkew").contains("missing_on"));
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
                "get /".to_string(),
                "get /healthz".to_string(),
                "get /openapi.json".to_string(),
                "get /readyz".to_string(),
            ])
        );
        assert!(count >= 36, "only {count} operations");
    }
}
