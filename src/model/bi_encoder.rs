//! A bi-encoder (sentence-transformers' `SentenceTransformer`): each text on its own through the
//! encoder, pooled to one vector and L2-normalised, so that a dot product is the cosine.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::Path;

use super::checkpoint::Params;
use super::config::Config;
use super::tokenize::PairTokenizer;
use super::weights::Weights;
use super::{first_tokens, Transformer};
use crate::hub;

/// How token vectors become one text vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (all-MiniLM-L6-v2).
    Mean,
    /// The first token's vector.
    Cls,
}

pub struct BiEncoder {
    pub config: Config,
    pub tokenizer: PairTokenizer,
    weights: Weights,
    transformer: Transformer,
    pub pooling: Pooling,
    pub batch_size: usize,
}

impl BiEncoder {
    /// Loads a sentence-transformers folder or hub id (any HF encoder: mean pooling when the
    /// folder names none). `max_length` overrides `sentence_bert_config.json`'s `max_seq_length`.
    pub fn load(id_or_path: &str, max_length: Option<usize>) -> Result<Self> {
        let dir = hub::resolve_model(id_or_path)?;
        let config = Config::from_file(&dir.join("config.json"))?;
        let tokenizer = PairTokenizer::from_dir(&dir, &config, max_length)?;
        let weights = Transformer::pack(&config, &Params::load(&dir, &config)?)?;
        Ok(BiEncoder {
            transformer: Transformer::new(&config, &weights)?,
            weights,
            pooling: read_pooling(&dir)?,
            config,
            tokenizer,
            batch_size: 32,
        })
    }

    /// Normalised embeddings `[texts, hidden]`, in input order. Batches hold texts of similar
    /// length.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        let h = self.config.hidden_size;
        let sequences = self.tokenizer.encode_texts(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sequences.seq_len(i)));
        let mut out = vec![0f32; texts.len() * h];
        for chunk in order.chunks(self.batch_size.max(1)) {
            let tokens = sequences.pack(chunk.iter().copied());
            let hidden = self.transformer.forward(&self.weights.data, &tokens)?;
            let pooled = match self.pooling {
                Pooling::Cls => first_tokens(&hidden, &tokens, h),
                Pooling::Mean => (0..tokens.sequences())
                    .flat_map(|s| {
                        let rows = tokens.sequence(s);
                        // sentence-transformers clamps the token count at 1e-9 (no tokens).
                        let count = (rows.len() as f32).max(1e-9);
                        let mut sum = vec![0f32; h];
                        for t in rows {
                            sum.iter_mut()
                                .zip(&hidden[t * h..(t + 1) * h])
                                .for_each(|(a, b)| *a += b);
                        }
                        sum.into_iter().map(move |v| v / count)
                    })
                    .collect(),
            };
            for (row, &i) in pooled.chunks_exact(h).zip(chunk) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                out[i * h..(i + 1) * h]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(o, v)| *o = v / norm);
            }
        }
        Ok(Tensor::from_vec(out, (texts.len(), h), &Device::Cpu)?)
    }
}

fn read_pooling(dir: &Path) -> Result<Pooling> {
    let path = dir.join("1_Pooling").join("config.json");
    let Some(cfg) = super::read_json_opt(&path)? else {
        return Ok(Pooling::Mean);
    };
    let on = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(false);
    match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
        (true, false) => Ok(Pooling::Mean),
        (false, true) => Ok(Pooling::Cls),
        _ => bail!(
            "{}: only mean or CLS pooling is supported (set exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token)",
            path.display()
        ),
    }
}
