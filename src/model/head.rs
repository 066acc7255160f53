//! Classification heads, one per family, applied to the first token's hidden state.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::Module;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::checkpoint::Params;
use super::config::{Config, Family};
use super::{linear, Linear};
use crate::ops::Dropout;

enum Kind {
    /// `BertForSequenceClassification`: pooler (dense + tanh), dropout, `classifier`.
    Bert { pooler: Linear },
    /// `RobertaClassificationHead` / `ElectraClassificationHead`: dropout, dense, tanh or GELU,
    /// dropout, `out_proj`.
    Dense { dense: Linear, gelu: bool },
    /// DistilBERT: `pre_classifier`, ReLU, dropout, `classifier`.
    PreClassifier { pre_classifier: Linear },
}

pub struct Head {
    kind: Kind,
    out: Linear,
    dropout: f64,
}

/// The names and shapes of the head's parameters (the pooler counts as head: a bare encoder
/// may come without one).
pub fn head_params(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, l) = (cfg.hidden_size, cfg.num_labels());
    let (hidden, out) = match cfg.family {
        Family::Bert => ("bert.pooler.dense", "classifier"),
        Family::Roberta | Family::XlmRoberta | Family::Electra => {
            ("classifier.dense", "classifier.out_proj")
        }
        Family::DistilBert => ("pre_classifier", "classifier"),
    };
    vec![
        (format!("{hidden}.weight"), vec![h, h]),
        (format!("{hidden}.bias"), vec![h]),
        (format!("{out}.weight"), vec![l, h]),
        (format!("{out}.bias"), vec![l]),
    ]
}

/// Creates the head parameters that the checkpoint lacks (or whose label count differs from
/// the config), initialised as transformers does: normal(0, `initializer_range`) weights, zero
/// biases. Returns the names it created.
pub fn init_missing(
    cfg: &Config,
    params: &mut Params,
    seed: u64,
    device: &Device,
) -> Result<Vec<String>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, cfg.initializer_range as f32)?;
    let mut created = Vec::new();
    for (name, shape) in head_params(cfg) {
        if params
            .tensors
            .get(&name)
            .is_some_and(|t| t.dims() == shape.as_slice())
        {
            continue;
        }
        let t = if name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, device)?
        } else {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(v, shape.as_slice(), device)?
        };
        params.tensors.insert(name.clone(), t);
        created.push(name);
    }
    Ok(created)
}

impl Head {
    pub fn new(cfg: &Config, p: &Params) -> Result<Self> {
        let names = head_params(cfg);
        let (h, l) = (cfg.hidden_size, cfg.num_labels());
        let stem = |i: usize| names[i].0.trim_end_matches(".weight").to_string();
        let hidden = linear(p, &stem(0), h, h)?;
        let out = linear(p, &stem(2), h, l)?;
        let kind = match cfg.family {
            Family::Bert => Kind::Bert { pooler: hidden },
            Family::Roberta | Family::XlmRoberta => Kind::Dense {
                dense: hidden,
                gelu: false,
            },
            Family::Electra => Kind::Dense {
                dense: hidden,
                gelu: true,
            },
            Family::DistilBert => Kind::PreClassifier {
                pre_classifier: hidden,
            },
        };
        Ok(Head {
            kind,
            out,
            dropout: cfg.classifier_dropout,
        })
    }

    /// BERT's pooler output (`tanh(dense(h_cls))`); `None` for families without a pooler.
    pub fn pooler(&self, cls: &Tensor) -> Result<Option<Tensor>> {
        match &self.kind {
            Kind::Bert { pooler } => Ok(Some(pooler.forward(cls)?.tanh()?)),
            _ => Ok(None),
        }
    }

    /// Logits `[batch, num_labels]` from the first token's hidden state `[batch, hidden]`.
    pub fn forward(&self, cls: &Tensor, dropout: &mut Dropout) -> Result<Tensor> {
        let x = match &self.kind {
            Kind::Bert { pooler } => dropout.apply(&pooler.forward(cls)?.tanh()?, self.dropout)?,
            Kind::Dense { dense, gelu } => {
                let x = dense.forward(&dropout.apply(cls, self.dropout)?)?;
                let x = if *gelu {
                    crate::ops::gelu(&x)?
                } else {
                    x.tanh()?
                };
                dropout.apply(&x, self.dropout)?
            }
            Kind::PreClassifier { pre_classifier } => {
                dropout.apply(&pre_classifier.forward(cls)?.relu()?, self.dropout)?
            }
        };
        Ok(self.out.forward(&x)?)
    }
}
