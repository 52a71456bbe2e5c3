//! [`SharedDatastores`]: datastores served by every host of the cluster
//! (the datastore's [`Replication`]).
//!
//! - **Sessions** live in the KV bucket `{name}-sessions`, one entry per
//!   datastore. Creating one is a compare-and-set on the entry's revision,
//!   so of two agents at once one wins; a heartbeat or push rewrites
//!   `seen_ms` (at most once a second per host), and every host judges
//!   expiry by it. Each host mirrors the bucket through a watch; a session
//!   it does not know yet is read from the bucket before it is refused.
//! - **Ingest** goes to the stream `{name}-ingest`, subject
//!   `{name}.ingest.{datastore, hex}`: one total order per datastore. A new
//!   session's marker purges what came before it on its subject, so the
//!   stream holds the current session's history; a host that starts reads
//!   it from the beginning into its own replica (without publishing its
//!   changes again: the hosts that applied them live did). Every host
//!   publishes the changes it applies live with ids derived from the log's
//!   sequence numbers, and the event stream's duplicate window keeps one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{Config as StreamConfig, Stream};
use futures_util::StreamExt;

use super::{Cluster, ClusterError, REQUEST_TIMEOUT};
use crate::datastore::Datastore;
use crate::datastore::replica::{IngestOp, Replication, SharedSession, TouchError, Unavailable};
use crate::datastore::session::SessionError;
use crate::time::now_ms;

/// How often one host rewrites a session's `seen_ms` at most.
const TOUCH_EVERY_MS: u64 = 1_000;

/// Obsolete session ids remembered per datastore (to answer "obsolete"
/// rather than "unknown"; the agent treats both alike).
const REMEMBERED: usize = 256;

#[derive(Default)]
struct Mirror {
    /// The authoritative session of each datastore and its KV revision.
    current: HashMap<String, (SharedSession, u64)>,
    obsolete: HashMap<String, VecDeque<String>>,
}

impl Mirror {
    /// Takes what the bucket says of `datastore`.
    fn set(&mut self, datastore: &str, entry: Option<(SharedSession, u64)>) {
        let previous = match &entry {
            Some((s, rev)) => {
                if let Some((old, old_rev)) = self.current.get(datastore)
                    && *old_rev > *rev
                {
                    // An older revision arriving late: keep the newer one.
                    let _ = old;
                    return;
                }
                self.current
                    .insert(datastore.to_string(), (s.clone(), *rev))
            }
            None => self.current.remove(datastore),
        };
        if let Some((old, _)) = previous
            && entry.as_ref().is_none_or(|(s, _)| s.id != old.id)
        {
            let ids = self.obsolete.entry(datastore.to_string()).or_default();
            if ids.len() == REMEMBERED {
                ids.pop_front();
            }
            ids.push_back(old.id);
        }
    }

    fn refusal(&self, datastore: &str, id: &str) -> SessionError {
        let obsolete = self
            .obsolete
            .get(datastore)
            .is_some_and(|ids| ids.iter().any(|o| o == id));
        if obsolete {
            SessionError::Obsolete(id.to_string())
        } else {
            SessionError::Unknown(id.to_string())
        }
    }
}

/// The cluster side of every datastore.
pub struct SharedDatastores {
    cluster: Arc<Cluster>,
    sessions: kv::Store,
    stream: Stream,
    /// `{name}.ingest`.
    prefix: String,
    mirror: Arc<Mutex<Mirror>>,
}

fn unavailable(e: impl std::fmt::Display) -> Unavailable {
    Unavailable(format!("NATS: {e}"))
}

fn decode_entry(entry: &kv::Entry) -> Option<(SharedSession, u64)> {
    match entry.operation {
        kv::Operation::Put => serde_json::from_slice(&entry.value)
            .ok()
            .map(|s| (s, entry.revision)),
        kv::Operation::Delete | kv::Operation::Purge => None,
    }
}

impl SharedDatastores {
    /// Makes (or finds) the session bucket and the ingest stream, and
    /// starts mirroring the sessions.
    pub fn open(cluster: Arc<Cluster>) -> Result<Arc<Self>, ClusterError> {
        let c = cluster.config().clone();
        let prefix = format!("{}.ingest", c.name);
        let js = cluster.js.clone();
        let stream_config = StreamConfig {
            name: format!("{}-ingest", c.name),
            subjects: vec![format!("{prefix}.>")],
            num_replicas: c.replicas,
            max_bytes: i64::try_from(c.log.retention_bytes).unwrap_or(i64::MAX),
            ..StreamConfig::default()
        };
        let sessions = cluster.bucket("sessions", Duration::ZERO)?;
        let stream = cluster
            .block_on(async move { js.get_or_create_stream(stream_config).await })
            .ok_or_else(|| ClusterError::JetStream("the NATS task failed".into()))?
            .map_err(|e| ClusterError::JetStream(format!("the datastore stream: {e}")))?;
        let this = Arc::new(Self {
            cluster,
            sessions,
            stream,
            prefix,
            mirror: Arc::default(),
        });
        this.watch_sessions();
        Ok(this)
    }

