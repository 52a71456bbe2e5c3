//! Duplicate detection on event ids: a map of recently seen ids with a time
//! to live, bounded by a ring of insertion order (the seed's `DedupFilter`).
//!
//! The map is the only authority on "seen"; the ring only bounds the map:
//! when it is full, the oldest insertion leaves the map. An id seen again
//! after its TTL counts as new and starts a fresh TTL.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Recently seen event ids.
#[derive(Debug)]
pub struct DedupFilter {
    /// Id -> when it was (last) inserted.
    /// Keyed with foldhash (seeded per process): SipHash was a tenth of
    /// publishing a datastore's changes.
    seen: HashMap<String, Instant, foldhash::fast::RandomState>,
    /// Insertion order, with the insertion time so that a stale ring entry
    /// (the id was re-inserted after its TTL) does not evict the fresh one.
    ring: VecDeque<(String, Instant)>,
    size: usize,
    ttl: Duration,
}

impl DedupFilter {
    /// A filter remembering at most `size` ids for `ttl` each. A size of 0
    /// disables deduplication.
    pub fn new(size: usize, ttl: Duration) -> Self {
        Self {
            seen: HashMap::with_capacity_and_hasher(
                size.min(1 << 16),
                foldhash::fast::RandomState::default(),
            ),
            ring: VecDeque::with_capacity(size.min(1 << 16)),
            size,
            ttl,
        }
    }

    /// Whether `id` was seen within its TTL; if not, remembers it now.
    pub fn is_duplicate(&mut self, id: &str, now: Instant) -> bool {
        if self.size == 0 {
            return false;
        }
        if let Some(at) = self.seen.get(id)
            && now.duration_since(*at) < self.ttl
        {
            return true;
        }
        self.remember(id, now);
        false
    }

    /// Remembers `id` as seen at `at` (the window is rebuilt at start from
    /// the event log, oldest first).
    pub fn remember(&mut self, id: &str, at: Instant) {
        if self.size == 0 {
            return;
        }
        self.seen.insert(id.to_string(), at);
        self.ring.push_back((id.to_string(), at));
        while self.ring.len() > self.size {
            if let Some((old, at)) = self.ring.pop_front()
                && self.seen.get(&old) == Some(&at)
            {
                self.seen.remove(&old);
            }
        }
    }

    /// Forgets `id` (its event was not stored after all: a retry must not
    /// count as a duplicate).
    pub fn forget(&mut self, id: &str) {
        self.seen.remove(id);
    }

    /// Ids currently remembered (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_ttl_are_duplicates() {
        let mut d = DedupFilter::new(3, Duration::from_secs(10));
        let t = Instant::now();
        assert!(!d.is_duplicate("a", t));
        assert!(d.is_duplicate("a", t + Duration::from_secs(9)));
        assert!(!d.is_duplicate("b", t));
    }

    #[test]
    fn expired_ids_are_new_again_with_a_fresh_ttl() {
        let mut d = DedupFilter::new(3, Duration::from_secs(10));
        let t = Instant::now();
        assert!(!d.is_duplicate("a", t));
        let later = t + Duration::from_secs(11);
        assert!(!d.is_duplicate("a", later));
        assert!(d.is_duplicate("a", later + Duration::from_secs(9)));
    }

    #[test]
    fn the_ring_bounds_the_map_oldest_first() {
        let mut d = DedupFilter::new(2, Duration::from_secs(10));
        let t = Instant::now();
        for id in ["a", "b", "c"] {
            assert!(!d.is_duplicate(id, t));
        }
        assert_eq!(d.len(), 2);
        assert!(!d.is_duplicate("a", t), "a was evicted by c");
        assert!(d.is_duplicate("c", t));
    }

    #[test]
    fn a_stale_ring_entry_does_not_evict_a_fresh_insertion() {
        let mut d = DedupFilter::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert!(!d.is_duplicate("a", t));
        let later = t + Duration::from_secs(11);
        // "a" again after its TTL: ring holds a@t and a@later.
        assert!(!d.is_duplicate("a", later));
        // "b" pushes out the stale a@t, which must not remove a@later.
        assert!(!d.is_duplicate("b", later));
        assert!(d.is_duplicate("a", later));
    }

    #[test]
    fn size_zero_disables() {
        let mut d = DedupFilter::new(0, Duration::from_secs(10));
        let t = Instant::now();
        assert!(!d.is_duplicate("a", t));
        assert!(!d.is_duplicate("a", t));
    }
}
