//! Agent sessions of one datastore. Last agent wins: creating a session makes
//! the previous one obsolete at once. Only the authoritative session may
//! push, and its snapshot alone builds the index. Any accepted push counts as
//! a keep-alive, like a heartbeat.
//!
//! Time is passed in (`now: Instant`) so that expiry is testable without
//! sleeping.

use std::collections::VecDeque;
use std::time::Instant;

use rand::Rng;

pub use weir_core::settings::SessionConfig;

/// Why a session may not act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Never existed here (or forgotten long ago).
    #[error("session {0} is unknown")]
    Unknown(String),
    /// A newer session took over, or it was deleted.
    #[error("session {0} is obsolete: a newer session took over")]
    Obsolete(String),
    /// No heartbeat or push within the timeout.
    #[error("session {0} expired")]
    Expired(String),
}

/// The authoritative session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its id (a random UUID).
    pub id: String,
    /// The agent's task id (`<agent_id>:<pipe_id>`).
    pub task_id: String,
    /// Creation time.
    pub created_at: Instant,
    /// Last heartbeat or accepted push.
    pub last_seen: Instant,
    /// The snapshot end was applied.
    pub snapshot_done: bool,
}

/// How many obsolete ids are remembered (to answer "obsolete" rather than
/// "unknown"); older ones become unknown, which the agent treats alike.
const REMEMBERED: usize = 1024;

/// The sessions of one datastore.
#[derive(Debug)]
pub struct Sessions {
    config: SessionConfig,
    current: Option<Session>,
    obsolete: VecDeque<String>,
}

/// A random version-4 UUID, as text.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Sessions {
    /// No session yet.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            current: None,
            obsolete: VecDeque::new(),
        }
    }

    /// The timing settings.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    fn retire(&mut self, id: String) {
        if self.obsolete.len() == REMEMBERED {
            self.obsolete.pop_front();
        }
        self.obsolete.push_back(id);
    }

    /// Creates the new authoritative session; returns it and the id of the
    /// session it made obsolete, if any.
    pub fn create(&mut self, task_id: &str, now: Instant) -> (Session, Option<String>) {
        self.adopt(&new_uuid(), task_id, now)
    }

    /// Makes session `id`, decided elsewhere (by the cluster), the
    /// current one.
    pub fn adopt(&mut self, id: &str, task_id: &str, now: Instant) -> (Session, Option<String>) {
        let session = Session {
            id: id.to_string(),
            task_id: task_id.to_string(),
            created_at: now,
            last_seen: now,
            snapshot_done: false,
        };
        let previous = self.current.replace(session.clone()).map(|s| s.id);
        if let Some(p) = &previous {
            self.retire(p.clone());
        }
        (session, previous)
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) > self.config.timeout
    }

    /// Checks that `id` is the live authoritative session and counts this as
    /// a keep-alive.
    pub fn touch(&mut self, id: &str, now: Instant) -> Result<&mut Session, SessionError> {
        self.check(id, now)?;
        let s = self.current.as_mut().expect("checked above");
        s.last_seen = now;
        Ok(s)
    }

    /// Like [`Self::touch`] without the keep-alive.
    pub fn check(&self, id: &str, now: Instant) -> Result<&Session, SessionError> {
        match &self.current {
            Some(s) if s.id == id => {
                if self.expired(s, now) {
                    Err(SessionError::Expired(id.to_string()))
                } else {
                    Ok(s)
                }
            }
            _ if self.obsolete.iter().any(|o| o == id) => {
                Err(SessionError::Obsolete(id.to_string()))
            }
            _ => Err(SessionError::Unknown(id.to_string())),
        }
    }

    /// Ends `id`. Deleting an obsolete or unknown session is not an error
    /// (the agent may retry a delete).
    pub fn delete(&mut self, id: &str) -> bool {
        if self.current.as_ref().is_some_and(|s| s.id == id) {
            let s = self.current.take().expect("just checked");
            self.retire(s.id);
            return true;
        }
        false
    }

    /// The authoritative session, if it is alive at `now`.
    pub fn alive(&self, now: Instant) -> Option<&Session> {
        self.current.as_ref().filter(|s| !self.expired(s, now))
    }

    /// The authoritative session, alive or expired.
    pub fn current(&self) -> Option<&Session> {
        self.current.as_ref()
    }

    /// Marks the snapshot of session `id` complete.
    pub fn snapshot_done(&mut self, id: &str) {
        if let Some(s) = self.current.as_mut().filter(|s| s.id == id) {
            s.snapshot_done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn last_agent_wins() {
        let t0 = Instant::now();
        let mut s = Sessions::new(SessionConfig::default());
        let (a, prev) = s.create("agent-a:pipe", t0);
        assert_eq!(prev, None);
        assert!(s.touch(&a.id, t0).is_ok());
        let (b, prev) = s.create("agent-b:pipe", t0);
        assert_eq!(prev.as_deref(), Some(a.id.as_str()));
        assert_eq!(
            s.touch(&a.id, t0).unwrap_err(),
            SessionError::Obsolete(a.id.clone())
        );
        assert!(s.touch(&b.id, t0).is_ok());
        assert_eq!(
            s.check("nope", t0).unwrap_err(),
            SessionError::Unknown("nope".into())
        );
    }

    #[test]
    fn expiry_and_keep_alive() {
        let t0 = Instant::now();
        let mut s = Sessions::new(SessionConfig::default());
        let (a, _) = s.create("t", t0);
        // Touches (heartbeats or pushes) keep it alive past the timeout.
        for i in 1..=4 {
            assert!(s.touch(&a.id, t0 + Duration::from_secs(20 * i)).is_ok());
        }
        assert!(s.alive(t0 + Duration::from_secs(100)).is_some());
        let late = t0 + Duration::from_secs(80 + 31);
        assert!(s.alive(late).is_none());
        assert_eq!(
            s.touch(&a.id, late).unwrap_err(),
            SessionError::Expired(a.id.clone())
        );
    }

    #[test]
    fn delete_and_snapshot_state() {
        let t0 = Instant::now();
        let mut s = Sessions::new(SessionConfig::default());
        let (a, _) = s.create("t", t0);
        assert!(!s.alive(t0).unwrap().snapshot_done);
        s.snapshot_done(&a.id);
        assert!(s.alive(t0).unwrap().snapshot_done);
        assert!(s.delete(&a.id));
        assert!(!s.delete(&a.id));
        assert_eq!(
            s.check(&a.id, t0).unwrap_err(),
            SessionError::Obsolete(a.id.clone())
        );
        assert!(s.alive(t0).is_none());
    }

    #[test]
    fn uuids_are_version_4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid());
    }
}
