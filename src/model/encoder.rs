//! The post-LayerNorm transformer encoder shared by BERT, RoBERTa, XLM-RoBERTa, DistilBERT and
//! ELECTRA. Only the parameter names differ between families (DistilBERT's `q_lin`, `ffn.lin1`,
//! ...); the computation is transformers' `BertLayer`.

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::Module;

use super::config::{Config, Family, HiddenAct};
use super::{linear, LayerNorm, Linear};
use crate::model::checkpoint::Params;
use crate::ops::{self, Dropout};

/// Where one layer's parameters live, relative to the layer's prefix.
struct LayerNames {
    prefix: String,
    query: &'static str,
    key: &'static str,
    value: &'static str,
    attention_output: &'static str,
    attention_norm: &'static str,
    intermediate: &'static str,
    output: &'static str,
    output_norm: &'static str,
}

impl LayerNames {
    fn new(family: Family, i: usize) -> Self {
        let base = family.base_prefix();
        if family == Family::DistilBert {
            LayerNames {
                prefix: format!("{base}.transformer.layer.{i}"),
                query: "attention.q_lin",
                key: "attention.k_lin",
                value: "attention.v_lin",
                attention_output: "attention.out_lin",
                attention_norm: "sa_layer_norm",
                intermediate: "ffn.lin1",
                output: "ffn.lin2",
                output_norm: "output_layer_norm",
            }
        } else {
            LayerNames {
                prefix: format!("{base}.encoder.layer.{i}"),
                query: "attention.self.query",
                key: "attention.self.key",
                value: "attention.self.value",
                attention_output: "attention.output.dense",
                attention_norm: "attention.output.LayerNorm",
                intermediate: "intermediate.dense",
                output: "output.dense",
                output_norm: "output.LayerNorm",
            }
        }
    }

    fn name(&self, part: &str) -> String {
        format!("{}.{part}", self.prefix)
    }
}

pub struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
    act: HiddenAct,
    hidden_dropout: f64,
    attention_dropout: f64,
    /// DistilBERT applies no dropout after the attention output projection.
    attention_output_dropout: bool,
}

impl Layer {
    fn new(cfg: &Config, p: &Params, i: usize) -> Result<Self> {
        let n = LayerNames::new(cfg.family, i);
        let (h, m, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Layer {
            query: linear(p, &n.name(n.query), h, h)?,
            key: linear(p, &n.name(n.key), h, h)?,
            value: linear(p, &n.name(n.value), h, h)?,
            attention_output: linear(p, &n.name(n.attention_output), h, h)?,
            attention_norm: LayerNorm::new(p, &n.name(n.attention_norm), h, eps)?,
            intermediate: linear(p, &n.name(n.intermediate), h, m)?,
            output: linear(p, &n.name(n.output), m, h)?,
            output_norm: LayerNorm::new(p, &n.name(n.output_norm), h, eps)?,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
            hidden_dropout: cfg.hidden_dropout_prob,
            attention_dropout: cfg.attention_probs_dropout_prob,
            attention_output_dropout: cfg.family != Family::DistilBert,
        })
    }

    /// `x`: `[batch, seq, hidden]`; `mask`: `batch * seq` flags, 0 on padding.
    fn forward(&self, x: &Tensor, mask: &[u32], dropout: &mut Dropout) -> Result<Tensor> {
        let (q, k, v) = (
            self.query.forward(x)?,
            self.key.forward(x)?,
            self.value.forward(x)?,
        );
        let context = ops::attention(
            &q,
            &k,
            &v,
            mask,
            self.heads,
            dropout.seed(self.attention_dropout),
        )?;
        let mut attn = self.attention_output.forward(&context)?;
        if self.attention_output_dropout {
            attn = dropout.apply(&attn, self.hidden_dropout)?;
        }
        let attn = self.attention_norm.forward(&attn.add(x)?)?;
        let inter = activation(&self.intermediate.forward(&attn)?, self.act)?;
        let out = dropout.apply(&self.output.forward(&inter)?, self.hidden_dropout)?;
        Ok(self.output_norm.forward(&out.add(&attn)?)?)
    }
}

pub fn activation(x: &Tensor, act: HiddenAct) -> Result<Tensor> {
    Ok(match act {
        HiddenAct::Gelu => ops::gelu(x)?,
        HiddenAct::GeluTanh => x.gelu()?,
        HiddenAct::Relu => x.relu()?,
    })
}

pub struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn new(cfg: &Config, p: &Params) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, p, i))
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    pub fn forward(&self, x: &Tensor, mask: &[u32], dropout: &mut Dropout) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask, dropout)?;
        }
        Ok(x)
    }
}

/// The first token's hidden state (`[CLS]` / `<s>`), `[batch, hidden]`.
pub fn first_token(hidden: &Tensor) -> Result<Tensor> {
    Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?)
}
