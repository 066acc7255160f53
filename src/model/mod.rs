//! Cross-encoder models: config, tokenizer, encoder per family, heads, checkpoints, hub.
//!
//! The encoder is an explicit engine, as llm.c writes one: every module has a `forward` that
//! writes into buffers it is handed (the activations that its `backward` needs are kept in a
//! [`Tape`], allocated once and reused from step to step) and a `backward` beside it that adds
//! its parameter gradients into one flat buffer laid out as [`weights::Weights`]. There is no
//! autograd graph and no per-op allocation on the hot path; inference runs the same forward
//! keeping only one layer's buffers.
//!
//! How a family plugs in: its config maps onto [`config::Config`], its parameter names onto
//! [`weights::Weights`] slots (HF names verbatim), and its layer is a struct with `forward` and
//! `backward` over the kernels of [`crate::ops`], its parameters located by [`Weights::slot`].
//! A layer whose backward is not written yet can still train exactly through
//! [`crate::ops::composed`]: its forward written from candle's differentiable primitives, its
//! backward by autograd on a recomputed forward, the gradients it returns added into the flat
//! buffer at the weights' ranges. The layer reads and writes the same buffers as a hand-written
//! one, so a kernel can replace it later, tested against it. Families differ from BERT where
//! their config says so: DeBERTa-v2's disentangled attention is an attention op of its own,
//! ModernBERT's rotary embeddings and GeGLU are ops beside `attention` and `activation`, and a
//! causal LM's RMSNorm and grouped-query attention likewise.

pub mod bi_encoder;
pub mod causal;
pub mod checkpoint;
pub mod config;
pub mod cross_encoder;
pub mod embeddings;
pub mod encoder;
pub mod head;
pub mod modernbert;
pub mod tokenize;
pub mod weights;

use anyhow::Result;
use std::ops::Range;
use std::sync::Arc;

use checkpoint::Params;
use config::{Config, Family};
use embeddings::{EmbeddingActs, Embeddings};
use encoder::{Layer, LayerActs, RelativeEmbeddings, Scratch};
use head::{Head, HeadActs};
use tokenize::Tokens;
use weights::{two_mut, Weights};

use crate::ops::bf16::{Bf16Weight, Copies};
use crate::ops::int8::{QuantizedRows, QuantizedWeight};
use crate::ops::linear::{Products, WeightLayout};
use crate::ops::matmul::{own_kernel, Panels};
use crate::ops::profile::timed;
use crate::ops::rotary::Rotary;
use crate::ops::Precision;
use crate::ops::{layer_norm, linear, Act, Pass};
use crate::Quantization;

/// `torch.nn.LayerNorm`'s parameters: where its weight and bias live in the flat buffer.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Range<usize>,
    /// `None` where the norm has no bias (ModernBERT's `norm_bias: false`).
    bias: Option<Range<usize>>,
    eps: f32,
}

impl LayerNorm {
    pub fn new(w: &Weights, name: &str, size: usize, eps: f64) -> Result<Self> {
        Self::with_bias(w, name, size, eps, true)
    }

    /// `{name}.weight`, and `{name}.bias` if `bias`.
    pub fn with_bias(w: &Weights, name: &str, size: usize, eps: f64, bias: bool) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.slot(&format!("{name}.weight"), &[size])?,
            bias: bias
                .then(|| w.slot(&format!("{name}.bias"), &[size]))
                .transpose()?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, w: &[f32], x: &[f32], y: &mut [f32], stats: &mut [f32]) {
        let weight = &w[self.weight.clone()];
        let bias = self.bias.clone().map(|b| &w[b]);
        layer_norm::forward(y, stats, x, weight, bias, self.eps);
    }

    /// dL/dx into `dx`; the parameter gradients added into `g`.
    pub fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        dy: &[f32],
        x: &[f32],
        stats: &[f32],
        dx: &mut [f32],
    ) {
        let (dw, db) = weight_and_bias(g, &self.weight, &self.bias);
        layer_norm::backward(dx, dw, db, dy, x, stats, &w[self.weight.clone()]);
    }
}

/// The gradients of a weight and of its bias (if it has one), both mutable.
fn weight_and_bias<'a>(
    g: &'a mut [f32],
    weight: &Range<usize>,
    bias: &Option<Range<usize>>,
) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    match bias {
        Some(b) => {
            let (dw, db) = two_mut(g, weight.clone(), b.clone());
            (dw, Some(db))
        }
        None => (&mut g[weight.clone()], None),
    }
}

