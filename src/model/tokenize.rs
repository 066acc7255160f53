//! Pair encoding, truncation and packing, as the reference tokenizes for a cross-encoder.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::path::Path;
use tokenizers::{
    EncodeInput, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use super::config::Config;

/// A packed batch on the host: the tokens of every sequence back to back, no padding.
/// Sequence `s` holds tokens `offsets[s]..offsets[s + 1]`.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub input_ids: Vec<u32>,
    /// `None` when the tokenizer does not return token types; the model then uses zeros.
    pub token_type_ids: Option<Vec<u32>>,
    pub offsets: Vec<usize>,
}

impl Tokens {
    pub fn pack(encodings: &[&Encoding], with_type_ids: bool) -> Tokens {
        let n: usize = encodings.iter().map(|e| e.len()).sum();
        let (mut ids, mut types) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut offsets = Vec::with_capacity(encodings.len() + 1);
        offsets.push(0);
        for e in encodings {
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            offsets.push(ids.len());
        }
        Tokens {
            input_ids: ids,
            token_type_ids: with_type_ids.then_some(types),
            offsets,
        }
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Sequences in the batch.
    pub fn sequences(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The `[0, len)` token range of sequence `s`.
    pub fn sequence(&self, s: usize) -> std::ops::Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }
}

/// The model's tokenizer, set up for pairs: longest-first truncation at `max_length`, no padding
/// (batches are packed: see [`Tokens`]).
#[derive(Clone)]
pub struct PairTokenizer {
    tokenizer: Tokenizer,
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
        let tok_cfg = super::read_json_opt(&dir.join("tokenizer_config.json"))?;
        let st_cfg = super::read_json_opt(&dir.join("sentence_bert_config.json"))?;
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
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if max_length <= special {
            bail!(
                "max length {max_length} leaves no room for text: a pair takes {special} special tokens (--max-length must be at least {})",
                special + 1
            );
        }
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

    pub fn pack(&self, encodings: &[&Encoding]) -> Tokens {
        Tokens::pack(encodings, self.with_type_ids)
    }
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
