//! The host functions a guest imports (`weir:plugin/host`): `log`, within
//! the plugin's budget, and `call-api`, within its grants (the `matches`
//! rule, upstream services, then the host's [`CallApi`]).

use super::*;

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: host::LogLevel, message: String) {
        let key = self.key();
        let plugin = &*self.plugin;
        let Some(message) = budgeted(&self.budget, plugin, &key, &message) else {
            return;
        };
        match level {
            host::LogLevel::Trace => {
                tracing::trace!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Debug => {
                tracing::debug!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Info => {
                tracing::info!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Warn => {
                tracing::warn!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Error => {
                tracing::error!(target: "weir::plugin", plugin, key, "{message}")
            }
        }
    }

    fn call_api(
        &mut self,
        method: String,
        path: String,
        body: Option<String>,
    ) -> Result<String, host::ApiError> {
        let key = self.key();
        if self.running == Running::Matches {
            self.flags.api_in_matches = true;
            tracing::warn!(target: "weir::plugin", plugin = &*self.plugin, key, %method, %path, "call-api refused: matches may not call the host API");
            return Err(host::ApiError {
                status: 403,
                message: "call-api is not allowed while matches runs; use process".into(),
            });
        }
        // A refusal: logged with plugin and key, answered 403 with `why`
        // and the manifest line that would grant the call.
        let refuse = |why: &str, fix: String| {
            tracing::warn!(target: "weir::plugin", plugin = &*self.plugin, key, %method, %path, "call-api refused: {why}");
            Err(host::ApiError {
                status: 403,
                message: format!("plugin `{}` {why}; {fix}", self.plugin),
            })
        };
        if let Some((name, rest)) = upstream::split(&path) {
            let Some(up) = self.grants.upstreams.iter().find(|u| u.name == name) else {
                return refuse(
                    &format!("has no upstream `{name}`"),
                    format!(
                        "declare it in {}.toml: [[capabilities.upstreams]] name = \"{name}\" base_url = \"...\"",
                        self.plugin
                    ),
                );
            };
            return self
                .upstream
                .call(up, &method, rest, body.as_deref(), self.deadline)
                .inspect_err(|e| tracing::warn!(target: "weir::plugin", plugin = &*self.plugin, key, upstream = name, %method, status = e.status, "upstream call failed: {}", e.message))
                .map_err(|e| host::ApiError {
                    status: e.status,
                    message: e.message,
                });
        }
        if !self.grants.api.allows(&method, &path) {
            return refuse(
                &format!("is not granted `{method} {path}`"),
                format!(
                    "grant it in {}.toml: [capabilities] api = [\"{method} {path}\"]",
                    self.plugin
                ),
            );
        }
        let caller = Caller {
            plugin: &self.plugin,
            key: &key,
        };
        self.api
            .call(&caller, &method, &path, body.as_deref())
            .map_err(|e| host::ApiError {
                status: e.status,
                message: e.message,
            })
    }
}
