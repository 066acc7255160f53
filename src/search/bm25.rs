//! BM25 first stage over the `bm25` crate (English stemming and stop words, k1 1.2, b 0.75,
//! average length fitted to the corpus). Hand-writing BM25 would be easy; the crate's tokenizer
//! (Snowball stemmer, stop-word lists, unicode folding) is the part worth not rewriting.

use bm25::{Embedder, EmbedderBuilder, Language, Scorer};

/// An inverted index over the corpus; documents are their position in it.
pub struct Bm25 {
    embedder: Embedder,
    scorer: Scorer<usize>,
}

impl Bm25 {
    /// Indexes `docs` (stemmed, stop words dropped).
    pub fn new<S: AsRef<str>>(docs: &[S]) -> Self {
        let texts: Vec<&str> = docs.iter().map(AsRef::as_ref).collect();
        let embedder: Embedder =
            EmbedderBuilder::with_fit_to_corpus(Language::English, &texts).build();
        let mut scorer = Scorer::new();
        for (i, t) in texts.iter().enumerate() {
            scorer.upsert(&i, embedder.embed(t));
        }
        Bm25 { embedder, scorer }
    }

    /// The best `k` documents for `query`, best first; equal scores in corpus order. Documents
    /// that share no term with the query are never returned.
    pub fn search(&self, query: &str, k: usize) -> Vec<(usize, f32)> {
        let hits = self
            .scorer
            .matches(&self.embedder.embed(query))
            .into_iter()
            .map(|m| (m.id, m.score))
            .collect();
        crate::eval::ranking::best_first(hits, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_term_overlap_and_stems() {
        let docs = [
            "Cats are sleeping on the sofa.",
            "The stock market fell sharply today.",
            "A cat sleeps all day long.",
        ];
        let index = Bm25::new(&docs);
        let hits = index.search("sleeping cat", 10);
        let found: Vec<usize> = hits.iter().map(|h| h.0).collect();
        // Both cat documents match through stemming; the market news shares no term.
        assert_eq!(found.len(), 2, "{hits:?}");
        assert!(found.contains(&0) && found.contains(&2));
        assert!(hits[0].1 >= hits[1].1 && hits[1].1 > 0.0);
        assert!(index.search("volcano", 10).is_empty());
    }
}
