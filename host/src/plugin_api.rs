//! The plugin API: the routes plugins reach through `call-api`, a small
//! in-process route table, not HTTP. The identity behind a call is the host's; the
//! plugin only learns the answer.
//!
//! Routes: `GET /v1/keys`, `GET /v1/keys/{key}`, `ANY /v1/echo[...]` (answers
//! what it was sent, for tests and plugin authors), a key-value state per
//! plugin at `GET|PUT|DELETE /v1/state/{name}`, and the datastore views:
//! `GET /v1/datastores` (names and readiness), `GET
//! /v1/datastores/{name}/stats`, `.../tree?path=&recursive=&max_depth=&only_path=`
//! and `.../search?pattern=` (the same answers, and size guard, as the HTTP
//! views). A plugin reaches only what its manifest grants.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::{Value, json};

use serde::Deserialize;

use crate::datastore::Datastore;
use crate::engine::{CallApi, CallError, Caller};
use crate::index::view::{TreeQuery, ViewError};
use crate::registry::Registry;
use crate::store::{Records, StoreError, Table};

/// Largest value one plugin may store under one name.
pub const MAX_STATE_VALUE: usize = 64 * 1024;
/// Most names one plugin may store.
pub const MAX_STATE_ENTRIES: usize = 10_000;

/// The built-in route set.
pub struct PluginApi {
    registry: Arc<RwLock<Registry>>,
    datastores: BTreeMap<String, Arc<Datastore>>,
    /// Per plugin, per name: a JSON value.
    state: Mutex<HashMap<String, HashMap<String, Value>>>,
    /// Where state is written through (none: memory only).
    records: Option<Arc<dyn Records>>,
}

impl PluginApi {
    /// Routes over `registry` and `datastores`.
    pub fn new(
        registry: Arc<RwLock<Registry>>,
        datastores: BTreeMap<String, Arc<Datastore>>,
    ) -> Self {
        Self {
            registry,
            datastores,
            state: Mutex::default(),
            records: None,
        }
    }

    /// These routes with plugin state written through to `records`, and
    /// what they held loaded (`PLUGIN/NAME` -> JSON).
    pub fn with_records(mut self, records: Arc<dyn Records>) -> Result<Self, StoreError> {
        if records.shared() {
            // Read through, never loaded: other hosts write it too.
            self.records = Some(records);
            return Ok(self);
        }
        let mut state: HashMap<String, HashMap<String, Value>> = HashMap::new();
        for (key, bytes) in records.load(Table::PluginState)? {
            let corrupt = |reason: String| StoreError::Corrupt {
                file: "plugin state".into(),
                table: Table::PluginState.name(),
                key: key.clone(),
                reason,
            };
            let (plugin, name) = key
                .split_once('/')
                .ok_or_else(|| corrupt("not PLUGIN/NAME".into()))?;
            let value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            state
                .entry(plugin.to_string())
                .or_default()
                .insert(name.to_string(), value);
        }
        self.state = Mutex::new(state);
        self.records = Some(records);
        Ok(self)
    }

    /// Writes a change of `plugin`'s `name` through, before it is
    /// answered: a plugin is told when its state was not stored.
    fn write(&self, plugin: &str, name: &str, value: Option<&Value>) -> Result<(), CallError> {
        let Some(records) = &self.records else {
            return Ok(());
        };
        let key = format!("{plugin}/{name}");
        match value {
            Some(v) => records.put(Table::PluginState, &key, v.to_string().as_bytes()),
            None => records.remove(Table::PluginState, &key),
        }
        .map_err(|e| {
            tracing::error!(plugin, name, "plugin state not stored: {e}");
            CallError::new(503, "the host cannot store state now")
        })
    }

    /// A plugin's stored value, as the host sees it (for tests and admin).
    pub fn state_of(&self, plugin: &str, name: &str) -> Option<Value> {
        if let Some(records) = self.shared() {
            let bytes = records
                .get(Table::PluginState, &format!("{plugin}/{name}"))
                .ok()??;
            return serde_json::from_slice(&bytes).ok();
        }
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.get(plugin)?.get(name).cloned()
    }

    /// The records, when other hosts share them (a cluster): state is then
    /// read and written there, never cached.
    fn shared(&self) -> Option<&Arc<dyn Records>> {
        self.records.as_ref().filter(|r| r.shared())
    }

