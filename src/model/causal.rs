//! Causal-LM re-rankers (transformers' `Qwen3ForCausalLM`, `Qwen2ForCausalLM`) as
//! sentence-transformers scores them: the pair rendered through the model's chat template (see
//! [`super::tokenize`]), one forward pass, and at the last token the logit of the "yes" token
//! minus that of the "no" token (its `LogitScore` module). Only those two rows of the output
//! projection are ever used, so their difference is kept as one vector.
//!
//! The decoder layer: RMSNorm, Q/K/V (grouped-query: fewer key/value heads), Qwen3's per-head
//! RMSNorm of queries and keys, rotary embeddings, causal attention, the output projection and a
//! residual; then RMSNorm, the SwiGLU MLP (`down(silu(gate) · up)`) and a residual. Packed
//! batches need no padding side: each sequence's positions count from 0, as left padding with
//! position ids from the mask gives, and rotary scores depend only on relative positions.
//! Forward only: these models score; training them is not supported yet.

use anyhow::{bail, Result};
use rayon::prelude::*;
use std::ops::Range;

use super::checkpoint::Params;
use super::config::{CausalConfig, Config};
use super::tokenize::Tokens;
use super::weights::Weights;
use super::{add, fit, Linear};
use crate::ops::activation::Half;
use crate::ops::attention::{self, Heads, Mask};
use crate::ops::profile::timed;
use crate::ops::rms_norm;
use crate::ops::rotary::Rotary;
use crate::ops::Act;

const BASE: &str = "model";

fn layer_name(i: usize, part: &str) -> String {
    format!("{BASE}.layers.{i}.{part}")
}

fn settings(cfg: &Config) -> Result<&CausalConfig> {
    match &cfg.causal {
        Some(c) => Ok(c),
        None => bail!("internal: a causal LM without its config"),
    }
}

/// Packs the weights: each layer's Q, K, V side by side and its gate and up projections side by
/// side (one product each), the MLP's down projection stored `[in, out]`.
pub fn pack(cfg: &Config, params: &Params) -> Result<Weights> {
    check(cfg, params)?;
    let c = settings(cfg)?;
    let mut first = Vec::new();
    let mut transposed = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        for p in ["q_proj", "k_proj", "v_proj"] {
            first.push(layer_name(i, &format!("self_attn.{p}.weight")));
        }
        if c.attention_bias {
            for p in ["q_proj", "k_proj", "v_proj"] {
                first.push(layer_name(i, &format!("self_attn.{p}.bias")));
            }
        }
        first.push(layer_name(i, "mlp.gate_proj.weight"));
        first.push(layer_name(i, "mlp.up_proj.weight"));
        transposed.push(layer_name(i, "mlp.down_proj.weight"));
    }
    Weights::pack(params, &first, &transposed)
}

/// Checks the layer count and the embedding table against config.json.
pub fn check(cfg: &Config, params: &Params) -> Result<()> {
    let table = format!("{BASE}.embed_tokens.weight");
    super::check_layers_and_table(cfg, params, &format!("{BASE}.layers."), &table)
}

struct Layer {
    input_layernorm: Range<usize>,
    qkv: Linear,
    /// Qwen3's per-head norms of the queries and keys (`[head_dim]` each).
    qk_norm: Option<(Range<usize>, Range<usize>)>,
    o_proj: Linear,
    post_attention_layernorm: Range<usize>,
    gate_up: Linear,
    down: Linear,
}

/// A causal LM scored as a re-ranker.
pub struct CausalReranker {
    embed_tokens: Range<usize>,
    layers: Vec<Layer>,
    norm: Range<usize>,
    /// Output row of the "yes" token minus that of the "no" token (or the "yes" row alone).
    score_row: Vec<f32>,
    rotary: Rotary,
    heads: Heads,
    act: Act,
    eps: f32,
    vocab: usize,
    hidden: usize,
}

