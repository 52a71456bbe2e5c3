//! The optional manifest beside a component: `NAME.toml` next to
//! `NAME.wasm`, setting that plugin's limits.
//!
//! ```toml
//! [limits]
//! memory_mib = 32            # linear memory per instance
//! matches_deadline_ms = 20   # one `matches` / `matches-batch` call
//! call_deadline_ms = 1000    # every other call
//! max_output_kib = 256       # one event's output
//! ```
//!
//! Every field is optional; what is not set keeps the host's default.
//! Unknown sections and fields are errors, so that a grant the host does
//! not know is never silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Limits;

/// The manifest, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Limits of this plugin's calls.
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Linear memory cap per instance, MiB.
    pub memory_mib: Option<usize>,
    /// Deadline of `matches` and `matches-batch`, ms.
    pub matches_deadline_ms: Option<u64>,
    /// Deadline of every other call, ms.
    pub call_deadline_ms: Option<u64>,
    /// Largest output of one event, KiB.
    pub max_output_kib: Option<usize>,
}

/// Longest deadline a manifest may set.
const MAX_DEADLINE_MS: u64 = 10 * 60 * 1000;

/// Where the manifest of `wasm` is: the same path with `.toml`.
pub fn path_for(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

impl Manifest {
    /// Parses manifest text; errors name the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// `base` with this manifest's limits, checked: memory from 1 MiB to
    /// `max_memory_bytes`, deadlines from 1 ms to 10 minutes, output from
    /// 1 KiB to 64 MiB.
    pub fn limits(&self, base: &Limits, max_memory_bytes: usize) -> Result<Limits, String> {
        let l = &self.limits;
        let mut out = base.clone();
        if let Some(mib) = l.memory_mib {
            let max = max_memory_bytes / (1024 * 1024);
            if mib == 0 || mib > max {
                return Err(format!(
                    "limits.memory_mib = {mib}: must be from 1 to {max}"
                ));
            }
            out.memory_bytes = mib * 1024 * 1024;
        }
        for (field, value, target) in [
            (
                "matches_deadline_ms",
                l.matches_deadline_ms,
                &mut out.matches_deadline,
            ),
            (
                "call_deadline_ms",
                l.call_deadline_ms,
                &mut out.call_deadline,
            ),
        ] {
            if let Some(ms) = value {
                if ms == 0 || ms > MAX_DEADLINE_MS {
                    return Err(format!(
                        "limits.{field} = {ms}: must be from 1 to {MAX_DEADLINE_MS}"
                    ));
                }
                *target = Duration::from_millis(ms);
            }
        }
        if let Some(kib) = l.max_output_kib {
            if kib == 0 || kib > 64 * 1024 {
                return Err(format!(
                    "limits.max_output_kib = {kib}: must be from 1 to 65536"
                ));
            }
            out.max_output_bytes = kib * 1024;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_override_the_defaults_and_are_checked() {
        let base = Limits::default();
        let m = Manifest::parse("[limits]\nmemory_mib = 8\ncall_deadline_ms = 20\n").unwrap();
        let l = m.limits(&base, 256 << 20).unwrap();
        assert_eq!(l.memory_bytes, 8 << 20);
        assert_eq!(l.call_deadline, Duration::from_millis(20));
        assert_eq!(l.matches_deadline, base.matches_deadline);
        let big = Manifest::parse("[limits]\nmemory_mib = 300\n").unwrap();
        assert_eq!(
            big.limits(&base, 256 << 20).unwrap_err(),
            "limits.memory_mib = 300: must be from 1 to 256"
        );
        let zero = Manifest::parse("[limits]\nmatches_deadline_ms = 0\n").unwrap();
        assert!(
            zero.limits(&base, 256 << 20)
                .unwrap_err()
                .contains("matches_deadline_ms")
        );
        let unknown = Manifest::parse("[capabilities]\napi = []\n").unwrap_err();
        assert!(
            unknown.contains("unknown field `capabilities`"),
            "{unknown}"
        );
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
    }
}
