//! Classification metrics: binary (best thresholds, as sentence-transformers'
//! `BinaryClassificationEvaluator` reports them) and multiclass (accuracy, macro-F1).
//!
//! Tied scores are never split by a threshold: every cut-off lies between two distinct scores,
//! so the result does not depend on the order of tied pairs (sentence-transformers' loop does).

use super::Metrics;

/// The distinct scores, highest first, with (positives, negatives) scoring exactly that value.
fn score_groups(scores: &[f64], labels: &[bool]) -> Vec<(f64, usize, usize)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut groups: Vec<(f64, usize, usize)> = Vec::new();
    for i in order {
        let (pos, neg) = (labels[i] as usize, !labels[i] as usize);
        match groups.last_mut() {
            Some(g) if g.0 == scores[i] => {
                g.1 += pos;
                g.2 += neg;
            }
            _ => groups.push((scores[i], pos, neg)),
        }
    }
    groups
}

/// Accuracy, F1, precision and recall at the thresholds that maximise accuracy and F1
/// (`accuracy_threshold`, `f1_threshold`: predict positive when score >= threshold), and
/// average precision (sklearn's step-wise definition).
pub fn binary_metrics(scores: &[f64], labels: &[bool]) -> Metrics {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let n = scores.len();
    let total_pos = labels.iter().filter(|&&l| l).count();
    let groups = score_groups(scores, labels);
    // Cut-off k: the first k groups are predicted positive. k = 0 predicts all negative.
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best_acc = (
        total_pos.max(n - total_pos) as f64 / n.max(1) as f64,
        f64::INFINITY,
    );
    if total_pos >= n - total_pos && n > 0 {
        // Everything positive beats everything negative: the lowest score is the threshold.
        best_acc.1 = groups.last().map_or(0.0, |g| g.0);
    }
    let mut best_f1 = (0.0, 0.0, 0.0, f64::INFINITY);
    let mut ap = 0.0;
    for (k, &(score, pos, neg)) in groups.iter().enumerate() {
        tp += pos;
        fp += neg;
        // Threshold halfway to the next lower distinct score, as sentence-transformers reports.
        let threshold = groups
            .get(k + 1)
            .map_or(score, |next| (score + next.0) / 2.0);
        let acc = (tp + (n - total_pos - fp)) as f64 / n as f64;
        if acc > best_acc.0 {
            best_acc = (acc, threshold);
        }
        let precision = tp as f64 / (tp + fp) as f64;
        let recall = if total_pos == 0 {
            0.0
        } else {
            tp as f64 / total_pos as f64
        };
        if tp > 0 {
            let f1 = 2.0 * precision * recall / (precision + recall);
            if f1 > best_f1.0 {
                best_f1 = (f1, precision, recall, threshold);
            }
        }
        if total_pos > 0 {
            ap += pos as f64 / total_pos as f64 * precision;
        }
    }
    Metrics::from([
        ("accuracy".to_string(), best_acc.0),
        ("accuracy_threshold".to_string(), best_acc.1),
        ("f1".to_string(), best_f1.0),
        ("precision".to_string(), best_f1.1),
        ("recall".to_string(), best_f1.2),
        ("f1_threshold".to_string(), best_f1.3),
        ("average_precision".to_string(), ap),
    ])
}

