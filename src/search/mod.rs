//! Retrieve, then re-rank: BM25 or a bi-encoder fetches the top k of a corpus, a cross-encoder
//! re-scores them. Also hard-negative mining for re-ranking training, and the evaluation of
//! both stages on BEIR data.

pub mod beir;
pub mod bm25;
pub mod dense;

use crate::progress::Progress;
use anyhow::Result;
use std::collections::{HashMap, HashSet};

use crate::data::Example;
use crate::eval::ranking::{rank_by_score, ranking_metrics, RankedQuery};
use crate::eval::Metrics;
use crate::model::bi_encoder::BiEncoder;
use crate::CrossEncoder;
use beir::{Beir, Query};
use bm25::Bm25;
use dense::DenseIndex;

/// A first stage over one corpus.
pub enum Retriever {
    /// BM25 over the corpus's words.
    Bm25(Bm25),
    /// A bi-encoder and the corpus's embeddings.
    Dense(Box<BiEncoder>, DenseIndex),
}

impl Retriever {
    /// `bm25`, or a bi-encoder model folder or hub id whose embeddings of `docs` are computed
    /// now (`progress` counts documents).
    pub fn build(spec: &str, docs: &[String], progress: &dyn Progress) -> Result<Self> {
        if spec == "bm25" {
            return Ok(Retriever::Bm25(Bm25::new(docs)));
        }
        let model = BiEncoder::load(spec, None)?;
        progress.start(docs.len() as u64, 0);
        let index = DenseIndex::new(&model, docs, &|done| progress.update(done as u64, ""))?;
        progress.finish();
        Ok(Retriever::Dense(Box::new(model), index))
    }

    /// The best `k` documents of each query, best first.
    pub fn search<S: AsRef<str>>(&self, queries: &[S], k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        match self {
            Retriever::Bm25(index) => Ok(queries
                .iter()
                .map(|q| index.search(q.as_ref(), k))
                .collect()),
            Retriever::Dense(model, index) => index.search(model, queries, k),
        }
    }
}

/// Hard negatives from one query's first-stage ranking: skip the top `range.0` candidates
/// (they may be relevant but unjudged), look no deeper than `range.1`, never take a known
/// positive, and keep the best `count`, best first.
pub fn mine_negatives(
    ranked: &[(usize, f32)],
    positives: &HashMap<usize, u32>,
    range: (usize, usize),
    count: usize,
) -> Vec<usize> {
    ranked
        .iter()
        .take(range.1)
        .skip(range.0)
        .map(|&(d, _)| d)
        .filter(|d| !positives.contains_key(d))
        .take(count)
        .collect()
}

/// Listwise training data: for every (query, positive) of `data`, the positive then
/// `negatives` mined negatives, labelled 1 and 0. Queries with too few candidates in the range
/// are left out; their count is the second value.
pub fn mine_training_lists(
    data: &Beir,
    retriever: &Retriever,
    range: (usize, usize),
    negatives: usize,
) -> Result<(Vec<Example>, usize)> {
    let texts: Vec<&str> = data.queries.iter().map(|q| q.text.as_str()).collect();
    let ranked = retriever.search(&texts, range.1)?;
    let mut out = Vec::new();
    let mut left_out = 0;
    for (q, ranked) in data.queries.iter().zip(&ranked) {
        let negs = mine_negatives(ranked, &q.relevant, range, negatives);
        if negs.len() < negatives {
            left_out += 1;
            continue;
        }
        let mut positives: Vec<usize> = q.relevant.keys().copied().collect();
        positives.sort_unstable();
        for p in positives {
            for (d, label) in std::iter::once((p, 1.0)).chain(negs.iter().map(|&n| (n, 0.0))) {
                out.push(Example {
                    a: q.text.clone(),
                    b: data.docs[d].full_text(),
                    label,
                    line: 0,
                });
            }
        }
    }
    Ok((out, left_out))
}

/// Held-out candidate lists, as sentence-transformers' `CrossEncoderRerankingEvaluator` makes
/// them: for each query of `data` (in order), the first stage's top `depth` and then the
/// judged positives it missed, each labelled with its relevance (0: not judged relevant).
/// Consecutive pairs of one query form its list ([`crate::eval::pair_metrics`] reads them so).
pub fn candidate_lists(data: &Beir, retriever: &Retriever, depth: usize) -> Result<Vec<Example>> {
    let texts: Vec<&str> = data.queries.iter().map(|q| q.text.as_str()).collect();
    let ranked = retriever.search(&texts, depth)?;
    let mut out = Vec::new();
    for (q, ranked) in data.queries.iter().zip(&ranked) {
        let mut missed: Vec<usize> = q
            .relevant
            .keys()
            .copied()
            .filter(|d| !ranked.iter().any(|&(r, _)| r == *d))
            .collect();
        missed.sort_unstable();
        for d in ranked.iter().map(|&(d, _)| d).chain(missed) {
            out.push(Example {
                a: q.text.clone(),
                b: data.docs[d].full_text(),
                label: q.relevant.get(&d).copied().unwrap_or(0) as f64,
                line: 0,
            });
        }
    }
    Ok(out)
}

