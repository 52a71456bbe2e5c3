//! The optional manifest beside a component: `NAME.toml` next to
//! `NAME.wasm`, setting that plugin's limits and granting its capabilities.
//! Nothing is granted by default.
//!
//! ```toml
//! [limits]
//! memory_mib = 32            # linear memory per instance
//! matches_deadline_ms = 20   # one `matches` / `matches-batch` call
//! call_deadline_ms = 1000    # every other call
//! max_output_kib = 256       # one event's output
//!
//! [capabilities]
//! # host API routes `call-api` may reach: METHOD (or *) and a path where
//! # `*` is one segment and a final `**` any rest
//! api = ["GET /v1/keys", "GET /v1/keys/*", "* /v1/state/**"]
//!
//! [[capabilities.dirs]]     # read-only reference data
//! host = "reference"        # relative to this file, or absolute
//! guest = "/data"
//!
//! [[capabilities.upstreams]] # call-api("GET", "/upstream/geo/...")
//! name = "geo"
//! base_url = "https://geo.example.com/v1"
//! methods = ["GET"]          # the default
//! timeout_ms = 2000          # default 5000, never beyond the call's deadline
//! max_response_kib = 256     # default 1024
//! headers = { Authorization = "Bearer ${GEO_TOKEN}" }  # from the host's env
//! ```
//!
//! Every field is optional; what is not set keeps the host's default.
//! Unknown sections and fields are errors, so that a grant the host does
//! not know is never silently ignored.
//!
//! Only the file format and its checks live here (no file system access but
//! the directory grants' existence check); the engine applies the grants.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::settings::Limits;

/// The manifest, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Limits of this plugin's calls.
    #[serde(default)]
    pub limits: LimitsSection,
    /// What the plugin may reach.
    #[serde(default)]
    pub capabilities: CapabilitiesSection,
}

/// `[capabilities]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesSection {
    /// Host API routes `call-api` may reach, as `METHOD /path` patterns.
    #[serde(default)]
    pub api: Vec<String>,
    /// Host directories the guest may read, each at a guest path.
    #[serde(default)]
    pub dirs: Vec<DirSection>,
    /// HTTP services the guest may reach through the host.
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
}

/// One `[[capabilities.dirs]]`: a host directory, read-only in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSection {
    /// The host directory; relative paths are relative to the manifest.
    pub host: PathBuf,
    /// Where the guest sees it (absolute, such as `/data`).
    pub guest: String,
}

/// A checked read-only directory grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The host directory, absolute.
    pub host: PathBuf,
    /// The guest path.
    pub guest: String,
}

/// Whether path `segs` fits pattern `want` (`*` one segment, a final `**`
/// any rest). A loop, not recursion: both sides may be long.
fn path_matches(want: &[String], segs: &[&str]) -> bool {
    let mut segs = segs.iter();
    for w in want {
        if w == "**" {
            return true;
        }
        match segs.next() {
            Some(s) if w == "*" || w == s => {}
            _ => return false,
        }
    }
    segs.next().is_none()
}

/// One granted route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// Upper-case method, or `*`.
    method: String,
    /// Path segments; `*` one segment, a final `**` any rest.
    segments: Vec<String>,
}

/// The host API routes a plugin may call. Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiGrants {
    grants: Vec<Grant>,
}

