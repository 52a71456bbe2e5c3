//! `/metrics`: the host's counters in the Prometheus text format (0.0.4),
//! rendered from the core on each scrape. Knows nothing of HTTP.

use std::fmt::Write;

use crate::pipeline::Pipeline;
use crate::pipeline::stats::{Histogram, LATENCY_BUCKETS};
use crate::runtime::Host;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Label names and values of one sample.
type Labels = Vec<(&'static str, String)>;

fn label(name: &'static str, value: &str) -> Labels {
    vec![(name, value.to_string())]
}

struct Out(String);

impl Out {
    /// One family: its `# HELP` and `# TYPE` lines, then its samples.
    fn metric<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, V)>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.sample(name, &labels, value);
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }

    /// The samples of one histogram series (its family line written apart).
    fn histogram(&mut self, name: &str, labels: &Labels, h: &Histogram) {
        let (buckets, count, sum) = h.snapshot();
        let les = LATENCY_BUCKETS
            .iter()
            .map(f64::to_string)
            .zip(buckets)
            .chain([("+Inf".to_string(), count)]);
        for (le, n) in les {
            let mut l = labels.clone();
            l.push(("le", le));
            self.sample(&format!("{name}_bucket"), &l, n);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// Every metric of `host` a key of `scope` may see: a datastore's key
/// (`Some`) sees its own datastore's series, its own subscriptions and no
/// event types (which other datastores' producers choose); a host-level key
/// (`None`) sees everything.
pub fn render(host: &Host, scope: Option<&str>) -> String {
    let mut o = Out(String::new());
    plugins(&mut o, host);
    keys(&mut o, host);
    subscriptions(&mut o, host.pipeline(), scope);
    bus(&mut o, host.pipeline(), scope);
    datastores(&mut o, host, scope);
    if scope.is_none() {
        store(&mut o, host);
    }
    background(&mut o);
    o.0
}

/// Per plugin: calls, faults, instances, memory, suppressed log lines; and
/// the files that failed to load.
fn plugins(o: &mut Out, host: &Host) {
    let plugins = host.plugins();
    let per_plugin = |v: PluginSample| {
        plugins
            .iter()
            .map(move |p| (label("plugin", &p.name), v(p)))
            .collect::<Vec<_>>()
    };
    type PluginSample = fn(&crate::wire::PluginInfo) -> u64;
    let plugin_families: [(&str, &str, &str, PluginSample); 6] = [
        (
            "weir_plugin_calls_total",
            "counter",
            "Calls into a plugin's component.",
            |p| p.calls,
        ),
        (
            "weir_plugin_faults_total",
            "counter",
            "Calls into a plugin that faulted.",
            |p| p.faults,
        ),
        (
            "weir_plugin_instances_created_total",
            "counter",
            "Instances created (the first, plus one per fault that recycled one).",
            |p| p.instances_created,
        ),
        (
            "weir_plugin_memory_bytes",
            "gauge",
            "Linear memory held by a plugin's live instances (idle or running).",
            |p| p.memory_bytes,
        ),
        (
            "weir_plugin_memory_peak_bytes",
            "gauge",
            "The most linear memory one instance of a plugin has held.",
            |p| p.memory_peak_bytes,
        ),
        (
            "weir_plugin_log_lines_suppressed_total",
            "counter",
            "Lines a plugin logged (log import, stdout, stderr) beyond its log budget, dropped.",
            |p| crate::engine::logbudget::LogBudget::of(&p.name).suppressed(),
        ),
    ];
    for (name, kind, help, sample) in plugin_families {
        o.metric(name, kind, help, per_plugin(sample));
    }
    o.metric(
        "weir_plugin_failed",
        "gauge",
        "Plugin files that failed to load.",
        [(vec![], host.failed_plugins().len())],
    );
}

/// Per key: events by outcome, faults by kind, call durations, quarantine.
fn keys(o: &mut Out, host: &Host) {
    let pipeline = host.pipeline();
    let keys = pipeline.key_stats();
    o.metric(
        "weir_key_events_total",
        "counter",
        "Events per key by outcome: received, matched (matches said yes), filtered (matches said no), emitted, dropped (by process), overflow_dropped (slow consumer), skipped_quarantined.",
        keys.iter().flat_map(|(key, s)| {
            let c = s.events.counts();
            [
                ("received", c.received),
                ("matched", c.matched),
                ("filtered", c.filtered),
                ("emitted", c.delivered),
                ("dropped", c.dropped_by_key),
                ("overflow_dropped", c.overflow_dropped),
                ("skipped_quarantined", c.skipped_quarantined),
            ]
            .map(|(outcome, n)| {
                (
                    vec![("key", key.clone()), ("outcome", outcome.to_string())],
                    n,
                )
            })
        }),
    );
    o.metric(
        "weir_key_faults_total",
        "counter",
        "Events a key faulted on, by kind.",
        keys.iter().flat_map(|(key, s)| {
            s.faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(kind, n)| (vec![("key", key.clone()), ("kind", kind.clone())], *n))
                .collect::<Vec<_>>()
        }),
    );
    let latency = "weir_key_call_duration_seconds";
    o.metric::<u64>(
        latency,
        "histogram",
        "Duration of batch calls into a key, by function.",
        [],
    );
    for (key, s) in &keys {
        for (function, h) in [
            ("matches_batch", &s.matches_latency),
            ("process_batch", &s.process_latency),
        ] {
            let labels = vec![("key", key.clone()), ("function", function.to_string())];
            o.histogram(latency, &labels, h);
        }
    }
    o.metric(
        "weir_key_quarantined",
        "gauge",
        "1 while a key is quarantined.",
        host.registry().list().map(|k| {
            (
                label("key", &k.def.key),
                u8::from(pipeline.quarantine(&k.def.key).is_some()),
            )
        }),
    );
}

/// The subscriptions a key of `scope` may see, pre-consume and cleanup
/// calls, and the dead-letter queue.
fn subscriptions(o: &mut Out, pipeline: &Pipeline, scope: Option<&str>) {
    let own = scope.map(|d| format!("{d}/"));
    let subs: Vec<_> = pipeline
        .subscriptions()
        .into_iter()
        .filter(|s| {
            own.as_ref()
                .is_none_or(|p| s.subscription_id.starts_with(p))
        })
        .collect();
    let sub_labels = |s: &crate::pipeline::subscriptions::SubscriptionInfo| {
        vec![
            ("key", s.key.clone()),
            ("subscription_id", s.subscription_id.clone()),
        ]
    };
    o.metric(
        "weir_subscription_consumers",
        "gauge",
        "Consumers attached to a subscription.",
        subs.iter()
            .map(|s| (sub_labels(s), s.consumers.len() as u64)),
    );
    o.metric(
        "weir_subscription_overflow_dropped",
        "gauge",
        "Events the subscription's current consumers lost to full buffers.",
        subs.iter().map(|s| {
            let dropped: u64 = s.consumers.iter().map(|c| c.stats.overflow_dropped).sum();
            (sub_labels(s), dropped)
        }),
    );
    let (pre, clean) = pipeline.lifecycle_counts();
    o.metric(
        "weir_pre_consume_total",
        "counter",
        "Pre-consume calls that succeeded.",
        [(vec![], pre)],
    );
    o.metric(
        "weir_cleanup_total",
        "counter",
        "Cleanup calls.",
        [(vec![], clean)],
    );
    let dlq = pipeline.dead_letters();
    o.metric(
        "weir_dead_letters",
        "gauge",
        "Dead letters held.",
        [(vec![], dlq.len() as u64)],
    );
    o.metric(
        "weir_dead_letters_bytes",
        "gauge",
        "Bytes of dead letters held (bounded by dlq_bytes).",
        [(vec![], dlq.bytes() as u64)],
    );
    o.metric(
        "weir_dead_letters_evicted_total",
        "counter",
        "Dead letters evicted by newer ones (the queue was full by count or bytes).",
        [(vec![], dlq.evicted())],
    );
}

/// The bus: published, duplicates, history, feeds; events by type for
/// host-level keys only.
fn bus(o: &mut Out, pipeline: &Pipeline, scope: Option<&str>) {
    let bus = pipeline.bus().stats();
    for (name, kind, help, value) in [
        (
            "weir_bus_published_total",
            "counter",
            "Events accepted by the bus.",
            bus.published,
        ),
        (
            "weir_bus_duplicates_total",
            "counter",
            "Events refused as duplicates.",
            bus.duplicates,
        ),
        (
            "weir_bus_history_events",
            "gauge",
            "Events held for replay.",
            bus.history_events as u64,
        ),
        (
            "weir_bus_history_bytes",
            "gauge",
            "Bytes held for replay.",
            bus.history_bytes as u64,
        ),
        (
            "weir_bus_feeds",
            "gauge",
            "Live consumer feeds.",
            bus.feeds as u64,
        ),
    ] {
        o.metric(name, kind, help, [(vec![], value)]);
    }
    o.metric(
        "weir_bus_events_by_type_total",
        "counter",
        "Events accepted, by type (the first max_event_types types by name; the rest as `(other)`).",
        pipeline
            .event_counts()
            .into_iter()
            .filter(|_| scope.is_none())
            .map(|(t, n)| (label("event_type", &t), n)),
    );
}

/// Per datastore of `scope`: queue, rows, files, sessions, readiness,
/// panics, evictions.
fn datastores(o: &mut Out, host: &Host, scope: Option<&str>) {
    let datastores: Vec<_> = host
        .datastores()
        .filter(|d| scope.is_none_or(|s| s == d.name()))
        .map(|d| (d, d.stats()))
        .collect();
    let per_datastore =
        |v: &dyn Fn(&crate::datastore::Datastore, &crate::wire::DatastoreStats) -> u64| {
            datastores
                .iter()
                .map(|(d, s)| (label("datastore", d.name()), v(d, s)))
                .collect::<Vec<_>>()
        };
    o.metric(
        "weir_datastore_queue_rows",
        "gauge",
        "Rows waiting in a datastore's ingestion queue.",
        per_datastore(&|_, s| s.queued_rows as u64),
    );
    o.metric(
        "weir_datastore_rows_applied_total",
        "counter",
        "Rows applied to a datastore's index.",
        per_datastore(&|_, s| s.rows_applied),
    );
    o.metric(
        "weir_datastore_rows_rejected_total",
        "counter",
        "Rows rejected as malformed.",
        per_datastore(&|_, s| s.rows_rejected),
    );
    o.metric(
        "weir_datastore_files",
        "gauge",
        "Files in a datastore's index.",
        per_datastore(&|_, s| s.total_files as u64),
    );
    o.metric(
        "weir_datastore_sessions",
        "gauge",
        "Live agent sessions (0 or 1: the last agent wins).",
        per_datastore(&|d, _| u64::from(d.session().is_some())),
    );
    o.metric(
        "weir_datastore_ready",
        "gauge",
        "1 while a datastore's views are READY.",
        per_datastore(&|d, _| u64::from(d.readiness().is_ok())),
    );
    o.metric(
        "weir_datastore_apply_panics_total",
        "counter",
        "Jobs whose application panicked (each raised the consistency alarm).",
        per_datastore(&|_, s| s.apply_panics),
    );
    o.metric(
        "weir_datastore_evictions_total",
        "counter",
        "What a datastore's index let go of to stay within its bounds, by kind.",
        datastores.iter().flat_map(|(d, s)| {
            let e = s.evictions;
            [
                ("tombstones", e.tombstones),
                ("blind_spots", e.blind_spots),
                ("feedback_ignored", e.feedback_ignored),
            ]
            .map(|(kind, n)| {
                (
                    vec![
                        ("datastore", d.name().to_string()),
                        ("kind", kind.to_string()),
                    ],
                    n,
                )
            })
        }),
    );
}

/// Panics contained in background work.
/// The durable store (host-wide, so host-level keys only): size, commits,
/// fsyncs, errors, the commit latency histogram, and whether it is failing.
fn store(o: &mut Out, host: &Host) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(store) = host.store() else { return };
    let st = store.stats();
    let summary = store.summary();
    for (name, kind, help, value) in [
        (
            "weir_store_size_bytes",
            "gauge",
            "Size of the store file.",
            summary.size_bytes,
        ),
        (
            "weir_store_log_bytes",
            "gauge",
            "Bytes of events in the durable log, as stored.",
            store.log_bytes(),
        ),
        (
            "weir_store_commits_total",
            "counter",
            "Commits of the event log (each holds every batch that waited).",
            st.commits.load(Relaxed),
        ),
        (
            "weir_store_fsyncs_total",
            "counter",
            "Commits flushed to disk.",
            st.fsyncs.load(Relaxed),
        ),
        (
            "weir_store_errors_total",
            "counter",
            "Failed reads and writes of the store.",
            st.errors.load(Relaxed),
        ),
        (
            "weir_store_retention_removed_total",
            "counter",
            "Events removed from the log by retention.",
            st.retained_out.load(Relaxed),
        ),
        (
            "weir_store_failing",
            "gauge",
            "1 while the store's last write failed (publishing answers 503).",
            u64::from(summary.state == "failing"),
        ),
    ] {
        o.metric(name, kind, help, [(vec![], value)]);
    }
    let name = "weir_store_commit_seconds";
    let _ = writeln!(
        o.0,
        "# HELP {name} Time one event log commit took (write and flush).\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    let bounds = crate::store::COMMIT_BUCKETS_MS
        .iter()
        .map(|ms| (ms / 1000.0).to_string())
        .chain(["+Inf".to_string()]);
    for (le, n) in bounds.zip(&st.commit_ms) {
        cumulative += n.load(Relaxed);
        o.sample(&format!("{name}_bucket"), &[("le", le)], cumulative);
    }
    o.sample(
        &format!("{name}_sum"),
        &[],
        st.commit_us_sum.load(Relaxed) as f64 / 1e6,
    );
    o.sample(&format!("{name}_count"), &[], cumulative);
}

fn background(o: &mut Out) {
    o.metric(
        "weir_background_panics_total",
        "counter",
        "Panics contained in background work (the worker went on), by worker.",
        crate::supervise::Worker::ALL
            .map(|w| (label("worker", w.as_str()), crate::supervise::count(w))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut o = Out(String::new());
        o.sample("m", &label("k", "v\""), 1);
        assert_eq!(o.0, "m{k=\"v\\\"\"} 1\n");
    }
}
