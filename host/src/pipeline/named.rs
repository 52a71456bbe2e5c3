//! Named (durable) consumers: a consumer that subscribes with a name
//! resumes, after a reconnect or a host restart, from the first event it
//! has not acknowledged. At-least-once: only events after the last
//! acknowledgement can come twice.
//!
//! A name belongs to the scope of the key that made it (a datastore, or the
//! host) and is bound to one key and one set of params. Acknowledgements
//! only move forward. A name that is neither connected nor acknowledged
//! for the configured time expires. With a store the book is written
//! through (on create, ack and delete) and loaded at start. In a cluster
//! the records are shared: each host reads a name's record before it uses
//! it, so a consumer that reconnects to another host resumes after the
//! acknowledgement it made on the first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::StartAt;
use crate::engine::Params;
use crate::store::{Records, StoreError, Table};
use crate::time::now_ms;

/// Longest consumer name.
pub const MAX_NAME_BYTES: usize = 128;

/// Most named consumers a host keeps.
pub const MAX_NAMED_CONSUMERS: usize = 10_000;

/// A named consumer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedConsumer {
    /// Its name.
    pub name: String,
    /// The datastore of the key that made it (`None`: host-level).
    pub scope: Option<String>,
    /// The key it consumes.
    pub key: String,
    /// The params it subscribed with, sorted by name.
    pub params: Params,
    /// The newest sequence number it acknowledged (0: none).
    pub acked_seq: u64,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// When it last connected, left or acknowledged, ms since the epoch.
    pub active_ms: u64,
}

/// Why a named-consumer request was refused.
#[derive(Debug, thiserror::Error)]
pub enum NamedError {
    /// The name is empty, too long, or has other characters than letters,
    /// digits, `.`, `_` and `-`.
    #[error("consumer name `{0}` must be 1 to {MAX_NAME_BYTES} letters, digits, `.`, `_` or `-`")]
    BadName(String),
    /// The name is bound to another key or other params.
    #[error(
        "consumer `{name}` consumes `{key}` with params {params}; delete it first to reuse the name"
    )]
    Bound {
        /// The name.
        name: String,
        /// Its key.
        key: String,
        /// Its params, as JSON.
        params: String,
    },
    /// No consumer of that name in the caller's scope.
    #[error("no consumer `{0}`")]
    NotFound(String),
    /// The host keeps no more names.
    #[error("the host keeps at most {MAX_NAMED_CONSUMERS} named consumers; delete unused ones")]
    TooMany,
    /// An acknowledgement beyond the newest event.
    #[error("cannot acknowledge {seq}: the newest event is {last}")]
    AckAhead {
        /// The sequence number acknowledged.
        seq: u64,
        /// The newest one.
        last: u64,
    },
    /// The store could not keep the change.
    #[error("the named consumer could not be stored: {0}")]
    Store(#[from] StoreError),
}

/// What the cluster holds for a name.
enum Fetched {
    /// Not in a cluster: this host's book is the truth.
    NotShared,
    /// No record (deleted on another host, or never made).
    Gone,
    /// A record that cannot be read: left as this host knows it.
    Unreadable,
    /// The record.
    Found(NamedConsumer),
}

struct Entry {
    consumer: NamedConsumer,
    /// Streams attached now.
    connected: usize,
}

/// Every named consumer, by scope and name.
pub struct NamedConsumers {
    entries: Mutex<HashMap<String, Entry>>,
    records: Option<Arc<dyn Records>>,
    ttl: Duration,
}

/// A stream attached to a named consumer; dropping it detaches.
pub struct Attached {
    book: Arc<NamedConsumers>,
    id: String,
    /// The consumer's name.
    pub name: String,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(e) = self.book.lock().get_mut(&self.id) {
            e.connected = e.connected.saturating_sub(1);
            e.consumer.active_ms = now_ms();
        }
    }
}

/// The record key of `name` in `scope`.
fn id(scope: Option<&str>, name: &str) -> String {
    format!("{}/{name}", scope.unwrap_or(""))
}

fn check_name(name: &str) -> Result<(), NamedError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NamedError::BadName(
            weir_core::text::echo(name).into_owned(),
        ))
    }
}

