//! What `weir serve` runs with: the `[server]` and `[limits]` settings of
//! `weir.toml` (parsed and checked in [`weir_core::config`], which this
//! module re-exports) merged with the flags, defaults filled in, and the
//! log filter checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use weir_core::config::*;

use crate::engine::Limits;
use crate::engine::manifest::LimitsSection;

/// What `weir serve` runs with: the `[server]` and `[limits]` settings,
/// defaults filled in and checked.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Listening address.
    pub listen: SocketAddr,
    /// Plugin directory.
    pub plugins: PathBuf,
    /// Scan interval of the plugin directory; `None`: never.
    pub plugin_poll: Option<Duration>,
    /// Compile cache directory.
    pub compile_cache: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
    /// Default limits of plugin calls.
    pub limits: Limits,
    /// Bounds of the connection layer.
    pub server: weir_core::settings::ServerLimits,
    /// The data directory; `None`: ephemeral.
    pub data_dir: Option<PathBuf>,
}

/// Largest default instance memory (a manifest may ask up to this, too).
pub const MAX_DEFAULT_MEMORY_MIB: usize = 1024;

/// Resolves `server` and `limits` (already merged: flags over the file);
/// `file` names the source in errors.
pub fn serve_settings(
    server: &ServerSection,
    limits: &LimitsSection,
    file: &str,
) -> Result<ServeSettings, ConfigError> {
    let err = |problem: String| ConfigError {
        file: file.to_string(),
        problem,
    };
    let log = server
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&log)
        .map_err(|e| err(format!("server.log = \"{log}\": {e}")))?;
    let limits = limits
        .apply(&Limits::default(), MAX_DEFAULT_MEMORY_MIB * 1024 * 1024)
        .map_err(err)?;
    let mut bounds = weir_core::settings::ServerLimits::default();
    if let Some(n) = server.max_connections {
        if n == 0 {
            return Err(err("server.max_connections must be at least 1".into()));
        }
        bounds.max_connections = n;
    }
    for (field, value, target) in [
        (
            "header_timeout_secs",
            server.header_timeout_secs,
            &mut bounds.header_timeout,
        ),
        (
            "request_timeout_secs",
            server.request_timeout_secs,
            &mut bounds.request_timeout,
        ),
        (
            "shutdown_timeout_secs",
            server.shutdown_timeout_secs,
            &mut bounds.shutdown_timeout,
        ),
    ] {
        match value {
            Some(0) => return Err(err(format!("server.{field} must be at least 1"))),
            Some(s) => *target = Duration::from_secs(s),
            None => {}
        }
    }
    let data_dir = match (server.ephemeral.unwrap_or(false), &server.data_dir) {
        (true, Some(_)) => {
            return Err(err(
                "--ephemeral and --data-dir (server.ephemeral, server.data_dir) exclude each other"
                    .into(),
            ));
        }
        (true, None) => None,
        (false, Some(dir)) => Some(dir.clone()),
        (false, None) => Some(crate::store::default_data_dir().ok_or_else(|| {
            err("no data directory: set --data-dir (or HOME), or run --ephemeral".into())
        })?),
    };
    Ok(ServeSettings {
        data_dir,
        listen: server
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070))),
        plugins: server
            .plugins
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::EXAMPLE_PLUGIN_DIR)),
        plugin_poll: match server.plugin_poll_ms.unwrap_or(500) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        compile_cache: server.compile_cache.clone(),
        log_format: server.log_format.unwrap_or_default(),
        log,
        limits,
        server: bounds,
    })
}
