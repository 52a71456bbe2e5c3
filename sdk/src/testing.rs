//! Native unit testing of keys: a mock host API that answers from canned
//! routes and records every call.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::{Api, ApiError};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Body, if any.
    pub body: Option<String>,
}

type Handler = Box<dyn Fn(Option<&str>) -> Result<String, ApiError>>;

/// A host API answering canned routes. Unknown routes answer 404.
///
/// ```
/// use weir_sdk::testing::MockApi;
/// use weir_sdk::Api;
/// let api = MockApi::new().on("GET", "/v1/keys", |_| Ok("[]".into()));
/// assert_eq!(api.call("GET", "/v1/keys", None).unwrap(), "[]");
/// assert_eq!(api.calls().len(), 1);
/// ```
#[derive(Default)]
pub struct MockApi {
    routes: HashMap<(String, String), Handler>,
    calls: RefCell<Vec<Call>>,
}

impl MockApi {
    /// A mock with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `method path` with `handler(body)`.
    pub fn on(
        mut self,
        method: &str,
        path: &str,
        handler: impl Fn(Option<&str>) -> Result<String, ApiError> + 'static,
    ) -> Self {
        self.routes
            .insert((method.to_string(), path.to_string()), Box::new(handler));
        self
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

impl Api for MockApi {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, ApiError> {
        self.calls.borrow_mut().push(Call {
            method: method.to_string(),
            path: path.to_string(),
            body: body.map(str::to_string),
        });
        match self.routes.get(&(method.to_string(), path.to_string())) {
            Some(handler) => handler(body),
            None => Err(ApiError {
                status: 404,
                message: format!("no mock route for {method} {path}"),
            }),
        }
    }
}
