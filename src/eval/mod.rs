//! Evaluation: metrics by name, computed from a model's scores on labelled pairs.

pub mod classification;
pub mod correlation;
pub mod ranking;

use anyhow::Result;
use std::collections::BTreeMap;

use crate::data::Example;
use crate::CrossEncoder;

/// Metric name to value; printed as one JSON object by every command that reports metrics.
pub type Metrics = BTreeMap<String, f64>;

/// What a model's scores on labelled pairs mean, and so which metrics judge them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// One score per pair against a graded label (STS-B): Pearson and Spearman.
    Regression,
    /// One score per pair against a 0/1 label (MRPC): accuracy, F1, precision, recall, AP.
    Binary,
    /// One logit per class against a class index (NLI): accuracy and macro-F1.
    Multiclass,
    /// A query's candidates re-ranked (BEIR data): MRR@10, NDCG@10, MAP.
    Rerank,
}

impl Task {
    /// The metric that picks the best model during training.
    pub fn default_metric(self) -> &'static str {
        match self {
            Task::Regression => "spearman",
            Task::Binary => "average_precision",
            Task::Multiclass => "macro_f1",
            Task::Rerank => "ndcg@10",
        }
    }
}

/// The metrics of `task` for `ce`'s scores on `examples` (pairwise tasks).
pub fn pair_metrics(ce: &CrossEncoder, task: Task, examples: &[Example]) -> Result<Metrics> {
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_str()))
        .collect();
    let first =
        |scores: crate::Scores| -> Vec<f64> { scores.rows().map(|r| r[0] as f64).collect() };
    Ok(match task {
        Task::Regression => {
            let predicted = first(ce.predict(&pairs)?);
            let gold: Vec<f64> = examples.iter().map(|e| e.label).collect();
            Metrics::from([
                (
                    "pearson".to_string(),
                    correlation::pearson(&predicted, &gold),
                ),
                (
                    "spearman".to_string(),
                    correlation::spearman(&predicted, &gold),
                ),
            ])
        }
        Task::Binary => {
            let gold: Vec<bool> = examples.iter().map(|e| e.label >= 0.5).collect();
            classification::binary_metrics(&first(ce.predict(&pairs)?), &gold)
        }
        Task::Multiclass => {
            let logits = ce.logits(&pairs)?;
            let predicted: Vec<usize> = logits
                .rows()
                .map(|r| {
                    (0..r.len())
                        .max_by(|&a, &b| r[a].total_cmp(&r[b]))
                        .unwrap_or(0)
                })
                .collect();
            let gold: Vec<usize> = examples.iter().map(|e| e.label as usize).collect();
            classification::multiclass_metrics(&predicted, &gold)
        }
        Task::Rerank => anyhow::bail!("re-ranking is evaluated on queries (BEIR data), not pairs"),
    })
}

/// `name value, name value`, for terminal output.
pub fn format(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}
