//! One consumer's task: pull the feed in batches, run `matches` and
//! `process` on up to `workers` batches at once on blocking threads, and
//! deliver the results in bus order; faults become dead letters.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::dlq::{DeadLetter, LetterKind};
use super::health::KeyHealth;
use super::stats::KeyStats;
use super::{ConsumerStats, Delivery, Notice, Pipeline, ReplayResult};
use crate::bus::{Event, Feed, FeedItem, GapReason};
use crate::engine::{Outcome, Params, PluginFault};
use crate::registry::{Function, OutputCheck, Runner};
use crate::time::{now_ms, rfc3339_ms};

/// Everything a consumer's batches need.
pub(crate) struct Ctx {
    pub key: String,
    pub subscription_id: String,
    pub workers: usize,
    pub max_batch: usize,
    /// The params as the consumer gave them, resolved again when the key's
    /// plugin is replaced.
    pub requested: Params,
    /// Whose events this consumer sees: its key's datastore, or `None`
    /// (host-level) for all.
    pub scope: Option<String>,
    /// What runs the key, swapped between batches when its plugin is
    /// replaced: batches in flight finish on the version they started with.
    pub version: RwLock<Arc<Version>>,
    pub health: Arc<KeyHealth>,
    pub stats: Arc<ConsumerStats>,
    pub key_stats: Arc<KeyStats>,
    pub pipeline: Arc<Pipeline>,
    /// Set once, with the reason, to end this consumer.
    pub end: watch::Sender<Option<String>>,
}

/// One version of a key as a consumer runs it.
pub(crate) struct Version {
    pub runner: Arc<dyn Runner>,
    /// Normalized params.
    pub params: Params,
    /// How output is checked (from the registered key).
    pub output: OutputCheck,
}

impl Ctx {
    /// Adds `n` to a counter of this consumer and to the same counter of
    /// its key.
    fn count(&self, field: fn(&ConsumerStats) -> &AtomicU64, n: u64) {
        self.stats.add(field, n);
        self.key_stats.events.add(field, n);
    }