impl ApiGrants {
    /// Parses `METHOD /path` patterns; errors name the bad one.
    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        let mut grants = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let bad = |why: &str| format!("capabilities.api[{i}] = \"{p}\": {why}");
            let (method, path) = p
                .trim()
                .split_once(' ')
                .ok_or_else(|| bad("expected `METHOD /path`, such as `GET /v1/keys`"))?;
            let method = method.trim().to_ascii_uppercase();
            if method != "*"
                && !["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&method.as_str())
            {
                return Err(bad("the method is not GET, PUT, POST, DELETE, PATCH or *"));
            }
            let path = path.trim();
            if !path.starts_with('/') {
                return Err(bad("the path must start with /"));
            }
            let segments: Vec<String> = path
                .trim_matches('/')
                .split('/')
                .map(str::to_string)
                .collect();
            if let Some(at) = segments.iter().position(|s| s == "**")
                && at + 1 != segments.len()
            {
                return Err(bad("`**` may only end a path"));
            }
            grants.push(Grant { method, segments });
        }
        Ok(Self { grants })
    }

    /// Whether `method path` (query string ignored) is granted.
    pub fn allows(&self, method: &str, path: &str) -> bool {
        let route = path.split('?').next().unwrap_or(path);
        let segs: Vec<&str> = route.trim_matches('/').split('/').collect();
        self.grants.iter().any(|g| {
            (g.method == "*" || g.method.eq_ignore_ascii_case(method))
                && path_matches(&g.segments, &segs)
        })
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

/// `[limits]`: in a manifest, that plugin's limits; in `weir.toml` and as
/// `weir serve` flags, the host's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Linear memory cap per plugin instance, MiB [default: 64].
    #[arg(long = "plugin-memory-mib", env = "WEIR_PLUGIN_MEMORY_MIB")]
    pub memory_mib: Option<usize>,
    /// Deadline of one `matches` (or `matches-batch`) call, ms [default: 50].
    #[arg(long, env = "WEIR_MATCHES_DEADLINE_MS")]
    pub matches_deadline_ms: Option<u64>,
    /// Deadline of every other plugin call, ms [default: 5000].
    #[arg(long, env = "WEIR_CALL_DEADLINE_MS")]
    pub call_deadline_ms: Option<u64>,
    /// Largest output of one event, KiB [default: 1024].
    #[arg(long, env = "WEIR_MAX_OUTPUT_KIB")]
    pub max_output_kib: Option<usize>,
}

crate::config::flags_over_file!(LimitsSection {
    memory_mib,
    matches_deadline_ms,
    call_deadline_ms,
    max_output_kib,
});