/// Accuracy and macro-averaged F1, precision and recall over the classes that occur in the gold
/// labels or the predictions (sklearn's `average="macro"`).
pub fn multiclass_metrics(predicted: &[usize], gold: &[usize]) -> Metrics {
    assert_eq!(predicted.len(), gold.len(), "one prediction per label");
    let classes = predicted.iter().chain(gold).max().map_or(0, |m| m + 1);
    let (mut tp, mut pred_n, mut gold_n) = (
        vec![0usize; classes],
        vec![0usize; classes],
        vec![0usize; classes],
    );
    for (&p, &g) in predicted.iter().zip(gold) {
        pred_n[p] += 1;
        gold_n[g] += 1;
        tp[g] += (p == g) as usize;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let present: Vec<usize> = (0..classes)
        .filter(|&c| pred_n[c] + gold_n[c] > 0)
        .collect();
    let mean = |f: &dyn Fn(usize) -> f64| {
        present.iter().map(|&c| f(c)).sum::<f64>() / present.len().max(1) as f64
    };
    Metrics::from([
        (
            "accuracy".to_string(),
            ratio(tp.iter().sum(), predicted.len()),
        ),
        (
            "macro_f1".to_string(),
            mean(&|c| ratio(2 * tp[c], pred_n[c] + gold_n[c])),
        ),
        (
            "macro_precision".to_string(),
            mean(&|c| ratio(tp[c], pred_n[c])),
        ),
        (
            "macro_recall".to_string(),
            mean(&|c| ratio(tp[c], gold_n[c])),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(m: &Metrics, k: &str, want: f64) {
        assert!((m[k] - want).abs() < 1e-9, "{k}: {} vs {want}", m[k]);
    }

    #[test]
    fn binary_by_hand() {
        // Sorted: 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (+), 0.2 (-), 0.1 (-).
        let scores = [0.2, 0.9, 0.7, 0.8, 0.1, 0.6];
        let labels = [false, true, true, false, false, true];
        let m = binary_metrics(&scores, &labels);
        // Cut below 0.6: tp 3, fp 1 -> accuracy 5/6, F1 2*0.75*1/1.75 = 6/7.
        close(&m, "accuracy", 5.0 / 6.0);
        close(&m, "accuracy_threshold", 0.4);
        close(&m, "f1", 6.0 / 7.0);
        close(&m, "precision", 0.75);
        close(&m, "recall", 1.0);
        close(&m, "f1_threshold", 0.4);
        // AP = 1/3 * (1/1 + 2/3 + 3/4).
        close(&m, "average_precision", (1.0 + 2.0 / 3.0 + 0.75) / 3.0);
    }

    #[test]
    fn binary_ties_are_never_split() {
        // Three pairs tie at 0.5 (two positive, one negative) in either order.
        for labels in [[true, true, false, false], [false, true, true, false]] {
            let scores = [0.5, 0.5, 0.5, 0.1];
            let m = binary_metrics(&scores, &labels);
            // Cut below 0.5: tp 2, fp 1, tn 1 -> accuracy 3/4, precision 2/3, recall 1.
            close(&m, "accuracy", 0.75);
            close(&m, "accuracy_threshold", 0.3);
            close(&m, "f1", 0.8);
            close(&m, "precision", 2.0 / 3.0);
            // One step at the tied group: recall 0 -> 1 at precision 2/3.
            close(&m, "average_precision", 2.0 / 3.0);
        }
    }

    #[test]
    fn binary_all_negative_baseline() {
        let m = binary_metrics(&[0.9, 0.8, 0.7], &[false, false, true]);
        // Predicting nothing positive is right 2 times in 3; no cut-off does better.
        close(&m, "accuracy", 2.0 / 3.0);
        assert!(m["accuracy_threshold"].is_infinite());
        close(&m, "f1", 0.5);
    }

    #[test]
    fn multiclass_by_hand() {
        let gold = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 0, 2];
        let m = multiclass_metrics(&pred, &gold);
        close(&m, "accuracy", 4.0 / 6.0);
        // F1 per class: 0: 2*1/(2+2) = 0.5; 1: 2*2/(3+2) = 0.8; 2: 2*1/(1+2) = 2/3.
        close(&m, "macro_f1", (0.5 + 0.8 + 2.0 / 3.0) / 3.0);
        close(&m, "macro_precision", (0.5 + 2.0 / 3.0 + 1.0) / 3.0);
        close(&m, "macro_recall", (0.5 + 1.0 + 0.5) / 3.0);
    }
}
