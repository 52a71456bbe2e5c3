//! On-demand scan jobs of a datastore (Fusion 0.8.17's "agent jobs"): a
//! view client asks for a fresh scan of one path, the agent's next
//! heartbeat answer carries a `scan` command, the agent pushes the rows
//! (`message_source: on_demand_job`, arbitrated like snapshot rows) and
//! then a `job_complete` push, which is applied in order after those rows.
//!
//! Bounded: at most [`MAX_PENDING_JOBS`] pending at once (a second request
//! for a path with a pending job joins it), a pending job fails after
//! [`JOB_TIMEOUT`], finished jobs are listed for [`JOB_RETENTION`] and at
//! most [`MAX_JOBS`] in all. A job belongs to the session that was
//! authoritative when it was made; when that session is replaced, its
//! pending jobs fail (the new session's snapshot rescans everything).

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

/// Most jobs pending at once per datastore.
pub const MAX_PENDING_JOBS: usize = 100;

/// Most jobs listed per datastore, pending and finished.
pub const MAX_JOBS: usize = 1_000;

/// How long a pending job waits for its `job_complete`.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a finished job stays listed.
pub const JOB_RETENTION: Duration = Duration::from_secs(3_600);

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Sent (or about to be sent) to the agent; no `job_complete` yet.
    Pending,
    /// The agent reported it done; its rows are applied.
    Completed,
    /// Timed out, or its session ended first (`error` says which).
    Failed,
}

/// Fusion's progress of a job over its agents (Weir has one agent session
/// per datastore, so 0 or 1 of 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Agents that finished.
    pub completed_pipes: u32,
    /// Agents asked.
    pub total_pipes: u32,
    /// `completed_pipes / total_pipes` in percent.
    pub percentage: f64,
}

/// One on-demand scan job, as `GET .../jobs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanJob {
    /// Its id (8 hex digits).
    pub job_id: String,
    /// The datastore.
    pub view_id: String,
    /// The path to scan.
    pub path: String,
    /// Whether subdirectories are scanned too.
    pub recursive: bool,
    /// Where it is.
    pub status: JobStatus,
    /// Over the agent sessions asked.
    pub progress: Progress,
    /// When it was made, seconds since the epoch.
    pub created_at: f64,
    /// When it finished (completed or failed).
    pub completed_at: Option<f64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The session asked to scan.
    #[serde(skip)]
    pub session: String,
    /// Whether a heartbeat answer carried its command (by this host).
    #[serde(skip)]
    delivered: bool,
}

/// A `scan` command of a heartbeat answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanCommand {
    /// Always `scan`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The path to scan.
    pub path: String,
    /// Whether subdirectories are scanned too.
    pub recursive: bool,
    /// The job to name in `job_complete`.
    pub job_id: String,
    /// When the job was made, seconds since the epoch.
    pub created_at: f64,
}

/// Why a scan cannot be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Too many jobs are pending.
    #[error(
        "datastore `{datastore}` has {MAX_PENDING_JOBS} on-demand scans pending; wait for one to complete"
    )]
    TooMany {
        /// The datastore.
        datastore: String,
    },
}

/// The jobs of one datastore, oldest first.
#[derive(Debug, Default)]
pub struct Jobs {
    list: VecDeque<ScanJob>,
}

/// A fresh job id: 8 hex digits, like Fusion's.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

impl Jobs {
    /// The pending job of `session` for `path` and `recursive`, if any.
    pub fn pending(&self, session: &str, path: &str, recursive: bool) -> Option<&ScanJob> {
        self.list.iter().find(|j| {
            j.status == JobStatus::Pending
                && j.session == session
                && j.path == path
                && j.recursive == recursive
        })
    }

    /// Whether one more job may be made now.
    pub fn check_room(&self, datastore: &str) -> Result<(), JobError> {
        let pending = self
            .list
            .iter()
            .filter(|j| j.status == JobStatus::Pending)
            .count();
        if pending >= MAX_PENDING_JOBS {
            return Err(JobError::TooMany {
                datastore: datastore.to_string(),
            });
        }
        Ok(())
    }

