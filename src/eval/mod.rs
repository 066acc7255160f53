//! Evaluation: metrics by name, computed from a model's scores on labelled pairs.

pub mod classification;
pub mod correlation;
pub mod ranking;

use crate::setting::Setting;
use crate::Output;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

use crate::data::Example;
use crate::CrossEncoder;

/// Metric name to value; printed as one JSON object by every command that reports metrics.
pub type Metrics = BTreeMap<String, f64>;

/// What a model's scores on labelled pairs mean, and so which metrics judge them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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

    /// The metrics its evaluation reports, so that `train --metric` is checked before any step
    /// (re-ranking's `recall@K`, whose K is the candidates' depth, aside).
    pub fn metric_names(self) -> &'static [&'static str] {
        match self {
            Task::Regression => &["pearson", "spearman"],
            Task::Binary => &[
                "accuracy",
                "accuracy_threshold",
                "average_precision",
                "f1",
                "f1_threshold",
                "precision",
                "recall",
            ],
            Task::Multiclass => &["accuracy", "macro_f1", "macro_precision", "macro_recall"],
            Task::Rerank => &["map", "mrr@10", "ndcg@10"],
        }
    }
}

impl Task {
    /// The name the command line takes.
    pub fn name(self) -> &'static str {
        match self {
            Task::Regression => "regression",
            Task::Binary => "binary",
            Task::Multiclass => "multiclass",
            Task::Rerank => "rerank",
        }
    }
}

/// The rules that every command applies to a task, the model's output count and labelled
/// pairs read from `source`: an error names the line or the flag to change.
pub fn check_task(
    task: Task,
    num_labels: usize,
    labelled: impl Iterator<Item = (usize, f64)> + Clone,
    source: &str,
) -> Result<()> {
    let t = task.name();
    match task {
        Task::Regression | Task::Binary | Task::Rerank if num_labels != 1 => bail!(
            "{task_setting} {t} scores one output per pair, but the model has {num_labels}: use {task_setting} multiclass",
            task_setting = Setting::Task
        ),
        Task::Multiclass if num_labels < 2 => bail!(
            "{} multiclass needs a model with an output per class, but this one has {num_labels} (train one with {} a,b,c)",
            Setting::Task,
            Setting::Labels
        ),
        _ => {}
    }
    let bad = |why: &str| -> Result<()> {
        match labelled
            .clone()
            .find(|&(_, label)| !label_fits(task, num_labels, label))
        {
            Some((line, label)) => bail!("{source} line {line}: label {label} {why}"),
            None => Ok(()),
        }
    };
    match task {
        Task::Binary => bad(&format!(
            "is not 0 or 1, which {task} binary needs (for more classes use {task} multiclass {} a,b,c)",
            Setting::Labels,
            task = Setting::Task
        )),
        Task::Multiclass => bad(&format!("is not a class index below the model's {num_labels} classes")),
        Task::Regression => match labelled.clone().next() {
            Some((_, first)) if labelled.clone().all(|(_, l)| l == first) => bail!(
                "{source}: every label is {first}: Pearson and Spearman are undefined for constant labels"
            ),
            _ => Ok(()),
        },
        Task::Rerank => Ok(()),
    }
}

fn label_fits(task: Task, num_labels: usize, label: f64) -> bool {
    match task {
        Task::Binary => label == 0.0 || label == 1.0,
        Task::Multiclass => label.fract() == 0.0 && (0.0..num_labels as f64).contains(&label),
        Task::Regression | Task::Rerank => label.is_finite(),
    }
}