/// A linear layer's weight in a scoring precision below f32.
#[derive(Debug, Clone)]
enum Reduced {
    Int8(QuantizedWeight),
    Bf16(Bf16Weight),
}

/// `torch.nn.Linear(in_dim, out_dim)`'s parameters in the flat buffer.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Range<usize>,
    bias: Option<Range<usize>>,
    /// How the weight is stored (as [`Weights::pack`] laid it out).
    layout: WeightLayout,
    pub in_dim: usize,
    pub out_dim: usize,
    /// The weight in int8 or bf16, for scoring; the forward uses it when present.
    reduced: Option<Reduced>,
    /// How the products run otherwise.
    laid: Laid,
}

/// How a layer's f32 weight is laid out for its products.
#[derive(Debug, Clone)]
enum Laid {
    /// f32, on the weight as stored.
    F32,
    /// f32, on `Wᵀ` laid out once, for a model that only scores.
    Panels(Panels),
    /// bf16 (training), on the copies that the optimizer writes.
    Bf16(Copies),
}

impl Linear {
    /// `{name}.weight` (`[out, in]`) and `{name}.bias`.
    pub fn new(w: &Weights, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::with_bias(w, name, in_dim, out_dim, true)
    }

    /// `{name}.weight` (`[out, in]`), and `{name}.bias` if `bias`.
    pub fn with_bias(
        w: &Weights,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = format!("{name}.weight");
        Ok(Linear {
            weight: w.slot(&weight, &[out_dim, in_dim])?,
            bias: bias
                .then(|| w.slot(&format!("{name}.bias"), &[out_dim]))
                .transpose()?,
            layout: w.layout(&weight),
            in_dim,
            out_dim,
            reduced: None,
            laid: Laid::F32,
        })
    }

    /// Several `[out_i, in]` layers packed side by side (`names` without `.weight`/`.bias`) as
    /// one `[Σ out_i, in]` layer: a layer's query, key and value (a causal LM's key and value
    /// may have fewer heads), or a gated MLP's gate and up projections.
    pub fn fused(
        w: &Weights,
        names: &[String],
        in_dim: usize,
        outs: &[usize],
        bias: bool,
    ) -> Result<Self> {
        let with = |suffix: &str| -> Vec<String> {
            names.iter().map(|n| format!("{n}.{suffix}")).collect()
        };
        let weights: Vec<Vec<usize>> = outs.iter().map(|&o| vec![o, in_dim]).collect();
        let biases: Vec<Vec<usize>> = outs.iter().map(|&o| vec![o]).collect();
        Ok(Linear {
            weight: w.slots(&with("weight"), &weights)?,
            bias: bias.then(|| w.slots(&with("bias"), &biases)).transpose()?,
            layout: WeightLayout::OutIn,
            in_dim,
            out_dim: outs.iter().sum(),
            reduced: None,
            laid: Laid::F32,
        })
    }

    /// From now on the forward runs in `q`'s precision on the weight as `w` holds it now.
    pub fn quantize(&mut self, w: &[f32], q: Quantization) {
        let (weight, k, layout) = (&w[self.weight.clone()], self.in_dim, self.layout);
        self.reduced = Some(match q {
            Quantization::Int8 => Reduced::Int8(QuantizedWeight::new(weight, k, layout)),
            Quantization::Bf16 => Reduced::Bf16(Bf16Weight::new(weight, k, layout)),
        });
        self.laid = Laid::F32;
    }

    /// From now on the forward reads the weight as `w` holds it now, laid out once for the
    /// f32 kernel (where the CPU runs it) rather than on every call. In bf16 training (the dev
    /// evaluation) it scores on its copies, which the optimizer keeps as the weight is.
    pub fn pack(&mut self, w: &[f32]) {
        if own_kernel() && !matches!(self.laid, Laid::Bf16(_)) {
            let weight = &w[self.weight.clone()];
            self.laid = Laid::Panels(linear::panels(weight, self.in_dim, self.layout));
        }
    }

    /// Back to reading the weight from the model's buffer, whose values may now change.
    pub fn unpack(&mut self) {
        if let Laid::Panels(_) = self.laid {
            self.laid = Laid::F32;
        }
    }

