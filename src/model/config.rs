//! `config.json` of each supported family, read into one typed struct.
//!
//! Field names follow transformers' `BertConfig`; DistilBERT's own names (`dim`, `n_layers`, ...)
//! are mapped onto them when read. The original JSON is kept so that saving writes back every
//! key we do not model (a user's custom fields survive a fine-tune).

use crate::ops::Act;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// The encoder families crossenc implements. All but ModernBERT share one post-norm encoder (the
/// differences live in the embeddings, the parameter names, GTE's rotary embeddings and gated
/// MLP, and the classification head); ModernBERT has an encoder of its own
/// ([`super::modernbert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    XlmRoberta,
    DistilBert,
    Electra,
    /// transformers' `gte` (Alibaba's GTE v1.5 / multilingual encoders).
    Gte,
    ModernBert,
}

impl Family {
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "bert" => Family::Bert,
            "roberta" => Family::Roberta,
            "xlm-roberta" => Family::XlmRoberta,
            "distilbert" => Family::DistilBert,
            "electra" => Family::Electra,
            // Alibaba's remote-code name for the same model (the hub's GTE checkpoints).
            "gte" | "new" => Family::Gte,
            "modernbert" => Family::ModernBert,
            _ => return None,
        })
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::DistilBert => "distilbert",
            Family::Electra => "electra",
            Family::Gte => "gte",
            Family::ModernBert => "modernbert",
        }
    }

    /// The attribute name of the base model inside `*ForSequenceClassification`
    /// (XLM-RoBERTa reuses RoBERTa's classes, hence its prefix).
    pub fn base_prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta | Family::XlmRoberta => "roberta",
            Family::DistilBert => "distilbert",
            Family::Electra => "electra",
            Family::Gte => "gte",
            Family::ModernBert => "model",
        }
    }

    pub fn sequence_classification_arch(self) -> &'static str {
        match self {
            Family::Bert => "BertForSequenceClassification",
            Family::Roberta => "RobertaForSequenceClassification",
            Family::XlmRoberta => "XLMRobertaForSequenceClassification",
            Family::DistilBert => "DistilBertForSequenceClassification",
            Family::Electra => "ElectraForSequenceClassification",
            Family::Gte => "GteForSequenceClassification",
            Family::ModernBert => "ModernBertForSequenceClassification",
        }
    }

    /// Whether positions come from rotary embeddings instead of a learned table.
    pub fn rotary(self) -> bool {
        matches!(self, Family::Gte | Family::ModernBert)
    }

    /// RoBERTa-style position ids count from `padding_idx + 1`.
    pub fn position_offset(self, pad_token_id: u32) -> usize {
        match self {
            Family::Roberta | Family::XlmRoberta => pad_token_id as usize + 1,
            _ => 0,
        }
    }
}

/// Hidden activation (`hidden_act`, or DistilBERT's `activation`): `gelu` is the exact erf
/// form; `gelu_new`, `gelu_pytorch_tanh` and `gelu_fast` the tanh approximation.
fn parse_act(s: &str) -> Option<Act> {
    Some(match s {
        "gelu" => Act::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Act::GeluTanh,
        "relu" => Act::Relu,
        _ => return None,
    })
}

#[derive(Debug, Clone)]
pub struct Config {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// ELECTRA's embedding width; equals `hidden_size` for the other families.
    pub embedding_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Act,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier: `classifier_dropout` (or DistilBERT's
    /// `seq_classif_dropout`), falling back to `hidden_dropout_prob` as transformers does.
    pub classifier_dropout: f64,
    pub max_position_embeddings: usize,
    /// 0 when the family has no token-type embeddings (DistilBERT).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub initializer_range: f64,
    /// Label names in id order; its length is the number of outputs.
    pub id2label: Vec<String>,
    /// The rotary base of GTE (`rope_parameters.rope_theta`); `None` for the families with a
    /// position table (ModernBERT keeps its two in [`ModernBertConfig`]).
    pub rope_theta: Option<f64>,
    /// ModernBERT's own settings; `None` for the other families.
    pub modernbert: Option<ModernBertConfig>,
    /// The file as read, written back with our changes on save.
    pub raw: Map<String, Value>,
}

/// How ModernBERT's classifier pools the last hidden state (`classifier_pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Cls,
    /// The mean over each sequence's tokens.
    Mean,
}

