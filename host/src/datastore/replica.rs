//! What a datastore needs from a cluster ([`Replication`]) so that several
//! hosts serve it: the session authority (last agent wins, expiry) kept where
//! every host sees it, and one ordered ingest log per datastore that every
//! host applies to its own index replica.
//!
//! On one host there is no replication: sessions live in memory and pushes
//! go straight to the queue. With one, an accepted push, audit signal or
//! sentinel feedback is appended to the log (and answered once the log has
//! it); every host's apply thread takes the log's operations in order,
//! including the accepting host's own.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::session::SessionError;
pub use weir_core::ingest_log::IngestOp;

/// A datastore's session as every host of a cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSession {
    /// Its id.
    pub id: String,
    /// The agent's task id.
    pub task_id: String,
    /// When it was made, ms since the Unix epoch.
    pub created_ms: u64,
    /// Its last heartbeat or push, ms since the Unix epoch.
    pub seen_ms: u64,
}

impl SharedSession {
    /// Whether it has outlived `timeout` at `now_ms`.
    pub fn expired(&self, now_ms: u64, timeout: Duration) -> bool {
        now_ms.saturating_sub(self.seen_ms) > timeout.as_millis() as u64
    }
}

/// The cluster could not be reached, or refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Why a shared session may not act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TouchError {
    /// Unknown, obsolete or expired.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The cluster is out of reach.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// The cluster side of a datastore. Implemented by `cluster`; the datastore
/// calls it from request handlers (blocking calls, bounded by the cluster's
/// request timeout).
pub trait Replication: Send + Sync {
    /// Makes `session` the authoritative session of `datastore`, replacing
    /// any other (compare-and-set: of two agents at once, one wins and the
    /// other's session is obsolete at once).
    fn create_session(&self, datastore: &str, session: &SharedSession) -> Result<(), Unavailable>;

    /// Keeps session `id` alive; refuses it when it is not the authoritative
    /// one or has outlived `timeout`.
    fn touch(&self, datastore: &str, id: &str, timeout: Duration) -> Result<(), TouchError>;

    /// Ends session `id` if it is the authoritative one.
    fn delete_session(&self, datastore: &str, id: &str) -> Result<bool, Unavailable>;

    /// The authoritative session as last seen (expired or not).
    fn session(&self, datastore: &str) -> Option<SharedSession>;

    /// Appends `op` to the datastore's ingest log; returns once the log has
    /// it.
    fn append(&self, datastore: &str, op: &IngestOp) -> Result<(), Unavailable>;

    /// Whether the cluster is within reach now. While it is not, nobody
    /// can tell whether the agent lives: views go on serving what the
    /// replica last applied (and `/readyz` says the cluster is out of
    /// reach) rather than expiring the session.
    fn connected(&self) -> bool {
        true
    }
}
