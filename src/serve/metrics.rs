//! The server's Prometheus metrics, through `metrics-exporter-prometheus` (the crate TEI uses).
//!
//! Where a metric means what one of TEI's does, it has TEI's name and labels (`te_request_count`,
//! `te_request_failure{err}`, `te_request_*_duration`, `te_batch_next_*`, `te_queue_size`), so a
//! dashboard built for TEI reads crossenc; the rest keep crossenc's names. The recorder is this
//! server's own, not the process's global one, and the handles of fixed-label series are
//! registered once, so recording a request is a few atomic adds.

use anyhow::Result;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::time::Duration;

/// What one scored request took, for its log line and TEI's duration histograms.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub pairs: usize,
    pub tokens: usize,
    pub tokenization: Duration,
    pub queue: Duration,
    pub inference: Duration,
}

const METADATA: Metadata<'static> = Metadata::new("crossenc::serve", Level::INFO, None);

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    request_count: Counter,
    request_success: Counter,
    request_duration: Histogram,
    tokenization_duration: Histogram,
    queue_duration: Histogram,
    inference_duration: Histogram,
    input_length: Histogram,
    batch_size: Histogram,
    batch_tokens: Histogram,
    batch_requests: Histogram,
    batches: Counter,
    /// Pairs waiting for the inference thread (TEI counts inputs).
    queue_size: Gauge,
    /// Requests waiting for the inference thread (what `--max-concurrent-requests` bounds).
    queue_depth: Gauge,
}

/// Each metric's help line on the metrics page.
const HELP: [(&str, &str); 16] = [
    ("te_request_count", "Scoring requests received."),
    ("te_request_success", "Scoring requests answered 2xx."),
    (
        "te_request_failure",
        "Scoring requests refused or failed, by cause.",
    ),
    (
        "te_request_duration",
        "Seconds from a scoring request to its answer.",
    ),
    (
        "te_request_tokenization_duration",
        "Seconds tokenizing a request.",
    ),
    (
        "te_request_queue_duration",
        "Seconds a request waited for inference.",
    ),
    (
        "te_request_inference_duration",
        "Seconds of the pass that scored a request.",
    ),
    ("te_request_input_length", "Tokens of each pair scored."),
    ("te_batch_next_size", "Pairs scored in one inference pass."),
    (
        "te_batch_next_tokens",
        "Tokens scored in one inference pass.",
    ),
    ("te_queue_size", "Pairs waiting for the inference thread."),
    (
        "crossenc_requests_total",
        "HTTP requests by route and status.",
    ),
    (
        "crossenc_request_duration_seconds",
        "Request latency by route.",
    ),
    (
        "crossenc_batches_total",
        "Forward passes of the inference thread.",
    ),
    (
        "crossenc_batch_requests",
        "Requests merged into one inference pass.",
    ),
    (
        "crossenc_queue_depth",
        "Requests waiting for the inference thread.",
    ),
];

/// `n` buckets from `first`, each `ratio` times the last.
fn geometric(first: f64, ratio: f64, n: i32) -> Vec<f64> {
    (0..n).map(|i| first * ratio.powi(i)).collect()
}

