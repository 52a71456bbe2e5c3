//! Per-key counters and latency histograms, cumulative over the host's life
//! (consumers come and go; these stay), for `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (one per bound), count, and sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

/// Counters of one key across all its consumers.
#[derive(Debug, Default)]
pub struct KeyStats {
    /// The same counters as each consumer keeps, summed over all of them
    /// and kept after they leave.
    pub events: super::ConsumerStats,
    /// Faults by kind.
    pub faults: Mutex<BTreeMap<String, u64>>,
    /// Duration of `matches-batch` calls.
    pub matches_latency: Histogram,
    /// Duration of `process-batch` calls.
    pub process_latency: Histogram,
}

impl KeyStats {
    /// Counts one fault of `kind`.
    pub fn fault(&self, kind: &str) {
        *self
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind.to_string())
            .or_default() += 1;
    }
}

/// Stats of every key that has run.
#[derive(Debug, Default)]
pub struct StatsBook {
    keys: Mutex<BTreeMap<String, Arc<KeyStats>>>,
}

impl StatsBook {
    /// The stats of `key`, created on first use.
    pub fn of(&self, key: &str) -> Arc<KeyStats> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Every key's stats, by key.
    pub fn all(&self) -> Vec<(String, Arc<KeyStats>)> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(70));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let (b, count, sum) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!((b[0], b[1], b[5], b[6], b[11]), (0, 1, 1, 2, 2));
        assert!((sum - 5.00307).abs() < 1e-6, "{sum}");
    }
}
