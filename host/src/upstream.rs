//! Upstream HTTP services a plugin's manifest names, reached from the guest
//! as `call-api(METHOD, "/upstream/NAME/REST")`.
//!
//! The host, not the guest, talks to the service: it adds the configured
//! headers (secrets come from the host's environment and never enter the
//! sandbox), follows no redirects (so nothing but `base_url`'s host is ever
//! reached), bounds the wait by the service's timeout and by what is left of
//! the plugin call's own deadline, and caps the response size. Requests run
//! on one small runtime of their own, so a plugin call may come from any
//! thread.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::hostapi::ApiError;

/// The path prefix of upstream calls.
pub const PREFIX: &str = "/upstream/";

/// Default timeout of one upstream request.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Longest timeout a manifest may set.
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Default response cap.
const DEFAULT_MAX_RESPONSE_KIB: usize = 1024;
/// Largest response cap a manifest may set.
const MAX_RESPONSE_KIB: usize = 64 * 1024;
/// How much of an upstream's error answer is passed to the guest.
const MAX_ERROR_BODY: usize = 512;

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
    base_url: String,
    /// Upper-case methods allowed.
    pub methods: Vec<String>,
    /// Headers, values marked sensitive.
    headers: HeaderMap,
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
        let url = reqwest::Url::parse(&self.base_url)
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

/// Splits `/upstream/NAME/REST` into `(NAME, /REST)`; `None` when `path` is
/// not an upstream path.
pub fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    Some(match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    })
}

/// The HTTP client upstream calls share (one connection pool), with the
/// runtime it runs on, both made on first use.
#[derive(Default)]
pub struct UpstreamClient {
    inner: OnceLock<Result<Inner, String>>,
}

struct Inner {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    client: reqwest::Client,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; this
        // does not.
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            rt.shutdown_background();
        }
    }
}

fn err(status: u16, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

impl UpstreamClient {
    fn inner(&self) -> Result<&Inner, ApiError> {
        self.inner
            .get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("weir-upstream")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the upstream runtime: {e}"))?;
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build the upstream client: {e}"))?;
                Ok(Inner {
                    handle: runtime.handle().clone(),
                    runtime: Mutex::new(Some(runtime)),
                    client,
                })
            })
            .as_ref()
            .map_err(|e| err(500, e.clone()))
    }

    /// Sends `method rest` (the part after `/upstream/NAME`) to `up`, waiting
    /// at most its timeout and at most until `deadline` (the plugin call's).
    /// Answers the body of a 2xx response; anything else is an error with
    /// the upstream's status (or 502/504) and a message naming the upstream.
    pub fn call(
        &self,
        up: &Upstream,
        method: &str,
        rest: &str,
        body: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<String, ApiError> {
        let name = &up.name;
        let method = method.to_ascii_uppercase();
        if !up.methods.contains(&method) {
            return Err(err(
                405,
                format!(
                    "upstream `{name}` allows {}; add {method} to its `methods` in the manifest",
                    up.methods.join(", ")
                ),
            ));
        }
        check_rest(rest).map_err(|why| {
            err(
                400,
                format!("upstream path `{}`: {why}", crate::text::echo(rest)),
            )
        })?;
        let path = rest.split('?').next().unwrap_or(rest);
        let mut timeout = up.timeout;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err(504, "the plugin call's deadline has passed"));
            }
            timeout = timeout.min(left);
        }
        let inner = self.inner()?;
        let http_method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| err(400, format!("`{method}` is not an HTTP method")))?;
        let url = within_base(&up.base_url, rest).map_err(|why| {
            err(
                400,
                format!("upstream path `{}`: {why}", crate::text::echo(rest)),
            )
        })?;
        let mut req = inner
            .client
            .request(http_method, url)
            .headers(up.headers.clone())
            .timeout(timeout);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let cap = up.max_response_bytes;
        let label = name.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let started = Instant::now();
        inner.handle.spawn(async move {
            let _ = tx.send(fetch(req, cap, &label, timeout).await);
        });
        // The request's own timeout ends it; the margin only covers a
        // runtime that stopped.
        let answer = rx
            .recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(timed_out(name, timeout)));
        tracing::debug!(upstream = %name, %method, path, elapsed_ms = started.elapsed().as_millis() as u64, ok = answer.is_ok(), "upstream call");
        answer
    }
}