/// The metrics of `task` for `ce`'s scores on `examples`, after [`check_task`]. For
/// [`Task::Rerank`], consecutive pairs of one query (`a`) are its candidate list and labels
/// their relevance: MRR@10, NDCG@10 and MAP over the lists (as `search::candidate_lists`
/// makes them).
pub fn pair_metrics(ce: &CrossEncoder, task: Task, examples: &[Example]) -> Result<Metrics> {
    let labelled = crate::data::labelled(examples);
    check_task(task, ce.num_labels(), labelled, "the evaluation data")?;
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_str()))
        .collect();
    let labels: Vec<f64> = examples.iter().map(|e| e.label).collect();
    let scores = match scored_on(task) {
        Output::Logits => ce.logits(&pairs)?,
        Output::Activated => ce.predict(&pairs)?,
    };
    match task {
        Task::Rerank => Ok(list_metrics(examples, &scores)),
        _ => scored_metrics(task, &scores, &labels),
    }
}

/// Re-ranking metrics of candidate lists given as pairs, one query's consecutive.
fn list_metrics(examples: &[Example], scores: &crate::Scores) -> Metrics {
    let mut lists = Vec::new();
    let mut start = 0;
    for end in 1..=examples.len() {
        if end == examples.len() || examples[end].a != examples[start].a {
            let first: Vec<f32> = (start..end).map(|i| scores.row(i)[0]).collect();
            let relevant: std::collections::HashMap<usize, u32> = (start..end)
                .filter(|&i| examples[i].label > 0.0)
                .map(|i| (i - start, examples[i].label.round() as u32))
                .collect();
            lists.push((ranking::rank_by_score(&first), relevant));
            start = end;
        }
    }
    let queries: Vec<ranking::RankedQuery> = lists
        .iter()
        .map(|(ranked, relevant)| ranking::RankedQuery { ranked, relevant })
        .collect();
    let depth = lists.iter().map(|(r, _)| r.len()).max().unwrap_or(0);
    let mut m = ranking::ranking_metrics(&queries, depth);
    m.retain(|k, _| !k.starts_with("recall@"));
    m
}

/// What `task` is measured on: logits for multiclass (the best class, which an activation
/// that saturates could tie), else activated scores.
pub fn scored_on(task: Task) -> Output {
    match task {
        Task::Multiclass => Output::Logits,
        _ => Output::Activated,
    }
}

/// The metrics of `task` for `scores` of pairs with `labels`, as [`scored_on`] says.
pub fn scored_metrics(task: Task, scores: &crate::Scores, labels: &[f64]) -> Result<Metrics> {
    let first: Vec<f64> = scores.rows().map(|r| r[0] as f64).collect();
    Ok(match task {
        Task::Regression => Metrics::from([
            ("pearson".to_string(), correlation::pearson(&first, labels)),
            (
                "spearman".to_string(),
                correlation::spearman(&first, labels),
            ),
        ]),
        Task::Binary => {
            let gold: Vec<bool> = labels.iter().map(|&l| l >= 0.5).collect();
            classification::binary_metrics(&first, &gold)
        }
        Task::Multiclass => {
            let predicted: Vec<usize> = scores
                .rows()
                .map(|r| {
                    (0..r.len())
                        .max_by(|&a, &b| r[a].total_cmp(&r[b]))
                        .unwrap_or(0)
                })
                .collect();
            let gold: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(m: &Metrics) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    /// The names `train --metric` accepts are the ones the evaluations report.
    #[test]
    fn metric_names_are_what_each_evaluation_reports() {
        let binary = classification::binary_metrics(&[0.2, 0.8], &[false, true]);
        assert_eq!(names(&binary), Task::Binary.metric_names());
        let multiclass = classification::multiclass_metrics(&[0, 1], &[0, 1]);
        assert_eq!(names(&multiclass), Task::Multiclass.metric_names());
        let relevant = std::collections::HashMap::from([(0, 1)]);
        let query = ranking::RankedQuery {
            ranked: &[0, 1],
            relevant: &relevant,
        };
        let ranking = ranking::ranking_metrics(&[query], 2);
        let mut want = Task::Rerank.metric_names().to_vec();
        want.push("recall@2");
        assert_eq!(names(&ranking), want);
    }
}
