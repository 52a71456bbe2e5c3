//! The operations of a datastore's ingest log in a cluster
//! ([`IngestOp`]) and their encoding: a JSON header line, then the body as
//! the agent sent it. Every host decodes what any host appended, so the
//! decoder takes any bytes (it is fuzzed).

use serde::{Deserialize, Serialize};

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
    /// An on-demand scan job for `session`, made at `at` (seconds since
    /// the epoch); the host that carries the agent's next heartbeat hands
    /// it out.
    Job {
        /// The job id.
        id: String,
        /// The session asked to scan.
        session: String,
        /// The path to scan.
        path: String,
        /// Whether subdirectories are scanned too.
        recursive: bool,
        /// When it was made.
        at: f64,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recursive: Option<bool>,
}

impl Head {
    fn new(op: &str) -> Self {
        Self {
            op: op.into(),
            session: None,
            task_id: None,
            at: None,
            job: None,
            path: None,
            recursive: None,
        }
    }
}

impl IngestOp {
    /// Its form in the log: a JSON header line, then the body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (head, body): (Head, &[u8]) = match self {
            Self::Session { id, task_id } => (
                Head {
                    session: Some(id.clone()),
                    task_id: Some(task_id.clone()),
                    ..Head::new("session")
                },
                &[],
            ),
            Self::Push { session, at, body } => (
                Head {
                    session: Some(session.clone()),
                    at: Some(*at),
                    ..Head::new("push")
                },
                body,
            ),
            Self::AuditStart => (Head::new("audit_start"), &[]),
            Self::AuditEnd => (Head::new("audit_end"), &[]),
            Self::Feedback { body } => (Head::new("feedback"), body),
            Self::Job {
                id,
                session,
                path,
                recursive,
                at,
            } => (
                Head {
                    session: Some(session.clone()),
                    at: Some(*at),
                    job: Some(id.clone()),
                    path: Some(path.clone()),
                    recursive: Some(*recursive),
                    ..Head::new("job")
                },
                &[],
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
            "job" => Self::Job {
                id: need(head.job.clone(), "job")?,
                session: need(head.session.clone(), "session")?,
                path: need(head.path.clone(), "path")?,
                recursive: head.recursive.unwrap_or(true),
                at: head.at.ok_or("`job` without at")?,
            },
            other => {
                return Err(format!("unknown operation `{}`", crate::text::echo(other)));
            }
        })
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
            IngestOp::Job {
                id: "5525facd".into(),
                session: "s".into(),
                path: "/a b".into(),
                recursive: false,
                at: 2.5,
            },
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
