//! Counters, histograms and gauges in the Prometheus text exposition format (version 0.0.4),
//! kept by hand: four metric families do not need a metrics library.
//!
//! - `seqlab_requests_total{endpoint,status}` counter
//! - `seqlab_request_duration_seconds{endpoint}` histogram (seconds, from request to response)
//! - `seqlab_batch_size{model}` histogram (requests per model call)
//! - `seqlab_queue_length{model}` gauge (requests waiting for a batch)

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size buckets, requests.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Cumulative counts per bucket bound (as Prometheus exposes them).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, &b) in self.counts.iter_mut().zip(bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, bounds: &[f64]) {
        for (c, b) in self.counts.iter().zip(bounds) {
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{label}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch: BTreeMap<String, Histogram>,
    queue: BTreeMap<String, usize>,
}

/// The server's metrics; shared by the HTTP layer and the batchers.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A label value with `\`, `"` and newlines escaped, as the exposition format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One finished request: its endpoint (route pattern), HTTP status and duration.
    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((endpoint.to_string(), status)).or_default() += 1;
        m.latency
            .entry(endpoint.to_string())
            .or_default()
            .observe(&LATENCY_BUCKETS, seconds);
    }

    /// One model call of `size` requests.
    pub fn observe_batch(&self, model: &str, size: usize) {
        self.lock()
            .batch
            .entry(model.to_string())
            .or_default()
            .observe(&BATCH_BUCKETS, size as f64);
    }

    pub fn set_queue_length(&self, model: &str, n: usize) {
        self.lock().queue.insert(model.to_string(), n);
    }

    /// Requests counted so far with this endpoint and status.
    pub fn requests(&self, endpoint: &str, status: u16) -> u64 {
        self.lock()
            .requests
            .get(&(endpoint.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// The text format served at `/metrics`.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP seqlab_requests_total HTTP requests answered, by endpoint and status.\n");
        out.push_str("# TYPE seqlab_requests_total counter\n");
        for ((e, s), n) in &m.requests {
            let _ = writeln!(
                out,
                "seqlab_requests_total{{endpoint=\"{}\",status=\"{s}\"}} {n}",
                escape(e)
            );
        }
        out.push_str("# HELP seqlab_request_duration_seconds Time from request to response.\n");
        out.push_str("# TYPE seqlab_request_duration_seconds histogram\n");
        for (e, h) in &m.latency {
            let label = format!("endpoint=\"{}\"", escape(e));
            h.render(&mut out, "seqlab_request_duration_seconds", &label, &LATENCY_BUCKETS);
        }
        out.push_str("# HELP seqlab_batch_size Requests per model call (dynamic batching).\n");
        out.push_str("# TYPE seqlab_batch_size histogram\n");
        for (model, h) in &m.batch {
            let label = format!("model=\"{}\"", escape(model));
            h.render(&mut out, "seqlab_batch_size", &label, &BATCH_BUCKETS);
        }
        out.push_str("# HELP seqlab_queue_length Requests waiting for a batch.\n");
        out.push_str("# TYPE seqlab_queue_length gauge\n");
        for (model, n) in &m.queue {
            let _ = writeln!(out, "seqlab_queue_length{{model=\"{}\"}} {n}", escape(model));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_and_escapes_labels() {
        let m = Metrics::default();
        m.observe_request("/v1/translate", 200, 0.003);
        m.observe_request("/v1/translate", 200, 0.2);
        m.observe_request("/v1/translate", 503, 0.0001);
        m.observe_batch("de\"en", 3);
        m.set_queue_length("de\"en", 7);
        let t = m.render();
        assert!(
            t.contains("seqlab_requests_total{endpoint=\"/v1/translate\",status=\"200\"} 2"),
            "{t}"
        );
        assert!(t.contains("seqlab_requests_total{endpoint=\"/v1/translate\",status=\"503\"} 1"));
        assert!(t.contains("seqlab_request_duration_seconds_bucket{endpoint=\"/v1/translate\",le=\"0.001\"} 1"));
        assert!(t.contains("seqlab_request_duration_seconds_bucket{endpoint=\"/v1/translate\",le=\"0.005\"} 2"));
        assert!(t.contains("seqlab_request_duration_seconds_bucket{endpoint=\"/v1/translate\",le=\"+Inf\"} 3"));
        assert!(t.contains("seqlab_request_duration_seconds_count{endpoint=\"/v1/translate\"} 3"));
        assert!(t.contains("seqlab_batch_size_bucket{model=\"de\\\"en\",le=\"2\"} 0"));
        assert!(t.contains("seqlab_batch_size_bucket{model=\"de\\\"en\",le=\"4\"} 1"));
        assert!(t.contains("seqlab_queue_length{model=\"de\\\"en\"} 7"));
        assert_eq!(m.requests("/v1/translate", 200), 2);
    }
}
