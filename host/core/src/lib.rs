//! # weir-core
//!
//! The bottom floor of the Weir host: its own types and everything that
//! parses input, without the plugin engine (no wasmtime), the HTTP layer or
//! an async runtime, so that it builds fast and can be fuzzed.
//! - [`event`]: the host's event (`NewEvent`, `Event`) and event-type
//!   patterns; the bus carries these, plugins see a WIT copy.
//! - [`codec`]: the on-disk form of an event in the event log.
//! - [`key`]: the EventKey contract: definitions, params, outcomes, faults
//!   and the `Runner` trait keys are called through.
//! - [`producer`]: `POST /v1/events` bodies checked event by event.
//! - [`rows`]: agent pushes parsed row by row into index operations.
//! - [`index`]: the hash tree of file-system metadata and its arbitration rules.
//! - [`auth`]: API keys, roles and scopes.
//! - [`settings`]: every room's settings as plain data, with defaults.
//! - [`config`]: `weir.toml`, parsed and resolved into settings and keys.
//! - [`manifest`]: a plugin's `NAME.toml`: limits and grants.
//! - [`text`]: bounded echoes of input in logs and answers.
//! - [`time`]: now, and times written as the host writes them.
//! - [`fuzz`]: the fuzz targets' bodies, with their invariants.
//!
//! `weir-host` re-exports these where its rooms use them.

pub mod auth;
pub mod codec;
pub mod config;
pub mod event;
pub mod fuzz;
pub mod index;
pub mod ingest_log;
pub mod key;
pub mod manifest;
pub mod producer;
pub mod rows;
pub mod settings;
pub mod text;
pub mod time;
