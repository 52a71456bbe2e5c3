//! `/metrics`: the host's counters in the Prometheus text format (0.0.4),
//! rendered from the core on each scrape. Knows nothing of HTTP.

use std::fmt::Write;

use crate::host::Host;
use crate::pipeline::stats::{Histogram, LATENCY_BUCKETS};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
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

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (buckets, count, sum) = h.snapshot();
        for (bound, n) in LATENCY_BUCKETS.iter().zip(buckets) {
            let le = bound.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, n);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, count);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// Every metric of `host`.
pub fn render(host: &Host) -> String {
    let mut o = Out(String::new());

    let plugins = host.plugins();
    o.family(
        "weir_plugin_calls_total",
        "counter",
        "Calls into a plugin's component.",
    );
    for p in &plugins {
        o.sample("weir_plugin_calls_total", &[("plugin", &p.name)], p.calls);
    }
    o.family(
        "weir_plugin_faults_total",
        "counter",
        "Calls into a plugin that faulted.",
    );
    for p in &plugins {
        o.sample("weir_plugin_faults_total", &[("plugin", &p.name)], p.faults);
    }
    o.family(
        "weir_plugin_instances_created_total",
        "counter",
        "Instances created (the first, plus one per fault that recycled one).",
    );
    for p in &plugins {
        o.sample(
            "weir_plugin_instances_created_total",
            &[("plugin", &p.name)],
            p.instances_created,
        );
    }
    o.family(
        "weir_plugin_failed",
        "gauge",
        "Plugin files that failed to load.",
    );
    o.sample("weir_plugin_failed", &[], host.failed_plugins().len());

    let pipeline = host.pipeline();
    let keys = pipeline.key_stats();
    o.family(
        "weir_key_events_total",
        "counter",
        "Events per key by outcome: received, filtered (matches said no), emitted, dropped (by process), overflow_dropped (slow consumer), skipped_quarantined.",
    );
    for (key, s) in &keys {
        let c = s.events.counts();
        for (outcome, n) in [
            ("received", c.received),
            ("filtered", c.filtered),
            ("emitted", c.delivered),
            ("dropped", c.dropped_by_key),
            ("overflow_dropped", c.overflow_dropped),
            ("skipped_quarantined", c.skipped_quarantined),
        ] {
            o.sample(
                "weir_key_events_total",
                &[("key", key), ("outcome", outcome)],
                n,
            );
        }
    }
    o.family(
        "weir_key_faults_total",
        "counter",
        "Events a key faulted on, by kind.",
    );
    for (key, s) in &keys {
        let faults = s
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (kind, n) in faults {
            o.sample("weir_key_faults_total", &[("key", key), ("kind", &kind)], n);
        }
    }
    o.family(
        "weir_key_call_duration_seconds",
        "histogram",
        "Duration of batch calls into a key, by function.",
    );
    for (key, s) in &keys {
        o.histogram(
            "weir_key_call_duration_seconds",
            &[("key", key), ("function", "matches_batch")],
            &s.matches_latency,
        );
        o.histogram(
            "weir_key_call_duration_seconds",
            &[("key", key), ("function", "process_batch")],
            &s.process_latency,
        );
    }
    o.family(
        "weir_key_quarantined",
        "gauge",
        "1 while a key is quarantined.",
    );
    for k in host.registry().list() {
        let q = pipeline.quarantine(&k.def.key).is_some();
        o.sample("weir_key_quarantined", &[("key", &k.def.key)], u8::from(q));
    }

    let subs = pipeline.subscriptions();
    o.family(
        "weir_subscription_consumers",
        "gauge",
        "Consumers attached to a subscription.",
    );
    for s in &subs {
        o.sample(
            "weir_subscription_consumers",
            &[("key", &s.key), ("subscription_id", &s.subscription_id)],
            s.consumers.len(),
        );
    }
    o.family(
        "weir_subscription_overflow_dropped",
        "gauge",
        "Events the subscription's current consumers lost to full buffers.",
    );
    for s in &subs {
        let dropped: u64 = s.consumers.iter().map(|c| c.stats.overflow_dropped).sum();
        o.sample(
            "weir_subscription_overflow_dropped",
            &[("key", &s.key), ("subscription_id", &s.subscription_id)],
            dropped,
        );
    }
    let (pre, clean) = pipeline.lifecycle_counts();
    o.family(
        "weir_pre_consume_total",
        "counter",
        "Pre-consume calls that succeeded.",
    );
    o.sample("weir_pre_consume_total", &[], pre);
    o.family("weir_cleanup_total", "counter", "Cleanup calls.");
    o.sample("weir_cleanup_total", &[], clean);
    let dlq = pipeline.dead_letters();
    o.family("weir_dead_letters", "gauge", "Dead letters held.");
    o.sample("weir_dead_letters", &[], dlq.len());
    o.family(
        "weir_dead_letters_evicted_total",
        "counter",
        "Dead letters evicted by newer ones.",
    );
    o.sample("weir_dead_letters_evicted_total", &[], dlq.evicted());

    let bus = pipeline.bus().stats();
    o.family(
        "weir_bus_published_total",
        "counter",
        "Events accepted by the bus.",
    );
    o.sample("weir_bus_published_total", &[], bus.published);
    o.family(
        "weir_bus_duplicates_total",
        "counter",
        "Events refused as duplicates.",
    );
    o.sample("weir_bus_duplicates_total", &[], bus.duplicates);
    o.family(
        "weir_bus_history_events",
        "gauge",
        "Events held for replay.",
    );
    o.sample("weir_bus_history_events", &[], bus.history_events);
    o.family("weir_bus_history_bytes", "gauge", "Bytes held for replay.");
    o.sample("weir_bus_history_bytes", &[], bus.history_bytes);
    o.family("weir_bus_feeds", "gauge", "Live consumer feeds.");
    o.sample("weir_bus_feeds", &[], bus.feeds);
    o.family(
        "weir_bus_events_by_type_total",
        "counter",
        "Events accepted, by type.",
    );
    for (t, n) in pipeline.event_counts() {
        o.sample("weir_bus_events_by_type_total", &[("event_type", &t)], n);
    }

    o.family(
        "weir_datastore_queue_rows",
        "gauge",
        "Rows waiting in a datastore's ingestion queue.",
    );
    for d in host.datastores() {
        o.sample(
            "weir_datastore_queue_rows",
            &[("datastore", d.name())],
            d.queued_rows(),
        );
    }
    let stats: Vec<_> = host
        .datastores()
        .map(|d| (d.name().to_string(), d.stats()))
        .collect();
    o.family(
        "weir_datastore_rows_applied_total",
        "counter",
        "Rows applied to a datastore's index.",
    );
    for (name, s) in &stats {
        o.sample(
            "weir_datastore_rows_applied_total",
            &[("datastore", name)],
            s.rows_applied,
        );
    }
    o.family(
        "weir_datastore_rows_rejected_total",
        "counter",
        "Rows rejected as malformed.",
    );
    for (name, s) in &stats {
        o.sample(
            "weir_datastore_rows_rejected_total",
            &[("datastore", name)],
            s.rows_rejected,
        );
    }
    o.family(
        "weir_datastore_files",
        "gauge",
        "Files in a datastore's index.",
    );
    for (name, s) in &stats {
        o.sample(
            "weir_datastore_files",
            &[("datastore", name)],
            s.total_files,
        );
    }
    o.family(
        "weir_datastore_sessions",
        "gauge",
        "Live agent sessions (0 or 1: the last agent wins).",
    );
    for d in host.datastores() {
        o.sample(
            "weir_datastore_sessions",
            &[("datastore", d.name())],
            u8::from(d.session().is_some()),
        );
    }
    o.family(
        "weir_datastore_ready",
        "gauge",
        "1 while a datastore's views are READY.",
    );
    for d in host.datastores() {
        o.sample(
            "weir_datastore_ready",
            &[("datastore", d.name())],
            u8::from(d.readiness().is_ok()),
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut o = Out(String::new());
        o.sample("m", &[("k", "v\"")], 1);
        assert_eq!(o.0, "m{k=\"v\\\"\"} 1\n");
    }
}
