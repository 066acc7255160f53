//! ModernBERT (transformers' `ModernBertForSequenceClassification`), forward and backward on
//! facing pages. What differs from BERT: no position table but rotary embeddings on Q and K
//! (one base for global layers, another for sliding-window ones), pre-norm layers (layer 0's
//! attention norm is the identity) and a final norm, a gated MLP (`Wi` gives input and gate,
//! `act(input) · gate`), attention that alternates global and sliding-window, optional biases
//! everywhere (`attention_bias`, `mlp_bias`, `norm_bias`, `classifier_bias`), and a head that
//! pools (first token or mean), then dense, activation and norm before the classifier.

use anyhow::{bail, Result};
use std::ops::Range;
use std::sync::Arc;

use super::checkpoint::Params;
use super::config::{Config, ModernBertConfig, Pooling};
use super::tokenize::Tokens;
use super::weights::Weights;
use super::{add, fit, LayerNorm, Linear};
use crate::ops::activation::Half;
use crate::ops::attention::{Heads, Mask};
use crate::ops::dropout::sites;
use crate::ops::linear::InputGrad;
use crate::ops::profile::timed;
use crate::ops::rotary::Rotary;
use crate::ops::{attention, dropout, Act, Dropout, Pass};

/// The base model's attribute inside `ModernBertForSequenceClassification`.
const BASE: &str = "model";

fn layer_name(i: usize, part: &str) -> String {
    format!("{BASE}.layers.{i}.{part}")
}

/// The names and shapes of the head's parameters, as [`super::head::head_params`] lists them.
pub fn head_params(cfg: &Config, mb: &ModernBertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, l) = (cfg.hidden_size, cfg.num_labels());
    let mut params = vec![("head.dense.weight".to_string(), vec![h, h])];
    if mb.classifier_bias {
        params.push(("head.dense.bias".into(), vec![h]));
    }
    params.push(("head.norm.weight".into(), vec![h]));
    if mb.norm_bias {
        params.push(("head.norm.bias".into(), vec![h]));
    }
    params.push(("classifier.weight".into(), vec![l, h]));
    params.push(("classifier.bias".into(), vec![l]));
    params
}

/// The extra settings of a ModernBERT config (the loader guarantees them).
fn settings(cfg: &Config) -> Result<&ModernBertConfig> {
    match &cfg.modernbert {
        Some(mb) => Ok(mb),
        None => bail!("internal: a ModernBERT model without its config"),
    }
}

/// Packs the weights as the engine reads them: the MLP's output weight stored `[in, out]`
/// (see [`crate::ops::linear`]); `Wqkv` is one `[3h, h]` tensor already.
pub fn pack(cfg: &Config, params: &Params) -> Result<Weights> {
    check(cfg, params)?;
    let transposed: Vec<String> = (0..cfg.num_hidden_layers)
        .map(|i| layer_name(i, "mlp.Wo.weight"))
        .collect();
    Weights::pack(params, &[], &transposed)
}

/// Checks the layer count and hidden size against config.json before anything is sized.
pub fn check(cfg: &Config, params: &Params) -> Result<()> {
    let table = format!("{BASE}.embeddings.tok_embeddings.weight");
    super::check_layers_and_table(cfg, params, &format!("{BASE}.layers."), &table)
}

struct Embeddings {
    tok_embeddings: Range<usize>,
    norm: LayerNorm,
    dropout: f64,
    vocab: usize,
    /// The rotary tables' length: the longest sequence.
    positions: usize,
    h: usize,
}

struct Layer {
    /// `None` for layer 0 (transformers' `nn.Identity`).
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    rotary: Arc<Rotary>,
    mask: Mask,
    heads: Heads,
    act: Act,
    attention_dropout: f64,
    mlp_dropout: f64,
    index: usize,
}