    /// Training's products in `p` from now on, on the weight as `w` holds it now (bf16's
    /// copies are made from it; the optimizer keeps them up to date). Back in f32, the weight
    /// is read as stored; an f32 layer stays as it is.
    fn set_precision(&mut self, w: &[f32], p: Precision) {
        match p {
            Precision::F32 if matches!(self.laid, Laid::Bf16(_)) => self.laid = Laid::F32,
            Precision::F32 => {}
            Precision::Bf16 => {
                let weight = &w[self.weight.clone()];
                self.laid = Laid::Bf16(Copies::new(weight, self.in_dim, self.layout));
            }
        }
    }

    fn products(&self) -> Products<'_> {
        match &self.laid {
            Laid::F32 => Products::F32(None),
            Laid::Panels(p) => Products::F32(Some(p)),
            Laid::Bf16(c) => Products::Bf16(Some(c)),
        }
    }

    pub fn forward(&self, w: &[f32], x: &[f32], y: &mut [f32]) {
        let bias = self.bias.clone().map(|b| &w[b]);
        match &self.reduced {
            Some(Reduced::Int8(q)) => q.forward(y, x, bias, None),
            Some(Reduced::Bf16(b)) => b.forward(y, x, bias),
            None => {
                let weight = &w[self.weight.clone()];
                let (k, layout) = (self.in_dim, self.layout);
                linear::forward(y, x, weight, bias, k, layout, self.products())
            }
        }
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.reduced, Some(Reduced::Int8(_)))
    }

    fn int8(&self) -> &QuantizedWeight {
        match &self.reduced {
            Some(Reduced::Int8(q)) => q,
            _ => panic!("not an int8 layer"),
        }
    }

    /// int8 scoring: `y = x · Wᵀ + b`, and `act(y)` quantized into `next` as the input of the
    /// next layer's [`Linear::forward_quantized`]. For a quantized layer only.
    pub fn forward_quantizing(
        &self,
        w: &[f32],
        x: &[f32],
        y: &mut [f32],
        act: Act,
        next: &mut QuantizedRows,
    ) {
        let bias = self.bias.clone().map(|b| &w[b]);
        self.int8().forward(y, x, bias, Some((act, next)));
    }

    /// int8 scoring from rows quantized ahead (by [`Linear::forward_quantizing`]).
    pub fn forward_quantized(&self, w: &[f32], x: &QuantizedRows, y: &mut [f32]) {
        let bias = self.bias.clone().map(|b| &w[b]);
        self.int8().forward_quantized(y, x, bias, None);
    }

    pub fn backward(&self, w: &[f32], g: &mut [f32], dy: &[f32], x: &[f32], dx: linear::InputGrad) {
        debug_assert!(self.reduced.is_none(), "a quantized model is not trained");
        debug_assert!(
            !matches!(self.laid, Laid::Panels(_)),
            "a model's packed weights are unpacked before training"
        );
        let (dw, db) = weight_and_bias(g, &self.weight, &self.bias);
        let weight = &w[self.weight.clone()];
        let (k, layout) = (self.in_dim, self.layout);
        linear::backward(dx, dw, db, dy, x, weight, k, layout, self.products());
    }
}

/// Checks that `params` hold `num_hidden_layers` layers under `{layers}{i}.` and the embedding
/// table `table` of `[vocab_size, hidden_size]`, before anything is sized from the config.
pub(crate) fn check_layers_and_table(
    cfg: &Config,
    params: &Params,
    layers: &str,
    table: &str,
) -> Result<()> {
    check_layer_count(cfg, params, |n| n.strip_prefix(layers))?;
    match params.tensors.get(table) {
        Some(t) if t.dims() == [cfg.vocab_size, cfg.hidden_size] => Ok(()),
        Some(t) => anyhow::bail!(
            "config.json says vocab_size = {} and hidden_size = {}, but \"{table}\" in {} has shape {:?}",
            cfg.vocab_size,
            cfg.hidden_size,
            params.source.display(),
            t.dims()
        ),
        None => anyhow::bail!("missing weight \"{table}\" in {}", params.source.display()),
    }
}

