//! Prometheus text exposition of the server's counters.
//!
//! Written by hand: a handful of counters, one gauge and two histograms, in a text format
//! of a few lines; a metrics crate would add a registry and an exporter for no gain here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(buckets) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let set = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{set} {}", self.sum);
        let _ = writeln!(out, "{name}_count{set} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_requests: Histogram,
    batch_pairs: Histogram,
    batches: u64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    pub queue_depth: AtomicUsize,
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_default()
            .observe(&LATENCY_BUCKETS, seconds);
    }

    pub fn record_batch(&self, requests: usize, pairs: usize) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.batches += 1;
        m.batch_requests.observe(&BATCH_BUCKETS, requests as f64);
        m.batch_pairs.observe(&BATCH_BUCKETS, pairs as f64);
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str("# HELP crossenc_requests_total HTTP requests by route and status.\n# TYPE crossenc_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "crossenc_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP crossenc_request_duration_seconds Request latency.\n# TYPE crossenc_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.render(
                &mut out,
                "crossenc_request_duration_seconds",
                &format!("route=\"{route}\""),
                &LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP crossenc_batches_total Forward passes of the inference thread.\n# TYPE crossenc_batches_total counter\n");
        let _ = writeln!(out, "crossenc_batches_total {}", m.batches);
        out.push_str("# HELP crossenc_batch_requests Requests merged into one inference pass.\n# TYPE crossenc_batch_requests histogram\n");
        m.batch_requests
            .render(&mut out, "crossenc_batch_requests", "", &BATCH_BUCKETS);
        out.push_str("# HELP crossenc_batch_pairs Pairs scored in one inference pass.\n# TYPE crossenc_batch_pairs histogram\n");
        m.batch_pairs
            .render(&mut out, "crossenc_batch_pairs", "", &BATCH_BUCKETS);
        out.push_str("# HELP crossenc_queue_depth Requests waiting for the inference thread.\n# TYPE crossenc_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "crossenc_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out
    }
}