/// One layer's input and what its backward needs (`n` tokens, hidden `h`, intermediate `m`).
#[derive(Default)]
pub struct LayerActs {
    /// Input `[n, h]`, and its attention norm with the row stats (empty for layer 0).
    x: Vec<f32>,
    xn: Vec<f32>,
    st0: Vec<f32>,
    /// Q, K, V after the rotation, `[n, 3h]`; the attention context `[n, h]`.
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    /// The residual stream after attention `[n, h]`, its MLP norm and row stats.
    h1: Vec<f32>,
    y1: Vec<f32>,
    st1: Vec<f32>,
    /// `Wi`'s output `[n, 2m]`, `act(input)` and the dropped GLU output, `[n, m]` each.
    u: Vec<f32>,
    g: Vec<f32>,
    a: Vec<f32>,
}

/// What a training pass keeps, reused from step to step.
#[derive(Default)]
pub struct Tape {
    /// The embedding sum (the embedding norm's input) and its row stats.
    z: Vec<f32>,
    z_stats: Vec<f32>,
    layers: Vec<LayerActs>,
    /// The last layer's output, the final norm's stats and output.
    last: Vec<f32>,
    final_stats: Vec<f32>,
    hidden: Vec<f32>,
    head: HeadActs,
    /// dL/d(the current layer's output), then dL/d(its input); dL/d(the last hidden state).
    dy: Vec<f32>,
    dhidden: Vec<f32>,
    scratch: Scratch,
}

/// Gradient buffers of one layer's backward, shared by all layers.
#[derive(Default)]
struct Scratch {
    dt: Vec<f32>,
    dn: Vec<f32>,
    dctx: Vec<f32>,
    da: Vec<f32>,
    du: Vec<f32>,
    d3: Vec<f32>,
}

#[derive(Default)]
struct HeadActs {
    pooled: Vec<f32>,
    t: Vec<f32>,
    a: Vec<f32>,
    st: Vec<f32>,
    /// The normed output after dropout: the classifier's input.
    d: Vec<f32>,
}

struct Head {
    pooling: Pooling,
    dense: Linear,
    act: Act,
    norm: LayerNorm,
    classifier: Linear,
    dropout: f64,
}

/// `ModernBertForSequenceClassification`: the encoder and its head.
pub struct ModernBert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    head: Head,
    hidden: usize,
}

