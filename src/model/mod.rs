//! Cross-encoder models: config, tokenizer, encoder per family, heads, checkpoints, hub.

pub mod bi_encoder;
pub mod checkpoint;
pub mod config;
pub mod cross_encoder;
pub mod embeddings;
pub mod encoder;
pub mod head;

pub mod tokenize;

use anyhow::Result;
use candle_core::{Device, Tensor};

use checkpoint::Params;
use config::Config;
use embeddings::Embeddings;
use encoder::Encoder;
use head::Head;
use tokenize::Batch;

use crate::ops::{self, Dropout};

/// `torch.nn.LayerNorm` over the last dimension, built from differentiable ops.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: &Params, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: p.get(&format!("{name}.weight"), &[size])?,
            bias: p.get(&format!("{name}.bias"), &[size])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// `torch.nn.Linear`, applied by the fused [`ops::linear`].
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl candle_nn::Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::linear(x, &self.weight, &self.bias)
    }
}

/// A `torch.nn.Linear(in, out)` read from `{name}.weight` (`[out, in]`) and `{name}.bias`.
pub fn linear(p: &Params, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Ok(Linear {
        weight: p.get(&format!("{name}.weight"), &[out_dim, in_dim])?,
        bias: p.get(&format!("{name}.bias"), &[out_dim])?,
    })
}

/// Embeddings and the transformer layers: transformers' `BertModel` without the pooler, for any
/// supported family.
pub struct Transformer {
    embeddings: Embeddings,
    encoder: Encoder,
    device: Device,
}

impl Transformer {
    pub fn new(cfg: &Config, p: &Params, device: &Device) -> Result<Self> {
        Ok(Transformer {
            embeddings: Embeddings::new(cfg, p)?,
            encoder: Encoder::new(cfg, p)?,
            device: device.clone(),
        })
    }

    /// The last hidden state `[batch, seq, hidden]`.
    pub fn forward(&self, batch: &Batch, dropout: &mut Dropout) -> Result<Tensor> {
        let x = self.embeddings.forward(batch, &self.device, dropout)?;
        self.encoder.forward(&x, &batch.attention_mask, dropout)
    }
}

/// An encoder with a sequence-classification head: transformers'
/// `*ForSequenceClassification`, for any supported family.
pub struct SequenceClassifier {
    transformer: Transformer,
    head: Head,
}

impl SequenceClassifier {
    pub fn new(cfg: &Config, p: &Params, device: &Device) -> Result<Self> {
        Ok(SequenceClassifier {
            transformer: Transformer::new(cfg, p, device)?,
            head: Head::new(cfg, p)?,
        })
    }

    /// The last hidden state `[batch, seq, hidden]`.
    pub fn encode(&self, batch: &Batch, dropout: &mut Dropout) -> Result<Tensor> {
        self.transformer.forward(batch, dropout)
    }

    /// Raw logits `[batch, num_labels]`.
    pub fn forward(&self, batch: &Batch, dropout: &mut Dropout) -> Result<Tensor> {
        let hidden = self.encode(batch, dropout)?;
        self.head.forward(&encoder::first_token(&hidden)?, dropout)
    }

    pub fn head(&self) -> &Head {
        &self.head
    }
}