/// Checks that `params` hold `num_hidden_layers` layers; `rest` gives what follows a layer
/// prefix in a name (`"3.attention..."`), or `None` for a name outside the layers.
fn check_layer_count<'a>(
    cfg: &Config,
    params: &'a Params,
    rest: impl Fn(&'a str) -> Option<&'a str>,
) -> Result<()> {
    let found = params
        .tensors
        .keys()
        .filter_map(|n| rest(n)?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |i| i + 1);
    if found != cfg.num_hidden_layers {
        anyhow::bail!(
            "{} holds {found} layers but config.json says num_hidden_layers = {}",
            params.source.display(),
            cfg.num_hidden_layers
        );
    }
    Ok(())
}

/// The JSON value in `path`, or an error naming the file.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// [`read_json`] of a file that a model folder may leave out: `None` when it does.
pub(crate) fn read_json_opt(path: &std::path::Path) -> Result<Option<serde_json::Value>> {
    path.exists().then(|| read_json(path)).transpose()
}

/// `z += r` element-wise (a residual connection).
fn add(z: &mut [f32], r: &[f32]) {
    z.iter_mut().zip(r).for_each(|(a, b)| *a += b);
}

/// Grows (or shrinks) a buffer to `n` floats, keeping its allocation: every kernel overwrites
/// what it writes, so the old contents need no clearing.
fn fit(v: &mut Vec<f32>, n: usize) {
    v.resize(n, 0.0);
}

/// Embeddings and the transformer layers: transformers' `BertModel` without the pooler, for
/// any supported family.
pub struct Transformer {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// DeBERTa's relative-position table.
    relative: Option<RelativeEmbeddings>,
    hidden: usize,
}

/// What a training forward pass keeps for the backward pass, reused from step to step.
#[derive(Default)]
pub struct Tape {
    embeddings: EmbeddingActs,
    /// One per layer: its input and the activations its backward needs.
    layers: Vec<LayerActs>,
    /// The last layer's output.
    hidden: Vec<f32>,
    head: HeadActs,
    scratch: Scratch,
    /// The pass's dropout (`None`: off).
    pass: Option<Pass>,
    /// The batch's sequence offsets and tokens.
    tokens: Tokens,
    /// DeBERTa's relative table as the layers read it, its norm's stats, and its gradient.
    rel: Vec<f32>,
    rel_stats: Vec<f32>,
    drel: Vec<f32>,
    /// ModernBERT's activations (the fields above serve the BERT-like families).
    modernbert: modernbert::Tape,
}