impl ModernBert {
    pub fn new(cfg: &Config, w: &Weights) -> Result<Self> {
        let mb = settings(cfg)?;
        let (h, m, eps, nb) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.layer_norm_eps,
            mb.norm_bias,
        );
        let d = h / cfg.num_attention_heads;
        let positions = cfg.max_position_embeddings;
        let global = Arc::new(Rotary::new(d, mb.global_rope_theta, positions));
        let local = Arc::new(Rotary::new(d, mb.local_rope_theta, positions));
        let norm = |name: &str| LayerNorm::with_bias(w, name, h, eps, nb);
        let layers = mb
            .windows
            .iter()
            .enumerate()
            .map(|(i, &window)| {
                let (ab, mlp) = (mb.attention_bias, mb.mlp_bias);
                Ok(Layer {
                    attn_norm: match i {
                        0 => None,
                        _ => Some(norm(&layer_name(i, "attn_norm"))?),
                    },
                    wqkv: Linear::with_bias(w, &layer_name(i, "attn.Wqkv"), h, 3 * h, ab)?,
                    wo: Linear::with_bias(w, &layer_name(i, "attn.Wo"), h, h, ab)?,
                    mlp_norm: norm(&layer_name(i, "mlp_norm"))?,
                    wi: Linear::with_bias(w, &layer_name(i, "mlp.Wi"), h, 2 * m, mlp)?,
                    mlp_wo: Linear::with_bias(w, &layer_name(i, "mlp.Wo"), m, h, mlp)?,
                    rotary: match window {
                        None => global.clone(),
                        Some(_) => local.clone(),
                    },
                    mask: window.map_or(Mask::All, Mask::Window),
                    heads: Heads::new(h, cfg.num_attention_heads),
                    act: cfg.hidden_act,
                    attention_dropout: cfg.attention_probs_dropout_prob,
                    mlp_dropout: cfg.hidden_dropout_prob,
                    index: i,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ModernBert {
            embeddings: Embeddings {
                tok_embeddings: w.slot(
                    &format!("{BASE}.embeddings.tok_embeddings.weight"),
                    &[cfg.vocab_size, h],
                )?,
                norm: norm(&format!("{BASE}.embeddings.norm"))?,
                dropout: mb.embedding_dropout,
                vocab: cfg.vocab_size,
                positions,
                h,
            },
            layers,
            final_norm: norm(&format!("{BASE}.final_norm"))?,
            head: Head {
                pooling: mb.classifier_pooling,
                dense: Linear::with_bias(w, "head.dense", h, h, mb.classifier_bias)?,
                act: mb.classifier_activation,
                norm: norm("head.norm")?,
                classifier: Linear::new(w, "classifier", h, cfg.num_labels())?,
                dropout: cfg.classifier_dropout,
            },
            hidden: h,
        })
    }

    /// Every layer's linear layers.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.wqkv, &mut l.wo, &mut l.wi, &mut l.mlp_wo])
    }

    /// The word-embedding table's range in the flat buffer and its row width.
    pub fn word_table(&self) -> (Range<usize>, usize) {
        (self.embeddings.tok_embeddings.clone(), self.hidden)
    }

    /// The last hidden state `[tokens, hidden]` (after the final norm), dropout off.
    pub fn encode(&self, w: &[f32], tokens: &Tokens) -> Result<Vec<f32>> {
        let mut tape = Tape::default();
        self.encode_into(w, tokens, &mut tape, None, false)?;
        Ok(tape.hidden)
    }

    /// Raw logits `[sequences, num_labels]`, dropout off.
    pub fn forward(&self, w: &[f32], tokens: &Tokens) -> Result<Vec<f32>> {
        let mut tape = Tape::default();
        self.encode_into(w, tokens, &mut tape, None, false)?;
        Ok(timed("fwd head", || {
            self.head
                .forward(w, &tape.hidden, tokens, &mut tape.head, None)
        }))
    }

    /// The training forward: every activation the backward needs goes into `tape`.
    pub fn forward_train(
        &self,
        w: &[f32],
        tokens: &Tokens,
        tape: &mut Tape,
        pass: Option<Pass>,
    ) -> Result<Vec<f32>> {
        self.encode_into(w, tokens, tape, pass, true)?;
        Ok(timed("fwd head", || {
            self.head
                .forward(w, &tape.hidden, tokens, &mut tape.head, pass)
        }))
    }

    /// Embeddings, layers and final norm into `tape.hidden`; with `keep`, every layer's
    /// activations stay in `tape.layers`, else one layer's buffers are reused.
    fn encode_into(
        &self,
        w: &[f32],
        tokens: &Tokens,
        tape: &mut Tape,
        pass: Option<Pass>,
        keep: bool,
    ) -> Result<()> {
        let n = tokens.len();
        let h = self.hidden;
        tape.layers
            .resize_with(if keep { self.layers.len() } else { 1 }, Default::default);
        timed("fwd embeddings", || {
            let first = &mut tape.layers[0].x;
            self.embeddings
                .forward(w, tokens, first, &mut tape.z, &mut tape.z_stats, pass)
        })?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = if keep { i } else { 0 };
            let (done, rest) = tape.layers.split_at_mut(slot + 1);
            let out = match (keep, rest.first_mut()) {
                (true, Some(next)) => &mut next.x,
                _ => &mut tape.last,
            };
            layer.forward(w, &tokens.offsets, &mut done[slot], out, pass);
            if !keep && i + 1 < self.layers.len() {
                std::mem::swap(&mut tape.layers[0].x, &mut tape.last);
            }
        }
        fit(&mut tape.hidden, n * h);
        fit(&mut tape.final_stats, 2 * n);
        timed("fwd layer norm", || {
            self.final_norm
                .forward(w, &tape.last, &mut tape.hidden, &mut tape.final_stats)
        });
        Ok(())
    }

