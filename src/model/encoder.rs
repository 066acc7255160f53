//! The post-LayerNorm transformer layer shared by BERT, RoBERTa, XLM-RoBERTa, DistilBERT,
//! ELECTRA and GTE: transformers' `BertLayer`, forward and backward on facing pages. The
//! parameter names differ between families (DistilBERT's `q_lin`, `ffn.lin1`, ...), and GTE's
//! layer rotates queries and keys (rotary embeddings) and gates its MLP (`up · act(gate)` from
//! one `up_gate_proj` product). GTE's names are those transformers writes (and the hub's
//! `new` checkpoints use): `qkv_proj`, `up_gate_proj`, `attn_ln`, `mlp_ln`. DeBERTa-v2's layer
//! attends with relative positions ([`crate::ops::disentangled`]) over the encoder's table
//! ([`RelativeEmbeddings`]).

use anyhow::Result;
use std::ops::Range;
use std::sync::Arc;

use super::config::{Config, Family};
use super::weights::Weights;
use super::{add, fit, LayerNorm, Linear};
use crate::ops::activation::Half;
use crate::ops::attention::{Heads, Mask};
use crate::ops::disentangled::{self, Relative};
use crate::ops::dropout::sites;
use crate::ops::int8::QuantizedRows;
use crate::ops::linear::InputGrad;
use crate::ops::profile::timed;
use crate::ops::rotary::Rotary;
use crate::ops::{attention, dropout, Act, Dropout, Pass};

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
        } else if family == Family::DebertaV2 {
            LayerNames {
                prefix: format!("{base}.encoder.layer.{i}"),
                query: "attention.self.query_proj",
                key: "attention.self.key_proj",
                value: "attention.self.value_proj",
                ..LayerNames::new(Family::Bert, i)
            }
        } else if family == Family::Gte {
            // One `[3h, h]` tensor holds the query, key and value: no key or value names.
            LayerNames {
                prefix: format!("{base}.encoder.layer.{i}"),
                query: "attention.qkv_proj",
                key: "",
                value: "",
                attention_output: "attention.o_proj",
                attention_norm: "attn_ln",
                intermediate: "mlp.up_gate_proj",
                output: "mlp.down_proj",
                output_norm: "mlp_ln",
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

/// Layer `i`'s query, key and value modules, which the engine runs as one `[3h, h]` product
/// (GTE's one `qkv_proj`).
pub fn fused_qkv_names(cfg: &Config, i: usize) -> Vec<String> {
    let n = LayerNames::new(cfg.family, i);
    [n.query, n.key, n.value]
        .into_iter()
        .filter(|part| !part.is_empty())
        .map(|part| n.name(part))
        .collect()
}

/// Layer `i`'s FFN output module (`output.dense`, DistilBERT's `ffn.lin2`).
pub fn ffn_output_name(cfg: &Config, i: usize) -> String {
    let n = LayerNames::new(cfg.family, i);
    n.name(n.output)
}

pub struct Layer {
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: Heads,
    act: Act,
    /// GTE: the FFN input gives `[up, gate]`, and `up · act(gate)` goes on.
    glu: bool,
    /// GTE: rotary embeddings on the queries and keys.
    rotary: Option<Arc<Rotary>>,
    /// DeBERTa: attention with relative positions.
    disentangled: Option<Disentangled>,
    hidden_dropout: f64,
    attention_dropout: f64,
    /// DistilBERT applies no dropout after the attention output projection.
    attention_output_dropout: bool,
    /// The layer's index, which numbers its dropout sites.
    index: usize,
}

/// DeBERTa's relative-position table, shared by every layer: `rel_embeddings`, through the
/// encoder's LayerNorm where `norm_rel_ebd` says so.
pub struct RelativeEmbeddings {
    table: Range<usize>,
    norm: Option<LayerNorm>,
    pub relative: Arc<Relative>,
    h: usize,
}

impl RelativeEmbeddings {
    pub fn new(cfg: &Config, w: &Weights) -> Result<Option<Self>> {
        let Some(d) = &cfg.deberta else {
            return Ok(None);
        };
        let (h, rows) = (cfg.hidden_size, 2 * d.span());
        let base = cfg.family.base_prefix();
        Ok(Some(RelativeEmbeddings {
            table: w.slot(&format!("{base}.encoder.rel_embeddings.weight"), &[rows, h])?,
            norm: match d.norm_rel_ebd {
                true => Some(LayerNorm::new(
                    w,
                    &format!("{base}.encoder.LayerNorm"),
                    h,
                    cfg.layer_norm_eps,
                )?),
                false => None,
            },
            relative: Arc::new(Relative::new(
                d.c2p,
                d.p2c,
                d.position_buckets,
                d.max_relative_positions,
                cfg.max_position_embeddings,
            )),
            h,
        }))
    }

    /// The table as the layers read it into `out`; `stats`: the norm's row stats.
    pub fn forward(&self, w: &[f32], out: &mut Vec<f32>, stats: &mut Vec<f32>) {
        let table = &w[self.table.clone()];
        fit(out, table.len());
        match &self.norm {
            Some(norm) => {
                fit(stats, 2 * table.len() / self.h);
                norm.forward(w, table, out, stats)
            }
            None => out.copy_from_slice(table),
        }
    }

    /// Adds the table's (and its norm's) gradients into `g` from dL/d(the layers' table).
    pub fn backward(&self, w: &[f32], g: &mut [f32], dout: &[f32], stats: &[f32]) {
        match &self.norm {
            Some(norm) => {
                let mut dtable = vec![0f32; dout.len()];
                norm.backward(w, g, dout, &w[self.table.clone()], stats, &mut dtable);
                add(&mut g[self.table.clone()], &dtable);
            }
            None => add(&mut g[self.table.clone()], dout),
        }
    }
}

/// One layer's relative-position attention: the table's rows projected as keys (by the layer's
/// key projection, or `pos_key_proj`) and as queries.
struct Disentangled {
    relative: Arc<Relative>,
    pos_key: Option<Linear>,
    pos_query: Option<Linear>,
    /// `pos_dropout` on the table, as each layer reads it (`hidden_dropout_prob`).
    dropout: f64,
}

/// A layer's input and the activations its backward needs (`n` tokens, hidden `h`,
/// intermediate `m`).
#[derive(Default)]
pub struct LayerActs {
    /// Input, `[n, h]`.
    pub x: Vec<f32>,
    /// Fused Q, K, V projections, `[n, 3h]`.
    qkv: Vec<f32>,
    /// Attention context (before the output projection), `[n, h]`.
    ctx: Vec<f32>,
    /// Input of the attention LayerNorm (dropped projection + residual) and its row stats.
    z1: Vec<f32>,
    st1: Vec<f32>,
    /// Output of the attention block, `[n, h]`.
    y1: Vec<f32>,
    /// Intermediate pre-activation (`[n, 2m]` for a gated MLP) and activation, `[n, m]`; for a
    /// gated MLP, `act(gate)` too.
    u: Vec<f32>,
    a: Vec<f32>,
    g: Vec<f32>,
    /// DeBERTa: the table as this layer read it (dropped), and its rows projected as keys and
    /// as queries, `[2 · span, h]` each.
    rel: Vec<f32>,
    pos_k: Vec<f32>,
    pos_q: Vec<f32>,
    /// Input of the output LayerNorm and its row stats.
    z2: Vec<f32>,
    st2: Vec<f32>,
    /// int8 scoring: the activation quantized as the output projection's input.
    a_int8: QuantizedRows,
}

/// Gradient buffers of one layer's backward, shared by all layers.
#[derive(Default)]
pub struct Scratch {
    pub dh1: Vec<f32>,
    pub dh2: Vec<f32>,
    di: Vec<f32>,
    du: Vec<f32>,
    d3: Vec<f32>,
    /// DeBERTa: the gradient of the relative table as one layer read it.
    dtable: Vec<f32>,
}

impl Layer {
    /// Layer `i`; `rotary`: the tables of a family with rotary embeddings; `relative`:
    /// DeBERTa's relative positions.
    pub fn new(
        cfg: &Config,
        w: &Weights,
        i: usize,
        rotary: Option<Arc<Rotary>>,
        relative: Option<Arc<Relative>>,
    ) -> Result<Self> {
        let n = LayerNames::new(cfg.family, i);
        let (h, m, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let glu = cfg.family == Family::Gte;
        let qkv = fused_qkv_names(cfg, i);
        let intermediate = match glu {
            true => Linear::with_bias(w, &n.name(n.intermediate), h, 2 * m, false)?,
            false => Linear::new(w, &n.name(n.intermediate), h, m)?,
        };
        let disentangled = match (relative, &cfg.deberta) {
            (Some(relative), Some(d)) => {
                let proj = |on: bool, shared: &str, own: &str| -> Result<Option<Linear>> {
                    let name = if d.share_att_key { shared } else { own };
                    on.then(|| Linear::new(w, &n.name(name), h, h)).transpose()
                };
                Some(Disentangled {
                    pos_key: proj(d.c2p, n.key, "attention.self.pos_key_proj")?,
                    pos_query: proj(d.p2c, n.query, "attention.self.pos_query_proj")?,
                    relative,
                    dropout: cfg.hidden_dropout_prob,
                })
            }
            _ => None,
        };
        Ok(Layer {
            qkv: Linear::fused(w, &qkv, h, &vec![3 * h / qkv.len(); qkv.len()], true)?,
            attention_output: Linear::new(w, &n.name(n.attention_output), h, h)?,
            attention_norm: LayerNorm::new(w, &n.name(n.attention_norm), h, eps)?,
            intermediate,
            output: Linear::new(w, &n.name(n.output), m, h)?,
            output_norm: LayerNorm::new(w, &n.name(n.output_norm), h, eps)?,
            heads: Heads::new(h, cfg.num_attention_heads),
            act: cfg.hidden_act,
            glu,
            rotary,
            disentangled,
            hidden_dropout: cfg.hidden_dropout_prob,
            attention_dropout: cfg.attention_probs_dropout_prob,
            attention_output_dropout: cfg.family != Family::DistilBert,
            index: i,
        })
    }

    /// The layer's four linear layers.
    pub fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.qkv,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
    }

    /// The dropout sites of this layer: attention probabilities, attention output, FFN output.
    /// `n` tokens in `b` sequences.
    fn dropouts(&self, pass: Option<Pass>, n: usize, b: usize) -> [Option<Dropout>; 3] {
        let [probs, attention, ffn] = sites::layer(self.index);
        [
            Dropout::sequences(pass, probs, self.attention_dropout, b),
            Dropout::tokens(pass, attention, self.hidden_dropout, n)
                .filter(|_| self.attention_output_dropout),
            Dropout::tokens(pass, ffn, self.hidden_dropout, n),
        ]
    }

    /// GTE's dropout of the gated activation (inside its MLP, before `down_proj`).
    fn glu_dropout(&self, pass: Option<Pass>, n: usize) -> Option<Dropout> {
        Dropout::tokens(
            pass,
            sites::gated_activation(self.index),
            self.hidden_dropout,
            n,
        )
    }

    /// `acts.x` (`[n, h]`) through the layer into `out`, keeping the activations in `acts`;
    /// `rel`: DeBERTa's relative table, as [`RelativeEmbeddings::forward`] gave it.
    pub fn forward(
        &self,
        w: &[f32],
        offsets: &[usize],
        acts: &mut LayerActs,
        out: &mut Vec<f32>,
        pass: Option<Pass>,
        rel: &[f32],
    ) {
        let h = self.attention_output.out_dim;
        let n = acts.x.len() / h;
        let m = self.output.in_dim;
        let [drop_p, drop_attn, drop_ffn] = self.dropouts(pass, n, offsets.len() - 1);
        for (v, len) in [
            (&mut acts.qkv, 3 * n * h),
            (&mut acts.ctx, n * h),
            (&mut acts.z1, n * h),
            (&mut acts.st1, 2 * n),
            (&mut acts.y1, n * h),
            (&mut acts.u, n * self.intermediate.out_dim),
            (&mut acts.a, n * m),
            (&mut acts.z2, n * h),
            (&mut acts.st2, 2 * n),
            (out, n * h),
        ] {
            fit(v, len);
        }
        timed("fwd qkv", || self.qkv.forward(w, &acts.x, &mut acts.qkv));
        if let Some(rotary) = &self.rotary {
            timed("fwd rotary", || {
                rotary.forward(&mut acts.qkv, offsets, self.heads)
            });
        }
        timed("fwd attention", || {
            self.attention_forward(w, offsets, acts, pass, rel, drop_p)
        });
        timed("fwd attention output", || {
            self.attention_output.forward(w, &acts.ctx, &mut acts.z1)
        });
        timed("fwd dropout + residual", || {
            dropout::apply(drop_attn, &mut acts.z1);
            add(&mut acts.z1, &acts.x);
        });
        timed("fwd layer norm", || {
            let (y1, st1) = (&mut acts.y1, &mut acts.st1);
            self.attention_norm.forward(w, &acts.z1, y1, st1)
        });
        self.mlp_forward(w, acts, pass);
        timed("fwd dropout + residual", || {
            dropout::apply(drop_ffn, &mut acts.z2);
            add(&mut acts.z2, &acts.y1);
        });
        timed("fwd layer norm", || {
            self.output_norm.forward(w, &acts.z2, out, &mut acts.st2)
        });
    }

    /// Attention over the fused Q, K, V (`acts.qkv`) into `acts.ctx`: DeBERTa's disentangled
    /// attention, with the relative table `rel` projected as keys and queries, or the plain one.
    fn attention_forward(
        &self,
        w: &[f32],
        offsets: &[usize],
        acts: &mut LayerActs,
        pass: Option<Pass>,
        rel: &[f32],
        drop_p: Option<Dropout>,
    ) {
        match &self.disentangled {
            Some(d) => {
                acts.rel.clear();
                acts.rel.extend_from_slice(rel);
                dropout::apply(self.pos_dropout(d, pass), &mut acts.rel);
                for (proj, out) in [
                    (&d.pos_key, &mut acts.pos_k),
                    (&d.pos_query, &mut acts.pos_q),
                ] {
                    out.clear();
                    if let Some(proj) = proj {
                        fit(out, rel.len());
                        proj.forward(w, &acts.rel, out);
                    }
                }
                let (pos_k, pos_q) = (&acts.pos_k, &acts.pos_q);
                let heads = self.heads.q;
                disentangled::forward(
                    &mut acts.ctx,
                    &acts.qkv,
                    pos_k,
                    pos_q,
                    offsets,
                    heads,
                    &d.relative,
                    drop_p,
                )
            }
            None => attention::forward(
                &mut acts.ctx,
                &acts.qkv,
                offsets,
                self.heads,
                Mask::All,
                drop_p,
            ),
        }
    }

    /// The MLP: `acts.y1` through the intermediate projection, the activation (gated for GTE)
    /// and the output projection into `acts.z2`.
    fn mlp_forward(&self, w: &[f32], acts: &mut LayerActs, pass: Option<Pass>) {
        let (n, m) = (acts.y1.len() / self.output.out_dim, self.output.in_dim);
        if self.intermediate.is_int8() && !self.glu {
            // int8 scoring: the activation and its quantization in the product's epilogue.
            timed("fwd intermediate + activation", || {
                let (u, q) = (&mut acts.u, &mut acts.a_int8);
                self.intermediate
                    .forward_quantizing(w, &acts.y1, u, self.act, q)
            });
            timed("fwd output", || {
                self.output.forward_quantized(w, &acts.a_int8, &mut acts.z2)
            });
        } else {
            timed("fwd intermediate", || {
                self.intermediate.forward(w, &acts.y1, &mut acts.u)
            });
            timed("fwd activation", || match self.glu {
                true => {
                    fit(&mut acts.g, n * m);
                    self.act
                        .glu_forward(&mut acts.a, &mut acts.g, &acts.u, m, Half::Second);
                    dropout::apply(self.glu_dropout(pass, n), &mut acts.a);
                }
                false => self.act.forward(&mut acts.a, &acts.u),
            });
            timed("fwd output", || {
                self.output.forward(w, &acts.a, &mut acts.z2)
            });
        }
    }

    /// DeBERTa's dropout of the relative table as this layer reads it.
    fn pos_dropout(&self, d: &Disentangled, pass: Option<Pass>) -> Option<Dropout> {
        Dropout::site(pass, sites::relative_table(self.index), d.dropout)
    }

    /// Backward: `dy` holds dL/d(output) on entry and dL/d(input) on return; the parameter
    /// gradients are added into `g`, DeBERTa's relative table's gradient into `drel`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        offsets: &[usize],
        acts: &LayerActs,
        dy: &mut [f32],
        s: &mut Scratch,
        pass: Option<Pass>,
        drel: &mut [f32],
    ) {
        let h = self.attention_output.out_dim;
        let n = acts.x.len() / h;
        let m = self.output.in_dim;
        let [drop_p, drop_attn, drop_ffn] = self.dropouts(pass, n, offsets.len() - 1);
        fit(&mut s.dh1, n * h);
        fit(&mut s.dh2, n * h);
        fit(&mut s.di, n * m);
        fit(&mut s.d3, 3 * n * h);
        // Output LayerNorm; its input's gradient goes to the residual and the FFN.
        timed("bwd layer norm", || {
            self.output_norm
                .backward(w, g, dy, &acts.z2, &acts.st2, &mut s.dh1)
        });
        timed("bwd dropout + residual", || {
            s.dh2.copy_from_slice(&s.dh1);
            dropout::apply(drop_ffn, &mut s.dh1);
        });
        self.mlp_backward(w, g, acts, s, pass);
        // Attention LayerNorm; its input's gradient goes to the residual and the attention.
        timed("bwd layer norm", || {
            self.attention_norm
                .backward(w, g, &s.dh2, &acts.z1, &acts.st1, &mut s.dh1)
        });
        timed("bwd dropout + residual", || {
            dy.copy_from_slice(&s.dh1);
            dropout::apply(drop_attn, &mut s.dh1);
        });
        timed("bwd attention output", || {
            let dx = InputGrad::Write(&mut s.dh2);
            self.attention_output.backward(w, g, &s.dh1, &acts.ctx, dx)
        });
        timed("bwd attention", || {
            self.attention_backward(w, g, offsets, acts, s, pass, drop_p, drel)
        });
        if let Some(rotary) = &self.rotary {
            timed("bwd rotary", || {
                rotary.backward(&mut s.d3, offsets, self.heads)
            });
        }
        timed("bwd qkv", || {
            self.qkv.backward(w, g, &s.d3, &acts.x, InputGrad::Add(dy))
        });
    }

    /// The MLP's backward: dL/d(`acts.z2`) in `s.dh1`; adds dL/d(`acts.y1`) into `s.dh2`.
    fn mlp_backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        acts: &LayerActs,
        s: &mut Scratch,
        pass: Option<Pass>,
    ) {
        let (n, m) = (acts.y1.len() / self.output.out_dim, self.output.in_dim);
        timed("bwd output", || {
            let dx = InputGrad::Write(&mut s.di);
            self.output.backward(w, g, &s.dh1, &acts.a, dx)
        });
        let du = timed("bwd activation", || match self.glu {
            true => {
                fit(&mut s.du, 2 * n * m);
                dropout::apply(self.glu_dropout(pass, n), &mut s.di);
                self.act
                    .glu_backward(&mut s.du, &s.di, &acts.u, &acts.g, m, Half::Second);
                &s.du
            }
            false => {
                self.act.backward(&mut s.di, &acts.u, &acts.a);
                &s.di
            }
        });
        timed("bwd intermediate", || {
            let dx = InputGrad::Add(&mut s.dh2);
            self.intermediate.backward(w, g, du, &acts.y1, dx)
        });
    }

    /// The attention's backward: dL/d(`acts.ctx`) in `s.dh2`, dL/d(`acts.qkv`) into `s.d3`;
    /// DeBERTa's table gradient is added into `drel`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        offsets: &[usize],
        acts: &LayerActs,
        s: &mut Scratch,
        pass: Option<Pass>,
        drop_p: Option<Dropout>,
        drel: &mut [f32],
    ) {
        let Some(d) = &self.disentangled else {
            attention::backward(
                &mut s.d3,
                &s.dh2,
                &acts.qkv,
                offsets,
                self.heads,
                Mask::All,
                drop_p,
            );
            return;
        };
        let (pos_k, pos_q, heads) = (&acts.pos_k, &acts.pos_q, self.heads.q);
        let [dpk, dpq] = disentangled::backward(
            &mut s.d3,
            &s.dh2,
            &acts.qkv,
            pos_k,
            pos_q,
            offsets,
            heads,
            &d.relative,
            drop_p,
        );
        // The table's gradient through both projections and this layer's dropout.
        s.dtable.clear();
        s.dtable.resize(acts.rel.len(), 0.0);
        for (proj, dpos) in [(&d.pos_key, &dpk), (&d.pos_query, &dpq)] {
            if let Some(proj) = proj {
                proj.backward(w, g, dpos, &acts.rel, InputGrad::Add(&mut s.dtable));
            }
        }
        dropout::apply(self.pos_dropout(d, pass), &mut s.dtable);
        add(drel, &s.dtable);
    }
}
