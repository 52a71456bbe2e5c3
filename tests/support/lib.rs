//! Shared helpers of the integration tests: where the compiled components
//! are, and hosts built over them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_host::auth::{Keys, Role};
use weir_host::host::{Host, HostConfig};
use weir_host::plugin::{EngineConfig, Limits, RawEvent};

/// Directory of the test guests, built by this crate's build script.
pub const GUEST_DIR: &str = env!("WEIR_TEST_GUEST_DIR");

/// An example plugin component, by crate name (`fs-large-files`).
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(weir_host::EXAMPLE_PLUGIN_DIR).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A test guest component, by crate name (`guest-hostile`).
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(GUEST_DIR).join(format!("{}.wasm", name.replace('-', "_")))
}

/// Secrets of the test keys, one per role.
pub fn secret(role: Role) -> String {
    format!("test-{role}-secret")
}

/// Test limits: short deadlines so that hostile guests fail fast.
pub fn test_limits() -> Limits {
    Limits {
        matches_deadline: Duration::from_millis(50),
        call_deadline: Duration::from_millis(500),
        memory_bytes: 32 * 1024 * 1024,
        max_output_bytes: 1024 * 1024,
    }
}

/// A host with the example plugins loaded and one key per role.
pub fn host_with_examples() -> Arc<Host> {
    let mut keys = Keys::new();
    for role in Role::ALL {
        keys.insert(&secret(role), role, "default");
    }
    Arc::new(
        Host::new(HostConfig {
            plugin_dir: Some(PathBuf::from(weir_host::EXAMPLE_PLUGIN_DIR)),
            engine: EngineConfig {
                limits: test_limits(),
                cache_dir: Some(compile_cache()),
                ..EngineConfig::default()
            },
            keys,
            datastores: Vec::new(),
            ..HostConfig::default()
        })
        .expect("host starts"),
    )
}

/// A compiled-component cache shared by the tests (beside the guests), so
/// that each test does not compile every component again.
pub fn compile_cache() -> PathBuf {
    PathBuf::from(GUEST_DIR).with_file_name("weir-test-compile-cache")
}

/// An event with a JSON payload.
pub fn event(id: &str, event_type: &str, payload: serde_json::Value) -> RawEvent {
    RawEvent {
        event_id: id.to_string(),
        event_type: event_type.to_string(),
        source_time: None,
        timestamp_ms: 1_700_000_000_000,
        payload: payload.to_string(),
    }
}

/// Parameters from pairs.
pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