impl Transformer {
    /// Packs the weights as the engine reads them: each layer's Q, K, V side by side, and
    /// the FFN output weights stored `[in, out]` (see [`crate::ops::linear`]).
    pub fn pack(cfg: &Config, params: &Params) -> Result<Weights> {
        Self::check(cfg, params)?;
        let mut first = Vec::new();
        let mut transposed = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let qkv = encoder::fused_qkv_names(cfg, i);
            for suffix in ["weight", "bias"] {
                first.extend(qkv.iter().map(|n| format!("{n}.{suffix}")));
            }
            transposed.push(format!("{}.weight", encoder::ffn_output_name(cfg, i)));
        }
        Weights::pack(params, &first, &transposed)
    }

    /// Checks that config.json describes these weights (their layer count and hidden size)
    /// before anything is sized from the config.
    pub fn check(cfg: &Config, params: &Params) -> Result<()> {
        check_layer_count(cfg, params, |name| {
            let (_, rest) = name
                .split_once(".layer.")
                .or_else(|| name.split_once(".layers."))?;
            Some(rest)
        })?;
        let qkv = encoder::fused_qkv_names(cfg, 0);
        let query = format!("{}.weight", qkv[0]);
        let h = cfg.hidden_size;
        match params.tensors.get(&query) {
            Some(t) if t.dims() == [3 * h / qkv.len(), h] => Ok(()),
            Some(t) => anyhow::bail!(
                "config.json says hidden_size = {h}, but \"{query}\" in {} has shape {:?}",
                params.source.display(),
                t.dims()
            ),
            None => anyhow::bail!("missing weight \"{query}\" in {}", params.source.display()),
        }
    }

    pub fn new(cfg: &Config, w: &Weights) -> Result<Self> {
        let rotary = cfg.rope_theta.map(|theta| {
            let d = cfg.hidden_size / cfg.num_attention_heads;
            Arc::new(Rotary::new(d, theta, cfg.max_position_embeddings))
        });
        let relative = RelativeEmbeddings::new(cfg, w)?;
        let rel = relative.as_ref().map(|r| r.relative.clone());
        Ok(Transformer {
            embeddings: Embeddings::new(cfg, w)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::new(cfg, w, i, rotary.clone(), rel.clone()))
                .collect::<Result<_>>()?,
            relative,
            hidden: cfg.hidden_size,
        })
    }

    /// Every layer's linear layers (the embeddings, LayerNorm, attention and the head stay
    /// outside: they are what int8 scoring keeps in f32).
    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers.iter_mut().flat_map(|l| l.linears_mut())
    }

    /// The last hidden state `[tokens, hidden]`, dropout off, keeping one layer's buffers.
    pub fn forward(&self, w: &[f32], tokens: &Tokens) -> Result<Vec<f32>> {
        let mut acts = LayerActs::default();
        let mut emb = EmbeddingActs::default();
        fit(&mut acts.x, tokens.len() * self.hidden);
        timed("fwd embeddings", || {
            self.embeddings
                .forward(w, tokens, &mut acts.x, &mut emb, None)
        })?;
        let (mut rel, mut rel_stats) = (Vec::new(), Vec::new());
        if let Some(r) = &self.relative {
            r.forward(w, &mut rel, &mut rel_stats);
        }
        let mut out = Vec::new();
        for layer in &self.layers {
            layer.forward(w, &tokens.offsets, &mut acts, &mut out, None, &rel);
            std::mem::swap(&mut acts.x, &mut out);
        }
        Ok(acts.x)
    }

    /// The training forward: every activation the backward needs goes into `tape`.
    fn forward_train(&self, w: &[f32], tape: &mut Tape) -> Result<()> {
        let n = tape.tokens.len();
        tape.layers.resize_with(self.layers.len(), Default::default);
        let first = match tape.layers.first_mut() {
            Some(l) => &mut l.x,
            None => &mut tape.hidden,
        };
        fit(first, n * self.hidden);
        timed("fwd embeddings", || {
            self.embeddings
                .forward(w, &tape.tokens, first, &mut tape.embeddings, tape.pass)
        })?;
        if let Some(r) = &self.relative {
            r.forward(w, &mut tape.rel, &mut tape.rel_stats);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (done, rest) = tape.layers.split_at_mut(i + 1);
            let out = match rest.first_mut() {
                Some(next) => &mut next.x,
                None => &mut tape.hidden,
            };
            let offsets = &tape.tokens.offsets;
            layer.forward(w, offsets, &mut done[i], out, tape.pass, &tape.rel);
        }
        Ok(())
    }

    /// From dL/dhidden (`dy`, used as scratch), adds every parameter's gradient into `g`.
    fn backward(&self, w: &[f32], g: &mut [f32], tape: &mut Tape, dy: &mut [f32]) {
        let (offsets, pass) = (&tape.tokens.offsets, tape.pass);
        tape.drel.clear();
        tape.drel.resize(tape.rel.len(), 0.0);
        for (layer, acts) in self.layers.iter().zip(&tape.layers).rev() {
            let drel = &mut tape.drel;
            layer.backward(w, g, offsets, acts, dy, &mut tape.scratch, pass, drel);
        }
        if let Some(r) = &self.relative {
            r.backward(w, g, &tape.drel, &tape.rel_stats);
        }
        let (tokens, acts) = (&tape.tokens, &tape.embeddings);
        timed("bwd embeddings", || {
            self.embeddings
                .backward(w, g, tokens, acts, dy, &mut tape.scratch, pass)
        });
    }
}

/// An encoder with a sequence-classification head: transformers'
/// `*ForSequenceClassification`, for any supported family. It owns the weights.
pub struct SequenceClassifier {
    /// The parameters. A model with packed weights (see [`SequenceClassifier::pack_weights`])
    /// must be unpacked before they change.
    pub weights: Weights,
    body: Body,
    quantization: Option<Quantization>,
}

/// The engine of a family. One lives per model, so its variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Body {
    /// BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA and GTE: one post-norm encoder and a
    /// head on the first token.
    Bert {
        transformer: Transformer,
        head: Head,
    },
    ModernBert(modernbert::ModernBert),
    /// A causal LM scored by its "yes" and "no" logits (scoring only).
    Causal(causal::CausalReranker),
}

