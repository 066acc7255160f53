//! Classification heads, one per family, applied to the first token's hidden state, forward
//! and backward. Every family's head has one shape: [dropout] -> dense -> activation ->
//! dropout -> output projection.

use crate::setting::Setting;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::checkpoint::Params;
use super::config::{Config, Family};
use super::weights::Weights;
use super::{fit, Linear};
use crate::ops::dropout::sites;
use crate::ops::linear::InputGrad;
use crate::ops::{dropout, Act, Dropout, Pass};

pub struct Head {
    /// `BertPooler.dense`, the `dense` of `RobertaClassificationHead` /
    /// `ElectraClassificationHead`, or DistilBERT's `pre_classifier`.
    dense: Linear,
    /// tanh (BERT's pooler, RoBERTa), GELU (ELECTRA) or ReLU (DistilBERT).
    act: Act,
    /// RoBERTa's, ELECTRA's and DeBERTa's heads drop their input too (DeBERTa's by its
    /// `pooler_dropout`).
    input_dropout: Option<f64>,
    /// The dense layer and tanh are BERT's pooler (`BertModel.pooler`).
    pooler: bool,
    out: Linear,
    dropout: f64,
}

/// What the head's backward needs (`b` sequences).
#[derive(Default)]
pub struct HeadActs {
    /// The dense layer's input (the first token's state, dropped for RoBERTa/ELECTRA).
    x: Vec<f32>,
    /// Pre-activation, activation, and the dropped activation (the projection's input).
    t: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
}

/// The names and shapes of the head's parameters (the pooler counts as head: a bare encoder
/// may come without one).
pub fn head_params(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    if let Some(mb) = &cfg.modernbert {
        return super::modernbert::head_params(cfg, mb);
    }
    let (h, l) = (cfg.hidden_size, cfg.num_labels());
    // A causal LM scores through its own output rows: no head.
    let Ok((hidden, out)) = head_names(cfg.family) else {
        return Vec::new();
    };
    vec![
        (format!("{hidden}.weight"), vec![h, h]),
        (format!("{hidden}.bias"), vec![h]),
        (format!("{out}.weight"), vec![l, h]),
        (format!("{out}.bias"), vec![l]),
    ]
}

fn head_names(family: Family) -> Result<(&'static str, &'static str)> {
    Ok(match family {
        Family::Bert => ("bert.pooler.dense", "classifier"),
        Family::Roberta | Family::XlmRoberta | Family::Electra => {
            ("classifier.dense", "classifier.out_proj")
        }
        Family::DistilBert => ("pre_classifier", "classifier"),
        Family::Gte => ("gte.pooler.dense", "classifier"),
        Family::DebertaV2 => ("pooler.dense", "classifier"),
        Family::ModernBert | Family::Qwen3 | Family::Qwen2 => {
            bail!("internal: {family:?} has no BERT-style head")
        }
    })
}

/// Creates the head parameters that the checkpoint lacks (a bare encoder's), initialised as
/// transformers does: normal(0, `initializer_range`) weights, zero biases, norm weights 1.
/// Returns the names it created. A head tensor of another shape than `cfg` implies is refused
/// by name and shape (scored with a random head instead, it would give meaningless scores),
/// unless `replaceable` holds its name and shape: a head trained for another label count, which
/// a run fine-tuning for a new task replaces.
pub fn init_missing(
    cfg: &Config,
    replaceable: &[(String, Vec<usize>)],
    params: &mut Params,
    seed: u64,
) -> Result<Vec<String>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, cfg.initializer_range as f32)?;
    let mut created = Vec::new();
    for (name, shape) in head_params(cfg) {
        match params.tensors.get(&name).map(|t| t.dims().to_vec()) {
            Some(dims) if dims == shape => continue,
            Some(dims) if !replaceable.contains(&(name.clone(), dims.clone())) => bail!(
                "weight \"{name}\" in {} has shape {dims:?}, but num_labels {} needs {shape:?} \
                 ({set_num_labels} sizes only the new head of a bare encoder)",
                params.source.display(),
                cfg.num_labels(),
                set_num_labels = Setting::NumLabels
            ),
            _ => {}
        }
        let t = if name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?
        };
        params.tensors.insert(name.clone(), t);
        created.push(name);
    }
    Ok(created)
}

