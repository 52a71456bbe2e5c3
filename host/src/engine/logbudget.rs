//! The log budget of each plugin: what a plugin writes (its `log` import,
//! its stdout and stderr) reaches the host's log at a bounded rate and line
//! size, so that a plugin cannot flood the host's disk or drown its other
//! lines. Lines over the budget are dropped and counted; a summary line says
//! how many, at most once a second per plugin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

/// Lines a plugin may log per second, on average.
pub const LINES_PER_SEC: f64 = 100.0;

/// Lines a plugin may log at once after being quiet.
pub const BURST: f64 = 200.0;

/// Longest line kept; longer ones are cut, saying how much was left out.
pub const MAX_LINE_BYTES: usize = 2048;

/// One plugin's budget (shared by its instances and versions).
#[derive(Debug)]
pub struct LogBudget {
    state: Mutex<Bucket>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Suppressed since the last summary line.
    unreported: u64,
    last_report: Instant,
}

/// What to do with a line.
pub enum Admit {
    /// Log it.
    Yes,
    /// Drop it.
    No,
    /// Log it, then a summary: this many lines were dropped before it.
    AfterDropping(u64),
}

impl LogBudget {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(Bucket {
                tokens: BURST,
                last: now,
                unreported: 0,
                last_report: now,
            }),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The budget of plugin `name`.
    pub fn of(name: &str) -> Arc<LogBudget> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<LogBudget>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.entry(name.to_string())
            .or_insert_with(|| Arc::new(LogBudget::new()))
            .clone()
    }

    /// Whether one more line may be logged now.
    pub fn admit(&self) -> Admit {
        let mut b = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * LINES_PER_SEC).min(BURST);
        b.last = now;
        if b.tokens < 1.0 {
            b.unreported += 1;
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return Admit::No;
        }
        b.tokens -= 1.0;
        if b.unreported > 0 && now.duration_since(b.last_report).as_secs() >= 1 {
            let n = b.unreported;
            b.unreported = 0;
            b.last_report = now;
            return Admit::AfterDropping(n);
        }
        Admit::Yes
    }

    /// Lines dropped since start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let budget = LogBudget::new();
        let mut logged = 0;
        for _ in 0..20_000 {
            if !matches!(budget.admit(), Admit::No) {
                logged += 1;
            }
        }
        // The burst, and what refilled during the loop (well under a second).
        assert!((200..=300).contains(&logged), "{logged}");
        assert_eq!(budget.suppressed(), 20_000 - logged);
    }
}