    fn subject(&self, datastore: &str) -> String {
        format!("{}.{}", self.prefix, hex::encode(datastore))
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the mirror up to date with the bucket, for as long as the
    /// cluster runs.
    fn watch_sessions(&self) {
        let (bucket, mirror) = (self.sessions.clone(), Arc::downgrade(&self.mirror));
        self.cluster.rt().spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match bucket.watch_with_history(">").await {
                    Ok(mut changes) => {
                        backoff = Duration::from_millis(100);
                        while let Some(change) = changes.next().await {
                            let Ok(entry) = change else { break };
                            let Some(mirror) = mirror.upgrade() else {
                                return;
                            };
                            let Some(ds) = hex::decode(&entry.key)
                                .ok()
                                .and_then(|b| String::from_utf8(b).ok())
                            else {
                                continue;
                            };
                            mirror
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .set(&ds, decode_entry(&entry));
                        }
                    }
                    Err(e) => tracing::warn!("watching the agent sessions: {e}"),
                }
                if mirror.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Reads `datastore`'s entry from the bucket (not the mirror) and
    /// updates the mirror with it.
    fn read(&self, datastore: &str) -> Result<Option<(SharedSession, u64)>, Unavailable> {
        let (bucket, key) = (self.sessions.clone(), hex::encode(datastore));
        let entry = self
            .cluster
            .block_on(async move { bucket.entry(key).await })
            .ok_or_else(|| unavailable("the NATS task failed"))?
            .map_err(unavailable)?;
        let entry = entry.as_ref().and_then(decode_entry);
        self.mirror().set(datastore, entry.clone());
        Ok(entry)
    }

    /// Writes `session` over revision `expected` (`None`: no entry);
    /// `Ok(None)` when another host wrote first.
    fn write(
        &self,
        datastore: &str,
        session: &SharedSession,
        expected: Option<u64>,
    ) -> Result<Option<u64>, Unavailable> {
        let (bucket, key) = (self.sessions.clone(), hex::encode(datastore));
        let value: bytes::Bytes = serde_json::to_vec(session).unwrap_or_default().into();
        let written = self
            .cluster
            .block_on(async move {
                let r = match expected {
                    Some(rev) => bucket.update(key, value, rev).await.map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                    None => bucket.create(key, value).await.map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    }),
                };
                match r {
                    Ok(rev) => Ok(Some(rev)),
                    Err((true, _)) => Ok(None),
                    Err((false, e)) => Err(e),
                }
            })
            .ok_or_else(|| unavailable("the NATS task failed"))?
            .map_err(unavailable)?;
        if let Some(rev) = written {
            self.mirror().set(datastore, Some((session.clone(), rev)));
        }
        Ok(written)
    }

    /// Applies `datastore`'s ingest log to its replica on this host, from
    /// the beginning, for as long as both live.
    pub fn follow(self: &Arc<Self>, datastore: Arc<Datastore>) {
        let task = Follower {
            stream: self.stream.clone(),
            subject: self.subject(datastore.name()),
            datastore: Arc::downgrade(&datastore),
        };
        self.cluster.rt().spawn(task.run());
    }
}

impl Replication for SharedDatastores {
    fn create_session(&self, datastore: &str, session: &SharedSession) -> Result<(), Unavailable> {
        // Compare-and-set: whoever wrote in between is replaced, but by a
        // deliberate write over the revision just read, never blindly.
        for _ in 0..16 {
            let expected = self.read(datastore)?.map(|(_, rev)| rev);
            if self.write(datastore, session, expected)?.is_some() {
                return Ok(());
            }
        }
        Err(Unavailable(
            "the session entry kept changing under sixteen attempts".into(),
        ))
    }