impl Metrics {
    /// `max_input_length` bounds the buckets of the per-pair token counts.
    pub fn new(max_input_length: usize) -> Result<Self> {
        // TEI's buckets, so its dashboards' quantiles read the same: durations from 15 µs up
        // by half again each (to ~15 s), counts in powers of two.
        let mut lengths = geometric(1.0, 2.0, 20);
        lengths.retain(|b| *b <= max_input_length.max(1) as f64);
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration".into()),
                &geometric(1.5e-5, 1.5, 35),
            )?
            .set_buckets_for_metric(Matcher::Full("te_request_input_length".into()), &lengths)?
            .set_buckets_for_metric(
                Matcher::Full("te_batch_next_size".into()),
                &geometric(1.0, 2.0, 13),
            )?
            .set_buckets_for_metric(
                Matcher::Full("te_batch_next_tokens".into()),
                &geometric(1.0, 2.0, 21),
            )?
            .set_buckets_for_metric(
                Matcher::Full("crossenc_request_duration_seconds".into()),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            )?
            .set_buckets_for_metric(
                Matcher::Full("crossenc_batch_requests".into()),
                &geometric(1.0, 2.0, 8),
            )?
            .build_recorder();
        let describe = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
            recorder.describe_histogram(name.into(), None, help.into());
            recorder.describe_gauge(name.into(), None, help.into());
        };
        for (name, help) in HELP {
            describe(name, help);
        }
        let batch = [Label::from_static_parts("method", "batch")];
        let counter = |name: &'static str, labels: &[Label]| {
            recorder.register_counter(&Key::from_parts(name, labels.to_vec()), &METADATA)
        };
        let histogram = |name: &'static str| {
            recorder.register_histogram(&Key::from_static_name(name), &METADATA)
        };
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &METADATA);
        Ok(Metrics {
            handle: recorder.handle(),
            request_count: counter("te_request_count", &batch),
            request_success: counter("te_request_success", &batch),
            request_duration: histogram("te_request_duration"),
            tokenization_duration: histogram("te_request_tokenization_duration"),
            queue_duration: histogram("te_request_queue_duration"),
            inference_duration: histogram("te_request_inference_duration"),
            input_length: histogram("te_request_input_length"),
            batch_size: histogram("te_batch_next_size"),
            batch_tokens: histogram("te_batch_next_tokens"),
            batch_requests: histogram("crossenc_batch_requests"),
            batches: counter("crossenc_batches_total", &[]),
            queue_size: gauge("te_queue_size"),
            queue_depth: gauge("crossenc_queue_depth"),
            recorder,
        })
    }

    /// Every HTTP request, by route and status (no TEI name: TEI counts by method and cause).
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        let labels = [
            Label::new("route", route.to_string()),
            Label::new("status", status.to_string()),
        ];
        let key = Key::from_parts("crossenc_requests_total", labels.to_vec());
        self.recorder.register_counter(&key, &METADATA).increment(1);
        let key = Key::from_parts("crossenc_request_duration_seconds", labels[..1].to_vec());
        self.recorder
            .register_histogram(&key, &METADATA)
            .record(elapsed.as_secs_f64());
    }

    /// A request to a scoring route, as TEI counts it: `failure` is the `err` label of one that
    /// was not answered 2xx.
    pub fn record_scoring(&self, elapsed: Duration, stats: Option<Stats>, failure: Option<&str>) {
        self.request_count.increment(1);
        if let Some(err) = failure {
            let key = Key::from_parts(
                "te_request_failure",
                vec![Label::new("err", err.to_string())],
            );
            self.recorder.register_counter(&key, &METADATA).increment(1);
            return;
        }
        self.request_success.increment(1);
        self.request_duration.record(elapsed.as_secs_f64());
        if let Some(s) = stats {
            self.tokenization_duration
                .record(s.tokenization.as_secs_f64());
            self.queue_duration.record(s.queue.as_secs_f64());
            self.inference_duration.record(s.inference.as_secs_f64());
        }
    }

    /// The token counts of a request's pairs, once tokenized.
    pub fn record_input_lengths(&self, lengths: impl Iterator<Item = usize>) {
        for n in lengths {
            self.input_length.record(n as f64);
        }
    }

    /// A job queued (`+`) or taken by the inference thread (`-`).
    pub fn queued(&self, requests: f64, pairs: f64) {
        self.queue_depth.increment(requests);
        self.queue_size.increment(pairs);
    }

    pub fn record_batch(&self, requests: usize, pairs: usize, tokens: usize) {
        self.batches.increment(1);
        self.batch_requests.record(requests as f64);
        self.batch_size.record(pairs as f64);
        self.batch_tokens.record(tokens as f64);
        self.queued(-(requests as f64), -(pairs as f64));
    }

    /// Drains recorded histogram samples into their buckets; without it they pile up between
    /// scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }
}
