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

/// Pearson and Spearman correlation between the first score of each pair and its label.
pub fn correlation_metrics(ce: &CrossEncoder, examples: &[Example]) -> Result<Metrics> {
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_str()))
        .collect();
    let scores = ce.predict(&pairs)?;
    let predicted: Vec<f64> = scores.rows().map(|r| r[0] as f64).collect();
    let gold: Vec<f64> = examples.iter().map(|e| e.label).collect();
    Ok(Metrics::from([
        (
            "pearson".to_string(),
            correlation::pearson(&predicted, &gold),
        ),
        (
            "spearman".to_string(),
            correlation::spearman(&predicted, &gold),
        ),
    ]))
}

/// `name value, name value`, for terminal output.
pub fn format(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}