    fn touch(&self, datastore: &str, id: &str, timeout: Duration) -> Result<(), TouchError> {
        let known = self.mirror().current.get(datastore).cloned();
        let entry = match known {
            Some((s, rev)) if s.id == id => Some((s, rev)),
            // Perhaps made a moment ago on another host: ask the bucket.
            _ => self.read(datastore)?,
        };
        for _ in 0..4 {
            let Some((mut s, rev)) = entry.clone().filter(|(s, _)| s.id == id) else {
                return Err(self.mirror().refusal(datastore, id).into());
            };
            let now = now_ms();
            if s.expired(now, timeout) {
                return Err(SessionError::Expired(id.to_string()).into());
            }
            if now.saturating_sub(s.seen_ms) < TOUCH_EVERY_MS {
                return Ok(());
            }
            s.seen_ms = now;
            if self.write(datastore, &s, Some(rev))?.is_some() {
                return Ok(());
            }
            // Another host touched it, or a new session took over.
            let fresh = self.read(datastore)?;
            match fresh {
                Some((f, _)) if f.id == id && now.saturating_sub(f.seen_ms) < TOUCH_EVERY_MS => {
                    return Ok(());
                }
                other => {
                    if other.as_ref().is_none_or(|(f, _)| f.id != id) {
                        return Err(self.mirror().refusal(datastore, id).into());
                    }
                }
            }
        }
        Ok(())
    }

    fn delete_session(&self, datastore: &str, id: &str) -> Result<bool, Unavailable> {
        let Some((s, rev)) = self.read(datastore)? else {
            return Ok(false);
        };
        if s.id != id {
            return Ok(false);
        }
        let (bucket, key) = (self.sessions.clone(), hex::encode(datastore));
        let deleted = self
            .cluster
            .block_on(async move { bucket.delete_expect_revision(key, Some(rev)).await })
            .ok_or_else(|| unavailable("the NATS task failed"))?
            .is_ok();
        if deleted {
            self.mirror().set(datastore, None);
        }
        Ok(deleted)
    }

    fn connected(&self) -> bool {
        self.cluster.connected()
    }

    fn session(&self, datastore: &str) -> Option<SharedSession> {
        self.mirror().current.get(datastore).map(|(s, _)| s.clone())
    }

    fn append(&self, datastore: &str, op: &IngestOp) -> Result<(), Unavailable> {
        let (js, stream) = (self.cluster.js.clone(), self.stream.clone());
        let subject = self.subject(datastore);
        let payload: bytes::Bytes = op.encode().into();
        let marker = matches!(op, IngestOp::Session { .. });
        // A push may be larger than a NATS message (1 MiB by default): it
        // goes in parts, which the followers put together again.
        let server_max = js.client().server_info().max_payload;
        let part_max = if server_max > 2 * PART_HEADROOM {
            server_max - PART_HEADROOM
        } else {
            DEFAULT_PART_BYTES
        };
        self.cluster
            .block_on(async move {
                let work = async {
                    let parts: Vec<bytes::Bytes> = if payload.len() <= part_max {
                        vec![payload]
                    } else {
                        (0..payload.len())
                            .step_by(part_max)
                            .map(|at| payload.slice(at..(at + part_max).min(payload.len())))
                            .collect()
                    };
                    let id = crate::datastore::session::new_uuid();
                    let n = parts.len();
                    // Every part goes out before the first ack is awaited.
                    let mut pending = Vec::with_capacity(n);
                    for (i, part) in parts.into_iter().enumerate() {
                        let mut headers = async_nats::HeaderMap::new();
                        if n > 1 {
                            headers.insert(PART_HEADER, format!("{id} {} {n}", i + 1).as_str());
                        }
                        pending.push(
                            js.publish_with_headers(subject.clone(), headers, part)
                                .await?,
                        );
                    }
                    let mut last = 0;
                    for p in pending {
                        last = p.await?.sequence;
                    }
                    if marker {
                        // The new session's history starts here: what came
                        // before on this subject is no longer needed.
                        stream.purge().filter(subject).sequence(last).await?;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                };
                match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "NATS did not acknowledge within {} s",
                        REQUEST_TIMEOUT.as_secs()
                    )),
                }
            })
            .ok_or_else(|| unavailable("the NATS task failed"))?
            .map_err(unavailable)
    }
}

/// The header of a part of an operation sent in several messages:
/// `ID I N` (part I of N, from 1).
const PART_HEADER: &str = "Weir-Part";
/// Room left in a message for headers and protocol.
const PART_HEADROOM: usize = 4096;
/// Part size when the server does not say its limit.
const DEFAULT_PART_BYTES: usize = 512 * 1024;
/// Operations in parts held at once by a follower (each at most a push's
/// 64 MiB); beyond it the oldest incomplete one is dropped: its host died
/// between parts and answered the agent 503, which sends it again.
const MAX_PARTIAL: usize = 8;

/// Operations whose parts are arriving.
#[derive(Default)]
struct Partial {
    /// Id -> the parts so far (in order: a subject's messages are).
    held: std::collections::VecDeque<(String, usize, Vec<u8>)>,
}

