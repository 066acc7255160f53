//! `CrossEncoder`: load, predict, rank and save, as sentence-transformers' `CrossEncoder`.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::checkpoint::Params;
use super::config::Config;
use super::tokenize::{PairTokenizer, Sequences, Tokens};
use super::{head, SequenceClassifier};
use crate::eval::ranking::best_first;
use crate::hub;
use crate::ops::profile::timed;

/// What scoring returns: scores with the model's [`Activation`] applied (`predict`), or the raw
/// logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Scores after the model's activation (sigmoid for one label): what `predict` returns.
    Activated,
    /// The raw logits.
    Logits,
}

/// The function sentence-transformers applies to the logits in `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `1 / (1 + e^-x)`: a probability per label (one-label models' default).
    Sigmoid,
    /// The logits as they are (several labels' default).
    Identity,
    /// `tanh(x)`.
    Tanh,
    /// Each row's softmax over its labels.
    Softmax,
}

impl Activation {
    /// Parses `activation_fn` as sentence-transformers stores it (a torch class path).
    pub fn parse(name: &str) -> Option<Self> {
        let short = name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
        Some(match short.as_str() {
            "sigmoid" => Activation::Sigmoid,
            "identity" => Activation::Identity,
            "tanh" => Activation::Tanh,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }

    /// The activation's torch class path, as `config_sentence_transformers.json` stores it.
    pub fn torch_name(self) -> &'static str {
        match self {
            Activation::Sigmoid => "torch.nn.modules.activation.Sigmoid",
            Activation::Identity => "torch.nn.modules.linear.Identity",
            Activation::Tanh => "torch.nn.modules.activation.Tanh",
            Activation::Softmax => "torch.nn.modules.activation.Softmax",
        }
    }

    /// sentence-transformers' default: sigmoid for one label, identity for several.
    pub fn default_for(num_labels: usize) -> Self {
        if num_labels == 1 {
            Activation::Sigmoid
        } else {
            Activation::Identity
        }
    }

    /// Applies the activation to `logits` in place, row by row (`num_labels` values a row).
    pub fn apply(self, logits: &mut [f32], num_labels: usize) {
        match self {
            Activation::Sigmoid => logits
                .iter_mut()
                .for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
            Activation::Identity => {}
            Activation::Tanh => logits.iter_mut().for_each(|x| *x = x.tanh()),
            Activation::Softmax => {
                for row in logits.chunks_exact_mut(num_labels.max(1)) {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    row.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f32 = row.iter().sum();
                    row.iter_mut().for_each(|x| *x /= sum);
                }
            }
        }
    }
}

/// How the encoder's linear layers compute when scoring (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Dynamic int8: weights per output channel, inputs per token (see [`crate::ops::int8`]).
    Int8,
    /// bfloat16 weights and inputs, f32 sums (see [`crate::ops::bf16`]); CPUs with AVX-512 BF16.
    Bf16,
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "int8" => Ok(Quantization::Int8),
            "bf16" | "bfloat16" => Ok(Quantization::Bf16),
            _ => Err(format!(
                "unknown quantization \"{s}\" (supported: int8, bf16)"
            )),
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Quantization::Int8 => "int8",
            Quantization::Bf16 => "bf16",
        })
    }
}

/// Scores of a batch of pairs: `num_labels` values per pair, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Scores per pair.
    pub num_labels: usize,
    /// The scores, `num_labels` per pair, pair after pair.
    pub values: Vec<f32>,
}

impl Scores {
    /// Pairs scored.
    pub fn len(&self) -> usize {
        self.values.len() / self.num_labels.max(1)
    }
    /// Whether no pair was scored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    /// Pair `i`'s scores.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.num_labels..(i + 1) * self.num_labels]
    }
    /// Each pair's scores, in input order.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.values.chunks_exact(self.num_labels)
    }
}

/// How to load a model beyond its own files.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Overrides the folder's max length (still capped by the position table).
    pub max_length: Option<usize>,
    /// The head's label names: a bare encoder's new head gets one output per name; a
    /// checkpoint's head with another count is refused unless `replace_head`.
    pub labels: Option<Vec<String>>,
    /// Replace a head trained for another label count than `labels` by a new one (fine-tuning
    /// for a new task); scoring leaves it unset, as a random head scores nothing.
    pub replace_head: bool,
    /// Seed of a newly created head.
    pub seed: u64,
    /// The activation `predict` applies (default: the folder's, else sigmoid for one label).
    pub activation: Option<Activation>,
    /// Score with quantized linear layers (the model can then not be trained).
    pub quantize: Option<Quantization>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_length: None,
            labels: None,
            replace_head: false,
            seed: 42,
            activation: None,
            quantize: None,
        }
    }
}

