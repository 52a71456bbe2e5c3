//! # weir-host
//!
//! The Weir host: loads EventKey plugins (WebAssembly components) into a
//! sandboxed engine, registers their keys, keeps the agents' datastores, and
//! serves it all over HTTP. Its own types and every parser of input are one
//! floor down, in `weir-core` (re-exported here: [`auth`], [`index`], [`key`],
//! [`producer`], [`rows`], [`text`]).
//!
//! Rooms, from the bottom up (each uses only rooms below it; only [`http`]
//! knows HTTP, only [`engine`] knows wasmtime and the WIT bindings):
//! - [`bus`]: dedup, sequence numbers, history and fan-out of events.
//! - [`registry`]: registered keys, registration rules, parameter checks.
//! - [`supervise`]: panics of background work, contained and counted.
//! - [`engine`]: wasmtime, loaded plugins, their instances, the host imports
//!   and upstream services; it needs only a [`engine::CallApi`] from the host.
//! - [`datastore`]: one agent-fed file-system index: sessions
//!   ([`datastore::session`]), the ingestion queue and apply thread, views and
//!   READY logic.
//! - [`store`]: the data directory and the embedded durable store (redb):
//!   the bus's event log and the records of dead letters, plugin state,
//!   quarantines and named consumers.
//! - [`cluster`]: several hosts over a NATS JetStream cluster: the event
//!   bus on a stream.
//! - [`plugindir`]: the plugin directory, loaded at start and polled.
//! - [`plugin_api`]: the routes plugins reach through `call-api`.
//! - [`pipeline`]: subscriptions, key calls, envelopes, dead letters.
//! - [`runtime`]: the assembled [`Host`] (registry, engine, datastores,
//!   bus, pipeline, keys).
//! - [`metrics`]: the Prometheus text rendering of every counter.
//! - [`http`]: the axum router over the runtime (built with its OpenAPI
//!   document, served at `/openapi.json`), the connection layer, and [`run`].
//! - [`config`]: what `weir serve` runs with (flags over `weir.toml`).
//! - [`cli`]: the `weir` command line; [`consume`]: its consumer client;
//!   [`bench`]: `weir bench`, which measures a `weir serve` it starts.

pub mod bench;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod consume;
pub mod datastore;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod plugin_api;
pub mod plugindir;
pub mod registry;
pub mod runtime;
pub mod store;

pub mod supervise;
pub mod wire;

pub use http::run;
pub use runtime::{Host, HostConfig};
/// `weir agent`: the file-system agent (the `weir-agent` crate, also a
/// small binary of its own).
pub use weir_agent as agent;
pub use weir_core::{auth, index, key, producer, rows, text, time};

/// Where the host's build script put the example plugins (`plugins/`),
/// compiled for `wasm32-wasip2`: the default plugin directory.
pub const EXAMPLE_PLUGIN_DIR: &str = env!("WEIR_EXAMPLE_PLUGIN_DIR");
