//! Weir's integration tests: one binary (it links wasmtime, cranelift, axum
//! and reqwest once), one module per topic, each against real components,
//! the real engine and real HTTP. Declared by `host/Cargo.toml` (so that
//! `serve_binary` can run the `weir` binary itself); the shared helpers and
//! the test guests' build are the `weir-tests` crate (`tests/support`).
//!
//! Run one topic with `cargo test -p weir-host --test integration TOPIC::`.

mod agent;
mod bench;
mod cluster;
mod config_cli;
mod consume_cli;
mod datastore_http;
mod durability;
mod hostile;
mod hot_reload;
mod http_api;
mod pipeline_http;
mod plugin_cli;
mod plugin_runtime;
mod registration;
mod serve_binary;
mod tidy;
mod upstream;