    /// Adds every parameter's gradient into `g` from dL/dlogits of the last
    /// [`ModernBert::forward_train`] over `tokens`.
    pub fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        tokens: &Tokens,
        tape: &mut Tape,
        dlogits: &[f32],
        pass: Option<Pass>,
    ) {
        let h = self.hidden;
        let n = tokens.len();
        let mut dhidden = std::mem::take(&mut tape.dhidden);
        fit(&mut dhidden, n * h);
        timed("bwd head", || {
            self.head
                .backward(w, g, tokens, &tape.head, dlogits, &mut dhidden, pass)
        });
        let mut dy = std::mem::take(&mut tape.dy);
        fit(&mut dy, n * h);
        timed("bwd layer norm", || {
            self.final_norm
                .backward(w, g, &dhidden, &tape.last, &tape.final_stats, &mut dy)
        });
        for (layer, acts) in self.layers.iter().zip(&tape.layers).rev() {
            layer.backward(
                w,
                g,
                &tokens.offsets,
                acts,
                &mut dy,
                &mut tape.scratch,
                pass,
            );
        }
        timed("bwd embeddings", || {
            self.embeddings.backward(
                w,
                g,
                tokens,
                &tape.z,
                &tape.z_stats,
                &mut dy,
                &mut dhidden,
                pass,
            )
        });
        tape.dy = dy;
        tape.dhidden = dhidden;
    }
}

impl Embeddings {
    /// `norm(tok_embeddings[ids])`, dropped, into `out`; `z`, `stats`: the norm's input and
    /// row stats.
    fn forward(
        &self,
        w: &[f32],
        tokens: &Tokens,
        out: &mut Vec<f32>,
        z: &mut Vec<f32>,
        stats: &mut Vec<f32>,
        pass: Option<Pass>,
    ) -> Result<()> {
        let (n, h) = (tokens.len(), self.h);
        tokens.check(self.vocab, self.positions)?;
        let table = &w[self.tok_embeddings.clone()];
        fit(z, n * h);
        for (row, &id) in z.chunks_exact_mut(h).zip(&tokens.input_ids) {
            row.copy_from_slice(&table[id as usize * h..][..h]);
        }
        fit(out, n * h);
        fit(stats, 2 * n);
        self.norm.forward(w, z, out, stats);
        dropout::apply(
            Dropout::tokens(pass, sites::EMBEDDINGS, self.dropout, n),
            out,
        );
        Ok(())
    }

    /// Adds the table's and the norm's gradients into `g` from dL/d(output) (`dy`, used as
    /// scratch); `dz` is scratch too.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        tokens: &Tokens,
        z: &[f32],
        stats: &[f32],
        dy: &mut [f32],
        dz: &mut [f32],
        pass: Option<Pass>,
    ) {
        let h = self.h;
        dropout::apply(
            Dropout::tokens(pass, sites::EMBEDDINGS, self.dropout, tokens.len()),
            dy,
        );
        self.norm.backward(w, g, dy, z, stats, dz);
        let start = self.tok_embeddings.start;
        for (d, &id) in dz.chunks_exact(h).zip(&tokens.input_ids) {
            let row = &mut g[start + id as usize * h..][..h];
            row.iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
    }
}

impl Layer {
    /// The dropout sites of this layer: attention probabilities, attention output, MLP.
    /// `n` tokens in `b` sequences.
    fn dropouts(&self, pass: Option<Pass>, n: usize, b: usize) -> [Option<Dropout>; 3] {
        let [probs, attention, mlp] = sites::layer(self.index);
        [
            Dropout::sequences(pass, probs, self.attention_dropout, b),
            Dropout::tokens(pass, attention, self.attention_dropout, n),
            Dropout::tokens(pass, mlp, self.mlp_dropout, n),
        ]
    }

