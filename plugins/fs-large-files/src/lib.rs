//! `fs.large_files`: file-system events about files of at least `min_size`
//! bytes, optionally under `path_prefix`; emits path, size, mtime and a
//! human-readable size.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// The fields of an `fs.*` payload this key reads.
#[derive(Deserialize)]
struct FsPayload<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    mtime: Option<f64>,
    #[serde(default)]
    is_dir: bool,
}

/// What consumers receive.
#[derive(Serialize)]
struct LargeFile<'a> {
    path: &'a str,
    size: u64,
    mtime: Option<f64>,
    human_size: String,
}

/// The key. Stateless.
#[derive(Default)]
pub struct LargeFiles;

/// The JSON Schema of the output.
const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["path", "size", "human_size"],
  "properties": {
    "path": {"type": "string"},
    "size": {"type": "integer", "minimum": 0},
    "mtime": {"type": ["number", "null"]},
    "human_size": {"type": "string"}
  }
}"#;

impl LargeFiles {
    /// Whether this payload is a file at least `min_size` bytes under `prefix`.
    fn selects(payload: &FsPayload<'_>, min_size: u64, prefix: Option<&str>) -> bool {
        !payload.is_dir
            && payload.size.is_some_and(|s| s >= min_size)
            && prefix.is_none_or(|p| payload.path.starts_with(p))
    }
}

impl EventKey for LargeFiles {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("fs.large_files", "fs.*")
            .display_name("Large files")
            .description("File inserts and updates at or above a size, with a human-readable size")
            .param(ParamDef::int("min_size", "Smallest file size in bytes").required())
            .param(
                ParamDef::string(
                    "path_prefix",
                    "Only files whose path starts with this prefix",
                )
                .subscription_key(),
            )
            .custom_schema(SCHEMA)
            .implements(Functions::MATCHES | Functions::PROCESS)
    }

    fn matches(&self, event: &RawEvent, params: &Params) -> bool {
        // A missing or negative min_size cannot select anything sensible.
        let Ok(min) = params.int("min_size") else {
            return false;
        };
        let Ok(payload) = serde_json::from_str::<FsPayload<'_>>(&event.payload) else {
            return false;
        };
        Self::selects(&payload, min.max(0) as u64, params.get("path_prefix"))
    }

    fn process(
        &self,
        _api: &dyn Api,
        event: &RawEvent,
        _params: &Params,
    ) -> Result<Outcome, Error> {
        let payload: FsPayload<'_> = serde_json::from_str(&event.payload)?;
        let size = payload
            .size
            .ok_or_else(|| Error::msg(format!("event {}: payload has no size", event.event_id)))?;
        Outcome::emit(&LargeFile {
            path: &payload.path,
            size,
            mtime: payload.mtime,
            human_size: human_size(size),
        })
    }
}

/// `1536` -> `1.5 KiB`; binary units, one decimal.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

weir_sdk::export_keys!(LargeFiles);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::MockApi;

    fn event(payload: &str) -> RawEvent {
        RawEvent::new("fs.insert", payload).with_id("e1")
    }

    #[test]
    fn matches_by_size_and_prefix() {
        let params = Params::of(&[("min_size", "1000"), ("path_prefix", "/data/")]);
        let k = LargeFiles;
        assert!(k.matches(&event(r#"{"path":"/data/a","size":1000}"#), &params));
        assert!(!k.matches(&event(r#"{"path":"/data/a","size":999}"#), &params));
        assert!(!k.matches(&event(r#"{"path":"/other/a","size":5000}"#), &params));
        assert!(!k.matches(
            &event(r#"{"path":"/data/d","size":5000,"is_dir":true}"#),
            &params
        ));
        assert!(!k.matches(&event(r#"{"path":"/data/gone"}"#), &params));
        assert!(!k.matches(&event("not json"), &params));
    }

    #[test]
    fn process_emits_human_size() {
        let out = LargeFiles
            .process(
                &MockApi::new(),
                &event(r#"{"path":"/data/a","size":1572864,"mtime":1706000123.5}"#),
                &Params::of(&[("min_size", "1")]),
            )
            .unwrap();
        assert_eq!(
            out.json().unwrap(),
            serde_json::json!({"path":"/data/a","size":1572864,"mtime":1706000123.5,"human_size":"1.5 MiB"})
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