impl LimitsSection {
    /// `base` with these limits, checked: memory from 1 MiB to
    /// `max_memory_bytes`, deadlines from 1 ms to 10 minutes, output from
    /// 1 KiB to 64 MiB. Errors name the field.
    pub fn apply(&self, base: &Limits, max_memory_bytes: usize) -> Result<Limits, String> {
        let l = self;
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

/// Longest deadline a manifest may set.
const MAX_DEADLINE_MS: u64 = 10 * 60 * 1000;

/// Where the manifest of `wasm` is: the same path with `.toml`.
pub fn path_for(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

impl Manifest {
    /// Parses manifest text; errors name the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let m: Self = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        m.grants()?;
        Ok(m)
    }

    /// The host API routes granted.
    pub fn grants(&self) -> Result<ApiGrants, String> {
        ApiGrants::parse(&self.capabilities.api)
    }

    /// The directories granted, resolved against `base` (the manifest's
    /// directory) and checked to exist.
    pub fn dirs(&self, base: &Path) -> Result<Vec<Preopen>, String> {
        let mut out: Vec<Preopen> = Vec::new();
        for (i, d) in self.capabilities.dirs.iter().enumerate() {
            let at = format!("capabilities.dirs[{i}]");
            if !d.guest.starts_with('/') {
                return Err(format!(
                    "{at}.guest = \"{}\": must be an absolute path such as /data",
                    d.guest
                ));
            }
            if out.iter().any(|o| o.guest == d.guest) {
                return Err(format!("{at}.guest = \"{}\": given twice", d.guest));
            }
            let host = base.join(&d.host);
            if !host.is_dir() {
                return Err(format!(
                    "{at}.host = \"{}\": not a directory",
                    host.display()
                ));
            }
            out.push(Preopen {
                host,
                guest: d.guest.clone(),
            });
        }
        Ok(out)
    }

    /// The upstream services granted, checked, with header secrets taken
    /// from `env` (the host's environment).
    pub fn upstreams(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Upstream>, String> {
        let mut out: Vec<Upstream> = Vec::new();
        for (i, u) in self.capabilities.upstreams.iter().enumerate() {
            let at = format!("capabilities.upstreams[{i}]");
            let up = u.check(&at, env)?;
            if out.iter().any(|o| o.name == up.name) {
                return Err(format!("{at}.name = \"{}\": given twice", up.name));
            }
            out.push(up);
        }
        Ok(out)
    }

    /// `base` with this manifest's limits, checked (see
    /// [`LimitsSection::apply`]).
    pub fn limits(&self, base: &Limits, max_memory_bytes: usize) -> Result<Limits, String> {
        self.limits.apply(base, max_memory_bytes)
    }
}

/// Default timeout of one upstream request.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Longest timeout a manifest may set.
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Default response cap.
const DEFAULT_MAX_RESPONSE_KIB: usize = 1024;
/// Largest response cap a manifest may set.
const MAX_RESPONSE_KIB: usize = 64 * 1024;

/// One `[[capabilities.upstreams]]`, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// The name in `/upstream/NAME/...`.
    pub name: String,
    /// `http://` or `https://` URL every path is appended to.
    pub base_url: String,
    /// Methods the guest may use (default: GET only).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Headers added to every request; `${VAR}` is replaced by the host's
    /// environment variable `VAR`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Timeout of one request, ms (default 5000).
    pub timeout_ms: Option<u64>,
    /// Largest response body, KiB (default 1024).
    pub max_response_kib: Option<usize>,
}

/// A checked upstream service, secrets resolved.
#[derive(Clone)]
pub struct Upstream {
    /// Its name.
    pub name: String,
    /// Base URL, without a trailing `/`.
    pub base_url: String,
    /// Upper-case methods allowed.
    pub methods: Vec<String>,
    /// Headers, values marked sensitive (`Debug` shows only their names).
    pub headers: HeaderMap,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Largest response body, bytes.
    pub max_response_bytes: usize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are secrets: only their names are shown.
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("methods", &self.methods)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

/// Replaces every `${VAR}` in `value` by `env(VAR)`; errors name the missing
/// variable.
fn interpolate(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`".to_string())?;
        let var = &after[..end];
        if var.is_empty() {
            return Err("`${}` names no variable".into());
        }
        let got = env(var).ok_or_else(|| {
            format!("environment variable `{var}` is not set in the host's environment")
        })?;
        out.push_str(&got);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl UpstreamSection {
    /// Checks the section (`at` names it in errors) and resolves its header
    /// secrets through `env`.
    pub fn check(
        &self,
        at: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Upstream, String> {
        let name = &self.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{at}.name = \"{name}\": use letters, digits, `-` and `_`"
            ));
        }
        let url = url::Url::parse(&self.base_url)
            .map_err(|e| format!("{at}.base_url = \"{}\": {e}", self.base_url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{at}.base_url = \"{}\": must be an http:// or https:// URL with a host",
                self.base_url
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{at}.base_url = \"{}\": may not have a query or fragment (put secrets in headers)",
                self.base_url
            ));
        }
        let methods = match &self.methods {
            None => vec!["GET".to_string()],
            Some(m) if m.is_empty() => {
                return Err(format!("{at}.methods: empty; leave it out for GET only"));
            }
            Some(m) => m
                .iter()
                .map(|m| {
                    let up = m.to_ascii_uppercase();
                    if ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].contains(&up.as_str()) {
                        Ok(up)
                    } else {
                        Err(format!(
                            "{at}.methods: `{m}` is not GET, HEAD, POST, PUT, PATCH or DELETE"
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let field = format!("{at}.headers.{k}");
            let hname = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{field}: not a valid header name"))?;
            let value = interpolate(v, env).map_err(|e| format!("{field}: {e}"))?;
            let mut hvalue = HeaderValue::from_str(&value)
                .map_err(|_| format!("{field}: the value is not a valid header value"))?;
            hvalue.set_sensitive(true);
            headers.insert(hname, hvalue);
        }
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "{at}.timeout_ms = {timeout_ms}: must be from 1 to {MAX_TIMEOUT_MS}"
            ));
        }
        let kib = self.max_response_kib.unwrap_or(DEFAULT_MAX_RESPONSE_KIB);
        if kib == 0 || kib > MAX_RESPONSE_KIB {
            return Err(format!(
                "{at}.max_response_kib = {kib}: must be from 1 to {MAX_RESPONSE_KIB}"
            ));
        }
        Ok(Upstream {
            name: name.clone(),
            base_url: self.base_url.trim_end_matches('/').to_string(),
            methods,
            headers,
            timeout: Duration::from_millis(timeout_ms),
            max_response_bytes: kib * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(p: &[&str]) -> ApiGrants {
        ApiGrants::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn route_patterns() {
        let g = grants(&["GET /v1/keys", "get /v1/keys/*", "* /v1/state/**"]);
        assert!(g.allows("GET", "/v1/keys"));
        assert!(g.allows("GET", "/v1/keys?x=1"));
        assert!(g.allows("GET", "/v1/keys/fs.changes"));
        assert!(!g.allows("POST", "/v1/keys"));
        assert!(!g.allows("GET", "/v1/keys/a/b"));
        assert!(g.allows("DELETE", "/v1/state/tag-a"));
        assert!(g.allows("PUT", "/v1/state"));
        assert!(!g.allows("GET", "/v1/echo"));
        assert!(!ApiGrants::default().allows("GET", "/v1/keys"));
        let bad = |p: &str| ApiGrants::parse(&[p.to_string()]).unwrap_err();
        assert!(bad("/v1/keys").contains("expected `METHOD /path`"));
        assert!(bad("FETCH /v1/keys").contains("the method is not"));
        assert!(bad("GET v1").contains("must start with /"));
        assert!(bad("GET /a/**/b").contains("`**` may only end a path"));
    }

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
        let unknown = Manifest::parse("[network]\nhosts = []\n").unwrap_err();
        assert!(unknown.contains("unknown field `network`"), "{unknown}");
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
    }

    fn section(toml_text: &str) -> UpstreamSection {
        toml::from_str(toml_text).unwrap()
    }

    fn env(var: &str) -> Option<String> {
        (var == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn secrets_come_from_the_environment_and_stay_hidden() {
        let s = section(
            "name = \"geo\"\nbase_url = \"http://example.test/api/\"\n[headers]\nAuthorization = \"Bearer ${TOKEN}\"\n",
        );
        let up = s.check("u[0]", &env).unwrap();
        assert_eq!(up.base_url, "http://example.test/api");
        assert_eq!(up.methods, ["GET"]);
        assert_eq!(up.headers["authorization"], "Bearer s3cret");
        assert!(!format!("{up:?}").contains("s3cret"));

        let missing = section(
            "name = \"geo\"\nbase_url = \"http://example.test\"\nheaders = { X-Key = \"${NOPE}\" }\n",
        );
        assert_eq!(
            missing.check("u[0]", &env).unwrap_err(),
            "u[0].headers.X-Key: environment variable `NOPE` is not set in the host's environment"
        );
    }

    #[test]
    fn bad_sections_are_named() {
        let bad = |t: &str| section(t).check("u[1]", &env).unwrap_err();
        assert!(bad("name = \"a b\"\nbase_url = \"http://x\"\n").starts_with("u[1].name"));
        assert!(bad("name = \"a\"\nbase_url = \"ftp://x\"\n").contains("http:// or https://"));
        assert!(bad("name = \"a\"\nbase_url = \"http://x/?k=1\"\n").contains("query"));
        assert!(
            bad("name = \"a\"\nbase_url = \"http://x\"\nmethods = [\"FETCH\"]\n")
                .contains("`FETCH` is not")
        );
        assert!(
            bad("name = \"a\"\nbase_url = \"http://x\"\ntimeout_ms = 0\n")
                .starts_with("u[1].timeout_ms = 0")
        );
        assert!(
            bad("name = \"a\"\nbase_url = \"http://x\"\nmax_response_kib = 0\n")
                .starts_with("u[1].max_response_kib")
        );
        assert!(
            bad("name = \"a\"\nbase_url = \"http://x\"\nheaders = { X = \"${A\" }\n")
                .contains("without a closing")
        );
    }
}
