//! What subscribing takes and gives: the request, its refusals, the
//! consumer handle with its deliveries and notices, its counters, and what a
//! dead-letter replay reports.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::bus::{GapReason, StartAt};
use crate::engine::{Params, PluginFault};
use crate::registry::ParamError;

/// What a consumer receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// One envelope, as compact JSON.
    Envelope {
        /// The event's bus sequence number.
        seq: u64,
        /// `{id, key, subscription_id, seq, event_type, source, source_time, timestamp, data}`.
        json: String,
    },
    /// Something the consumer should know that is not an event.
    Notice(Notice),
}

/// Messages to a consumer besides envelopes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// The subscription is set up; events follow.
    Subscribed {
        /// The key.
        key: String,
        /// The subscription id.
        subscription_id: String,
        /// The normalized params.
        params: serde_json::Map<String, serde_json::Value>,
        /// `latest`, `earliest` or a sequence number.
        from: String,
        /// The named consumer, when the stream resumes one.
        #[serde(skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        /// Buffer size (events) before the oldest are dropped.
        buffer_size: u32,
        /// Parallel workers.
        workers: u32,
    },
    /// Events this consumer will never receive.
    Gap {
        /// Why.
        reason: GapReason,
        /// How many.
        count: u64,
        /// First sequence number skipped.
        first_seq: u64,
        /// Last sequence number skipped.
        last_seq: u64,
    },
    /// The key is quarantined: no events are processed until an admin
    /// resumes it; events meanwhile go to the dead-letter queue.
    Quarantined {
        /// The key.
        key: String,
        /// Consecutive faults that tripped it.
        faults: u32,
        /// The last fault.
        last_error: String,
    },
    /// The key was resumed.
    Resumed {
        /// The key.
        key: String,
    },
    /// The stream ends.
    Ended {
        /// Why.
        reason: String,
    },
}

/// Counters of one consumer.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub(super) received: AtomicU64,
    pub(super) matched: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) filtered: AtomicU64,
    pub(super) dropped_by_key: AtomicU64,
    pub(super) faults: AtomicU64,
    pub(super) overflow_dropped: AtomicU64,
    pub(super) skipped_quarantined: AtomicU64,
}

/// A snapshot of [`ConsumerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConsumerCounts {
    /// Events pulled from the bus.
    pub received: u64,
    /// Events `matches` accepted (then processed).
    pub matched: u64,
    /// Envelopes delivered.
    pub delivered: u64,
    /// Events `matches` rejected.
    pub filtered: u64,
    /// Events `process` dropped.
    pub dropped_by_key: u64,
    /// Events that faulted (now dead letters).
    pub faults: u64,
    /// Events dropped because the consumer was slower than its buffer.
    pub overflow_dropped: u64,
    /// Events not processed because the key was quarantined.
    pub skipped_quarantined: u64,
}

impl ConsumerStats {
    /// Adds `n` to the counter `field` picks.
    pub(super) fn add(&self, field: fn(&Self) -> &AtomicU64, n: u64) {
        field(self).fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn counts(&self) -> ConsumerCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerCounts {
            received: l(&self.received),
            matched: l(&self.matched),
            delivered: l(&self.delivered),
            filtered: l(&self.filtered),
            dropped_by_key: l(&self.dropped_by_key),
            faults: l(&self.faults),
            overflow_dropped: l(&self.overflow_dropped),
            skipped_quarantined: l(&self.skipped_quarantined),
        }
    }
}

/// A subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// The key.
    pub key: String,
    /// Params as given.
    pub params: Params,
    /// Where in the bus to start.
    pub from: StartAt,
    /// The subscribing key's scope: its datastore (it sees that
    /// datastore's events only, and its subscriptions are that
    /// datastore's), or `None` for a host-level key (everything).
    pub scope: Option<String>,
    /// A named consumer: resumes after its last acknowledgement (`from`
    /// only says where a new name starts).
    pub consumer: Option<String>,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// No such key.
    #[error("no key `{0}`")]
    UnknownKey(String),
    /// A param is not allowed (checked before or after normalization).
    #[error(transparent)]
    Param(#[from] ParamError),
    /// `normalize-params` refused the params.
    #[error("key `{key}` refused the params: {message}")]
    Normalize {
        /// The key.
        key: String,
        /// The key's reason.
        message: String,
    },
    /// `pre-consume` failed: the subscription is refused with its error.
    #[error("key `{key}`: pre-consume of subscription `{subscription_id}` failed: {fault}")]
    PreConsume {
        /// The key.
        key: String,
        /// The subscription.
        subscription_id: String,
        /// The failure.
        fault: PluginFault,
    },
    /// A key function faulted (trap, deadline...) while setting up.
    #[error("key `{key}`: {function} faulted: {fault}")]
    Fault {
        /// The key.
        key: String,
        /// The function.
        function: &'static str,
        /// The fault.
        fault: PluginFault,
    },
    /// The host is shutting down.
    #[error("the host is shutting down")]
    Closed,
    /// The named consumer cannot be used as asked.
    #[error(transparent)]
    Named(#[from] super::named::NamedError),
}

/// A connected consumer: receive until `None`. Dropping it leaves the
/// subscription (the last consumer out runs `cleanup`).
pub struct Consumer {
    /// Its id.
    pub id: u64,
    /// The key.
    pub key: String,
    /// The subscription id.
    pub subscription_id: String,
    pub(super) rx: mpsc::Receiver<Delivery>,
    /// The named consumer this stream is attached to, if any.
    pub(super) _named: Option<super::named::Attached>,
}

impl Consumer {
    /// The next delivery; `None` when the stream has ended.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The receiving end, for adapting into a stream.
    pub fn into_receiver(self) -> mpsc::Receiver<Delivery> {
        self.rx
    }
}

/// What replaying one dead letter did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    /// The letter.
    pub id: u64,
    /// `delivered`, `dropped` (filtered or dropped by the key), `failed`
    /// (back in the queue) or `skipped` (key gone or quarantined, or no
    /// consumer of its subscription attached; back in the queue).
    pub outcome: &'static str,
    /// Consumers the output was delivered to.
    pub delivered_to: usize,
    /// The output envelope, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Box<serde_json::value::RawValue>>,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