/// Checks the part of an upstream path after `/upstream/NAME` before any URL
/// parser sees it. URL parsers are lenient in ways that move a path: `\`
/// counts as `/`, tabs and newlines are dropped (`.\t.` becomes `..`), and
/// percent-encoded dots and slashes may be decoded on the way. So only
/// printable ASCII is taken, no `\` and no fragment, no percent-encoded
/// `.`, `/`, `\` or control character, and no `.` or `..` segment.
fn check_rest(rest: &str) -> Result<(), String> {
    if !rest.is_empty() && !rest.starts_with(['/', '?']) {
        return Err("it must start with `/`".into());
    }
    if let Some(c) = rest.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{:?} is not allowed: only printable ASCII (percent-encode the rest)",
            c
        ));
    }
    if rest.contains('\\') {
        return Err("`\\` is not allowed".into());
    }
    if rest.contains('#') {
        return Err("a fragment (`#`) is not allowed".into());
    }
    let bytes = rest.as_bytes();
    for (i, _) in rest.match_indices('%') {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or("`%` must be followed by two hex digits")?;
        if matches!(hex, b'.' | b'/' | b'\\') || hex < 0x20 || hex == 0x7f {
            return Err(format!(
                "the percent-encoded {:?} is not allowed",
                char::from(hex)
            ));
        }
    }
    let path = rest.split('?').next().unwrap_or(rest);
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("`.` and `..` segments are not allowed".into());
    }
    if path.contains("//") {
        return Err("empty segments (`//`) are not allowed".into());
    }
    Ok(())
}

/// The URL for `rest` below `base`, checked once more after parsing: same
/// scheme, host and port, and a path under the base's path.
fn within_base(base: &str, rest: &str) -> Result<reqwest::Url, String> {
    let base_url = reqwest::Url::parse(base).map_err(|e| format!("bad base URL: {e}"))?;
    let url = reqwest::Url::parse(&format!("{base}{rest}"))
        .map_err(|e| format!("not a URL once joined: {e}"))?;
    let base_path = base_url.path().trim_end_matches('/');
    let same_origin = url.scheme() == base_url.scheme()
        && url.host_str() == base_url.host_str()
        && url.port_or_known_default() == base_url.port_or_known_default();
    let under = url.path() == base_path
        || url.path().starts_with(&format!("{base_path}/"))
        || (base_path.is_empty() && url.path().starts_with('/'));
    if !(same_origin && under) || url.fragment().is_some() {
        return Err("it leaves the upstream's base URL".into());
    }
    Ok(url)
}

fn timed_out(name: &str, timeout: Duration) -> ApiError {
    err(
        504,
        format!(
            "upstream `{name}` did not answer within {} ms",
            timeout.as_millis()
        ),
    )
}

/// Sends `req` and reads at most `cap` bytes of the answer.
async fn fetch(
    req: reqwest::RequestBuilder,
    cap: usize,
    name: &str,
    timeout: Duration,
) -> Result<String, ApiError> {
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            timed_out(name, timeout)
        } else {
            // Without the URL: the guest learns what went wrong, not where.
            err(
                502,
                format!(
                    "upstream `{name}` could not be reached: {}",
                    e.without_url()
                ),
            )
        }
    };
    let mut resp = req.send().await.map_err(failed)?;
    let status = resp.status();
    let too_large = || {
        err(
            502,
            format!(
                "upstream `{name}` answered more than {} KiB (the manifest's max_response_kib)",
                cap / 1024
            ),
        )
    };
    if resp.content_length().is_some_and(|n| n > cap as u64) && status.is_success() {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > cap {
            if status.is_success() {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk[..cap - body.len()]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let mut text = text.trim().to_string();
        if text.len() > MAX_ERROR_BODY {
            let cut = (0..=MAX_ERROR_BODY)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        return Err(err(
            status.as_u16(),
            format!("upstream `{name}` answered {status}: {text}"),
        ));
    }
    String::from_utf8(body)
        .map_err(|_| err(502, format!("upstream `{name}` answered non-UTF-8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn paths_split_and_escapes_are_refused() {
        assert_eq!(split("/upstream/geo/v1/x?y=1"), Some(("geo", "/v1/x?y=1")));
        assert_eq!(split("/upstream/geo"), Some(("geo", "")));
        assert_eq!(split("/upstream/geo?q"), Some(("geo", "?q")));
        assert_eq!(split("/v1/keys"), None);
        let up = section("name = \"geo\"\nbase_url = \"http://127.0.0.1:9\"\n")
            .check("u", &env)
            .unwrap();
        let client = UpstreamClient::default();
        for rest in [
            "/a/../b",
            "/%2E%2E/etc",
            "/./x",
            "/x#frag",
            "/x\\..\\..\\admin",
            "/.\t./.\t./admin",
            "/x/.\n./admin",
            "/%2e./admin",
            "/x%2F..%2Fadmin",
            "/x%5C..%5Cadmin",
            "/x%09",
            "/x%zz",
            "/café",
            "/a b",
            "@evil.example/x",
            "//evil.example/x",
        ] {
            assert_eq!(
                client
                    .call(&up, "GET", rest, None, None)
                    .unwrap_err()
                    .status,
                400,
                "{rest}"
            );
        }
        let e = client.call(&up, "POST", "/x", None, None).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (
                405,
                "upstream `geo` allows GET; add POST to its `methods` in the manifest"
            )
        );
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(
            client
                .call(&up, "GET", "/x", None, Some(past))
                .unwrap_err()
                .status,
            504
        );
    }
}
