//! Exact nearest-neighbour search over bi-encoder embeddings (cosine: the vectors are unit length).

use anyhow::Result;
use candle_core::Tensor;

use crate::model::bi_encoder::BiEncoder;

/// The corpus embedded once; queries are embedded as they come.
pub struct DenseIndex {
    /// `[docs, hidden]`, unit rows.
    embeddings: Tensor,
}

impl DenseIndex {
    /// Embeds `docs` in chunks, calling `progress` with the number done after each.
    pub fn new<S: AsRef<str>>(
        model: &BiEncoder,
        docs: &[S],
        progress: &dyn Fn(usize),
    ) -> Result<Self> {
        const CHUNK: usize = 256;
        let mut parts = Vec::new();
        for (i, chunk) in docs.chunks(CHUNK).enumerate() {
            parts.push(model.embed(chunk)?);
            progress((i * CHUNK + chunk.len()).min(docs.len()));
        }
        let embeddings = if parts.is_empty() {
            model.embed::<&str>(&[])?
        } else {
            Tensor::cat(&parts, 0)?
        };
        Ok(DenseIndex { embeddings })
    }

    /// The best `k` documents for each query, best first; equal scores in corpus order.
    pub fn search<S: AsRef<str>>(
        &self,
        model: &BiEncoder,
        queries: &[S],
        k: usize,
    ) -> Result<Vec<Vec<(usize, f32)>>> {
        let q = model.embed(queries)?;
        let sims = q.matmul(&self.embeddings.t()?)?.to_vec2::<f32>()?;
        Ok(sims
            .into_iter()
            .map(|row| crate::eval::ranking::best_first(row.into_iter().enumerate().collect(), k))
            .collect())
    }
}
