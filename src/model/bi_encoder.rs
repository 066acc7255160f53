//! A bi-encoder (sentence-transformers' `SentenceTransformer`): each text on its own through the
//! encoder, pooled to one vector and L2-normalised, so that a dot product is the cosine.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;
use std::path::Path;

use super::checkpoint::Params;
use super::config::Config;
use super::tokenize::PairTokenizer;
use super::Transformer;
use crate::hub;
use crate::ops::Dropout;

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
    transformer: Transformer,
    pub pooling: Pooling,
    pub batch_size: usize,
}

impl BiEncoder {
    /// Loads a sentence-transformers folder or hub id (any HF encoder: mean pooling when the
    /// folder names none). `max_length` overrides `sentence_bert_config.json`'s `max_seq_length`.
    pub fn load(id_or_path: &str, device: &Device, max_length: Option<usize>) -> Result<Self> {
        let dir = hub::resolve_model(id_or_path)?;
        let config = Config::from_file(&dir.join("config.json"))?;
        let tokenizer = PairTokenizer::from_dir(&dir, &config, max_length)?;
        let params = Params::load(&dir, &config, device)?;
        Ok(BiEncoder {
            transformer: Transformer::new(&config, &params, device)?,
            pooling: read_pooling(&dir)?,
            config,
            tokenizer,
            batch_size: 32,
        })
    }

    /// Normalised embeddings `[texts, hidden]`, in input order. Batches hold texts of similar
    /// length, so that little of each pass is padding.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        let encodings = self.tokenizer.encode_texts(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let mut parts = Vec::new();
        for chunk in order.chunks(self.batch_size.max(1)) {
            let batch = self
                .tokenizer
                .batch(&chunk.iter().map(|&i| &encodings[i]).collect::<Vec<_>>());
            let hidden = self.transformer.forward(&batch, &mut Dropout::off())?;
            let pooled = match self.pooling {
                Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
                Pooling::Mean => {
                    let mask = Tensor::from_slice(
                        &batch.attention_mask,
                        (batch.size, batch.seq_len, 1),
                        hidden.device(),
                    )?
                    .to_dtype(DType::F32)?;
                    // sentence-transformers clamps the token count at 1e-9 (an empty mask).
                    let count = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
                    hidden.broadcast_mul(&mask)?.sum(1)?.broadcast_div(&count)?
                }
            };
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::INFINITY)?;
            parts.push(pooled.broadcast_div(&norm)?);
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.config.hidden_size),
                DType::F32,
                &Device::Cpu,
            )?);
        }
        // Back to input order.
        let sorted = Tensor::cat(&parts, 0)?;
        let mut position = vec![0u32; order.len()];
        for (rank, &i) in order.iter().enumerate() {
            position[i] = rank as u32;
        }
        let index = Tensor::from_slice(&position, position.len(), sorted.device())?;
        Ok(sorted.index_select(&index, 0)?)
    }
}

fn read_pooling(dir: &Path) -> Result<Pooling> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.exists() {
        return Ok(Pooling::Mean);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
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