/// A first stage's figures and, with a cross-encoder, those of its re-ranked top k.
pub struct StageMetrics {
    /// The first stage's metrics over its top k.
    pub first_stage: Metrics,
    /// The same top k re-ranked by the cross-encoder, if one was given.
    pub reranked: Option<Metrics>,
}

/// Evaluates each retriever's top `top_k` on `data`'s queries, and re-ranked by `ce` when given.
/// A (query, document) pair that several retrievers return is scored once.
pub fn evaluate_rerank(
    data: &Beir,
    retrievers: &[&Retriever],
    ce: Option<&CrossEncoder>,
    top_k: usize,
    progress: &dyn Progress,
) -> Result<Vec<StageMetrics>> {
    let texts: Vec<&str> = data.queries.iter().map(|q| q.text.as_str()).collect();
    let candidates: Vec<Vec<Vec<(usize, f32)>>> = retrievers
        .iter()
        .map(|r| r.search(&texts, top_k))
        .collect::<Result<_>>()?;
    let scores = match ce {
        Some(ce) => Some(score_candidates(ce, data, &candidates, progress)?),
        None => None,
    };
    let mut out = Vec::new();
    for per_query in &candidates {
        let first: Vec<Vec<usize>> = per_query
            .iter()
            .map(|hits| hits.iter().map(|h| h.0).collect())
            .collect();
        let reranked = scores.as_ref().map(|scores| {
            first
                .iter()
                .enumerate()
                .map(|(q, docs)| {
                    let s: Vec<f32> = docs.iter().map(|d| scores[&(q, *d)]).collect();
                    rank_by_score(&s).into_iter().map(|i| docs[i]).collect()
                })
                .collect::<Vec<Vec<usize>>>()
        });
        out.push(StageMetrics {
            first_stage: metrics_of(&data.queries, &first, top_k),
            reranked: reranked.map(|r| metrics_of(&data.queries, &r, top_k)),
        });
    }
    Ok(out)
}

fn metrics_of(queries: &[Query], ranked: &[Vec<usize>], depth: usize) -> Metrics {
    let ranked: Vec<RankedQuery> = queries
        .iter()
        .zip(ranked)
        .map(|(q, r)| RankedQuery {
            ranked: r,
            relevant: &q.relevant,
        })
        .collect();
    ranking_metrics(&ranked, depth)
}

/// Cross-encoder scores (first label) of every distinct (query, document) candidate.
fn score_candidates(
    ce: &CrossEncoder,
    data: &Beir,
    candidates: &[Vec<Vec<(usize, f32)>>],
    progress: &dyn Progress,
) -> Result<HashMap<(usize, usize), f32>> {
    let mut seen = HashSet::new();
    let pairs: Vec<(usize, usize)> = candidates
        .iter()
        .flat_map(|per_query| {
            per_query
                .iter()
                .enumerate()
                .flat_map(|(q, hits)| hits.iter().map(move |h| (q, h.0)))
        })
        .filter(|p| seen.insert(*p))
        .collect();
    progress.start(pairs.len() as u64, 0);
    let mut scores = HashMap::with_capacity(pairs.len());
    for chunk in pairs.chunks(256) {
        let texts: Vec<(String, String)> = chunk
            .iter()
            .map(|&(q, d)| (data.queries[q].text.clone(), data.docs[d].full_text()))
            .collect();
        let s = ce.predict(&texts)?;
        for (p, row) in chunk.iter().zip(s.rows()) {
            scores.insert(*p, row[0]);
        }
        progress.update(scores.len() as u64, "");
    }
    progress.finish();
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mining_skips_the_top_and_known_positives() {
        // Candidates 10..=29 in rank order; 12 and 16 are known positives.
        let ranked: Vec<(usize, f32)> = (10..30).map(|d| (d, 1.0 / d as f32)).collect();
        let positives = HashMap::from([(12, 1), (16, 1), (25, 1)]);
        // Skip the top 2 (10, 11); 12 and 16 are positives, so 13, 14, 15, 17 follow.
        assert_eq!(
            mine_negatives(&ranked, &positives, (2, 20), 4),
            vec![13, 14, 15, 17]
        );
        // The range's end bounds the search: ranks 3..6 hold 12 (positive), 13, 14, 15.
        assert_eq!(
            mine_negatives(&ranked, &positives, (2, 6), 10),
            vec![13, 14, 15]
        );
    }
}