impl NamedConsumers {
    /// A book whose unused names expire after `ttl`; with `records`, what
    /// they held is loaded and changes are written through.
    pub fn new(ttl: Duration, records: Option<Arc<dyn Records>>) -> Result<Self, StoreError> {
        let mut entries = HashMap::new();
        if let Some(r) = &records {
            for (key, bytes) in r.load(Table::Consumers)? {
                let consumer: NamedConsumer =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        file: "named consumers".into(),
                        table: Table::Consumers.name(),
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                entries.insert(
                    key,
                    Entry {
                        consumer,
                        connected: 0,
                    },
                );
            }
        }
        Ok(Self {
            entries: Mutex::new(entries),
            records,
            ttl,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, id: &str, consumer: Option<&NamedConsumer>) -> Result<(), StoreError> {
        let Some(records) = &self.records else {
            return Ok(());
        };
        match consumer {
            Some(c) => records.put(
                Table::Consumers,
                id,
                &serde_json::to_vec(c).unwrap_or_default(),
            ),
            None => records.remove(Table::Consumers, id),
        }
    }

    /// What the cluster's record of `id` says, read before the book's
    /// lock is taken (a NATS round trip must not hold every other name's
    /// operations).
    fn fetch(&self, id: &str) -> Result<Fetched, StoreError> {
        let Some(records) = self.records.as_ref().filter(|r| r.shared()) else {
            return Ok(Fetched::NotShared);
        };
        Ok(match records.get(Table::Consumers, id)? {
            None => Fetched::Gone,
            Some(bytes) => match serde_json::from_slice::<NamedConsumer>(&bytes) {
                Ok(c) => Fetched::Found(c),
                Err(_) => Fetched::Unreadable,
            },
        })
    }

    /// The records of every name the cluster or this host knows, read
    /// before the lock is taken.
    fn fetch_all(&self) -> Result<Vec<(String, Fetched)>, StoreError> {
        let Some(records) = self.records.as_ref().filter(|r| r.shared()) else {
            return Ok(Vec::new());
        };
        let mut ids = records.keys(Table::Consumers, "")?;
        ids.extend(self.lock().keys().cloned());
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| self.fetch(&id).map(|f| (id, f)))
            .collect()
    }

    /// Brings this host's entry of `id` in line with what was fetched:
    /// the cluster's record wins, but an acknowledgement never moves back.
    fn apply(entries: &mut HashMap<String, Entry>, id: &str, fetched: Fetched) {
        match fetched {
            Fetched::NotShared | Fetched::Unreadable => {}
            Fetched::Found(mut shared) => match entries.get_mut(id) {
                Some(e) => {
                    shared.acked_seq = shared.acked_seq.max(e.consumer.acked_seq);
                    e.consumer = shared;
                }
                None => {
                    entries.insert(
                        id.to_string(),
                        Entry {
                            consumer: shared,
                            connected: 0,
                        },
                    );
                }
            },
            Fetched::Gone => {
                if entries.get(id).is_some_and(|e| e.connected == 0) {
                    entries.remove(id);
                }
            }
        }
    }

    /// Removes names unused for longer than the TTL.
    fn sweep(&self, entries: &mut HashMap<String, Entry>) {
        let cutoff = now_ms().saturating_sub(self.ttl.as_millis() as u64);
        let expired: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.connected == 0 && e.consumer.active_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            entries.remove(&k);
            if let Err(e) = self.write(&k, None) {
                tracing::error!(consumer = %k, "expired consumer not removed from the store: {e}");
            }
        }
    }

