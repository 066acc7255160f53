//! Dynamic batching: requests queue in a bounded channel; one inference thread takes every
//! request waiting (up to a token budget), scores them in one pass and answers each.

use crate::Output;
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use crate::model::tokenize::Sequences;
use crate::{CrossEncoder, Scores};

pub struct Job {
    pub sequences: Sequences,
    pub raw: bool,
    /// When it was queued, for its queue time.
    pub queued: Instant,
    pub reply: oneshot::Sender<Answer>,
}

/// A job's scores, with how long it waited and how long its pass took.
pub struct Answer {
    pub scores: Result<Scores>,
    pub queue: Duration,
    pub inference: Duration,
}

/// The handle request handlers submit to.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

/// Why a job was not queued.
pub enum Rejected {
    QueueFull,
    ShuttingDown,
}

impl Batcher {
    /// Starts the inference thread. It owns the model and ends when every handle is dropped;
    /// if it panics, it clears `healthy` before any waiting request learns of it.
    pub fn start(
        ce: CrossEncoder,
        queue: usize,
        metrics: Arc<Metrics>,
        healthy: Arc<AtomicBool>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("crossenc-inference".into())
            .spawn(move || run(ce, rx, m, &healthy))
            .expect("spawn the inference thread");
        (Batcher { tx, metrics }, thread)
    }

    /// Queues a job, or refuses at once when the queue is full (the caller answers 503).
    pub fn submit(&self, job: Job) -> std::result::Result<(), Rejected> {
        let pairs = job.sequences.len() as f64;
        self.metrics.queued(1.0, pairs);
        self.tx.try_send(job).map_err(|e| {
            self.metrics.queued(-1.0, -pairs);
            match e {
                mpsc::error::TrySendError::Full(_) => Rejected::QueueFull,
                mpsc::error::TrySendError::Closed(_) => Rejected::ShuttingDown,
            }
        })
    }
}

/// Clears the health flag when dropped during a panic. Declared after a pass's jobs, it is
/// dropped before them (and before the queue), so `/health` says the thread is dead before any
/// request's reply is dropped.
struct DeathNotice<'a>(&'a AtomicBool);

impl Drop for DeathNotice<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(false, Ordering::SeqCst);
        }
    }
}

fn run(ce: CrossEncoder, mut rx: mpsc::Receiver<Job>, metrics: Arc<Metrics>, healthy: &AtomicBool) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let _notice = DeathNotice(healthy);
        // The tests of the server's dead-worker handling.
        if crate::fault::injected("inference-panic") {
            panic!("CROSSENC_FAULT=inference-panic");
        }
        let mut tokens: usize = jobs[0].sequences.tokens();
        // Everything already waiting joins this pass, up to the token budget.
        while tokens < ce.max_batch_tokens {
            match rx.try_recv() {
                Ok(job) => {
                    tokens += job.sequences.tokens();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let pairs = jobs.iter().map(|j| j.sequences.len()).sum();
        metrics.record_batch(jobs.len(), pairs, tokens);
        let started = Instant::now();
        // Raw and activated requests share one forward pass: activation is per job.
        let mut all = jobs[0].sequences.clone();
        for j in &jobs[1..] {
            all.append(&j.sequences);
        }
        let scored = ce.score_sequences(&all, Output::Logits);
        let inference = started.elapsed();
        let answer = |job: &Job, scores| Answer {
            scores,
            queue: started.saturating_duration_since(job.queued),
            inference,
        };
        match scored {
            Ok(logits) => {
                let mut offset = 0;
                for job in jobs {
                    let n = job.sequences.len();
                    let rows = &logits.values
                        [offset * logits.num_labels..(offset + n) * logits.num_labels];
                    offset += n;
                    let a = answer(&job, activate(&ce, rows, logits.num_labels, job.raw));
                    let _ = job.reply.send(a);
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for job in jobs {
                    let a = answer(&job, Err(anyhow::anyhow!(msg.clone())));
                    let _ = job.reply.send(a);
                }
            }
        }
    }
}

fn activate(ce: &CrossEncoder, logits: &[f32], num_labels: usize, raw: bool) -> Result<Scores> {
    if raw {
        return Ok(Scores {
            num_labels,
            values: logits.to_vec(),
        });
    }
    let mut values = logits.to_vec();
    ce.activation.apply(&mut values, num_labels);
    Ok(Scores { num_labels, values })
}
