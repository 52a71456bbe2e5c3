//! Quarantine: a key whose calls fault too many times in a row is no longer
//! called until an admin resumes it. Its consumers watch its state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{Records, StoreError, Table};

/// Why a key is quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Consecutive faults that tripped it.
    pub faults: u32,
    /// The last fault's message.
    pub last_error: String,
    /// When, ms since the Unix epoch.
    pub since_ms: u64,
}

/// One key's fault streak and quarantine state.
pub struct KeyHealth {
    key: String,
    consecutive: AtomicU32,
    threshold: u32,
    state: watch::Sender<Option<Quarantine>>,
    /// Where quarantines are written through (none: memory only).
    records: Option<Arc<dyn Records>>,
}

impl KeyHealth {
    fn new(key: &str, threshold: u32, records: Option<Arc<dyn Records>>) -> Self {
        Self {
            key: key.to_string(),
            consecutive: AtomicU32::new(0),
            threshold,
            state: watch::Sender::new(None),
            records,
        }
    }

    /// Writes the state through; a failure is logged (the state in memory
    /// holds until a restart).
    fn write(&self, q: Option<&Quarantine>) {
        let Some(records) = &self.records else { return };
        let result = match q {
            Some(q) => records.put(
                Table::Quarantine,
                &self.key,
                &serde_json::to_vec(q).unwrap_or_default(),
            ),
            None => records.remove(Table::Quarantine, &self.key),
        };
        if let Err(e) = result {
            tracing::error!(key = %self.key, "quarantine state not stored: {e}");
        }
    }

    /// A call succeeded: the streak ends.
    pub fn ok(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// A call faulted. Returns the quarantine when this fault tripped it.
    pub fn fault(&self, message: &str) -> Option<Quarantine> {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if self.threshold == 0 || n < self.threshold {
            return None;
        }
        let q = Quarantine {
            faults: n,
            last_error: message.to_string(),
            since_ms: crate::time::now_ms(),
        };
        let mut tripped = false;
        self.state.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(q.clone());
                tripped = true;
            }
            tripped
        });
        if tripped {
            self.write(Some(&q));
        }
        tripped.then_some(q)
    }

    /// The quarantine, if any.
    pub fn quarantine(&self) -> Option<Quarantine> {
        self.state.borrow().clone()
    }

    /// Whether it is quarantined.
    pub fn is_quarantined(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// Lifts the quarantine; `false` when there was none.
    pub fn resume(&self) -> bool {
        self.consecutive.store(0, Ordering::Relaxed);
        let lifted = self.state.send_if_modified(|s| s.take().is_some());
        if lifted {
            self.write(None);
        }
        lifted
    }

    /// Takes a quarantine (or its lifting) another host made, without
    /// writing it back.
    fn apply_remote(&self, q: Option<Quarantine>) {
        if q.is_none() {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        self.state.send_if_modified(|s| {
            let changed = s.is_some() != q.is_some();
            if changed {
                *s = q;
            }
            changed
        });
    }

    /// Watches the state.
    pub fn watch(&self) -> watch::Receiver<Option<Quarantine>> {
        self.state.subscribe()
    }
}

/// Health of every key that has been called.
pub struct HealthBook {
    threshold: u32,
    keys: Arc<Mutex<HashMap<String, Arc<KeyHealth>>>>,
    records: Option<Arc<dyn Records>>,
}

impl HealthBook {
    /// Quarantines after `threshold` consecutive faults (0: never).
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold,
            keys: Arc::default(),
            records: None,
        }
    }

    /// A book written through to `records`, with the quarantines they hold.
    pub fn durable(threshold: u32, records: Arc<dyn Records>) -> Result<Self, StoreError> {
        let mut keys = HashMap::new();
        for (key, bytes) in records.load(Table::Quarantine)? {
            let q: Quarantine =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    file: "quarantine".into(),
                    table: Table::Quarantine.name(),
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            let health = KeyHealth::new(&key, threshold, Some(records.clone()));
            health.consecutive.store(q.faults, Ordering::Relaxed);
            health.state.send_replace(Some(q));
            keys.insert(key, Arc::new(health));
        }
        let keys = Arc::new(Mutex::new(keys));
        if records.shared() {
            // Other hosts quarantine and resume keys too: their changes are
            // applied here (not written back).
            let (book, shared) = (Arc::downgrade(&keys), records.clone());
            records.watch(
                Table::Quarantine,
                Arc::new(move |key, value| {
                    let Some(book) = book.upgrade() else { return };
                    let health = book
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(key.to_string())
                        .or_insert_with(|| {
                            Arc::new(KeyHealth::new(key, threshold, Some(shared.clone())))
                        })
                        .clone();
                    let q = value.and_then(|v| serde_json::from_slice::<Quarantine>(v).ok());
                    health.apply_remote(q);
                }),
            );
        }
        Ok(Self {
            threshold,
            keys,
            records: Some(records),
        })
    }

    /// The health of `key`, created on first use.
    pub fn of(&self, key: &str) -> Arc<KeyHealth> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(KeyHealth::new(key, self.threshold, self.records.clone())))
            .clone()
    }

    /// Every quarantined key.
    pub fn quarantined(&self) -> Vec<(String, Quarantine)> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = keys
            .iter()
            .filter_map(|(k, h)| h.quarantine().map(|q| (k.clone(), q)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_threshold_consecutive_faults_only() {
        let h = KeyHealth::new("k", 3, None);
        assert!(h.fault("a").is_none());
        assert!(h.fault("b").is_none());
        h.ok();
        assert!(h.fault("c").is_none());
        assert!(h.fault("d").is_none());
        let q = h.fault("e").expect("third in a row trips");
        assert_eq!((q.faults, q.last_error.as_str()), (3, "e"));
        assert!(h.fault("f").is_none(), "already quarantined");
        assert!(h.is_quarantined());
        let mut w = h.watch();
        assert!(h.resume());
        assert!(w.has_changed().unwrap());
        assert!(w.borrow_and_update().is_none());
        assert!(!h.resume());
    }
}