/// The keys of transformers' `ModernBertConfig` that BERT's config has no counterpart for.
#[derive(Debug, Clone)]
pub struct ModernBertConfig {
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub classifier_bias: bool,
    pub classifier_activation: Act,
    pub classifier_pooling: Pooling,
    pub embedding_dropout: f64,
    /// Per layer: `None` for global attention, `Some(w)` for a sliding window in which a token
    /// sees the tokens at most `w` away (`local_attention / 2`).
    pub windows: Vec<Option<usize>>,
    /// Rotary base of the global and of the sliding-window layers.
    pub global_rope_theta: f64,
    pub local_rope_theta: f64,
}

impl ModernBertConfig {
    /// Reads both spellings that hub checkpoints use: transformers 5's `layer_types` and
    /// `rope_parameters`, or the original `global_attn_every_n_layers`, `global_rope_theta`
    /// and `local_rope_theta` (transformers' defaults where a key is absent).
    fn read(r: &Reader, layers: usize) -> Result<Self> {
        let half_window = r.opt_usize("local_attention")?.unwrap_or(128) / 2;
        let windows = match r.0.get("layer_types").and_then(Value::as_array) {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(None),
                    Some("sliding_attention") => Ok(Some(half_window)),
                    _ => bail!("\"layer_types\" holds {t}: expected \"full_attention\" or \"sliding_attention\""),
                })
                .collect::<Result<Vec<_>>>()?,
            None => {
                let every = r.opt_usize("global_attn_every_n_layers")?.unwrap_or(3).max(1);
                (0..layers)
                    .map(|i| (i % every != 0).then_some(half_window))
                    .collect()
            }
        };
        if windows.len() != layers {
            bail!(
                "\"layer_types\" has {} entries but \"num_hidden_layers\" is {layers}",
                windows.len()
            );
        }

        let act_name = r.opt_str("classifier_activation")?.unwrap_or("gelu");
        let classifier_pooling = match r.opt_str("classifier_pooling")?.unwrap_or("cls") {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            other => bail!("\"classifier_pooling\" is \"{other}\": expected \"cls\" or \"mean\""),
        };
        Ok(ModernBertConfig {
            norm_bias: r.opt_bool("norm_bias")?.unwrap_or(false),
            attention_bias: r.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: r.opt_bool("mlp_bias")?.unwrap_or(false),
            classifier_bias: r.opt_bool("classifier_bias")?.unwrap_or(false),
            classifier_activation: parse_act(act_name).with_context(|| {
                format!("unsupported \"classifier_activation\" \"{act_name}\" (known: gelu, gelu_new, gelu_pytorch_tanh, relu)")
            })?,
            classifier_pooling,
            embedding_dropout: r.opt_f64("embedding_dropout")?.unwrap_or(0.0),
            windows,
            global_rope_theta: r.rope_theta(Some("full_attention"), "global_rope_theta", 160_000.0)?,
            local_rope_theta: r.rope_theta(Some("sliding_attention"), "local_rope_theta", 10_000.0)?,
        })
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let Value::Object(raw) = super::read_json(path)? else {
            bail!("{}: expected a JSON object", path.display());
        };
        Self::from_map(raw).with_context(|| format!("in model config {}", path.display()))
    }

    pub fn from_map(raw: Map<String, Value>) -> Result<Self> {
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .context("missing key \"model_type\"")?;
        let family = Family::from_model_type(model_type).with_context(|| {
            format!(
                "unsupported model_type \"{model_type}\": crossenc supports bert, roberta, \
                 xlm-roberta, distilbert, electra, gte and modernbert"
            )
        })?;
        let r = Reader(&raw);
        let (distil, modern) = (family == Family::DistilBert, family == Family::ModernBert);
        // BERT's key, DistilBERT's and ModernBERT's names for it.
        let key = |bert: &'static str, distil_name: &'static str, modern_name: &'static str| match (
            distil, modern,
        ) {
            (true, _) => distil_name,
            (_, true) => modern_name,
            _ => bert,
        };
        let hidden_size = r.usize(key("hidden_size", "dim", "hidden_size"))?;
        let act_name = r.str(key("hidden_act", "activation", "hidden_activation"))?;
        let hidden_act = parse_act(act_name).with_context(|| {
            format!("unsupported activation \"{act_name}\" (known: gelu, gelu_new, gelu_pytorch_tanh, relu)")
        })?;
        let hidden_dropout_prob = match modern {
            true => r.opt_f64("mlp_dropout")?.unwrap_or(0.0),
            false => r.f64(key("hidden_dropout_prob", "dropout", ""))?,
        };
        let classifier_dropout = match r.opt_f64(key(
            "classifier_dropout",
            "seq_classif_dropout",
            "classifier_dropout",
        ))? {
            Some(p) => p,
            None if modern => 0.0,
            None => hidden_dropout_prob,
        };
        let num_hidden_layers =
            r.usize(key("num_hidden_layers", "n_layers", "num_hidden_layers"))?;
        let modernbert = match modern {
            true => Some(ModernBertConfig::read(&r, num_hidden_layers)?),
            false => None,
        };
        let rope_theta = match family {
            Family::Gte => {
                r.check_gte_variant()?;
                Some(r.rope_theta(None, "rope_theta", 160_000.0)?)
            }
            _ => None,
        };
        let pad_token_id = r.opt_usize("pad_token_id")?.unwrap_or(0) as u32;
        let id2label = read_labels(&raw)?;
        let cfg = Config {
            family,
            vocab_size: r.usize("vocab_size")?,
            hidden_size,
            embedding_size: r.opt_usize("embedding_size")?.unwrap_or(hidden_size),
            num_hidden_layers,
            num_attention_heads: r.usize(key(
                "num_attention_heads",
                "n_heads",
                "num_attention_heads",
            ))?,
            intermediate_size: r.usize(key(
                "intermediate_size",
                "hidden_dim",
                "intermediate_size",
            ))?,
            hidden_act,
            hidden_dropout_prob,
            attention_probs_dropout_prob: match modern {
                true => r.opt_f64("attention_dropout")?.unwrap_or(0.0),
                false => r.f64(key("attention_probs_dropout_prob", "attention_dropout", ""))?,
            },
            classifier_dropout,
            max_position_embeddings: r.usize("max_position_embeddings")?,
            type_vocab_size: match family {
                Family::DistilBert | Family::ModernBert => 0,
                Family::Gte => r.opt_usize("type_vocab_size")?.unwrap_or(1),
                _ => r.opt_usize("type_vocab_size")?.unwrap_or(2),
            },
            layer_norm_eps: match modern {
                true => r.opt_f64("norm_eps")?.unwrap_or(1e-5),
                false => r.opt_f64("layer_norm_eps")?.unwrap_or(1e-12),
            },
            pad_token_id,
            initializer_range: r.opt_f64("initializer_range")?.unwrap_or(0.02),
            id2label,
            rope_theta,
            modernbert,
            raw,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value the engine relies on, naming the key and what it allows (the key
    /// names are BERT's; DistilBERT's `dim`, `n_heads`, ... map onto them).
    fn validate(&self) -> Result<()> {
        let at_least_one = [
            ("hidden_size", self.hidden_size),
            ("embedding_size", self.embedding_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                bail!("\"{key}\" is 0: it must be at least 1");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "\"num_attention_heads\" ({}) must divide \"hidden_size\" ({}): each head takes hidden_size / num_attention_heads columns",
                self.num_attention_heads,
                self.hidden_size
            );
        }
        let head_width = self.hidden_size / self.num_attention_heads;
        if self.family.rotary() && !head_width.is_multiple_of(2) {
            bail!(
                "rotary embeddings need an even head width, but \"hidden_size\" / \"num_attention_heads\" is {head_width}"
            );
        }
        let offset = self.family.position_offset(self.pad_token_id);
        if self.max_position_embeddings <= offset {
            bail!(
                "\"max_position_embeddings\" ({}) must exceed {offset} (the position offset of this family with pad_token_id {})",
                self.max_position_embeddings,
                self.pad_token_id
            );
        }
        let probabilities = [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.classifier_dropout),
        ];
        for (key, p) in probabilities {
            if !(0.0..1.0).contains(&p) {
                bail!("\"{key}\" is {p}: a dropout probability must lie in [0, 1)");
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!(
                "\"layer_norm_eps\" is {}: it must be a positive number",
                self.layer_norm_eps
            );
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            bail!(
                "\"initializer_range\" is {}: it must be a non-negative number",
                self.initializer_range
            );
        }
        Ok(())
    }

    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Replaces the label set (a fresh head with `n` outputs, or named labels).
    pub fn set_labels(&mut self, labels: Vec<String>) {
        self.id2label = labels;
    }

    /// The most tokens a sequence can hold given the position table.
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings - self.family.position_offset(self.pad_token_id)
    }

    /// config.json as a `*ForSequenceClassification` with our labels and activation.
    pub fn to_json(&self, activation_fn: &str) -> Value {
        let mut raw = self.raw.clone();
        // A checkpoint read under another name (GTE's remote-code `new`) is written as
        // transformers' own class, which loads without remote code.
        let model_type = self.family.model_type();
        if raw.get("model_type").and_then(Value::as_str) != Some(model_type) {
            raw.insert("model_type".into(), Value::from(model_type));
            raw.remove("auto_map");
        }
        raw.insert(
            "architectures".into(),
            Value::from(vec![self.family.sequence_classification_arch()]),
        );
        let id2label: Map<String, Value> = self
            .id2label
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), Value::from(l.as_str())))
            .collect();
        let label2id: Map<String, Value> = self
            .id2label
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), Value::from(i)))
            .collect();
        raw.insert("id2label".into(), Value::Object(id2label));
        raw.insert("label2id".into(), Value::Object(label2id));
        raw.remove("num_labels");
        let mut st = Map::new();
        st.insert("activation_fn".into(), Value::from(activation_fn));
        raw.insert("sentence_transformers".into(), Value::Object(st));
        Value::Object(raw)
    }
}

