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

/// One operation of a datastore's ingest log, in the order the hosts apply
/// it. Pushes and feedback travel as the agent sent them (already checked
/// by the accepting host) and are parsed again by each host, with the
/// accepting host's clock, so that every replica applies the same rows.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOp {
    /// A new authoritative session: the replica starts over.
    Session {
        /// Its id.
        id: String,
        /// The agent's task id.
        task_id: String,
    },
    /// A push of `session`, received at `at` (seconds since the epoch).
    Push {
        /// The session.
        session: String,
        /// When the accepting host received it.
        at: f64,
        /// The body as the agent sent it.
        body: Vec<u8>,
    },
    /// An audit starts.
    AuditStart,
    /// An audit ends.
    AuditEnd,
    /// Sentinel feedback, as the agent sent it.
    Feedback {
        /// The body.
        body: Vec<u8>,
    },
}

/// The header line of an encoded [`IngestOp`]; the body follows it.
#[derive(Serialize, Deserialize)]
struct Head {
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<f64>,
}

impl IngestOp {
    /// Its form in the log: a JSON header line, then the body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (head, body): (Head, &[u8]) = match self {
            Self::Session { id, task_id } => (
                Head {
                    op: "session".into(),
                    session: Some(id.clone()),
                    task_id: Some(task_id.clone()),
                    at: None,
                },
                &[],
            ),
            Self::Push { session, at, body } => (
                Head {
                    op: "push".into(),
                    session: Some(session.clone()),
                    task_id: None,
                    at: Some(*at),
                },
                body,
            ),
            Self::AuditStart | Self::AuditEnd => (
                Head {
                    op: if *self == Self::AuditStart {
                        "audit_start"
                    } else {
                        "audit_end"
                    }
                    .into(),
                    session: None,
                    task_id: None,
                    at: None,
                },
                &[],
            ),
            Self::Feedback { body } => (
                Head {
                    op: "feedback".into(),
                    session: None,
                    task_id: None,
                    at: None,
                },
                body,
            ),
        };
        // A struct of strings and a number: serializing cannot fail.
        let mut out = serde_json::to_vec(&head).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    /// Reads an operation back; says what is wrong with one that is not.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let split = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no header line")?;
        let head: Head =
            serde_json::from_slice(&bytes[..split]).map_err(|e| format!("header: {e}"))?;
        let body = bytes[split + 1..].to_vec();
        let need = |v: Option<String>, what: &str| v.ok_or(format!("`{}` without {what}", head.op));
        Ok(match head.op.as_str() {
            "session" => Self::Session {
                id: need(head.session.clone(), "session")?,
                task_id: need(head.task_id.clone(), "task_id")?,
            },
            "push" => Self::Push {
                session: need(head.session.clone(), "session")?,
                at: head.at.ok_or("`push` without at")?,
                body,
            },
            "audit_start" => Self::AuditStart,
            "audit_end" => Self::AuditEnd,
            "feedback" => Self::Feedback { body },
            other => {
                return Err(format!(
                    "unknown operation `{}`",
                    weir_core::text::echo(other)
                ));
            }
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_survive_their_encoding_and_bad_ones_are_named() {
        for op in [
            IngestOp::Session {
                id: "s".into(),
                task_id: "a:p".into(),
            },
            IngestOp::Push {
                session: "s".into(),
                at: 1.5,
                body: b"{\"events\":[]}\n\x00".to_vec(),
            },
            IngestOp::AuditStart,
            IngestOp::AuditEnd,
            IngestOp::Feedback { body: vec![] },
        ] {
            assert_eq!(IngestOp::decode(&op.encode()).unwrap(), op);
        }
        assert_eq!(IngestOp::decode(b"x").unwrap_err(), "no header line");
        assert!(
            IngestOp::decode(b"{\"op\":\"push\"}\n")
                .unwrap_err()
                .contains("without session")
        );
        assert!(
            IngestOp::decode(b"{\"op\":\"nope\"}\n")
                .unwrap_err()
                .contains("unknown operation")
        );
    }
}