    /// `GET|PUT|DELETE /v1/state/{name}` on shared records.
    fn shared_state(
        &self,
        records: &Arc<dyn Records>,
        plugin: &str,
        method: &str,
        name: &str,
        value: Option<Value>,
    ) -> Result<Value, CallError> {
        let key = format!("{plugin}/{name}");
        let unavailable = |e: StoreError| {
            tracing::error!(plugin, name, "plugin state: {e}");
            CallError::new(503, "the host cannot reach the shared state now")
        };
        let current = records.get(Table::PluginState, &key).map_err(unavailable)?;
        match (method, value) {
            ("GET", _) => current
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| CallError::new(404, format!("no state `{name}`"))),
            ("PUT", Some(value)) => {
                if current.is_none()
                    && records
                        .keys(Table::PluginState, &format!("{plugin}/"))
                        .map_err(unavailable)?
                        .len()
                        >= MAX_STATE_ENTRIES
                {
                    return Err(CallError::new(
                        413,
                        format!("a plugin may store at most {MAX_STATE_ENTRIES} names"),
                    ));
                }
                self.write(plugin, name, Some(&value))?;
                Ok(value)
            }
            _ => {
                if current.is_some() {
                    self.write(plugin, name, None)?;
                }
                Ok(json!({ "deleted": current.is_some() }))
            }
        }
    }

    fn keys(&self) -> Value {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        Value::Array(
            registry
                .list()
                .map(|k| serde_json::to_value(&*k.def).unwrap_or(Value::Null))
                .collect(),
        )
    }

    fn key(&self, key: &str) -> Result<Value, CallError> {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let k = registry
            .lookup(key)
            .ok_or_else(|| CallError::new(404, format!("no key `{key}`")))?;
        serde_json::to_value(&*k.def).map_err(|e| CallError::new(500, e.to_string()))
    }

    fn datastore(&self, name: &str) -> Result<&Arc<Datastore>, CallError> {
        let ds = self
            .datastores
            .get(name)
            .ok_or_else(|| CallError::new(404, format!("no datastore `{name}`")))?;
        ds.readiness()
            .map_err(|e| CallError::new(503, e.to_string()))?;
        Ok(ds)
    }

    /// `GET /v1/datastores/{name}/{view}` with `query` (the part after `?`).
    fn view(&self, name: &str, view: &str, query: &str) -> Result<String, CallError> {
        fn args<T: for<'de> Deserialize<'de>>(query: &str) -> Result<T, CallError> {
            serde_urlencoded::from_str(query)
                .map_err(|e| CallError::new(400, format!("query string: {e}")))
        }
        let json = |bytes: Vec<u8>| {
            String::from_utf8(bytes).map_err(|e| CallError::new(500, e.to_string()))
        };
        let view_err = |e: ViewError| match e {
            ViewError::NotFound(_) => CallError::new(404, e.to_string()),
            ViewError::TooLarge { .. }
            | ViewError::TooManyBytes { .. }
            | ViewError::PatternTooLong { .. } => CallError::new(413, e.to_string()),
            ViewError::Io(_) => CallError::new(500, e.to_string()),
        };
        match view {
            "stats" => {
                let ds = self.datastore(name)?;
                serde_json::to_string(&ds.stats()).map_err(|e| CallError::new(500, e.to_string()))
            }
            "tree" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Tree {
                    path: Option<String>,
                    recursive: Option<bool>,
                    max_depth: Option<u32>,
                    only_path: Option<bool>,
                }
                let a: Tree = args(query)?;
                let q = TreeQuery::from_params(a.path, a.recursive, a.max_depth, a.only_path)
                    .map_err(|e| CallError::new(400, e))?;
                json(self.datastore(name)?.tree_json(&q).map_err(view_err)?)
            }
            "search" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Search {
                    pattern: String,
                }
                let a: Search = args(query)?;
                if a.pattern.is_empty() {
                    return Err(CallError::new(400, "`pattern` is empty"));
                }
                json(
                    self.datastore(name)?
                        .search_json(&a.pattern)
                        .map_err(view_err)?,
                )
            }
            _ => Err(CallError::new(
                404,
                format!("no view `{view}` (stats, tree, search)"),
            )),
        }
    }

    fn state(
        &self,
        caller: &Caller<'_>,
        method: &str,
        name: &str,
        body: Option<&str>,
    ) -> Result<Value, CallError> {
        if name.is_empty() || name.len() > 256 || name.contains('/') {
            return Err(CallError::new(
                400,
                "state name must be 1 to 256 characters without '/'",
            ));
        }
        if !matches!(method, "GET" | "PUT" | "DELETE") {
            return Err(CallError::new(
                405,
                format!("{method} is not allowed on /v1/state (GET, PUT, DELETE)"),
            ));
        }
        let value = match method {
            "PUT" => {
                let body = body.ok_or_else(|| CallError::new(400, "PUT needs a JSON body"))?;
                if body.len() > MAX_STATE_VALUE {
                    return Err(CallError::new(
                        413,
                        format!("state values are limited to {MAX_STATE_VALUE} bytes"),
                    ));
                }
                Some(
                    serde_json::from_str::<Value>(body)
                        .map_err(|e| CallError::new(400, format!("body is not JSON: {e}")))?,
                )
            }
            _ => None,
        };
        if let Some(records) = self.shared() {
            return self.shared_state(records, caller.plugin, method, name, value);
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = state.entry(caller.plugin.to_string()).or_default();
        match method {
            "GET" => mine
                .get(name)
                .cloned()
                .ok_or_else(|| CallError::new(404, format!("no state `{name}`"))),
            "PUT" => {
                let value = value.unwrap_or(Value::Null);
                if !mine.contains_key(name) && mine.len() >= MAX_STATE_ENTRIES {
                    return Err(CallError::new(
                        413,
                        format!("a plugin may store at most {MAX_STATE_ENTRIES} names"),
                    ));
                }
                self.write(caller.plugin, name, Some(&value))?;
                mine.insert(name.to_string(), value.clone());
                Ok(value)
            }
            _ => {
                if mine.contains_key(name) {
                    self.write(caller.plugin, name, None)?;
                }
                Ok(json!({ "deleted": mine.remove(name).is_some() }))
            }
        }
    }
}

