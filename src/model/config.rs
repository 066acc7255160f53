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
    /// DeBERTa-v2 and v3 (`deberta-v2`): disentangled attention ([`DebertaConfig`]).
    DebertaV2,
    ModernBert,
    /// Causal LMs scored as re-rankers ([`super::causal`]): Qwen3 (Qwen3-Reranker) and Qwen2
    /// (mxbai-rerank v2).
    Qwen3,
    Qwen2,
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
            "deberta-v2" => Family::DebertaV2,
            "modernbert" => Family::ModernBert,
            "qwen3" => Family::Qwen3,
            "qwen2" => Family::Qwen2,
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
            Family::DebertaV2 => "deberta-v2",
            Family::ModernBert => "modernbert",
            Family::Qwen3 => "qwen3",
            Family::Qwen2 => "qwen2",
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
            Family::DebertaV2 => "deberta",
            Family::ModernBert | Family::Qwen3 | Family::Qwen2 => "model",
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
            Family::DebertaV2 => "DebertaV2ForSequenceClassification",
            Family::ModernBert => "ModernBertForSequenceClassification",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// Whether positions come from rotary embeddings instead of a learned table.
    pub fn rotary(self) -> bool {
        matches!(
            self,
            Family::Gte | Family::ModernBert | Family::Qwen3 | Family::Qwen2
        )
    }

    /// A causal LM, scored by its "yes" and "no" logits at the last token.
    pub fn causal(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Qwen2)
    }

    /// RoBERTa-style position ids count from `padding_idx + 1`.
    pub fn position_offset(self, pad_token_id: u32) -> usize {
        match self {
            Family::Roberta | Family::XlmRoberta => pad_token_id as usize + 1,
            _ => 0,
        }
    }
}