impl Head {
    pub fn new(cfg: &Config, w: &Weights) -> Result<Self> {
        let (h, l) = (cfg.hidden_size, cfg.num_labels());
        let (hidden, out) = head_names(cfg.family)?;
        let (act, input_dropout) = match cfg.family {
            Family::Bert | Family::Gte => (Act::Tanh, None),
            Family::Roberta | Family::XlmRoberta => (Act::Tanh, Some(cfg.classifier_dropout)),
            Family::Electra => (Act::Gelu, Some(cfg.classifier_dropout)),
            Family::DistilBert => (Act::Relu, None),
            Family::DebertaV2 => match &cfg.deberta {
                Some(d) => (d.pooler_hidden_act, Some(d.pooler_dropout)),
                None => bail!("internal: DeBERTa without its config"),
            },
            _ => bail!("internal: {:?} has no BERT-style head", cfg.family),
        };
        Ok(Head {
            dense: Linear::new(w, hidden, h, h)?,
            act,
            input_dropout,
            pooler: cfg.family == Family::Bert,
            out: Linear::new(w, out, h, l)?,
            dropout: cfg.classifier_dropout,
        })
    }

    fn dropouts(&self, pass: Option<Pass>, b: usize) -> [Option<Dropout>; 2] {
        let input = self
            .input_dropout
            .and_then(|p| Dropout::sequences(pass, sites::HEAD[0], p, b));
        [
            input,
            Dropout::sequences(pass, sites::HEAD[1], self.dropout, b),
        ]
    }

    /// BERT's pooler output (`tanh(dense(h_cls))`); `None` for families without a pooler.
    pub fn pooler(&self, w: &[f32], cls: &[f32]) -> Option<Vec<f32>> {
        if !self.pooler {
            return None;
        }
        let mut t = vec![0f32; cls.len()];
        self.dense.forward(w, cls, &mut t);
        let mut a = vec![0f32; cls.len()];
        self.act.forward(&mut a, &t);
        Some(a)
    }

    /// Logits `[b, num_labels]` from the first token's hidden state `[b, hidden]`.
    pub fn forward(
        &self,
        w: &[f32],
        cls: &[f32],
        acts: &mut HeadActs,
        pass: Option<Pass>,
    ) -> Vec<f32> {
        let b = cls.len() / self.dense.in_dim;
        let [drop_in, drop_out] = self.dropouts(pass, b);
        acts.x.clear();
        acts.x.extend_from_slice(cls);
        dropout::apply(drop_in, &mut acts.x);
        for v in [&mut acts.t, &mut acts.a] {
            fit(v, b * self.dense.out_dim);
        }
        self.dense.forward(w, &acts.x, &mut acts.t);
        self.act.forward(&mut acts.a, &acts.t);
        acts.d.clear();
        acts.d.extend_from_slice(&acts.a);
        dropout::apply(drop_out, &mut acts.d);
        let mut logits = vec![0f32; b * self.out.out_dim];
        self.out.forward(w, &acts.d, &mut logits);
        logits
    }

    /// Adds the head's gradients into `g` from dL/dlogits; returns dL/d(first-token state).
    pub fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        acts: &HeadActs,
        dlogits: &[f32],
        pass: Option<Pass>,
    ) -> Vec<f32> {
        let b = acts.x.len() / self.dense.in_dim;
        let [drop_in, drop_out] = self.dropouts(pass, b);
        let mut dd = vec![0f32; acts.d.len()];
        self.out
            .backward(w, g, dlogits, &acts.d, InputGrad::Write(&mut dd));
        dropout::apply(drop_out, &mut dd);
        self.act.backward(&mut dd, &acts.t, &acts.a);
        let mut dx = vec![0f32; acts.x.len()];
        self.dense
            .backward(w, g, &dd, &acts.x, InputGrad::Write(&mut dx));
        dropout::apply(drop_in, &mut dx);
        dx
    }
}