impl CallApi for PluginApi {
    fn call(
        &self,
        caller: &Caller<'_>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<String, CallError> {
        let method = method.to_ascii_uppercase();
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let segments: Vec<&str> = route.trim_matches('/').split('/').collect();
        let value = match (method.as_str(), segments.as_slice()) {
            ("GET", ["v1", "datastores"]) => Value::Array(
                self.datastores
                    .values()
                    .map(|d| json!({ "name": d.name(), "ready": d.readiness().is_ok() }))
                    .collect(),
            ),
            ("GET", ["v1", "datastores", name, view]) => return self.view(name, view, query),
            (_, ["v1", "datastores", ..]) => {
                return Err(CallError::new(
                    405,
                    format!("{method} is not allowed on {route} (GET)"),
                ));
            }
            ("GET", ["v1", "keys"]) => self.keys(),
            ("GET", ["v1", "keys", key]) => self.key(key)?,
            (_, ["v1", "keys", ..]) => {
                return Err(CallError::new(
                    405,
                    format!("{method} is not allowed on {route} (GET)"),
                ));
            }
            (_, ["v1", "echo", ..]) => {
                let body = match body {
                    Some(b) => {
                        serde_json::from_str(b).unwrap_or_else(|_| Value::String(b.to_string()))
                    }
                    None => Value::Null,
                };
                json!({ "method": method, "path": path, "body": body, "plugin": caller.plugin, "key": caller.key })
            }
            (m, ["v1", "state", name]) => self.state(caller, m, name, body)?,
            _ => {
                return Err(CallError::new(
                    404,
                    format!("no host API route {method} {route}"),
                ));
            }
        };
        Ok(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        api: &PluginApi,
        plugin: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Value, CallError> {
        let caller = Caller { plugin, key: "k" };
        api.call(&caller, method, path, body)
            .map(|s| serde_json::from_str(&s).unwrap())
    }

    #[test]
    fn state_is_per_plugin() {
        let api = PluginApi::new(Default::default(), Default::default());
        assert_eq!(
            call(&api, "a", "PUT", "/v1/state/x", Some(r#"{"v":1}"#)),
            Ok(json!({"v": 1}))
        );
        assert_eq!(
            call(&api, "a", "get", "/v1/state/x", None),
            Ok(json!({"v": 1}))
        );
        assert_eq!(
            call(&api, "b", "GET", "/v1/state/x", None)
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            call(&api, "a", "DELETE", "/v1/state/x", None),
            Ok(json!({"deleted": true}))
        );
        assert_eq!(
            call(&api, "a", "DELETE", "/v1/state/x", None),
            Ok(json!({"deleted": false}))
        );
        assert_eq!(api.state_of("a", "x"), None);
    }

    #[test]
    fn bad_requests_are_clear() {
        let api = PluginApi::new(Default::default(), Default::default());
        let status = |m, p, b| call(&api, "a", m, p, b).unwrap_err();
        assert_eq!(status("PUT", "/v1/state/x", Some("{no")).status, 400);
        assert_eq!(
            status("PUT", "/v1/state/x", None).message,
            "PUT needs a JSON body"
        );
        let big = format!("\"{}\"", "x".repeat(MAX_STATE_VALUE));
        assert_eq!(status("PUT", "/v1/state/x", Some(&big)).status, 413);
        assert_eq!(status("POST", "/v1/state/x", Some("{}")).status, 405);
        assert_eq!(status("POST", "/v1/keys", None).status, 405);
        assert_eq!(status("GET", "/v1/keys/none", None).status, 404);
        assert_eq!(
            status("GET", "/v2/anything", None).message,
            "no host API route GET /v2/anything"
        );
    }

    #[test]
    fn echo_answers_what_it_was_sent() {
        let api = PluginApi::new(Default::default(), Default::default());
        let got = call(&api, "a", "post", "/v1/echo/x?y=1", Some("[1]")).unwrap();
        assert_eq!(
            got,
            json!({"method": "POST", "path": "/v1/echo/x?y=1", "body": [1], "plugin": "a", "key": "k"})
        );
        assert_eq!(call(&api, "a", "GET", "/v1/keys", None), Ok(json!([])));
    }
}