/// `id2label` if present, else `num_labels` generic names, else one label (the HF default of a
/// freshly created config is 2, but a bare encoder like all-MiniLM-L6-v2 has neither key: we
/// default to the regression/one-score head that a cross-encoder usually wants).
fn read_labels(raw: &Map<String, Value>) -> Result<Vec<String>> {
    if let Some(map) = raw.get("id2label") {
        let map = map.as_object().context("\"id2label\" must be an object")?;
        let mut labels: Vec<(usize, String)> = map
            .iter()
            .map(|(k, v)| {
                let id = k
                    .parse::<usize>()
                    .with_context(|| format!("id2label key \"{k}\" is not an integer"))?;
                let name = v
                    .as_str()
                    .with_context(|| format!("id2label[\"{k}\"] is not a string"))?;
                Ok((id, name.to_string()))
            })
            .collect::<Result<_>>()?;
        labels.sort();
        for (i, (id, _)) in labels.iter().enumerate() {
            if *id != i {
                bail!("id2label ids must be 0..{}, found {id}", labels.len());
            }
        }
        if !labels.is_empty() {
            return Ok(labels.into_iter().map(|(_, l)| l).collect());
        }
    }
    let n = Reader(raw).opt_usize("num_labels")?.unwrap_or(1);
    Ok(generic_labels(n))
}