    /// `acts.x` through the layer into `out`, keeping the activations in `acts`.
    fn forward(
        &self,
        w: &[f32],
        offsets: &[usize],
        acts: &mut LayerActs,
        out: &mut Vec<f32>,
        pass: Option<Pass>,
    ) {
        let h = self.wo.out_dim;
        let n = acts.x.len() / h;
        let m = self.mlp_wo.in_dim;
        let [drop_p, drop_attn, drop_mlp] = self.dropouts(pass, n, offsets.len() - 1);
        for (v, len) in [
            (&mut acts.qkv, 3 * n * h),
            (&mut acts.ctx, n * h),
            (&mut acts.h1, n * h),
            (&mut acts.y1, n * h),
            (&mut acts.st1, 2 * n),
            (&mut acts.u, 2 * n * m),
            (&mut acts.g, n * m),
            (&mut acts.a, n * m),
            (out, n * h),
        ] {
            fit(v, len);
        }
        let normed = match &self.attn_norm {
            Some(norm) => {
                fit(&mut acts.xn, n * h);
                fit(&mut acts.st0, 2 * n);
                timed("fwd layer norm", || {
                    norm.forward(w, &acts.x, &mut acts.xn, &mut acts.st0)
                });
                &acts.xn
            }
            None => &acts.x,
        };
        timed("fwd qkv", || self.wqkv.forward(w, normed, &mut acts.qkv));
        timed("fwd rotary", || {
            self.rotary.forward(&mut acts.qkv, offsets, self.heads)
        });
        timed("fwd attention", || {
            attention::forward(
                &mut acts.ctx,
                &acts.qkv,
                offsets,
                self.heads,
                self.mask,
                drop_p,
            )
        });
        timed("fwd attention output", || {
            self.wo.forward(w, &acts.ctx, &mut acts.h1)
        });
        timed("fwd dropout + residual", || {
            dropout::apply(drop_attn, &mut acts.h1);
            add(&mut acts.h1, &acts.x);
        });
        timed("fwd layer norm", || {
            self.mlp_norm
                .forward(w, &acts.h1, &mut acts.y1, &mut acts.st1)
        });
        timed("fwd intermediate", || {
            self.wi.forward(w, &acts.y1, &mut acts.u)
        });
        timed("fwd activation", || {
            self.act
                .glu_forward(&mut acts.a, &mut acts.g, &acts.u, m, Half::First);
            dropout::apply(drop_mlp, &mut acts.a);
        });
        timed("fwd output", || self.mlp_wo.forward(w, &acts.a, out));
        timed("fwd dropout + residual", || add(out, &acts.h1));
    }

    /// Backward: `dy` holds dL/d(output) on entry and dL/d(input) on return; the parameter
    /// gradients are added into `g`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        offsets: &[usize],
        acts: &LayerActs,
        dy: &mut [f32],
        s: &mut Scratch,
        pass: Option<Pass>,
    ) {
        let h = self.wo.out_dim;
        let n = acts.x.len() / h;
        let m = self.mlp_wo.in_dim;
        let [drop_p, drop_attn, drop_mlp] = self.dropouts(pass, n, offsets.len() - 1);
        for (v, len) in [(&mut s.dt, n * h), (&mut s.dn, n * h), (&mut s.dctx, n * h)] {
            fit(v, len);
        }
        fit(&mut s.da, n * m);
        fit(&mut s.du, 2 * n * m);
        fit(&mut s.d3, 3 * n * h);
        // MLP: dy reaches h1 through the residual and through the MLP.
        timed("bwd output", || {
            let dx = InputGrad::Write(&mut s.da);
            self.mlp_wo.backward(w, g, dy, &acts.a, dx)
        });
        timed("bwd activation", || {
            dropout::apply(drop_mlp, &mut s.da);
            self.act
                .glu_backward(&mut s.du, &s.da, &acts.u, &acts.g, m, Half::First);
        });
        timed("bwd intermediate", || {
            let dx = InputGrad::Write(&mut s.dt);
            self.wi.backward(w, g, &s.du, &acts.y1, dx)
        });
        timed("bwd layer norm", || {
            // dy += the norm's input gradient: dL/dh1 in dy.
            self.mlp_norm
                .backward(w, g, &s.dt, &acts.h1, &acts.st1, &mut s.dn);
            add(dy, &s.dn);
        });
        // Attention: dL/dh1 reaches x through the residual and through the attention.
        timed("bwd dropout + residual", || {
            s.dt.copy_from_slice(dy);
            dropout::apply(drop_attn, &mut s.dt);
        });
        timed("bwd attention output", || {
            self.wo
                .backward(w, g, &s.dt, &acts.ctx, InputGrad::Write(&mut s.dctx))
        });
        timed("bwd attention", || {
            let (heads, mask) = (self.heads, self.mask);
            attention::backward(&mut s.d3, &s.dctx, &acts.qkv, offsets, heads, mask, drop_p)
        });
        timed("bwd rotary", || {
            self.rotary.backward(&mut s.d3, offsets, self.heads)
        });
        match &self.attn_norm {
            Some(norm) => {
                timed("bwd qkv", || {
                    let dx = InputGrad::Write(&mut s.dt);
                    self.wqkv.backward(w, g, &s.d3, &acts.xn, dx)
                });
                timed("bwd layer norm", || {
                    norm.backward(w, g, &s.dt, &acts.x, &acts.st0, &mut s.dn);
                    add(dy, &s.dn);
                });
            }
            None => timed("bwd qkv", || {
                self.wqkv.backward(w, g, &s.d3, &acts.x, InputGrad::Add(dy))
            }),
        }
    }
}