impl Body {
    /// The encoder's linear layers, whichever the family.
    fn linears_mut(&mut self) -> Box<dyn Iterator<Item = &mut Linear> + '_> {
        match self {
            Body::Bert { transformer, .. } => Box::new(transformer.linears_mut()),
            Body::ModernBert(m) => Box::new(m.linears_mut()),
            Body::Causal(m) => Box::new(m.linears_mut()),
        }
    }
}

impl SequenceClassifier {
    pub fn new(cfg: &Config, params: &Params) -> Result<Self> {
        let (weights, body) = match cfg.family {
            Family::ModernBert => {
                let weights = modernbert::pack(cfg, params)?;
                let body = Body::ModernBert(modernbert::ModernBert::new(cfg, &weights)?);
                (weights, body)
            }
            Family::Qwen3 | Family::Qwen2 => {
                let weights = causal::pack(cfg, params)?;
                let body = Body::Causal(causal::CausalReranker::new(cfg, &weights)?);
                (weights, body)
            }
            _ => {
                let weights = Transformer::pack(cfg, params)?;
                let body = Body::Bert {
                    transformer: Transformer::new(cfg, &weights)?,
                    head: Head::new(cfg, &weights)?,
                };
                (weights, body)
            }
        };
        Ok(SequenceClassifier {
            weights,
            body,
            quantization: None,
        })
    }

    /// Checks that config.json describes these weights (their layer count and hidden size)
    /// before anything is sized from the config.
    pub fn check(cfg: &Config, params: &Params) -> Result<()> {
        match cfg.family {
            Family::ModernBert => modernbert::check(cfg, params),
            Family::Qwen3 | Family::Qwen2 => causal::check(cfg, params),
            _ => Transformer::check(cfg, params),
        }
    }

    /// Scores with int8 or bf16 linear layers from now on (see [`crate::ops::int8`] and
    /// [`crate::ops::bf16`]); the f32 weights stay, for saving. bf16 needs a CPU with AVX-512
    /// BF16.
    pub fn quantize(&mut self, q: Quantization) -> Result<()> {
        if q == Quantization::Bf16 && !crate::ops::bf16::available() {
            anyhow::bail!(
                "bf16 scoring needs a CPU with AVX-512 BF16 (avx512_bf16 in lscpu's flags), \
                 which this one lacks: score in f32 (no {set_quantize}) or int8 instead",
                set_quantize = crate::setting::Setting::Quantize
            );
        }
        let w = &self.weights.data;
        self.body.linears_mut().for_each(|l| l.quantize(w, q));
        self.quantization = Some(q);
        Ok(())
    }

    /// Trains with the linear layers' products in `p` from now on, on the weights as they are
    /// now: call it again after changing them other than by the optimizer (a checkpoint
    /// restored). bf16 needs AMX or AVX-512 BF16.
    pub fn set_precision(&mut self, p: Precision) -> Result<()> {
        p.check()?;
        let w = &self.weights.data;
        self.body.linears_mut().for_each(|l| l.set_precision(w, p));
        Ok(())
    }

    /// The weights, and each bf16 copy with the range of the weight it copies, for the
    /// optimizer to write side by side.
    pub fn weights_and_copies(&mut self) -> (&mut [f32], Vec<(Range<usize>, &mut Copies)>) {
        let copies = self
            .body
            .linears_mut()
            .filter_map(|l| match &mut l.laid {
                Laid::Bf16(c) => Some((l.weight.clone(), c)),
                _ => None,
            })
            .collect();
        (&mut self.weights.data, copies)
    }

    /// For a model that only scores: packs every linear layer's weight once into the f32
    /// kernel's layout (see [`Linear::pack`]). Until [`SequenceClassifier::unpack_weights`],
    /// the forward reads the weights as they are now.
    pub fn pack_weights(&mut self) {
        let w = &self.weights.data;
        self.body.linears_mut().for_each(|l| l.pack(w));
    }

    /// Drops what [`SequenceClassifier::pack_weights`] laid out, before the weights change
    /// (training).
    pub fn unpack_weights(&mut self) {
        self.body.linears_mut().for_each(Linear::unpack);
    }

    /// How the linear layers compute: `None` for f32.
    pub fn quantization(&self) -> Option<Quantization> {
        self.quantization
    }

    /// The last hidden state `[tokens, hidden]`, dropout off.
    pub fn encode(&self, tokens: &Tokens) -> Result<Vec<f32>> {
        match &self.body {
            Body::Bert { transformer, .. } => transformer.forward(&self.weights.data, tokens),
            Body::ModernBert(m) => m.encode(&self.weights.data, tokens),
            Body::Causal(m) => m.encode(&self.weights.data, tokens),
        }
    }