    /// The version to run the next batch with.
    pub fn current(&self) -> Arc<Version> {
        self.version
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs the next batches with `version`.
    pub fn swap(&self, version: Version) {
        *self
            .version
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(version);
    }

    /// Ends the consumer: it delivers what is in flight, then an `ended`
    /// notice with `reason`, and leaves its subscription.
    pub fn finish(&self, reason: String) {
        self.end.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// What one batch produced: deliveries, and per event whether it faulted
/// (with the message), for the fault streak.
#[derive(Default)]
struct Batch {
    deliveries: Vec<Delivery>,
    faults: Vec<Streak>,
}

/// What one event does to its key's fault streak.
enum Streak {
    /// Matched and processed without a fault: the streak ends.
    Ok,
    /// A fault of the plugin: the streak grows.
    Fault(String),
    /// The key's own error for this event: its outcome, not its health.
    Neutral,
}

type Pending = Pin<Box<dyn Future<Output = Batch> + Send>>;

/// How long an ending consumer waits for room for its `ended` notice.
const END_NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a consumer until its connection goes, the bus closes or it is
/// ended, then detaches it from its subscription.
pub(crate) async fn run(ctx: Arc<Ctx>, feed: Box<dyn Feed>, tx: mpsc::Sender<Delivery>, id: u64) {
    // A panic is contained to this consumer: it ends with a reason and is
    // detached like any other, so its subscription's cleanup still runs.
    let driven = std::panic::AssertUnwindSafe(drive(&ctx, feed, &tx));
    let ending = match futures_util::FutureExt::catch_unwind(driven).await {
        Ok(ending) => ending,
        Err(panic) => {
            crate::supervise::panicked(
                crate::supervise::Worker::Consumer,
                &format!("a consumer of key {}", ctx.key),
                &*panic,
            );
            Some("the consumer stopped on an internal error (logged)".to_string())
        }
    };
    if let Some(reason) = ending {
        // A client that does not read gets its notice only if there is
        // room soon: ending must not wait on it.
        let _ = tx
            .send_timeout(Delivery::Notice(Notice::Ended { reason }), END_NOTICE_WAIT)
            .await;
    }
    drop(tx);
    ctx.pipeline
        .subs
        .detach(&ctx.key, &ctx.subscription_id, id)
        .await;
}

/// The consumer loop. Returns why the stream ends, or `None` when the
/// consumer left.
async fn drive(
    ctx: &Arc<Ctx>,
    mut feed: Box<dyn Feed>,
    tx: &mpsc::Sender<Delivery>,
) -> Option<String> {
    let mut health = ctx.health.watch();
    let current = health.borrow_and_update().clone();
    if let Some(q) = current {
        let _ = tx
            .send(Delivery::Notice(Notice::Quarantined {
                key: ctx.key.clone(),
                faults: q.faults,
                last_error: q.last_error,
            }))
            .await;
    }
    let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut ending: Option<String> = None;
    let mut end = ctx.end.subscribe();
    loop {
        if ending.is_some() && inflight.is_empty() {
            return ending;
        }
        tokio::select! {
            biased;
            _ = tx.closed() => return None,
            Ok(()) = end.changed(), if ending.is_none() => {
                ending = end.borrow_and_update().clone();
            }
            Some(batch) = inflight.next(), if !inflight.is_empty() => {
                // The streak is counted in bus order, whichever worker
                // finished first.
                for fault in batch.faults {
                    match fault {
                        Streak::Fault(message) => {
                            if let Some(q) = ctx.health.fault(&message) {
                                tracing::error!(key = %ctx.key, faults = q.faults, "key quarantined after consecutive faults; last: {}", q.last_error);
                            }
                        }
                        Streak::Ok => ctx.health.ok(),
                        Streak::Neutral => {}
                    }
                }
                for d in batch.deliveries {
                    // A client that stops reading blocks this send; the
                    // consumer still ends when it is told to.
                    tokio::select! {
                        sent = tx.send(d) => if sent.is_err() {
                            return None;
                        },
                        Ok(()) = end.changed() => {
                            let reason = end.borrow_and_update().clone();
                            return Some(reason.unwrap_or_else(|| "ended".into()));
                        }
                    }
                }
            }
            Ok(()) = health.changed() => {
                let current = health.borrow_and_update().clone();
                let notice = match current {
                    Some(q) => Notice::Quarantined {
                        key: ctx.key.clone(),
                        faults: q.faults,
                        last_error: q.last_error,
                    },
                    None => Notice::Resumed { key: ctx.key.clone() },
                };
                if tx.send(Delivery::Notice(notice)).await.is_err() {
                    return None;
                }
            }
            item = feed.next(ctx.max_batch), if ending.is_none() && inflight.len() < ctx.workers => {
                match item {
                    FeedItem::Events(events) => {
                        let c = ctx.clone();
                        inflight.push_back(Box::pin(async move {
                            tokio::task::spawn_blocking(move || run_batch(&c, &events))
                                .await
                                .unwrap_or_default()
                        }));
                    }
                    FeedItem::Gap { reason, count, first_seq, last_seq } => {
                        if reason == GapReason::BufferOverflow {
                            ctx.count(|s| &s.overflow_dropped, count);
                            tracing::debug!(key = %ctx.key, subscription = %ctx.subscription_id, count, "consumer slower than its buffer: oldest events dropped");
                        }
                        let gap = Delivery::Notice(Notice::Gap { reason, count, first_seq, last_seq });
                        inflight.push_back(Box::pin(std::future::ready(Batch {
                            deliveries: vec![gap],
                            faults: Vec::new(),
                        })));
                    }
                    FeedItem::Closed => ending = Some("the host is shutting down".into()),
                }
            }
        }
    }
}

/// What one event comes to through a key (`matches`, `process`, the output
/// check): what a consumer delivers or dead-letters, and what `weir plugins
/// test` reports.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Delivered: the envelope consumers receive (JSON).
    Emit(String),
    /// `matches` said no.
    Filtered,
    /// `process` dropped it.
    Dropped,
    /// A dead letter; `counts` when the fault counts toward quarantine
    /// (see [`PluginFault::counts_toward_quarantine`]).
    Fault {
        /// The function that faulted (`process` for invalid output).
        stage: Function,
        /// Its kind.
        kind: LetterKind,
        /// What went wrong.
        message: String,
        /// Whether it counts toward quarantine.
        counts: bool,
    },
}

/// The fixed parts of a call: who is called, with what.
struct Call<'a> {
    key: &'a str,
    subscription_id: &'a str,
    runner: &'a dyn Runner,
    params: &'a Params,
    output: &'a OutputCheck,
}

impl Call<'_> {
    /// `matches` then `process` on `events`, one verdict each; call
    /// durations go to `stats`.
    /// The verdict on each of `events`, and how many `matches` accepted.
    fn judge(&self, events: &[Arc<Event>], stats: Option<&KeyStats>) -> (Vec<Verdict>, u64) {
        let all: Vec<&Event> = events.iter().map(|e| &**e).collect();
        let mut verdicts: Vec<Option<Verdict>> = (0..events.len()).map(|_| None).collect();
        let mut selected = Vec::new();
        let started = Instant::now();
        let matched = self.runner.matches_batch(self.key, self.params, &all);
        if let Some(s) = stats {
            s.matches_latency.observe(started.elapsed());
        }
        for (i, m) in matched.into_iter().enumerate() {
            match m {
                Ok(true) => selected.push(i),
                Ok(false) => verdicts[i] = Some(Verdict::Filtered),
                Err(f) => verdicts[i] = Some(fault_verdict(Function::Matches, &f)),
            }
        }
        if !selected.is_empty() {
            // Usually every event matched: then the list is reused.
            let chosen: Vec<&Event> = if selected.len() == all.len() {
                all
            } else {
                selected.iter().map(|&i| &*events[i]).collect()
            };
            let started = Instant::now();
            let outcomes = self.runner.process_batch(self.key, self.params, &chosen);
            if let Some(s) = stats {
                s.process_latency.observe(started.elapsed());
            }
            for (&i, outcome) in selected.iter().zip(outcomes) {
                let verdict = match outcome {
                    Ok(Outcome::Emit(out)) => match self.envelope(&events[i], out) {
                        Ok(json) => Verdict::Emit(json),
                        // Output that is not JSON or breaks the key's own
                        // schema is malformed: the plugin's fault.
                        Err(message) => Verdict::Fault {
                            stage: Function::Process,
                            kind: LetterKind::InvalidOutput,
                            message,
                            counts: true,
                        },
                    },
                    Ok(Outcome::Drop) => Verdict::Dropped,
                    Err(f) => fault_verdict(Function::Process, &f),
                };
                verdicts[i] = Some(verdict);
            }
        }
        let verdicts = verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Verdict::Dropped))
            .collect();
        (verdicts, selected.len() as u64)
    }

    /// The envelope around `output`; an error when a custom schema rejects
    /// it (or it is not JSON).
    fn envelope(&self, event: &Event, output: String) -> Result<String, String> {
        let data = match self.output {
            OutputCheck::Native => Data::Raw(
                RawValue::from_string(output).map_err(|e| format!("output is not JSON: {e}"))?,
            ),
            OutputCheck::Schema(v) => {
                let value: serde_json::Value = serde_json::from_str(&output)
                    .map_err(|e| format!("output is not JSON: {e}"))?;
                if !v.is_valid(&value) {
                    let errors: Vec<String> = v
                        .iter_errors(&value)
                        .take(3)
                        .map(|e| {
                            let at = e.instance_path().to_string();
                            format!("{} {e}", if at.is_empty() { "/" } else { &at })
                        })
                        .collect();
                    if !errors.is_empty() {
                        return Err(format!(
                            "output does not match the key's schema: {}",
                            errors.join("; ")
                        ));
                    }
                }
                // Written compact from the checked value, inside the
                // envelope: one envelope stays on one line.
                Data::Checked(value)
            }
        };
        serde_json::to_string(&Envelope {
            id: &event.new.id,
            key: self.key,
            subscription_id: self.subscription_id,
            seq: event.seq,
            event_type: &event.new.event_type,
            source: &event.new.source,
            source_time: event.new.source_time.as_deref(),
            timestamp: rfc3339_ms(event.timestamp_ms),
            data: &data,
        })
        .map_err(|e| e.to_string())
    }
}

