//! # weir-host
//!
//! The Weir host: loads EventKey plugins (WebAssembly components) into a
//! sandboxed engine, registers their keys, and serves them over HTTP.
//!
//! Module map (one concept each; only `api` knows HTTP):
//! - [`plugin`]: the engine: wasmtime, loaded plugins, their instances,
//!   the host imports, upstream services; it needs only a [`plugin::CallApi`]
//!   from the host.
//! - [`plugin_api`]: the routes plugins reach through `call-api`.
//! - [`registry`]: registered keys, registration rules, parameter checks
//!   (the key contract itself is `weir_core::key`).
//! - [`bus`]: dedup, sequence numbers, history and fan-out of events.
//! - [`pipeline`]: subscriptions, key calls, envelopes, dead letters.
//! - [`index`]: the hash tree of file-system metadata and its arbitration rules
//!   (in the `weir-core` crate, with [`ingest::rows`] and [`text`]).
//! - [`ingest`]: agent pushes parsed row by row into index operations.
//! - [`session`]: agent sessions of a datastore (last agent wins).
//! - [`supervise`]: panics of background work, contained and counted.
//! - [`datastore`]: sessions + queue + index + READY logic of one datastore.
//! - [`metrics`]: the Prometheus text rendering of every counter.
//! - [`config`]: the `weir.toml` file (datastores and their keys).
//! - [`auth`]: API keys and roles.
//! - [`plugindir`]: the plugin directory, loaded at start and polled for changes.
//! - [`host`]: the assembled core (registry + engine + plugin directory).
//! - [`api`]: the axum router over the core (built with its OpenAPI
//!   document, served at `/openapi.json`), and [`run`].
//! - [`cli`]: the `weir` command line; [`consume`]: its consumer client.

pub mod api;
pub use weir_core::auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod consume;
pub mod datastore;
pub mod host;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod plugin_api;
pub mod plugindir;
pub mod registry;
pub mod session;
pub mod supervise;

pub use api::run;
pub use weir_core::{index, text};

/// Where the host's build script put the example plugins (`plugins/`),
/// compiled for `wasm32-wasip2`: the default plugin directory.
pub const EXAMPLE_PLUGIN_DIR: &str = env!("WEIR_EXAMPLE_PLUGIN_DIR");