    /// Adds job `id` for `session` (a job id seen before is ignored: in a
    /// cluster the log may hand an operation back twice).
    pub fn add(
        &mut self,
        datastore: &str,
        id: &str,
        session: &str,
        path: &str,
        recursive: bool,
        now: f64,
    ) {
        self.expire(now);
        if self.list.iter().any(|j| j.job_id == id) {
            return;
        }
        self.list.push_back(ScanJob {
            job_id: id.to_string(),
            view_id: datastore.to_string(),
            path: path.to_string(),
            recursive,
            status: JobStatus::Pending,
            progress: Progress {
                completed_pipes: 0,
                total_pipes: 1,
                percentage: 0.0,
            },
            created_at: now,
            completed_at: None,
            error: None,
            session: session.to_string(),
            delivered: false,
        });
        self.trim();
    }

    /// The commands of `session`'s pending jobs that no heartbeat answer
    /// carried yet; they are marked carried.
    pub fn take_commands(&mut self, session: &str, now: f64) -> Vec<ScanCommand> {
        self.expire(now);
        self.list
            .iter_mut()
            .filter(|j| j.status == JobStatus::Pending && j.session == session && !j.delivered)
            .map(|j| {
                j.delivered = true;
                ScanCommand {
                    kind: "scan",
                    path: j.path.clone(),
                    recursive: j.recursive,
                    job_id: j.job_id.clone(),
                    created_at: j.created_at,
                }
            })
            .collect()
    }

    /// `session` reports a scan done: the pending job named by `job_id`,
    /// or else the pending ones for `scan_path`. Returns how many ended.
    pub fn complete(
        &mut self,
        session: &str,
        job_id: Option<&str>,
        scan_path: Option<&str>,
        now: f64,
    ) -> usize {
        let mut ended = 0;
        for j in self.list.iter_mut() {
            let named = match job_id {
                Some(id) => j.job_id == id,
                None => scan_path == Some(j.path.as_str()),
            };
            if named && j.status == JobStatus::Pending && j.session == session {
                j.status = JobStatus::Completed;
                j.completed_at = Some(now);
                j.progress = Progress {
                    completed_pipes: 1,
                    total_pipes: 1,
                    percentage: 100.0,
                };
                ended += 1;
            }
        }
        ended
    }

    /// A new authoritative session: the pending jobs of any other fail.
    pub fn session_replaced(&mut self, session: &str, now: f64) {
        for j in self.list.iter_mut() {
            if j.status == JobStatus::Pending && j.session != session {
                j.status = JobStatus::Failed;
                j.completed_at = Some(now);
                j.error = Some(
                    "the agent's session ended before the scan completed; its new session's snapshot covers the path"
                        .into(),
                );
            }
        }
    }

    /// Fails pending jobs past [`JOB_TIMEOUT`] and forgets finished ones
    /// past [`JOB_RETENTION`].
    pub fn expire(&mut self, now: f64) {
        for j in self.list.iter_mut() {
            if j.status == JobStatus::Pending && now - j.created_at > JOB_TIMEOUT.as_secs_f64() {
                j.status = JobStatus::Failed;
                j.completed_at = Some(now);
                j.error = Some(format!(
                    "the agent did not report the scan complete within {} s",
                    JOB_TIMEOUT.as_secs()
                ));
            }
        }
        let retention = JOB_RETENTION.as_secs_f64();
        self.list.retain(|j| {
            j.status == JobStatus::Pending || j.completed_at.is_some_and(|t| now - t <= retention)
        });
    }