fn fault_verdict(stage: Function, f: &PluginFault) -> Verdict {
    Verdict::Fault {
        stage,
        kind: LetterKind::Fault(f.kind()),
        message: f.to_string(),
        counts: f.counts_toward_quarantine(),
    }
}

/// `event` through `key` of `runner`, with `params` and the key's `output`
/// check, on this thread, judged exactly as a consumer's events are.
pub fn trial(
    runner: &dyn Runner,
    key: &str,
    params: &Params,
    output: &OutputCheck,
    event: Event,
) -> Verdict {
    let call = Call {
        key,
        subscription_id: "",
        runner,
        params,
        output,
    };
    let (mut verdicts, _) = call.judge(&[Arc::new(event)], None);
    verdicts.pop().unwrap_or(Verdict::Dropped)
}

/// What consumers receive per event.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    key: &'a str,
    subscription_id: &'a str,
    seq: u64,
    event_type: &'a str,
    source: &'a str,
    source_time: Option<&'a str>,
    timestamp: String,
    data: &'a Data,
}

/// An envelope's `data`: the event's own JSON, or a key's output as its
/// schema check read it.
#[derive(Serialize)]
#[serde(untagged)]
enum Data {
    Raw(Box<RawValue>),
    Checked(serde_json::Value),
}

fn letter(
    ctx: &Ctx,
    params: &Params,
    event: &Arc<Event>,
    kind: LetterKind,
    message: String,
    attempts: u32,
) -> DeadLetter {
    let now = now_ms();
    DeadLetter {
        id: 0,
        key: ctx.key.clone(),
        subscription_id: ctx.subscription_id.clone(),
        scope: ctx.scope.clone(),
        params: params.clone(),
        event: event.clone(),
        kind,
        message,
        attempts,
        first_failed_ms: now,
        last_failed_ms: now,
    }
}