    /// Attaches a stream to `name` (made now, starting at `from`, if it is
    /// new); answers where the stream starts: after the last
    /// acknowledgement. `last_seq` is the bus's newest event.
    pub fn attach(
        self: &Arc<Self>,
        scope: Option<&str>,
        name: &str,
        key: &str,
        params: &Params,
        from: StartAt,
        last_seq: u64,
    ) -> Result<(StartAt, Attached), NamedError> {
        check_name(name)?;
        let mut params = params.clone();
        params.sort();
        let id = id(scope, name);
        let fetched = self.fetch(&id)?;
        let mut entries = self.lock();
        Self::apply(&mut entries, &id, fetched);
        self.sweep(&mut entries);
        let now = now_ms();
        match entries.get_mut(&id) {
            Some(e) => {
                if e.consumer.key != key || e.consumer.params != params {
                    let p: serde_json::Map<String, serde_json::Value> = e
                        .consumer
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into()))
                        .collect();
                    return Err(NamedError::Bound {
                        name: name.to_string(),
                        key: e.consumer.key.clone(),
                        params: serde_json::Value::Object(p).to_string(),
                    });
                }
                e.connected += 1;
                e.consumer.active_ms = now;
                if self.records.as_ref().is_some_and(|r| r.shared()) {
                    // Other hosts judge expiry by the shared record.
                    self.write(&id, Some(&e.consumer))?;
                }
            }
            None => {
                if entries.len() >= MAX_NAMED_CONSUMERS {
                    return Err(NamedError::TooMany);
                }
                let acked_seq = match from {
                    StartAt::Latest => last_seq,
                    StartAt::Earliest => 0,
                    StartAt::Seq(n) => n.saturating_sub(1),
                };
                let consumer = NamedConsumer {
                    name: name.to_string(),
                    scope: scope.map(str::to_string),
                    key: key.to_string(),
                    params,
                    acked_seq,
                    created_ms: now,
                    active_ms: now,
                };
                self.write(&id, Some(&consumer))?;
                entries.insert(
                    id.clone(),
                    Entry {
                        consumer,
                        connected: 1,
                    },
                );
            }
        }
        let acked = entries[&id].consumer.acked_seq;
        drop(entries);
        Ok((
            StartAt::Seq(acked + 1),
            Attached {
                book: self.clone(),
                id,
                name: name.to_string(),
            },
        ))
    }

    /// Acknowledges everything up to `seq` for `name` (acknowledgements
    /// only move forward); answers the consumer.
    pub fn ack(
        &self,
        scope: Option<&str>,
        name: &str,
        seq: u64,
        last_seq: u64,
    ) -> Result<NamedConsumer, NamedError> {
        check_name(name)?;
        if seq > last_seq {
            return Err(NamedError::AckAhead {
                seq,
                last: last_seq,
            });
        }
        let id = id(scope, name);
        let fetched = self.fetch(&id)?;
        let mut entries = self.lock();
        Self::apply(&mut entries, &id, fetched);
        let e = entries
            .get_mut(&id)
            .ok_or_else(|| NamedError::NotFound(name.to_string()))?;
        if seq > e.consumer.acked_seq {
            let mut next = e.consumer.clone();
            next.acked_seq = seq;
            next.active_ms = now_ms();
            self.write(&id, Some(&next))?;
            e.consumer = next;
        }
        Ok(e.consumer.clone())
    }

    /// The named consumers of `scope` (`None`: every scope), by name, with
    /// the streams attached to each.
    pub fn list(&self, scope: Option<Option<&str>>) -> Vec<(NamedConsumer, usize)> {
        let fetched = self.fetch_all().unwrap_or_else(|e| {
            tracing::warn!("reading the cluster's named consumers: {e}");
            Vec::new()
        });
        let mut entries = self.lock();
        for (id, f) in fetched {
            Self::apply(&mut entries, &id, f);
        }
        self.sweep(&mut entries);
        let mut out: Vec<_> = entries
            .values()
            .filter(|e| scope.is_none_or(|s| e.consumer.scope.as_deref() == s))
            .map(|e| (e.consumer.clone(), e.connected))
            .collect();
        out.sort_by(|a, b| (&a.0.scope, &a.0.name).cmp(&(&b.0.scope, &b.0.name)));
        out
    }

    /// Deletes `name` of `scope`; attached streams go on without it.
    pub fn delete(&self, scope: Option<&str>, name: &str) -> Result<(), NamedError> {
        check_name(name)?;
        let id = id(scope, name);
        let fetched = self.fetch(&id)?;
        let mut entries = self.lock();
        Self::apply(&mut entries, &id, fetched);
        if !entries.contains_key(&id) {
            return Err(NamedError::NotFound(name.to_string()));
        }
        self.write(&id, None)?;
        entries.remove(&id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(ttl: Duration) -> Arc<NamedConsumers> {
        Arc::new(NamedConsumers::new(ttl, None).unwrap())
    }

    #[test]
    fn a_name_resumes_after_its_acknowledgement_and_stays_bound() {
        let b = book(Duration::from_secs(60));
        let p = vec![("b".into(), "2".into()), ("a".into(), "1".into())];
        let (start, first) = b
            .attach(None, "c1", "k", &p, StartAt::Earliest, 10)
            .unwrap();
        assert_eq!(start, StartAt::Seq(1));
        assert_eq!(b.ack(None, "c1", 4, 10).unwrap().acked_seq, 4);
        assert_eq!(b.ack(None, "c1", 2, 10).unwrap().acked_seq, 4, "never back");
        assert!(matches!(
            b.ack(None, "c1", 11, 10),
            Err(NamedError::AckAhead { .. })
        ));
        drop(first);
        // Params in another order are the same params; `from` is ignored.
        let mut q = p.clone();
        q.reverse();
        let (start, _again) = b.attach(None, "c1", "k", &q, StartAt::Latest, 10).unwrap();
        assert_eq!(start, StartAt::Seq(5));
        assert!(matches!(
            b.attach(None, "c1", "other", &q, StartAt::Latest, 10),
            Err(NamedError::Bound { .. })
        ));
        // Another scope has its own names.
        assert!(matches!(
            b.ack(Some("lab"), "c1", 1, 10),
            Err(NamedError::NotFound(_))
        ));
        assert_eq!(b.list(Some(None))[0].1, 1, "one stream attached");
        assert!(b.list(Some(Some("lab"))).is_empty());
        assert!(matches!(
            b.attach(None, "bad name", "k", &q, StartAt::Latest, 10),
            Err(NamedError::BadName(_))
        ));
    }

    #[test]
    fn unused_names_expire_but_attached_ones_do_not() {
        let b = book(Duration::ZERO);
        let (_, held) = b
            .attach(None, "held", "k", &vec![], StartAt::Latest, 3)
            .unwrap();
        let (_, gone) = b
            .attach(None, "gone", "k", &vec![], StartAt::Latest, 3)
            .unwrap();
        drop(gone);
        std::thread::sleep(Duration::from_millis(5));
        let names: Vec<String> = b.list(None).into_iter().map(|(c, _)| c.name).collect();
        assert_eq!(names, ["held"]);
        drop(held);
    }
}
