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

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::CallError;
pub use weir_core::manifest::{Upstream, UpstreamSection};

/// The path prefix of upstream calls.
pub const PREFIX: &str = "/upstream/";

/// How much of an upstream's error answer is passed to the guest.
const MAX_ERROR_BODY: usize = 512;

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

fn err(status: u16, message: impl Into<String>) -> CallError {
    CallError {
        status,
        message: message.into(),
    }
}

impl UpstreamClient {
    fn inner(&self) -> Result<&Inner, CallError> {
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
    ) -> Result<String, CallError> {
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

fn timed_out(name: &str, timeout: Duration) -> CallError {
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
) -> Result<String, CallError> {
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

    fn env(_: &str) -> Option<String> {
        None
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
