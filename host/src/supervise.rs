//! Panics contained in background work. A panic in a background thread or
//! task must not wedge anything: each loop catches the panic of one unit of
//! work (an apply job, a consumer, a plugin-directory scan), logs it with
//! what the work was, counts it here (shown in `/metrics`), and goes on.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of background work whose panics are contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    /// A datastore's apply thread (also counted per datastore).
    Apply,
    /// A consumer task (a subscription's stream).
    Consumer,
    /// The plugin-directory watcher.
    PluginWatcher,
}

impl Worker {
    /// Every kind, in metrics order.
    pub const ALL: [Worker; 3] = [Worker::Apply, Worker::Consumer, Worker::PluginWatcher];

    /// The label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Worker::Apply => "apply",
            Worker::Consumer => "consumer",
            Worker::PluginWatcher => "plugin_watcher",
        }
    }
}

static PANICS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// The text of a panic payload (bounded).
pub fn message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    crate::text::echo(&text).into_owned()
}

/// Records a contained panic of `worker` doing `what`: logged at error and
/// counted.
pub fn panicked(worker: Worker, what: &str, payload: &(dyn Any + Send)) {
    PANICS[worker as usize].fetch_add(1, Ordering::Relaxed);
    tracing::error!(worker = worker.as_str(), what = %crate::text::echo(what), panic = %message(payload), "background work panicked; contained, the worker goes on");
}

/// Contained panics of `worker` since start.
pub fn count(worker: Worker) -> u64 {
    PANICS[worker as usize].load(Ordering::Relaxed)
}