/// A cross-encoder: sentence-transformers' `CrossEncoder`. Built by [`CrossEncoder::load`]
/// (or [`CrossEncoder::with_params`]); read through its accessors. The crate's own modules (the
/// trainer, the server) reach its fields directly.
pub struct CrossEncoder {
    pub(crate) config: Config,
    pub(crate) tokenizer: PairTokenizer,
    /// The engine, which owns the weights.
    pub(crate) model: SequenceClassifier,
    pub(crate) activation: Activation,
    /// The folder the model was read from (tokenizer files are copied from it on save).
    pub(crate) source_dir: PathBuf,
    /// Head parameters created at load time (empty for a complete cross-encoder).
    pub(crate) new_head_params: Vec<String>,
    pub(crate) batch_size: usize,
    /// Most tokens in one forward pass, counted as if padded to the batch's longest pair.
    pub(crate) max_batch_tokens: usize,
}

impl CrossEncoder {
    /// The model's config.json, as read (labels as set at load).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The pair tokenizer (its max length included).
    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }

    /// The encoder and head, and their weights.
    pub fn model(&self) -> &SequenceClassifier {
        &self.model
    }

    /// Trains (and scores while training) with the linear layers' products in `p`; bf16 needs
    /// AMX. [`crate::train::train`] sets it from [`crate::train::TrainConfig::precision`].
    pub fn set_precision(&mut self, p: crate::ops::Precision) -> Result<()> {
        self.model.set_precision(p)
    }

    /// The function `predict` applies to the logits.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Head parameters created at load time (empty for a complete cross-encoder).
    pub fn new_head_params(&self) -> &[String] {
        &self.new_head_params
    }

    /// Scores with int8 or bf16 products from now on (a model so reduced scores only).
    pub fn quantize(&mut self, q: Quantization) -> Result<()> {
        self.model.quantize(q)
    }

    /// Packs the weights once into the f32 kernel's layout for scoring, as [`CrossEncoder::load`]
    /// does; training unpacks them, and leaves them so.
    pub fn pack_weights(&mut self) {
        self.model.pack_weights();
    }

    /// Pairs per forward pass when scoring (default 32; at least 1).
    pub fn set_batch_size(&mut self, n: usize) {
        self.batch_size = n.max(1);
    }

    /// A model of the same tokenizer, activation and settings as `template` with another
    /// config and weights (a resized encoder, say).
    pub fn with_params(template: &CrossEncoder, config: Config, params: &Params) -> Result<Self> {
        let mut model = SequenceClassifier::new(&config, params)?;
        model.pack_weights();
        Ok(CrossEncoder {
            model,
            config,
            tokenizer: template.tokenizer.clone(),
            activation: template.activation,
            source_dir: template.source_dir.clone(),
            new_head_params: Vec::new(),
            batch_size: template.batch_size,
            max_batch_tokens: template.max_batch_tokens,
        })
    }

    /// Loads a model folder or hub id with its own settings.
    pub fn from_pretrained(id_or_path: &str) -> Result<Self> {
        Self::load(id_or_path, &LoadOptions::default())
    }

    /// Loads a model folder or hub id as `opts` say: a bare encoder gets a new head, weights are
    /// packed for scoring (or quantized).
    pub fn load(id_or_path: &str, opts: &LoadOptions) -> Result<Self> {
        let dir = hub::resolve_model(id_or_path)?;
        let mut config = Config::from_file(&dir.join("config.json"))?;
        // The head shapes the checkpoint's own labels imply, which new labels may replace.
        let replaceable = match opts.replace_head {
            true => head::head_params(&config),
            false => Vec::new(),
        };
        if let Some(labels) = &opts.labels {
            if labels.is_empty() {
                bail!("a model needs at least one label");
            }
            config.set_labels(labels.clone());
        }
        let activation = match opts.activation {
            Some(a) => a,
            None => read_activation(&dir, &config)?,
        };
        let tokenizer = PairTokenizer::from_dir(&dir, &config, opts.max_length)?;
        if let Some(c) = config.causal.as_mut() {
            (c.true_token_id, c.false_token_id) = logit_score_tokens(&dir, &tokenizer)?;
        }
        let mut params = Params::load(&dir, &config)?;
        SequenceClassifier::check(&config, &params)?;
        let new_head_params = head::init_missing(&config, &replaceable, &mut params, opts.seed)?;
        let mut model = SequenceClassifier::new(&config, &params)?;
        match opts.quantize {
            Some(q) => timed("quantize", || model.quantize(q))?,
            None => timed("pack", || model.pack_weights()),
        }
        Ok(CrossEncoder {
            config,
            tokenizer,
            model,
            activation,
            source_dir: dir,
            new_head_params,
            batch_size: 32,
            max_batch_tokens: usize::MAX,
        })
    }

    /// Replaces the weights with those of the model folder `dir` (same config), quantized
    /// as the old ones were, and ready to score as after [`CrossEncoder::load`].
    pub fn reload_weights(&mut self, dir: &Path) -> Result<()> {
        let quantization = self.model.quantization();
        self.model = SequenceClassifier::new(&self.config, &Params::load(dir, &self.config)?)?;
        match quantization {
            Some(q) => self.model.quantize(q)?,
            None => self.model.pack_weights(),
        }
        Ok(())
    }

    /// How the linear layers compute: `None` for f32.
    pub fn quantization(&self) -> Option<Quantization> {
        self.model.quantization()
    }

    /// Outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.config.num_labels()
    }

    /// Scores with the model's activation applied, in input order.
    pub fn predict<S: AsRef<str>>(&self, pairs: &[(S, S)]) -> Result<Scores> {
        self.score(pairs, Output::Activated)
    }

    /// Raw logits, in input order.
    pub fn logits<S: AsRef<str>>(&self, pairs: &[(S, S)]) -> Result<Scores> {
        self.score(pairs, Output::Logits)
    }

    fn score<S: AsRef<str>>(&self, pairs: &[(S, S)], output: Output) -> Result<Scores> {
        let sequences = timed("tokenize", || self.tokenizer.encode_pairs(pairs))?;
        self.score_sequences(&sequences, output)
    }

    /// Scores tokenized pairs, in input order. Batches hold pairs of similar length (longest
    /// first, so the largest batch runs first) and at most `batch_size` pairs and
    /// `max_batch_tokens` padded tokens.
    pub fn score_sequences(&self, sequences: &Sequences, output: Output) -> Result<Scores> {
        let num_labels = self.num_labels();
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sequences.seq_len(i)));
        let mut values = vec![0f32; sequences.len() * num_labels];
        let mut rest = order.as_slice();
        while !rest.is_empty() {
            // Sorted longest first, so the first pair sets the batch's padded length.
            let longest = sequences.seq_len(rest[0]).max(1);
            let n = (self.max_batch_tokens / longest)
                .clamp(1, self.batch_size.max(1))
                .min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let out = self.forward_tokens(&sequences.pack(chunk.iter().copied()), output)?;
            for (row, &i) in out.chunks_exact(num_labels).zip(chunk) {
                values[i * num_labels..(i + 1) * num_labels].copy_from_slice(row);
            }
        }
        Ok(Scores { num_labels, values })
    }

    /// One packed batch through the model, dropout off; flat `[batch * num_labels]`.
    pub fn forward_tokens(&self, tokens: &Tokens, output: Output) -> Result<Vec<f32>> {
        let mut out = self.model.forward(tokens)?;
        if output == Output::Activated {
            self.activation.apply(&mut out, self.num_labels());
        }
        Ok(out)
    }

    /// Scores `query` against each document and returns `(index, score)` sorted by score,
    /// highest first; at most `top_k` entries when given. Needs a one-output model.
    pub fn rank<S: AsRef<str>>(
        &self,
        query: &str,
        docs: &[S],
        top_k: Option<usize>,
    ) -> Result<Vec<(usize, f32)>> {
        self.check_ranks()?;
        let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query, d.as_ref())).collect();
        let scores = self.predict(&pairs)?;
        let hits = scores.rows().map(|r| r[0]).enumerate().collect();
        Ok(best_first(hits, top_k.unwrap_or(usize::MAX)))
    }

    /// An error unless the model has one output, the one score ranking orders by.
    pub fn check_ranks(&self) -> Result<()> {
        if self.num_labels() != 1 {
            bail!(
                "ranking orders documents by one score, but {} has {} outputs ({}): use predict for a score per label",
                self.source_dir.display(),
                self.num_labels(),
                self.config.id2label.join(", ")
            );
        }
        Ok(())
    }

    /// Writes an HF model folder that transformers and sentence-transformers load: weights,
    /// config.json, tokenizer files and `config_sentence_transformers.json`. Each file is
    /// written to a temporary name and renamed, weights last, so a crash never leaves a
    /// half-written file behind.
    pub fn save(&self, dir: &Path) -> Result<()> {
        if self.config.family.causal() {
            bail!("saving a causal-LM re-ranker is not supported: crossenc scores it from its own folder");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config = self.config.to_json(self.activation.torch_name());
        write_atomic(
            &dir.join("config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        let st_config = serde_json::json!({
            "__version__": { "crossenc": env!("CARGO_PKG_VERSION") },
            "activation_fn": self.activation.torch_name(),
            "model_type": "CrossEncoder",
            "default_prompt_name": null,
            "prompts": {},
        });
        write_atomic(
            &dir.join("config_sentence_transformers.json"),
            serde_json::to_string_pretty(&st_config)?.as_bytes(),
        )?;
        for name in TOKENIZER_FILES {
            let src = self.source_dir.join(name);
            if src.exists()
                && src.canonicalize()? != dir.join(name).canonicalize().unwrap_or_default()
            {
                let bytes = std::fs::read(&src)
                    .with_context(|| format!("cannot read {}", src.display()))?;
                write_atomic(&dir.join(name), &bytes)?;
            }
        }
        write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&self.tokenizer_config()?)?.as_bytes(),
        )?;
        replace_file(&dir.join("model.safetensors"), |tmp| {
            self.model.weights.save(tmp)
        })
    }

    /// The source tokenizer_config.json with our max length and token-type choice recorded.
    fn tokenizer_config(&self) -> Result<Value> {
        let path = self.source_dir.join("tokenizer_config.json");
        let mut cfg = super::read_json_opt(&path)?.unwrap_or_else(|| serde_json::json!({}));
        let obj = cfg
            .as_object_mut()
            .context("tokenizer_config.json is not an object")?;
        obj.insert("model_max_length".into(), self.tokenizer.max_length.into());
        let mut names = vec!["input_ids"];
        if self.tokenizer.with_type_ids {
            names.push("token_type_ids");
        }
        names.push("attention_mask");
        obj.insert("model_input_names".into(), names.into());
        Ok(cfg)
    }
}

