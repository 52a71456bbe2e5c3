//! What the engine needs from the host to answer a guest's `call-api`: the
//! [`CallApi`] trait (the host's route table implements it, in
//! `plugin_api`), who is calling, and how a call is refused. Defined here,
//! beside the engine, so that the sandbox does not depend on the rooms it
//! serves (the datastores, the registry).

/// Who is calling: the plugin and the key it is serving.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Plugin name (file stem).
    pub plugin: &'a str,
    /// Key being served.
    pub key: &'a str,
}

/// An answer other than success, with an HTTP-like status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct CallError {
    /// 400, 403, 404, 405, 413...
    pub status: u16,
    /// What is wrong.
    pub message: String,
}

impl CallError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What plugins can call. Implementations must be cheap to call from the
/// blocking threads that run plugins.
pub trait CallApi: Send + Sync + 'static {
    /// Answers `method path` with an optional JSON body.
    fn call(
        &self,
        caller: &Caller<'_>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<String, CallError>;
}