impl Partial {
    /// Takes part `i` of `n` of operation `id`; the whole operation once
    /// its last part is in.
    fn take(&mut self, header: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut fields = header.split(' ');
        let (id, i, n) = (
            fields.next()?,
            fields.next()?.parse::<usize>().ok()?,
            fields.next()?.parse::<usize>().ok()?,
        );
        let at = self.held.iter().position(|(h, _, _)| h == id);
        let at = match at {
            Some(at) => at,
            None if i == 1 => {
                if self.held.len() == MAX_PARTIAL {
                    self.held.pop_front();
                }
                self.held.push_back((id.to_string(), 0, Vec::new()));
                self.held.len() - 1
            }
            // The start of it was never seen (purged, or dropped): skip.
            None => return None,
        };
        let (_, seen, buf) = &mut self.held[at];
        if *seen + 1 != i {
            self.held.remove(at);
            return None;
        }
        *seen = i;
        buf.extend_from_slice(bytes);
        if i == n {
            return self.held.remove(at).map(|(_, _, buf)| buf);
        }
        None
    }
}

/// Reads one datastore's ingest log into its replica.
struct Follower {
    stream: Stream,
    subject: String,
    datastore: std::sync::Weak<Datastore>,
}

impl Follower {
    async fn run(mut self) {
        let mut partial = Partial::default();
        // What is in the log now is history: applied, not published again.
        let mut next = 1u64;
        let mut live_after = u64::MAX;
        let mut backoff = Duration::from_millis(100);
        loop {
            if live_after == u64::MAX {
                match self.stream.get_info().await {
                    Ok(info) => live_after = info.state.last_sequence,
                    Err(e) => tracing::warn!(subject = %self.subject, "the ingest stream: {e}"),
                }
            }
            match self.read(&mut next, live_after, &mut partial).await {
                Ok(()) => return,
                Err(why) => {
                    tracing::warn!(subject = %self.subject, next, "the ingest feed lost its consumer ({why}); making it again")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One consumer's life; `Ok` when the datastore is gone.
    async fn read(
        &mut self,
        next: &mut u64,
        live_after: u64,
        partial: &mut Partial,
    ) -> Result<(), String> {
        let mut messages = super::ordered_messages(&self.stream, &self.subject, *next).await?;
        loop {
            let message = match tokio::time::timeout(Duration::from_secs(1), messages.next()).await
            {
                Err(_) => {
                    if self.datastore.strong_count() == 0 {
                        return Ok(());
                    }
                    continue;
                }
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Err("the consumer ended".into()),
            };
            let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq < *next {
                continue;
            }
            *next = seq + 1;
            let part = message
                .headers
                .as_ref()
                .and_then(|h| h.get(PART_HEADER))
                .map(|v| v.as_str().to_string());
            let whole;
            let payload: &[u8] = match part {
                None => &message.payload,
                Some(header) => match partial.take(&header, &message.payload) {
                    Some(bytes) => {
                        whole = bytes;
                        &whole
                    }
                    None => continue,
                },
            };
            let op = match IngestOp::decode(payload) {
                Ok(op) => op,
                Err(e) => {
                    tracing::error!(subject = %self.subject, seq, "an ingest-log entry that cannot be read is skipped: {e}");
                    continue;
                }
            };
            // A replica that falls behind holds the log back (JetStream
            // keeps it) rather than growing its queue without bound.
            loop {
                let Some(ds) = self.datastore.upgrade() else {
                    return Ok(());
                };
                if ds.queued_rows() <= ds.config().queue_rows {
                    ds.apply_shared(op, seq, seq > live_after);
                    break;
                }
                drop(ds);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_together_in_order_and_broken_ones_are_dropped() {
        let mut p = Partial::default();
        assert_eq!(p.take("a 1 3", b"he"), None);
        assert_eq!(p.take("b 1 2", b"x"), None);
        assert_eq!(p.take("a 2 3", b"ll"), None);
        assert_eq!(p.take("a 3 3", b"o").as_deref(), Some(&b"hello"[..]));
        // A part whose start was never seen, a part out of order, junk.
        assert_eq!(p.take("c 2 2", b"?"), None);
        assert_eq!(p.take("b 3 3", b"?"), None);
        assert_eq!(p.take("b 2 2", b"y"), None, "b was dropped");
        assert_eq!(p.take("nonsense", b""), None);
        assert!(p.held.is_empty());
        for i in 0..MAX_PARTIAL + 3 {
            p.take(&format!("{i} 1 2"), b"");
        }
        assert_eq!(p.held.len(), MAX_PARTIAL);
    }
}
