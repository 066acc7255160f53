//! Pair encoding, truncation and padding, as the reference tokenizes for a cross-encoder.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::path::Path;
use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::config::Config;

/// A padded batch on the host: row-major `[size, seq_len]`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    /// `None` when the tokenizer does not return token types; the model then uses zeros.
    pub token_type_ids: Option<Vec<u32>>,
    pub attention_mask: Vec<u32>,
    pub size: usize,
    pub seq_len: usize,
}

impl Batch {
    /// Pads `encodings` to the longest of them (never to `max_length`).
    pub fn pad(encodings: &[&Encoding], pad_id: u32, with_type_ids: bool) -> Batch {
        let seq_len = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let n = encodings.len() * seq_len;
        let (mut ids, mut types, mut mask) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in encodings {
            let pad = seq_len - e.len();
            ids.extend_from_slice(e.get_ids());
            ids.extend(std::iter::repeat_n(pad_id, pad));
            types.extend_from_slice(e.get_type_ids());
            types.extend(std::iter::repeat_n(0, pad));
            mask.extend(std::iter::repeat_n(1, e.len()));
            mask.extend(std::iter::repeat_n(0, pad));
        }
        Batch {
            input_ids: ids,
            token_type_ids: with_type_ids.then_some(types),
            attention_mask: mask,
            size: encodings.len(),
            seq_len,
        }
    }
}

/// The model's tokenizer, set up for pairs: longest-first truncation at `max_length`, no padding
/// (batches pad themselves to their longest pair).
#[derive(Clone)]
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    pub pad_id: u32,
    pub max_length: usize,
    /// Whether the HF tokenizer returns `token_type_ids` (its `model_input_names`).
    pub with_type_ids: bool,
}

impl PairTokenizer {
    /// Reads `tokenizer.json` (and `tokenizer_config.json`, `sentence_bert_config.json` when
    /// present) from a model folder. `max_length` overrides the folder's own limit.
    pub fn from_dir(dir: &Path, cfg: &Config, max_length: Option<usize>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let tok_cfg = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let st_cfg = read_json_opt(&dir.join("sentence_bert_config.json"))?;
        let pad_id = pad_token_id(&tokenizer, tok_cfg.as_ref(), cfg);
        let folder_max = st_cfg
            .as_ref()
            .and_then(|c| c.get("max_seq_length"))
            .and_then(Value::as_u64)
            .or_else(|| {
                tok_cfg
                    .as_ref()
                    .and_then(|c| c.get("model_max_length"))
                    .and_then(Value::as_u64)
            })
            .map(|m| m as usize);
        let max_length = max_length
            .or(folder_max)
            .unwrap_or(usize::MAX)
            .min(cfg.max_positions());
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        Ok(PairTokenizer {
            tokenizer,
            pad_id,
            max_length,
            with_type_ids: returns_type_ids(tok_cfg.as_ref(), cfg),
        })
    }

    /// Encodes pairs in parallel, in input order.
    pub fn encode_pairs<S: AsRef<str>>(&self, pairs: &[(S, S)]) -> Result<Vec<Encoding>> {
        self.encode(
            pairs
                .iter()
                .map(|(a, b)| EncodeInput::Dual(a.as_ref().into(), b.as_ref().into()))
                .collect(),
        )
    }

    /// Encodes single texts (a bi-encoder's input) in parallel, in input order.
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoding>> {
        self.encode(
            texts
                .iter()
                .map(|t| EncodeInput::Single(t.as_ref().into()))
                .collect(),
        )
    }

    fn encode(&self, inputs: Vec<EncodeInput>) -> Result<Vec<Encoding>> {
        self.tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| anyhow!("tokenization failed: {e}"))
    }

    pub fn batch(&self, encodings: &[&Encoding]) -> Batch {
        Batch::pad(encodings, self.pad_id, self.with_type_ids)
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(v))
}

/// The pad id: `tokenizer_config.json`'s `pad_token` looked up in the vocabulary, else
/// config.json's `pad_token_id` (tokenizer.json files saved without padding carry neither).
fn pad_token_id(tokenizer: &Tokenizer, tok_cfg: Option<&Value>, cfg: &Config) -> u32 {
    let pad_token = tok_cfg
        .and_then(|c| c.get("pad_token"))
        .and_then(|p| match p {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("content").and_then(Value::as_str),
            _ => None,
        });
    pad_token
        .and_then(|t| tokenizer.token_to_id(t))
        .unwrap_or(cfg.pad_token_id)
}

/// transformers passes `token_type_ids` only when the tokenizer lists it in
/// `model_input_names`. The slow-tokenizer classes of BERT and ELECTRA do by default; the
/// generic `TokenizersBackend`/`PreTrainedTokenizerFast` and the RoBERTa/DistilBERT classes don't.
fn returns_type_ids(tok_cfg: Option<&Value>, cfg: &Config) -> bool {
    if cfg.type_vocab_size == 0 {
        return false;
    }
    if let Some(names) = tok_cfg
        .and_then(|c| c.get("model_input_names"))
        .and_then(Value::as_array)
    {
        return names.iter().any(|n| n.as_str() == Some("token_type_ids"));
    }
    let class = tok_cfg
        .and_then(|c| c.get("tokenizer_class"))
        .and_then(Value::as_str)
        .unwrap_or("");
    matches!(
        class.trim_end_matches("Fast"),
        "BertTokenizer" | "ElectraTokenizer" | "MobileBertTokenizer" | "LayoutLMTokenizer"
    )
}