    /// Keeps at most [`MAX_JOBS`], dropping the oldest finished first.
    fn trim(&mut self) {
        while self.list.len() > MAX_JOBS {
            match self
                .list
                .iter()
                .position(|j| j.status != JobStatus::Pending)
            {
                Some(i) => {
                    self.list.remove(i);
                }
                None => {
                    self.list.pop_front();
                }
            }
        }
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<ScanJob> {
        self.list.iter().cloned().collect()
    }

    /// Job `id`.
    pub fn get(&self, id: &str) -> Option<ScanJob> {
        self.list.iter().find(|j| j.job_id == id).cloned()
    }

    /// A pending job that will rescan `path`: one for `path` itself, or a
    /// recursive one for a directory above it.
    pub fn covering(&self, path: &str) -> Option<&ScanJob> {
        self.list.iter().rev().find(|j| {
            j.status == JobStatus::Pending
                && (j.path == path
                    || (j.recursive
                        && (j.path == "/"
                            || path
                                .strip_prefix(j.path.as_str())
                                .is_some_and(|rest| rest.starts_with('/')))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_goes_out_once_and_completes_by_id_or_path() {
        let mut jobs = Jobs::default();
        jobs.add("ds", "j1", "s1", "/a", true, 10.0);
        jobs.add("ds", "j1", "s1", "/a", true, 10.0);
        assert_eq!(jobs.list().len(), 1, "a job id seen twice is one job");
        assert!(jobs.take_commands("s2", 11.0).is_empty());
        let cmds = jobs.take_commands("s1", 11.0);
        assert_eq!(cmds.len(), 1);
        assert_eq!(
            serde_json::to_value(&cmds[0]).unwrap(),
            serde_json::json!({"type": "scan", "path": "/a", "recursive": true, "job_id": "j1", "created_at": 10.0})
        );
        assert!(jobs.take_commands("s1", 12.0).is_empty());
        assert_eq!(jobs.covering("/a/b/c").unwrap().job_id, "j1");
        assert!(jobs.covering("/ab").is_none());
        assert_eq!(jobs.complete("s2", Some("j1"), None, 13.0), 0);
        assert_eq!(jobs.complete("s1", None, Some("/a"), 13.0), 1);
        let j = jobs.get("j1").unwrap();
        assert_eq!(j.status, JobStatus::Completed);
        assert_eq!(j.completed_at, Some(13.0));
        assert_eq!(j.progress.percentage, 100.0);
        assert!(jobs.covering("/a/b").is_none());
    }

    #[test]
    fn pending_jobs_are_bounded_fail_with_their_session_and_in_time() {
        let mut jobs = Jobs::default();
        for i in 0..MAX_PENDING_JOBS {
            jobs.add("ds", &format!("j{i}"), "s1", &format!("/p{i}"), false, 0.0);
        }
        assert!(matches!(
            jobs.check_room("ds"),
            Err(JobError::TooMany { .. })
        ));
        jobs.session_replaced("s2", 1.0);
        assert!(jobs.check_room("ds").is_ok());
        let j = jobs.get("j0").unwrap();
        assert_eq!(j.status, JobStatus::Failed);
        assert!(j.error.unwrap().contains("session ended"));
        jobs.add("ds", "late", "s2", "/x", true, 2.0);
        jobs.expire(2.0 + JOB_TIMEOUT.as_secs_f64() + 1.0);
        let late = jobs.get("late").unwrap();
        assert_eq!(late.status, JobStatus::Failed);
        assert!(late.error.unwrap().contains("within 600 s"));
        jobs.expire(1.0 + JOB_RETENTION.as_secs_f64() + 1.0);
        assert!(jobs.get("j0").is_none(), "finished jobs are forgotten");
        assert!(jobs.get("late").is_some());
        for i in 0..MAX_JOBS + 10 {
            jobs.add("ds", &format!("k{i}"), "s2", "/y", true, 4000.0);
            jobs.complete("s2", Some(&format!("k{i}")), None, 4000.0);
        }
        assert_eq!(jobs.list().len(), MAX_JOBS);
    }
}