impl Head {
    /// Over `b` sequences.
    fn dropout(&self, pass: Option<Pass>, b: usize) -> Option<Dropout> {
        Dropout::sequences(pass, sites::HEAD[0], self.dropout, b)
    }

    /// Logits `[b, num_labels]` from the last hidden state `[tokens, h]`.
    fn forward(
        &self,
        w: &[f32],
        hidden: &[f32],
        tokens: &Tokens,
        acts: &mut HeadActs,
        pass: Option<Pass>,
    ) -> Vec<f32> {
        let h = self.dense.in_dim;
        let b = tokens.sequences();
        acts.pooled.clear();
        for s in 0..b {
            let rows = &hidden[tokens.offsets[s] * h..tokens.offsets[s + 1] * h];
            match self.pooling {
                Pooling::Cls => acts.pooled.extend_from_slice(&rows[..h]),
                Pooling::Mean => {
                    let inv = 1.0 / (rows.len() / h) as f32;
                    let start = acts.pooled.len();
                    acts.pooled.resize(start + h, 0.0);
                    for row in rows.chunks_exact(h) {
                        add(&mut acts.pooled[start..], row);
                    }
                    acts.pooled[start..].iter_mut().for_each(|v| *v *= inv);
                }
            }
        }
        for v in [&mut acts.t, &mut acts.a, &mut acts.d] {
            fit(v, b * h);
        }
        fit(&mut acts.st, 2 * b);
        self.dense.forward(w, &acts.pooled, &mut acts.t);
        self.act.forward(&mut acts.a, &acts.t);
        self.norm.forward(w, &acts.a, &mut acts.d, &mut acts.st);
        dropout::apply(self.dropout(pass, b), &mut acts.d);
        let mut logits = vec![0f32; b * self.classifier.out_dim];
        self.classifier.forward(w, &acts.d, &mut logits);
        logits
    }

    /// Adds the head's gradients into `g`; dL/d(last hidden state) into `dhidden`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        tokens: &Tokens,
        acts: &HeadActs,
        dlogits: &[f32],
        dhidden: &mut [f32],
        pass: Option<Pass>,
    ) {
        let h = self.dense.in_dim;
        let mut dd = vec![0f32; acts.d.len()];
        self.classifier
            .backward(w, g, dlogits, &acts.d, InputGrad::Write(&mut dd));
        dropout::apply(self.dropout(pass, tokens.sequences()), &mut dd);
        let mut da = vec![0f32; acts.a.len()];
        self.norm.backward(w, g, &dd, &acts.a, &acts.st, &mut da);
        self.act.backward(&mut da, &acts.t, &acts.a);
        let mut dpooled = vec![0f32; acts.pooled.len()];
        self.dense
            .backward(w, g, &da, &acts.pooled, InputGrad::Write(&mut dpooled));
        dhidden.fill(0.0);
        for (s, d) in dpooled.chunks_exact(h).enumerate() {
            let rows = &mut dhidden[tokens.offsets[s] * h..tokens.offsets[s + 1] * h];
            match self.pooling {
                Pooling::Cls => rows[..h].copy_from_slice(d),
                Pooling::Mean => {
                    let inv = 1.0 / (rows.len() / h) as f32;
                    for row in rows.chunks_exact_mut(h) {
                        row.iter_mut().zip(d).for_each(|(r, v)| *r = v * inv);
                    }
                }
            }
        }
    }
}