pub fn generic_labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

/// Typed access to JSON keys with errors that name the key.
struct Reader<'a>(&'a Map<String, Value>);

impl Reader<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.0
            .get(key)
            .with_context(|| format!("missing key \"{key}\""))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)?
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("key \"{key}\" must be a non-negative integer"))
    }
    fn f64(&self, key: &str) -> Result<f64> {
        self.get(key)?
            .as_f64()
            .with_context(|| format!("key \"{key}\" must be a number"))
    }
    fn str(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .as_str()
            .with_context(|| format!("key \"{key}\" must be a string"))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }
    /// Refuses the variants of Alibaba's remote-code GTE (`new`) that transformers' `gte` does
    /// not implement, naming the key.
    fn check_gte_variant(&self) -> Result<()> {
        let is = |key: &str, want: Value| self.0.get(key).is_none_or(|v| *v == want || v.is_null());
        for (key, want) in [
            ("position_embedding_type", Value::from("rope")),
            ("layer_norm_type", Value::from("layer_norm")),
            ("pack_qkv", Value::from(true)),
            ("logn_attention_scale", Value::from(false)),
            ("logn_attention_clip1", Value::from(false)),
            ("rope_scaling", Value::Null),
        ] {
            if !is(key, want.clone()) {
                bail!(
                    "\"{key}\" is {}: crossenc's GTE supports {want} only (as transformers' gte)",
                    self.0[key]
                );
            }
        }
        Ok(())
    }

    /// A rotary base: transformers 5's `rope_parameters` (`[kind].rope_theta`, or `rope_theta`
    /// directly), else the older top-level `old_key`, else `default`.
    fn rope_theta(&self, kind: Option<&str>, old_key: &str, default: f64) -> Result<f64> {
        let params = self.0.get("rope_parameters");
        let params = match kind {
            Some(k) => params.and_then(|p| p.get(k)),
            None => params,
        };
        match params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
        {
            Some(t) => Ok(t),
            None => Ok(self.opt_f64(old_key)?.unwrap_or(default)),
        }
    }
    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(key).map(Some),
        }
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .with_context(|| format!("key \"{key}\" must be true or false")),
        }
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.f64(key).map(Some),
        }
    }
}