    /// Raw logits `[sequences, num_labels]`, dropout off.
    pub fn forward(&self, tokens: &Tokens) -> Result<Vec<f32>> {
        let w = &self.weights.data;
        match &self.body {
            Body::Bert { transformer, head } => {
                let hidden = transformer.forward(w, tokens)?;
                let cls = first_tokens(&hidden, tokens, transformer.hidden);
                Ok(timed("fwd head", || {
                    head.forward(w, &cls, &mut HeadActs::default(), None)
                }))
            }
            Body::ModernBert(m) => m.forward(w, tokens),
            Body::Causal(m) => m.forward(w, tokens),
        }
    }

    /// Raw logits of a training pass over `tokens` with dropout `pass`, keeping in `tape`
    /// what [`SequenceClassifier::backward`] needs.
    pub fn forward_train(
        &self,
        tokens: Tokens,
        tape: &mut Tape,
        pass: Option<Pass>,
    ) -> Result<Vec<f32>> {
        tape.tokens = tokens;
        tape.pass = pass;
        let w = &self.weights.data;
        match &self.body {
            Body::Bert { transformer, head } => {
                transformer.forward_train(w, tape)?;
                let cls = first_tokens(&tape.hidden, &tape.tokens, transformer.hidden);
                Ok(timed("fwd head", || {
                    head.forward(w, &cls, &mut tape.head, pass)
                }))
            }
            Body::ModernBert(m) => m.forward_train(w, &tape.tokens, &mut tape.modernbert, pass),
            Body::Causal(_) => {
                anyhow::bail!("causal-LM re-rankers score only: training them is not supported yet")
            }
        }
    }

    /// Adds the gradient of every parameter into `g` (the layout of `self.weights`), from
    /// dL/dlogits of the last [`SequenceClassifier::forward_train`].
    pub fn backward(&self, tape: &mut Tape, dlogits: &[f32], g: &mut [f32]) {
        let w = &self.weights.data;
        let (transformer, head) = match &self.body {
            Body::Bert { transformer, head } => (transformer, head),
            Body::ModernBert(m) => {
                let (tokens, pass) = (&tape.tokens, tape.pass);
                return m.backward(w, g, tokens, &mut tape.modernbert, dlogits, pass);
            }
            // Its forward_train refuses, so there is no pass to differentiate.
            Body::Causal(_) => return,
        };
        let h = transformer.hidden;
        let dcls = timed("bwd head", || {
            head.backward(w, g, &tape.head, dlogits, tape.pass)
        });
        let mut dy = std::mem::take(&mut tape.hidden);
        dy.fill(0.0);
        for (s, row) in dcls.chunks_exact(h).enumerate() {
            let t = tape.tokens.offsets[s];
            dy[t * h..(t + 1) * h].copy_from_slice(row);
        }
        transformer.backward(w, g, tape, &mut dy);
        tape.hidden = dy;
    }

    /// The word-embedding table's range in the flat buffer and its row width: a batch reads
    /// (and its gradient touches) only the rows of its token ids.
    pub fn word_table(&self) -> (Range<usize>, usize) {
        match &self.body {
            Body::Bert { transformer, .. } => transformer.embeddings.word_table(),
            Body::ModernBert(m) => m.word_table(),
            Body::Causal(m) => m.word_table(),
        }
    }

    /// BERT's pooler output (`tanh(dense(h_cls))`) of first-token states `[sequences, hidden]`;
    /// `None` for families without a pooler.
    pub fn pooler(&self, cls: &[f32]) -> Option<Vec<f32>> {
        match &self.body {
            Body::Bert { head, .. } => head.pooler(&self.weights.data, cls),
            Body::ModernBert(_) | Body::Causal(_) => None,
        }
    }
}

/// Each sequence's first token (`[CLS]` / `<s>`) row of `hidden`, `[sequences, h]`.
pub fn first_tokens(hidden: &[f32], tokens: &Tokens, h: usize) -> Vec<f32> {
    let mut cls = Vec::with_capacity(tokens.sequences() * h);
    for s in 0..tokens.sequences() {
        let t = tokens.offsets[s];
        cls.extend_from_slice(&hidden[t * h..(t + 1) * h]);
    }
    cls
}