/// One batch, on a blocking thread.
fn run_batch(ctx: &Ctx, events: &[Arc<Event>]) -> Batch {
    let v = ctx.current();
    let n = events.len() as u64;
    // A key counts what reached its functions; a consumer, all it pulled.
    ctx.stats.add(|s| &s.received, n);
    if let Some(q) = ctx.health.quarantine() {
        ctx.count(|s| &s.skipped_quarantined, n);
        let message = format!(
            "not processed: key quarantined after {} consecutive faults (last: {})",
            q.faults, q.last_error
        );
        for e in events {
            ctx.pipeline.bury(letter(
                ctx,
                &v.params,
                e,
                LetterKind::Quarantined,
                message.clone(),
                0,
            ));
        }
        return Batch::default();
    }
    let call = Call {
        key: &ctx.key,
        subscription_id: &ctx.subscription_id,
        runner: v.runner.as_ref(),
        params: &v.params,
        output: &v.output,
    };
    let mut out = Batch::default();
    let ks = &ctx.key_stats;
    ks.events.add(|s| &s.received, n);
    let (verdicts, matched) = call.judge(events, Some(ks));
    ctx.count(|s| &s.matched, matched);
    for (event, verdict) in events.iter().zip(verdicts) {
        // An event whose match and process both went fine ends a streak;
        // the key's own error for an event neither counts nor ends one.
        out.faults.push(match &verdict {
            Verdict::Fault {
                message,
                counts: true,
                ..
            } => Streak::Fault(message.clone()),
            Verdict::Fault { counts: false, .. } => Streak::Neutral,
            _ => Streak::Ok,
        });
        match verdict {
            Verdict::Emit(json) => {
                ctx.count(|s| &s.delivered, 1);
                out.deliveries.push(Delivery::Envelope {
                    seq: event.seq,
                    json,
                });
            }
            Verdict::Filtered => ctx.count(|s| &s.filtered, 1),
            Verdict::Dropped => ctx.count(|s| &s.dropped_by_key, 1),
            Verdict::Fault { kind, message, .. } => {
                ctx.count(|s| &s.faults, 1);
                ks.fault(kind.as_str());
                ctx.pipeline
                    .bury(letter(ctx, &v.params, event, kind, message, 1));
            }
        }
    }
    out
}

/// Replays one dead letter (on a blocking thread).
pub(crate) fn replay_one(p: &Pipeline, mut letter: DeadLetter) -> ReplayResult {
    let id = letter.id;
    let skipped = |letter: DeadLetter, why: String| {
        p.dlq.put_back(letter);
        ReplayResult {
            id,
            outcome: "skipped",
            delivered_to: 0,
            envelope: None,
            error: Some(why),
        }
    };
    let entry = p
        .registry
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .lookup(&letter.key)
        .cloned();
    let Some(entry) = entry else {
        let why = format!("key `{}` is not registered", letter.key);
        return skipped(letter, why);
    };
    if let Some(q) = p.health.of(&letter.key).quarantine() {
        let why = format!(
            "key `{}` is quarantined ({} consecutive faults); resume it first",
            letter.key, q.faults
        );
        return skipped(letter, why);
    }
    // Output nobody receives would be lost: the letter waits for a consumer
    // of its subscription (and the key is not run for nothing).
    let attached = p
        .subs
        .consumers_of(&letter.key)
        .iter()
        .any(|c| c.subscription_id == letter.subscription_id);
    if !attached {
        let why = format!(
            "no consumer of subscription `{}` is attached; the letter stays until one is",
            letter.subscription_id
        );
        return skipped(letter, why);
    }
    let call = Call {
        key: &letter.key,
        subscription_id: &letter.subscription_id,
        runner: entry.plugin.as_ref(),
        params: &letter.params,
        output: &entry.output,
    };
    let verdict = call
        .judge(std::slice::from_ref(&letter.event), None)
        .0
        .pop()
        .unwrap_or(Verdict::Dropped);
    match verdict {
        Verdict::Emit(json) => {
            let delivery = Delivery::Envelope {
                seq: letter.event.seq,
                json: json.clone(),
            };
            let delivered_to = p
                .subs
                .offer(&letter.key, &letter.subscription_id, &delivery);
            ReplayResult {
                id,
                outcome: "delivered",
                delivered_to,
                envelope: RawValue::from_string(json).ok(),
                error: None,
            }
        }
        Verdict::Filtered | Verdict::Dropped => ReplayResult {
            id,
            outcome: "dropped",
            delivered_to: 0,
            envelope: None,
            error: None,
        },
        Verdict::Fault { kind, message, .. } => {
            letter.attempts += 1;
            letter.kind = kind;
            letter.message = message.clone();
            letter.last_failed_ms = now_ms();
            p.dlq.put_back(letter);
            ReplayResult {
                id,
                outcome: "failed",
                delivered_to: 0,
                envelope: None,
                error: Some(message),
            }
        }
    }
}