/// Where a family's config.json keeps BERT's keys (DistilBERT's `dim`, ModernBERT's
/// `hidden_activation`, ...).
struct Keys {
    hidden_size: &'static str,
    hidden_act: &'static str,
    num_hidden_layers: &'static str,
    num_attention_heads: &'static str,
    intermediate_size: &'static str,
    /// Dropout keys, and whether the family requires them.
    hidden_dropout: (&'static str, bool),
    attention_dropout: (&'static str, bool),
    classifier_dropout: &'static str,
    /// The norm's epsilon and transformers' default for it.
    layer_norm_eps: (&'static str, f64),
}

impl Keys {
    fn of(family: Family) -> Self {
        const BERT: Keys = Keys {
            hidden_size: "hidden_size",
            hidden_act: "hidden_act",
            num_hidden_layers: "num_hidden_layers",
            num_attention_heads: "num_attention_heads",
            intermediate_size: "intermediate_size",
            hidden_dropout: ("hidden_dropout_prob", true),
            attention_dropout: ("attention_probs_dropout_prob", true),
            classifier_dropout: "classifier_dropout",
            layer_norm_eps: ("layer_norm_eps", 1e-12),
        };
        match family {
            Family::DistilBert => Keys {
                hidden_size: "dim",
                hidden_act: "activation",
                num_hidden_layers: "n_layers",
                num_attention_heads: "n_heads",
                intermediate_size: "hidden_dim",
                hidden_dropout: ("dropout", true),
                attention_dropout: ("attention_dropout", true),
                classifier_dropout: "seq_classif_dropout",
                ..BERT
            },
            Family::ModernBert => Keys {
                hidden_act: "hidden_activation",
                hidden_dropout: ("mlp_dropout", false),
                attention_dropout: ("attention_dropout", false),
                layer_norm_eps: ("norm_eps", 1e-5),
                ..BERT
            },
            Family::DebertaV2 => Keys {
                classifier_dropout: "cls_dropout",
                layer_norm_eps: ("layer_norm_eps", 1e-7),
                ..BERT
            },
            Family::Qwen3 | Family::Qwen2 => Keys {
                hidden_dropout: ("hidden_dropout", false),
                attention_dropout: ("attention_dropout", false),
                layer_norm_eps: ("rms_norm_eps", 1e-6),
                ..BERT
            },
            _ => BERT,
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
        "silu" | "swish" => Act::Silu,
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
    /// A causal LM's own settings; `None` for the encoders.
    pub causal: Option<CausalConfig>,
    /// DeBERTa-v2's own settings; `None` for the other families.
    pub deberta: Option<DebertaConfig>,
    /// The file as read, written back with our changes on save.
    pub raw: Map<String, Value>,
}

/// The keys of transformers' `DebertaV2Config` that BERT's config has no counterpart for.
#[derive(Debug, Clone)]
pub struct DebertaConfig {
    /// Content-to-position and position-to-content terms (`pos_att_type`).
    pub c2p: bool,
    pub p2c: bool,
    /// Relative distances are log-bucketed beyond `position_buckets / 2` (0: not bucketed).
    pub position_buckets: usize,
    /// The largest relative distance (`max_relative_positions`, else `max_position_embeddings`).
    pub max_relative_positions: usize,
    /// The positions' keys and queries come from the layer's own key and query projections
    /// (v3), else from `pos_key_proj` / `pos_query_proj`.
    pub share_att_key: bool,
    /// The relative embeddings go through the encoder's LayerNorm (`norm_rel_ebd`).
    pub norm_rel_ebd: bool,
    /// Absolute positions are added to the embeddings (`position_biased_input`).
    pub position_biased_input: bool,
    pub pooler_hidden_act: Act,
    pub pooler_dropout: f64,
}

impl DebertaConfig {
    fn read(r: &Reader, max_position_embeddings: usize) -> Result<Self> {
        if !r.opt_bool("relative_attention")?.unwrap_or(false) {
            bail!("\"relative_attention\" is false: crossenc's DeBERTa implements disentangled attention only");
        }
        if r.opt_usize("conv_kernel_size")?.unwrap_or(0) > 0 {
            bail!("\"conv_kernel_size\" is set: DeBERTa's convolution layer is not supported");
        }
        if r.0
            .get("embedding_size")
            .is_some_and(|v| !v.is_null() && Some(v) != r.0.get("hidden_size"))
        {
            bail!("\"embedding_size\" differs from \"hidden_size\": DeBERTa's embedding projection is not supported");
        }
        let types: Vec<String> = match r.0.get("pos_att_type") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str())
                .map(str::to_lowercase)
                .collect(),
            Some(Value::String(s)) => s.split('|').map(|t| t.trim().to_lowercase()).collect(),
            _ => Vec::new(),
        };
        if let Some(t) = types.iter().find(|t| !["c2p", "p2c"].contains(&t.as_str())) {
            bail!("\"pos_att_type\" holds \"{t}\": expected c2p and/or p2c");
        }
        let buckets =
            r.0.get("position_buckets")
                .and_then(Value::as_i64)
                .unwrap_or(-1);
        let max_rel =
            r.0.get("max_relative_positions")
                .and_then(Value::as_i64)
                .unwrap_or(-1);
        let act_name = r.opt_str("pooler_hidden_act")?.unwrap_or("gelu");
        let norm = r.opt_str("norm_rel_ebd")?.unwrap_or("none").to_lowercase();
        Ok(DebertaConfig {
            c2p: types.iter().any(|t| t == "c2p"),
            p2c: types.iter().any(|t| t == "p2c"),
            position_buckets: buckets.max(0) as usize,
            max_relative_positions: match max_rel {
                m if m >= 1 => m as usize,
                _ => max_position_embeddings,
            },
            share_att_key: r.opt_bool("share_att_key")?.unwrap_or(false),
            norm_rel_ebd: norm.split('|').any(|t| t.trim() == "layer_norm"),
            position_biased_input: r.opt_bool("position_biased_input")?.unwrap_or(true),
            pooler_hidden_act: parse_act(act_name).with_context(|| {
                format!("unsupported \"pooler_hidden_act\" \"{act_name}\" (known: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)")
            })?,
            pooler_dropout: r.opt_f64("pooler_dropout")?.unwrap_or(0.0),
        })
    }

    /// Rows of the relative-embedding table: twice the largest distance (or bucket).
    pub fn span(&self) -> usize {
        match self.position_buckets {
            0 => self.max_relative_positions,
            b => b,
        }
    }
}

/// The keys of transformers' `Qwen3Config` / `Qwen2Config` that an encoder has no counterpart
/// for, and the tokens whose logits make the score.
#[derive(Debug, Clone)]
pub struct CausalConfig {
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    /// Whether the output projection is the embedding table (`tie_word_embeddings`).
    pub tie_word_embeddings: bool,
    /// Qwen2's Q, K, V projections carry biases.
    pub attention_bias: bool,
    /// Qwen3 normalises each query and key head (`q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// The score is logit(`true_token_id`) - logit(`false_token_id`) at the last token, as
    /// sentence-transformers' `LogitScore`; the loader sets them from the model folder.
    pub true_token_id: u32,
    pub false_token_id: Option<u32>,
}

impl CausalConfig {
    fn read(r: &Reader, family: Family, hidden: usize, heads: usize) -> Result<Self> {
        if r.opt_bool("use_sliding_window")?.unwrap_or(false) {
            bail!("\"use_sliding_window\" is true: crossenc's causal re-rankers attend to the whole prompt");
        }
        if r.0.get("rope_scaling").is_some_and(|v| !v.is_null()) {
            bail!("\"rope_scaling\" is set: crossenc's causal re-rankers support plain rotary embeddings only");
        }
        let head_dim = r.opt_usize("head_dim")?.unwrap_or(hidden / heads.max(1));
        let num_key_value_heads = r.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        if num_key_value_heads == 0 || !heads.is_multiple_of(num_key_value_heads) {
            bail!("\"num_key_value_heads\" ({num_key_value_heads}) must divide \"num_attention_heads\" ({heads})");
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("\"head_dim\" is {head_dim}: rotary embeddings need an even head width");
        }
        Ok(CausalConfig {
            num_key_value_heads,
            head_dim,
            rope_theta: r.rope_theta(None, "rope_theta", 10_000.0)?,
            tie_word_embeddings: r.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: r
                .opt_bool("attention_bias")?
                .unwrap_or(family == Family::Qwen2),
            qk_norm: family == Family::Qwen3,
            true_token_id: 0,
            false_token_id: None,
        })
    }
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
                format!("unsupported \"classifier_activation\" \"{act_name}\" (known: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)")
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
                 xlm-roberta, distilbert, electra, gte, modernbert, qwen3 and qwen2"
            )
        })?;
        let r = Reader(&raw);
        let k = Keys::of(family);
        let hidden_size = r.usize(k.hidden_size)?;
        let act_name = r.str(k.hidden_act)?;
        let hidden_act = parse_act(act_name).with_context(|| {
            format!("unsupported activation \"{act_name}\" (known: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)")
        })?;
        // The keys that BERT requires are optional (default 0) where transformers defaults them.
        let dropout = |(key, required): (&str, bool)| match required {
            true => r.f64(key),
            false => Ok(r.opt_f64(key)?.unwrap_or(0.0)),
        };
        let hidden_dropout_prob = dropout(k.hidden_dropout)?;
        let classifier_dropout = match r.opt_f64(k.classifier_dropout)? {
            Some(p) => p,
            None if family == Family::ModernBert => 0.0,
            None => hidden_dropout_prob,
        };
        let num_hidden_layers = r.usize(k.num_hidden_layers)?;
        let num_attention_heads = r.usize(k.num_attention_heads)?;
        let modernbert = match family {
            Family::ModernBert => Some(ModernBertConfig::read(&r, num_hidden_layers)?),
            _ => None,
        };
        let causal = match family.causal() {
            true => Some(CausalConfig::read(
                &r,
                family,
                hidden_size,
                num_attention_heads,
            )?),
            false => None,
        };
        let deberta = match family {
            Family::DebertaV2 => Some(DebertaConfig::read(
                &r,
                r.usize("max_position_embeddings")?,
            )?),
            _ => None,
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
            num_attention_heads,
            intermediate_size: r.usize(k.intermediate_size)?,
            hidden_act,
            hidden_dropout_prob,
            attention_probs_dropout_prob: dropout(k.attention_dropout)?,
            classifier_dropout,
            max_position_embeddings: r.usize("max_position_embeddings")?,
            type_vocab_size: match family {
                Family::DistilBert | Family::ModernBert | Family::Qwen3 | Family::Qwen2 => 0,
                Family::DebertaV2 => r.opt_usize("type_vocab_size")?.unwrap_or(0),
                Family::Gte => r.opt_usize("type_vocab_size")?.unwrap_or(1),
                _ => r.opt_usize("type_vocab_size")?.unwrap_or(2),
            },
            layer_norm_eps: r.opt_f64(k.layer_norm_eps.0)?.unwrap_or(k.layer_norm_eps.1),
            pad_token_id,
            initializer_range: r.opt_f64("initializer_range")?.unwrap_or(0.02),
            id2label,
            rope_theta,
            modernbert,
            causal,
            deberta,
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

    /// Whether the embeddings add a learned position table (not where positions are rotary, nor
    /// in DeBERTa without `position_biased_input`).
    pub fn position_table(&self) -> bool {
        !self.family.rotary()
            && self
                .deberta
                .as_ref()
                .is_none_or(|d| d.position_biased_input)
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
