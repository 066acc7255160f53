//! Re-ranking metrics per query, as BEIR computes them with pytrec_eval: linear gains, the ideal
//! DCG from every judged document (not only the retrieved ones), and AP divided by the number of
//! relevant documents.

use std::collections::HashMap;

use super::Metrics;

/// Documents for one query, best first, and the graded relevance of the judged ones.
pub struct RankedQuery<'a> {
    /// Document indices, best first.
    pub ranked: &'a [usize],
    /// Judged documents and their relevance (0: judged not relevant).
    pub relevant: &'a HashMap<usize, u32>,
}

fn gain(q: &RankedQuery, doc: usize) -> f64 {
    q.relevant.get(&doc).copied().unwrap_or(0) as f64
}

/// 1 / rank of the first relevant document within the top `k`, else 0.
pub fn reciprocal_rank(q: &RankedQuery, k: usize) -> f64 {
    q.ranked
        .iter()
        .take(k)
        .position(|&d| gain(q, d) > 0.0)
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// NDCG at `k` with gain = relevance and discount log2(rank + 1).
pub fn ndcg(q: &RankedQuery, k: usize) -> f64 {
    let dcg = |gains: &mut dyn Iterator<Item = f64>| -> f64 {
        gains
            .take(k)
            .enumerate()
            .map(|(i, g)| g / ((i + 2) as f64).log2())
            .sum()
    };
    let mut ideal: Vec<f64> = q.relevant.values().map(|&r| r as f64).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg = dcg(&mut ideal.into_iter());
    if idcg == 0.0 {
        return 0.0;
    }
    dcg(&mut q.ranked.iter().map(|&d| gain(q, d))) / idcg
}

/// Average precision of the ranked list over all relevant documents (unretrieved ones count 0).
pub fn average_precision(q: &RankedQuery) -> f64 {
    let total = q.relevant.values().filter(|&&r| r > 0).count();
    if total == 0 {
        return 0.0;
    }
    let mut hits = 0;
    let mut sum = 0.0;
    for (i, &d) in q.ranked.iter().enumerate() {
        if gain(q, d) > 0.0 {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / total as f64
}

/// Share of the relevant documents within the top `k`.
pub fn recall(q: &RankedQuery, k: usize) -> f64 {
    let total = q.relevant.values().filter(|&&r| r > 0).count();
    let found = q
        .ranked
        .iter()
        .take(k)
        .filter(|&&d| gain(q, d) > 0.0)
        .count();
    if total == 0 {
        0.0
    } else {
        found as f64 / total as f64
    }
}

/// Means over queries: `mrr@10`, `ndcg@10`, `map` and `recall@K` (K = the candidates' depth).
pub fn ranking_metrics(queries: &[RankedQuery], depth: usize) -> Metrics {
    let n = queries.len().max(1) as f64;
    let mean = |f: &dyn Fn(&RankedQuery) -> f64| queries.iter().map(f).sum::<f64>() / n;
    Metrics::from([
        ("mrr@10".to_string(), mean(&|q| reciprocal_rank(q, 10))),
        ("ndcg@10".to_string(), mean(&|q| ndcg(q, 10))),
        ("map".to_string(), mean(&average_precision)),
        (format!("recall@{depth}"), mean(&|q| recall(q, depth))),
    ])
}

/// Keeps the best `k` of (index, score) hits, best first; equal scores in index order.
pub fn best_first(mut hits: Vec<(usize, f32)>, k: usize) -> Vec<(usize, f32)> {
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits.truncate(k);
    hits
}

/// Indices of `scores` sorted best first; ties keep their input order.
pub fn rank_by_score(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn metrics_by_hand() {
        // Relevant: doc 7 (grade 2) at rank 2 and doc 3 (grade 1) at rank 3.
        let relevant = HashMap::from([(7, 2), (3, 1)]);
        let ranked = [5, 7, 3, 1];
        let q = RankedQuery {
            ranked: &ranked,
            relevant: &relevant,
        };
        close(reciprocal_rank(&q, 10), 0.5);
        close(reciprocal_rank(&q, 1), 0.0);
        let dcg = 2.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        close(ndcg(&q, 10), dcg / idcg);
        close(ndcg(&q, 2), (2.0 / 3f64.log2()) / idcg);
        close(average_precision(&q), (1.0 / 2.0 + 2.0 / 3.0) / 2.0);
        close(recall(&q, 2), 0.5);
    }

    #[test]
    fn unretrieved_relevant_documents_count() {
        // Doc 4 is relevant but not in the list: ideal DCG and AP still count it.
        let relevant = HashMap::from([(1, 1), (4, 1)]);
        let ranked = [1, 2];
        let q = RankedQuery {
            ranked: &ranked,
            relevant: &relevant,
        };
        close(ndcg(&q, 10), 1.0 / (1.0 + 1.0 / 3f64.log2()));
        close(average_precision(&q), 0.5);
        let m = ranking_metrics(&[q], 2);
        close(m["recall@2"], 0.5);
        close(m["mrr@10"], 1.0);
    }

    #[test]
    fn ties_keep_input_order() {
        assert_eq!(rank_by_score(&[0.1, 0.5, 0.5, 0.9]), vec![3, 1, 2, 0]);
        // With the tie broken by input order, the relevant doc 2 lands at rank 3.
        let relevant = HashMap::from([(2, 1)]);
        let ranked = rank_by_score(&[0.1, 0.5, 0.5, 0.9]);
        let q = RankedQuery {
            ranked: &ranked,
            relevant: &relevant,
        };
        close(reciprocal_rank(&q, 10), 1.0 / 3.0);
    }
}
