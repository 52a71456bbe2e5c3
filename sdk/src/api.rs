//! The host API client a key uses from normalize-params, process,
//! pre-consume and cleanup.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// An error answered by the host API (or by a mock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP-like status: 400, 403, 404, 405, 500...
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host API answered {}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A client of the host API. The identity behind it is the host's.
pub trait Api {
    /// Calls `method path` with an optional JSON body; returns the JSON text.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, ApiError>;
}

impl dyn Api + '_ {
    /// `GET path`, parsed into `T`.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let text = self.call("GET", path, None)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// `method path` with `body` serialized as JSON, the answer parsed into `T`.
    pub fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let body = serde_json::to_string(body)?;
        let text = self.call(method, path, Some(&body))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The real host API, through the `call-api` import. Only works inside a
/// component run by the host; natively every call fails with status 501.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostApi;

impl Api for HostApi {
    #[cfg(target_arch = "wasm32")]
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, ApiError> {
        crate::bindings::weir::plugin::host::call_api(method, path, body).map_err(|e| ApiError {
            status: e.status,
            message: e.message,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn call(&self, method: &str, path: &str, _body: Option<&str>) -> Result<String, ApiError> {
        Err(ApiError {
            status: 501,
            message: format!("{method} {path}: no host outside a component; use testing::MockApi"),
        })
    }
}