/// The tokenizer files that [`CrossEncoder::save`] copies from the source folder.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "merges.txt",
    "vocab.json",
];

/// Every file [`CrossEncoder::save`] writes.
pub fn saved_files() -> impl Iterator<Item = &'static str> {
    [
        "config.json",
        "config_sentence_transformers.json",
        "tokenizer_config.json",
        "model.safetensors",
    ]
    .into_iter()
    .chain(TOKENIZER_FILES)
}

/// The tokens whose logits score a causal-LM re-ranker: the `LogitScore` module's in
/// `modules.json` (as sentence-transformers saves one), else "yes" and "no", as
/// sentence-transformers picks for a bare causal LM.
fn logit_score_tokens(dir: &Path, tokenizer: &PairTokenizer) -> Result<(u32, Option<u32>)> {
    let modules_path = dir.join("modules.json");
    let modules = super::read_json_opt(&modules_path)?;
    let module = modules.as_ref().and_then(Value::as_array).and_then(|list| {
        list.iter().find(|m| {
            m.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("LogitScore"))
        })
    });
    if let Some(module) = module {
        let path = dir
            .join(module.get("path").and_then(Value::as_str).unwrap_or(""))
            .join("config.json");
        let cfg = super::read_json(&path)?;
        let id = |key: &str| -> Result<Option<u32>> {
            match cfg.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|v| Some(v as u32))
                    .with_context(|| format!("{}: \"{key}\" must be a token id", path.display())),
            }
        };
        let yes = id("true_token_id")?
            .with_context(|| format!("{}: missing \"true_token_id\"", path.display()))?;
        return Ok((yes, id("false_token_id")?));
    }
    match (tokenizer.token_id("yes"), tokenizer.token_id("no")) {
        (Some(yes), Some(no)) => Ok((yes, Some(no))),
        _ => bail!(
            "{} has no LogitScore module in modules.json and its tokenizer lacks the \"yes\" and \"no\" tokens to score with",
            dir.display()
        ),
    }
}

/// `activation_fn` from `config_sentence_transformers.json` or config.json's
/// `sentence_transformers` entry, else the default for the label count.
fn read_activation(dir: &Path, config: &Config) -> Result<Activation> {
    let st_path = dir.join("config_sentence_transformers.json");
    let from_st = if let Some(v) = super::read_json_opt(&st_path)? {
        v.get("activation_fn")
            .and_then(Value::as_str)
            .map(|s| (s.to_string(), st_path.clone()))
    } else {
        None
    };
    let from_cfg = || {
        config
            .raw
            .get("sentence_transformers")
            .and_then(|s| s.get("activation_fn"))
            .and_then(Value::as_str)
            .map(|s| (s.to_string(), dir.join("config.json")))
    };
    match from_st.or_else(from_cfg) {
        Some((name, file)) => Activation::parse(&name).with_context(|| {
            format!(
                "{}: unknown activation_fn \"{name}\" (known: Sigmoid, Identity, Tanh, Softmax)",
                file.display()
            )
        }),
        None => Ok(Activation::default_for(config.num_labels())),
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, |tmp| {
        std::fs::write(tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Has `write` fill a temporary file beside `path`, then renames it into place; on any
/// failure the temporary file is removed, so a failed write leaves `path` as it was.
pub fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
