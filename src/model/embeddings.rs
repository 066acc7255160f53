//! Word + position (+ token-type) embeddings. The family differences of the encoder input live
//! here: RoBERTa's position ids, DistilBERT's missing token types, ELECTRA's projection.

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_nn::{Embedding, Module};

use super::config::{Config, Family};
use super::tokenize::Batch;
use super::{linear, LayerNorm, Linear};
use crate::model::checkpoint::Params;
use crate::ops::Dropout;

pub struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Option<Embedding>,
    layer_norm: LayerNorm,
    /// ELECTRA's `embeddings_project`, when `embedding_size != hidden_size`.
    embeddings_project: Option<Linear>,
    family: Family,
    pad_token_id: u32,
    dropout: f64,
}

impl Embeddings {
    pub fn new(cfg: &Config, p: &Params) -> Result<Self> {
        let base = cfg.family.base_prefix();
        let pre = format!("{base}.embeddings");
        let e = cfg.embedding_size;
        let table = |name: &str, rows: usize| -> Result<Embedding> {
            Ok(Embedding::new(
                p.get(&format!("{pre}.{name}.weight"), &[rows, e])?,
                e,
            ))
        };
        let token_type_embeddings = match cfg.type_vocab_size {
            0 => None,
            n => Some(table("token_type_embeddings", n)?),
        };
        let embeddings_project = if cfg.family == Family::Electra && e != cfg.hidden_size {
            Some(linear(
                p,
                &format!("{base}.embeddings_project"),
                e,
                cfg.hidden_size,
            )?)
        } else {
            None
        };
        Ok(Embeddings {
            word_embeddings: table("word_embeddings", cfg.vocab_size)?,
            position_embeddings: table("position_embeddings", cfg.max_position_embeddings)?,
            token_type_embeddings,
            layer_norm: LayerNorm::new(p, &format!("{pre}.LayerNorm"), e, cfg.layer_norm_eps)?,
            embeddings_project,
            family: cfg.family,
            pad_token_id: cfg.pad_token_id,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    pub fn forward(&self, batch: &Batch, device: &Device, dropout: &mut Dropout) -> Result<Tensor> {
        let shape = (batch.size, batch.seq_len);
        let ids = Tensor::from_slice(&batch.input_ids, shape, device)?;
        let positions = Tensor::from_vec(self.position_ids(batch), shape, device)?;
        let mut x = self
            .word_embeddings
            .forward(&ids)?
            .add(&self.position_embeddings.forward(&positions)?)?;
        if let Some(tt) = &self.token_type_embeddings {
            let types = match &batch.token_type_ids {
                Some(t) => Tensor::from_slice(t, shape, device)?,
                None => Tensor::zeros(shape, candle_core::DType::U32, device)?,
            };
            x = x.add(&tt.forward(&types)?)?;
        }
        let x = dropout.apply(&self.layer_norm.forward(&x)?, self.dropout)?;
        Ok(match &self.embeddings_project {
            Some(proj) => proj.forward(&x)?,
            None => x,
        })
    }

    /// BERT-style: 0..seq_len. RoBERTa-style: count non-pad tokens from `padding_idx + 1`,
    /// padding keeps `padding_idx` (transformers' `create_position_ids_from_input_ids`).
    fn position_ids(&self, batch: &Batch) -> Vec<u32> {
        let offset = self.family.position_offset(self.pad_token_id) as u32;
        let mut out = Vec::with_capacity(batch.input_ids.len());
        for row in batch.input_ids.chunks(batch.seq_len.max(1)) {
            if offset == 0 {
                out.extend(0..row.len() as u32);
            } else {
                let mut count = 0;
                out.extend(row.iter().map(|&id| {
                    if id == self.pad_token_id {
                        self.pad_token_id
                    } else {
                        count += 1;
                        count + self.pad_token_id
                    }
                }));
            }
        }
        out
    }
}