impl CausalReranker {
    pub fn new(cfg: &Config, w: &Weights) -> Result<Self> {
        let c = settings(cfg)?;
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        let heads = Heads {
            q: cfg.num_attention_heads,
            kv: c.num_key_value_heads,
            d: c.head_dim,
        };
        let norm = |name: String, size: usize| w.slot(&format!("{name}.weight"), &[size]);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let qkv: Vec<String> = ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|p| layer_name(i, &format!("self_attn.{p}")))
                    .collect();
                let outs = [heads.q * heads.d, heads.kv * heads.d, heads.kv * heads.d];
                let mlp = [layer_name(i, "mlp.gate_proj"), layer_name(i, "mlp.up_proj")];
                Ok(Layer {
                    input_layernorm: norm(layer_name(i, "input_layernorm"), h)?,
                    qkv: Linear::fused(w, &qkv, h, &outs, c.attention_bias)?,
                    qk_norm: match c.qk_norm {
                        true => Some((
                            norm(layer_name(i, "self_attn.q_norm"), heads.d)?,
                            norm(layer_name(i, "self_attn.k_norm"), heads.d)?,
                        )),
                        false => None,
                    },
                    o_proj: Linear::with_bias(
                        w,
                        &layer_name(i, "self_attn.o_proj"),
                        heads.out_width(),
                        h,
                        false,
                    )?,
                    post_attention_layernorm: norm(layer_name(i, "post_attention_layernorm"), h)?,
                    gate_up: Linear::fused(w, &mlp, h, &[m, m], false)?,
                    down: Linear::with_bias(w, &layer_name(i, "mlp.down_proj"), m, h, false)?,
                })
            })
            .collect::<Result<_>>()?;
        let embed_tokens = w.slot(&format!("{BASE}.embed_tokens.weight"), &[cfg.vocab_size, h])?;
        let output = match c.tie_word_embeddings {
            true => embed_tokens.clone(),
            false => w.slot("lm_head.weight", &[cfg.vocab_size, h])?,
        };
        let row = |id: u32| -> Result<&[f32]> {
            if id as usize >= cfg.vocab_size {
                bail!(
                    "score token id {id} is outside the vocabulary (vocab_size {})",
                    cfg.vocab_size
                );
            }
            Ok(&w.data[output.start + id as usize * h..][..h])
        };
        let yes = row(c.true_token_id)?;
        let score_row = match c.false_token_id {
            Some(no) => yes.iter().zip(row(no)?).map(|(a, b)| a - b).collect(),
            None => yes.to_vec(),
        };
        Ok(CausalReranker {
            embed_tokens,
            layers,
            norm: norm(format!("{BASE}.norm"), h)?,
            score_row,
            rotary: Rotary::new(heads.d, c.rope_theta, cfg.max_position_embeddings),
            heads,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps as f32,
            vocab: cfg.vocab_size,
            hidden: h,
        })
    }

    /// Every layer's linear layers.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.qkv, &mut l.o_proj, &mut l.gate_up, &mut l.down])
    }

    /// The word-embedding table's range in the flat buffer and its row width.
    pub fn word_table(&self) -> (Range<usize>, usize) {
        (self.embed_tokens.clone(), self.hidden)
    }

    /// The last hidden state `[tokens, hidden]`, before the final norm.
    pub fn encode(&self, w: &[f32], tokens: &Tokens) -> Result<Vec<f32>> {
        let (n, h) = (tokens.len(), self.hidden);
        tokens.check(self.vocab, self.rotary.positions())?;
        let table = &w[self.embed_tokens.clone()];
        let mut x = Vec::with_capacity(n * h);
        timed("fwd embeddings", || {
            for &id in &tokens.input_ids {
                x.extend_from_slice(&table[id as usize * h..][..h]);
            }
        });
        let mut buffers = Buffers::default();
        for layer in &self.layers {
            self.layer(w, layer, &tokens.offsets, &mut x, &mut buffers);
        }
        Ok(x)
    }

    /// One score per sequence `[sequences, 1]`: the final norm of its last token dotted with
    /// the score row.
    pub fn forward(&self, w: &[f32], tokens: &Tokens) -> Result<Vec<f32>> {
        let x = self.encode(w, tokens)?;
        let h = self.hidden;
        Ok(timed("fwd head", || {
            let weight = &w[self.norm.clone()];
            (0..tokens.sequences())
                .map(|s| {
                    let last = tokens.offsets[s + 1] - 1;
                    let mut y = x[last * h..(last + 1) * h].to_vec();
                    rms_norm::in_place(&mut y, weight, self.eps);
                    crate::ops::dot(&y, &self.score_row)
                })
                .collect()
        }))
    }

    /// One decoder layer over `x` (`[n, h]`), in place.
    fn layer(&self, w: &[f32], l: &Layer, offsets: &[usize], x: &mut [f32], b: &mut Buffers) {
        let (h, heads) = (self.hidden, self.heads);
        let n = x.len() / h;
        let m = l.down.in_dim;
        for (v, len) in [
            (&mut b.normed, n * h),
            (&mut b.qkv, n * heads.width()),
            (&mut b.ctx, n * heads.out_width()),
            (&mut b.out, n * h),
            (&mut b.u, 2 * n * m),
            (&mut b.g, n * m),
            (&mut b.a, n * m),
        ] {
            fit(v, len);
        }
        timed("fwd layer norm", || {
            rms_norm::forward(&mut b.normed, x, &w[l.input_layernorm.clone()], self.eps)
        });
        timed("fwd qkv", || l.qkv.forward(w, &b.normed, &mut b.qkv));
        if let Some((q_norm, k_norm)) = &l.qk_norm {
            timed("fwd layer norm", || {
                let (qn, kn) = (&w[q_norm.clone()], &w[k_norm.clone()]);
                let (q_end, k_end) = (heads.q * heads.d, (heads.q + heads.kv) * heads.d);
                b.qkv.par_chunks_mut(heads.width()).for_each(|row| {
                    rms_norm::in_place(&mut row[..q_end], qn, self.eps);
                    rms_norm::in_place(&mut row[q_end..k_end], kn, self.eps);
                })
            });
        }
        timed("fwd rotary", || {
            self.rotary.forward(&mut b.qkv, offsets, heads)
        });
        timed("fwd attention", || {
            attention::forward(&mut b.ctx, &b.qkv, offsets, heads, Mask::Causal, None)
        });
        timed("fwd attention output", || {
            l.o_proj.forward(w, &b.ctx, &mut b.out)
        });
        timed("fwd dropout + residual", || add(x, &b.out));
        timed("fwd layer norm", || {
            let weight = &w[l.post_attention_layernorm.clone()];
            rms_norm::forward(&mut b.normed, x, weight, self.eps)
        });
        timed("fwd intermediate", || {
            l.gate_up.forward(w, &b.normed, &mut b.u)
        });
        timed("fwd activation", || {
            self.act
                .glu_forward(&mut b.a, &mut b.g, &b.u, m, Half::First)
        });
        timed("fwd output", || l.down.forward(w, &b.a, &mut b.out));
        timed("fwd dropout + residual", || add(x, &b.out));
    }
}

/// One layer's buffers, reused by every layer of a pass.
#[derive(Default)]
struct Buffers {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    out: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
    a: Vec<f32>,
}
