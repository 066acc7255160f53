//! Pair encoding, truncation and packing, as the reference tokenizes for a cross-encoder: with
//! the tokenizer's pair template for the encoders, through the chat template for causal-LM
//! re-rankers ([`ChatTemplate`]).

use crate::setting::Setting;
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;
use tokenizers::{
    EncodeInput, Encoding, PostProcessor, Token, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use unicode_segmentation::GraphemeCursor;

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

    /// Checks the batch against a model before it indexes a table with it: no empty sequence,
    /// every id below `vocab`, no sequence longer than `longest` (the positions the model
    /// has), so that a tokenizer that does not match the weights is an error, not a bad read.
    pub fn check(&self, vocab: usize, longest: usize) -> Result<()> {
        let lens = (0..self.sequences()).map(|s| self.sequence(s).len());
        if lens.clone().any(|l| l == 0) {
            bail!("the tokenizer produced an empty sequence (no special tokens?)");
        }
        if let Some(id) = self.input_ids.iter().find(|&&i| i as usize >= vocab) {
            bail!(
                "token id {id} is outside the model's vocabulary (vocab_size {vocab}): the tokenizer does not match config.json"
            );
        }
        if let Some(len) = lens.max().filter(|&l| l > longest) {
            bail!(
                "a sequence of {len} tokens is longer than the model's max_position_embeddings ({longest}): lower {set_max_length}",
                set_max_length = Setting::MaxLength
            );
        }
        Ok(())
    }
}

/// Token ids of many sequences, kept compact for data at any size: the ids back to back (u16
/// while every id fits, else u32), where each sequence ends, and where its second segment
/// (token type 1) starts. That is all a batch needs of a tokenizer's `Encoding`, which also
/// holds each token's text, offsets, word ids and masks: 100-400 times the ids' size.
#[derive(Debug, Clone)]
pub struct Sequences {
    ids: Ids,
    /// Sequence `s` holds ids `ends[s - 1]..ends[s]` (from 0 for the first).
    ends: Vec<u64>,
    /// Tokens of each sequence before its token type 1 (its length where it has none).
    first_segment: Vec<u32>,
    /// Whether [`Sequences::pack`] gives the model token type ids.
    with_type_ids: bool,
    /// The first sequence the tokenizer truncated.
    first_truncated: Option<usize>,
}

#[derive(Debug, Clone)]
enum Ids {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl Sequences {
    pub fn new(with_type_ids: bool) -> Self {
        Sequences {
            ids: Ids::U16(Vec::new()),
            ends: Vec::new(),
            first_segment: Vec::new(),
            with_type_ids,
            first_truncated: None,
        }
    }

    /// Sequences held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn range(&self, s: usize) -> std::ops::Range<usize> {
        let start = match s {
            0 => 0,
            _ => self.ends[s - 1] as usize,
        };
        start..self.ends[s] as usize
    }

    /// Tokens in all the sequences.
    pub fn tokens(&self) -> usize {
        self.ends.last().copied().unwrap_or(0) as usize
    }

    /// Tokens in sequence `s`.
    pub fn seq_len(&self, s: usize) -> usize {
        self.range(s).len()
    }

    /// The ids of sequence `s`.
    pub fn ids(&self, s: usize) -> Vec<u32> {
        let r = self.range(s);
        match &self.ids {
            Ids::U16(v) => v[r].iter().map(|&i| u32::from(i)).collect(),
            Ids::U32(v) => v[r].to_vec(),
        }
    }

    /// The token type ids of sequence `s`.
    pub fn type_ids(&self, s: usize) -> Vec<u32> {
        let first = self.first_segment[s] as usize;
        (0..self.seq_len(s))
            .map(|k| u32::from(k >= first))
            .collect()
    }

    /// Adds an encoding. Its token types must be a first segment of 0 and a second of 1 (as
    /// every pair template has them), since that is all that is kept of them.
    pub fn push(&mut self, e: &Encoding) -> Result<()> {
        let types = e.get_type_ids();
        let first = types.iter().take_while(|&&t| t == 0).count();
        if types[first..].iter().any(|&t| t != 1) {
            bail!("the tokenizer gave token types {types:?}: a pair's types must be 0s, then 1s");
        }
        if self.first_truncated.is_none() && !e.get_overflowing().is_empty() {
            self.first_truncated = Some(self.len());
        }
        self.push_ids(e.get_ids(), first as u32);
        Ok(())
    }

    /// The first sequence cut at the max length, if any.
    pub fn first_truncated(&self) -> Option<usize> {
        self.first_truncated
    }

    /// Adds `other`'s sequences after these.
    pub fn append(&mut self, other: &Sequences) {
        if self.first_truncated.is_none() {
            self.first_truncated = other.first_truncated.map(|s| s + self.len());
        }
        let base = self.tokens() as u64;
        if let (Ids::U16(v), Ids::U32(_)) = (&self.ids, &other.ids) {
            self.ids = Ids::U32(v.iter().map(|&i| u32::from(i)).collect());
        }
        match (&mut self.ids, &other.ids) {
            (Ids::U16(a), Ids::U16(b)) => a.extend_from_slice(b),
            (Ids::U32(a), Ids::U16(b)) => a.extend(b.iter().map(|&i| u32::from(i))),
            (Ids::U32(a), Ids::U32(b)) => a.extend_from_slice(b),
            (Ids::U16(_), Ids::U32(_)) => unreachable!("widened above"),
        }
        self.ends.extend(other.ends.iter().map(|e| e + base));
        self.first_segment.extend_from_slice(&other.first_segment);
    }

    fn push_ids(&mut self, ids: &[u32], first_segment: u32) {
        if let Ids::U16(v) = &self.ids {
            if ids.iter().any(|&i| i > u32::from(u16::MAX)) {
                self.ids = Ids::U32(v.iter().map(|&i| u32::from(i)).collect());
            }
        }
        match &mut self.ids {
            Ids::U16(v) => v.extend(ids.iter().map(|&i| i as u16)),
            Ids::U32(v) => v.extend_from_slice(ids),
        }
        let total = self.ends.last().copied().unwrap_or(0) + ids.len() as u64;
        self.ends.push(total);
        self.first_segment.push(first_segment);
    }

    /// The batch of sequences `picks`, in that order.
    pub fn pack(&self, picks: impl IntoIterator<Item = usize>) -> Tokens {
        let mut t = Tokens {
            offsets: vec![0],
            token_type_ids: self.with_type_ids.then(Vec::new),
            ..Tokens::default()
        };
        for s in picks {
            let r = self.range(s);
            match &self.ids {
                Ids::U16(v) => t.input_ids.extend(v[r].iter().map(|&i| u32::from(i))),
                Ids::U32(v) => t.input_ids.extend_from_slice(&v[r]),
            }
            if let Some(types) = &mut t.token_type_ids {
                types.extend(self.type_ids(s));
            }
            t.offsets.push(t.input_ids.len());
        }
        t
    }
}

/// The model's tokenizer, set up for pairs: longest-first truncation at `max_length`, no padding
/// (batches are packed: see [`Tokens`]).
#[derive(Clone)]
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    /// The same truncating from the left, keeping a text's end (TEI's `truncation_direction`).
    left: Tokenizer,
    /// The same without truncation, to count a text's tokens.
    counter: Tokenizer,
    pub max_length: usize,
    /// Whether the HF tokenizer returns `token_type_ids` (its `model_input_names`).
    pub with_type_ids: bool,
    /// A causal-LM re-ranker's prompt; `None` for the encoders.
    chat: Option<Arc<ChatTemplate>>,
}

impl PairTokenizer {
    /// Reads `tokenizer.json` (and `tokenizer_config.json`, `sentence_bert_config.json` when
    /// present) from a model folder. `max_length` overrides the folder's own limit.
    pub fn from_dir(dir: &Path, cfg: &Config, max_length: Option<usize>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let tok_cfg = super::read_json_opt(&dir.join("tokenizer_config.json"))?;
        let chat = match cfg.family.causal() {
            true => Some(Arc::new(ChatTemplate::from_dir(
                dir,
                &tokenizer,
                tok_cfg.as_ref(),
            )?)),
            false => None,
        };
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
        // Tokens that a pair takes besides its text: the special tokens, or the chat template's
        // tail (the prompt's head may be truncated away with the text, as the reference does).
        let special = match &chat {
            Some(c) => c.suffix.len(),
            None => tokenizer
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(true)),
        };
        if max_length <= special {
            bail!(
                "max length {max_length} leaves no room for text: a pair takes {special} special tokens ({set_max_length} must be at least {})",
                special + 1,
                set_max_length = Setting::MaxLength
            );
        }
        let mut counter = tokenizer.clone();
        // The file's own truncation, if any, would cap the count.
        counter
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        counter.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        let mut left = tokenizer.clone();
        left.with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Left,
        }))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(PairTokenizer {
            tokenizer,
            left,
            counter,
            max_length,
            with_type_ids: returns_type_ids(tok_cfg.as_ref(), cfg),
            chat,
        })
    }

    /// Bytes of a text beyond which it is cut before it is tokenized (see [`Self::head`]).
    pub fn head_bytes(&self) -> usize {
        self.max_length.saturating_mul(HEAD_BYTES_PER_TOKEN)
    }

    /// Tokens of `text` alone, without special tokens.
    fn count(&self, text: &str) -> Result<usize> {
        Ok(self.encode_alone(text)?.len())
    }

    fn encode_alone(&self, text: &str) -> Result<Encoding> {
        self.counter
            .encode(text, false)
            .map_err(|e| anyhow!("tokenization failed: {e}"))
    }

    /// The shortest of `text`'s prefixes cut at a word boundary near `bytes`, `2 · bytes`, ...
    /// whose tokens before its last word number more than `floor` (or the whole text), with
    /// that number. Those tokens are the whole text's first ones (a cut may change only the
    /// word it falls in): truncated to the max length, the prefix encodes as the whole text
    /// does, for the cost of a prefix rather than of the text (a 5 MB document tokenized whole
    /// took 1.2 GB and 5 s). The growth stops at [`HEAD_GROWTH`] times `bytes`: a text whose
    /// first words there tokenize to so few tokens (one unbroken "word" of thousands of
    /// characters, which WordPiece reads as one `[UNK]`) is taken as that prefix, so that the
    /// work is bounded whatever the text holds.
    fn prefix_over<'t>(
        &self,
        text: &'t str,
        bytes: usize,
        floor: usize,
    ) -> Result<(&'t str, usize)> {
        let bytes = bytes.max(1);
        let mut size = bytes;
        loop {
            let head = cut_at_word(text, size);
            let whole = head.len() == text.len();
            let last = size >= bytes.saturating_mul(HEAD_GROWTH);
            let e = self.encode_alone(head)?;
            let n = match whole || last {
                true => e.len(),
                false => before_last_word(&e),
            };
            if n > floor || whole || last {
                return Ok((head, n));
            }
            size = size.saturating_mul(2);
        }
    }

    /// A text as it is tokenized: whole, or past [`Self::head_bytes`] its prefix that keeps
    /// the first `max_length` tokens.
    fn head<'t>(&self, text: &'t str) -> Result<&'t str> {
        match text.len() > self.head_bytes() {
            true => Ok(self
                .prefix_over(text, self.head_bytes(), self.max_length)?
                .0),
            false => Ok(text),
        }
    }

    /// A text as it is tokenized when truncated from the left: whole, or past
    /// [`Self::head_bytes`] its shortest suffix cut at a word boundary (growing as
    /// [`Self::prefix_over`] does) whose tokens after its first word number more than
    /// `max_length`: those are the whole text's last tokens.
    fn tail<'t>(&self, text: &'t str) -> Result<&'t str> {
        let bytes = self.head_bytes().max(1);
        let mut size = bytes;
        loop {
            let tail = cut_at_word_from_end(text, size);
            let whole = tail.len() == text.len();
            if whole || size >= bytes.saturating_mul(HEAD_GROWTH) {
                return Ok(tail);
            }
            if after_first_word(&self.encode_alone(tail)?) > self.max_length {
                return Ok(tail);
            }
            size = size.saturating_mul(2);
        }
    }

    /// A text as it is tokenized alone, truncated from `direction`.
    fn cut<'t>(&self, text: &'t str, direction: TruncationDirection) -> Result<&'t str> {
        match direction {
            TruncationDirection::Left => self.tail(text),
            TruncationDirection::Right => self.head(text),
        }
    }

    /// A pair as it is tokenized: each text as [`Self::head`] cuts it, the cut one then kept
    /// longer in tokens than the other where its whole text is (longest-first truncation gives
    /// the odd token to the longer text). Where both are cut, the one of more bytes is taken
    /// as the longer.
    fn pair_heads<'t>(&self, a: &'t str, b: &'t str) -> Result<(&'t str, &'t str)> {
        let cap = self.head_bytes();
        let (cut_a, cut_b) = (a.len() > cap, b.len() > cap);
        if !(cut_a || cut_b) {
            return Ok((a, b));
        }
        let side = |t: &'t str, cut: bool| match cut {
            true => self.prefix_over(t, cap, self.max_length),
            false => Ok((t, self.count(t)?)),
        };
        let ((mut ha, na), (mut hb, nb)) = (side(a, cut_a)?, side(b, cut_b)?);
        if cut_a && (!cut_b || a.len() > b.len()) && na <= nb {
            ha = self.prefix_over(a, 2 * ha.len(), nb)?.0;
        } else if cut_b && (!cut_a || b.len() > a.len()) && nb <= na {
            hb = self.prefix_over(b, 2 * hb.len(), na)?.0;
        }
        Ok((ha, hb))
    }

    /// Encodes pairs in parallel, in input order.
    pub fn encode_pairs<S: AsRef<str>>(&self, pairs: &[(S, S)]) -> Result<Sequences> {
        self.in_chunks(pairs, |pairs| {
            let Some(chat) = &self.chat else {
                let heads = pairs
                    .iter()
                    .map(|(a, b)| self.pair_heads(a.as_ref(), b.as_ref()))
                    .collect::<Result<Vec<_>>>()?;
                return self.encode(
                    &self.tokenizer,
                    heads
                        .into_iter()
                        .map(|(a, b)| EncodeInput::Dual(a.into(), b.into()))
                        .collect(),
                );
            };
            // The prompt is cut as one sequence: each text needs only its first `max_length`
            // tokens.
            let texts = pairs
                .iter()
                .map(|(a, b)| Ok((self.head(a.as_ref())?, self.head(b.as_ref())?)))
                .collect::<Result<Vec<_>>>()?;
            let prompts = texts
                .par_iter()
                .map(|(a, b)| chat.render(a, b))
                .collect::<Result<Vec<_>>>()?;
            let encodings = self
                .tokenizer
                .encode_batch(prompts, false)
                .map_err(|e| anyhow!("tokenization failed: {e}"))?;
            Ok(encodings
                .into_iter()
                .map(|e| match e.len() < self.max_length {
                    true => e,
                    false => chat.restore_suffix(&e, &self.tokenizer),
                })
                .collect())
        })
    }

    /// The id of `token` in the vocabulary, if it is one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Encodes single texts (a bi-encoder's input) in parallel, in input order.
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Sequences> {
        self.in_chunks(texts, |texts| {
            let heads = texts
                .iter()
                .map(|t| self.head(t.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            self.encode(
                &self.tokenizer,
                heads
                    .into_iter()
                    .map(|t| EncodeInput::Single(t.into()))
                    .collect(),
            )
        })
    }

    /// Encodes texts alone (`None`) and pairs, in input order, truncating from `direction`
    /// (left keeps a text's end, each text's own with longest-first truncation). A causal-LM
    /// re-ranker scores pairs only, its prompt truncated from the right (the template's head
    /// and tail must stay).
    pub fn encode_inputs<S: AsRef<str>>(
        &self,
        inputs: &[(S, Option<S>)],
        direction: TruncationDirection,
    ) -> Result<Sequences> {
        if self.chat.is_some() {
            if direction == TruncationDirection::Left {
                bail!("a causal-LM re-ranker truncates its prompt from the right only");
            }
            let pairs = inputs
                .iter()
                .map(|(a, b)| match b {
                    Some(b) => Ok((a.as_ref(), b.as_ref())),
                    None => bail!("a causal-LM re-ranker scores pairs only, not a text alone"),
                })
                .collect::<Result<Vec<_>>>()?;
            return self.encode_pairs(&pairs);
        }
        let tokenizer = match direction {
            TruncationDirection::Left => &self.left,
            TruncationDirection::Right => &self.tokenizer,
        };
        self.in_chunks(inputs, |inputs| {
            let inputs = inputs
                .iter()
                .map(|(a, b)| match (b, direction) {
                    (None, _) => Ok(EncodeInput::Single(self.cut(a.as_ref(), direction)?.into())),
                    (Some(b), TruncationDirection::Right) => {
                        let (a, b) = self.pair_heads(a.as_ref(), b.as_ref())?;
                        Ok(EncodeInput::Dual(a.into(), b.into()))
                    }
                    (Some(b), TruncationDirection::Left) => {
                        let (a, b) = (self.tail(a.as_ref())?, self.tail(b.as_ref())?);
                        Ok(EncodeInput::Dual(a.into(), b.into()))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            self.encode(tokenizer, inputs)
        })
    }

    /// `encode` run on [`ENCODE_CHUNK`] items at a time, each chunk's encodings kept as
    /// [`Sequences`] and dropped: they never all exist at once.
    fn in_chunks<T>(
        &self,
        items: &[T],
        encode: impl Fn(&[T]) -> Result<Vec<Encoding>>,
    ) -> Result<Sequences> {
        let mut out = Sequences::new(self.with_type_ids);
        for chunk in items.chunks(ENCODE_CHUNK) {
            for e in encode(chunk)? {
                out.push(&e)?;
            }
        }
        Ok(out)
    }

    fn encode(&self, tokenizer: &Tokenizer, inputs: Vec<EncodeInput>) -> Result<Vec<Encoding>> {
        tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|e| anyhow!("tokenization failed: {e}"))
    }
}

/// Items a tokenizer call encodes at once: enough for every core, few enough that their
/// `Encoding`s (several KB each) stay a few MB.
const ENCODE_CHUNK: usize = 1024;

/// Bytes per token of max length past which a text is cut before it is tokenized: English
/// runs 4-6 bytes a token; a text whose prefix tokenizes shorter is cut again at twice the size.
const HEAD_BYTES_PER_TOKEN: usize = 8;

/// How far [`PairTokenizer::prefix_over`] grows a prefix: up to this many times the first cut.
const HEAD_GROWTH: usize = 4;

/// Tokens of `e` before its last pre-tokenized word: a cut in that word may tokenize it
/// otherwise than the whole text does, never the words before it.
fn before_last_word(e: &Encoding) -> usize {
    let words = e.get_word_ids();
    match words.iter().rev().find_map(|w| *w) {
        Some(last) => words.iter().take_while(|w| **w != Some(last)).count(),
        None => e.len(),
    }
}

/// Tokens of `e` after its first pre-tokenized word: [`before_last_word`] for a suffix.
fn after_first_word(e: &Encoding) -> usize {
    let words = e.get_word_ids();
    match words.iter().find_map(|w| *w) {
        Some(first) => words
            .iter()
            .rev()
            .take_while(|w| **w != Some(first))
            .count(),
        None => e.len(),
    }
}

/// `text`'s last `bytes` or so, cut as [`cut_at_word`] cuts its head: after the first
/// whitespace (else other non-alphanumeric character) of the first half of that suffix, else at
/// a grapheme boundary.
fn cut_at_word_from_end(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let start = floor_grapheme(text, text.len() - bytes);
    let end = floor_grapheme(text, start + (text.len() - start) / 2);
    let boundary = word_break(text, start..end, false).unwrap_or(start);
    &text[boundary..]
}

/// `text` cut near `bytes`, always between two graphemes (a character with its combining
/// marks, an emoji sequence, a flag): before the last whitespace of the second half of its
/// first `bytes`, else before its last other non-alphanumeric character (both end a word for
/// every pre-tokenizer), else at the last grapheme boundary.
fn cut_at_word(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let end = floor_grapheme(text, bytes);
    let start = floor_grapheme(text, end / 2);
    let boundary = word_break(text, start..end, true)
        .filter(|&i| i > 0)
        .unwrap_or(end);
    &text[..boundary]
}

/// The first (or `last`) place in `text[window]` where a word ends, between two graphemes:
/// before a whitespace, else before another non-alphanumeric character.
fn word_break(text: &str, window: std::ops::Range<usize>, last: bool) -> Option<usize> {
    let at = |word_end: fn(char) -> bool| {
        let mut chars = text[window.clone()]
            .char_indices()
            .map(|(i, c)| (window.start + i, c));
        let ends = |&(i, c): &(usize, char)| word_end(c) && floor_grapheme(text, i) == i;
        match last {
            true => chars.rfind(ends),
            false => chars.find(ends),
        }
        .map(|(i, _)| i)
    };
    at(char::is_whitespace).or_else(|| at(|c| !c.is_alphanumeric()))
}

/// The last grapheme boundary of `text` at or before byte `pos`.
fn floor_grapheme(text: &str, pos: usize) -> usize {
    let pos = text.floor_char_boundary(pos);
    let mut cursor = GraphemeCursor::new(pos, text.len(), true);
    // The whole text is the cursor's one chunk, so it never asks for more context.
    match cursor.is_boundary(text, 0) {
        Ok(true) | Err(_) => pos,
        Ok(false) => cursor.prev_boundary(text, 0).ok().flatten().unwrap_or(0),
    }
}

/// The work one render of a chat template may do (minijinja's fuel: about one unit per
/// instruction and per 64 bytes of text made), which bounds its time and its memory (about
/// 64 MB). A real re-ranker's template spends a few hundred units plus its texts' size.
const TEMPLATE_FUEL: u64 = 1_000_000;

/// A causal-LM re-ranker's prompt, as sentence-transformers builds it: a pair becomes the
/// messages `[{role: query, content: a}, {role: document, content: b}]`, rendered by the model's
/// chat template (Jinja, as transformers renders it: blocks trimmed, Python's string methods) and
/// tokenized without special tokens. A prompt cut at the max length gets the template's fixed
/// tail written back over its last tokens (sentence-transformers' `restore_suffix`): the score is
/// read at the last token, which must stay the template's.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    /// Where the template came from, for errors.
    name: String,
    /// The special tokens the template may name (`eos_token`, ...), from tokenizer_config.json.
    specials: Map<String, Value>,
    /// The template's tail: the tokens every prompt ends with.
    suffix: Vec<u32>,
}

impl ChatTemplate {
    /// From `chat_template.jinja`, or `chat_template` in tokenizer_config.json.
    fn from_dir(dir: &Path, tokenizer: &Tokenizer, tok_cfg: Option<&Value>) -> Result<Self> {
        let file = dir.join("chat_template.jinja");
        let name = match file.exists() {
            true => file.display().to_string(),
            false => format!(
                "{}'s \"chat_template\"",
                dir.join("tokenizer_config.json").display()
            ),
        };
        let source = match file.exists() {
            true => std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?,
            false => match tok_cfg.and_then(|c| c.get("chat_template")) {
                Some(Value::String(s)) => s.clone(),
                // A list of named templates: the default one.
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string)
                    .context("tokenizer_config.json lists chat templates but none named \"default\"")?,
                _ => bail!(
                    "{} holds a causal LM but no chat template (chat_template.jinja or tokenizer_config.json's \"chat_template\"): crossenc renders each pair through one, as sentence-transformers does",
                    dir.display()
                ),
            },
        };
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?;
        env.set_syntax(syntax);
        // A template is input like any other: its loops and the text it builds are bounded.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source)
            .with_context(|| format!("the chat template {name} does not parse"))?;
        let specials = tok_cfg
            .and_then(Value::as_object)
            .map(|c| {
                c.iter()
                    .filter(|(k, _)| k.ends_with("_token"))
                    .filter_map(|(k, v)| {
                        let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
                        Some((k.clone(), Value::from(text)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut chat = ChatTemplate {
            env,
            name,
            specials,
            suffix: Vec::new(),
        };
        // A template that renders only the chat roles (system, user, assistant) would score
        // prompts holding neither text: refused, as sentence-transformers refuses it.
        let (query, document) = ("crossenc-query-probe", "crossenc-document-probe");
        let probe = chat.render(query, document)?;
        if !(probe.contains(query) && probe.contains(document)) {
            bail!(
                "the chat template of {} does not render a pair's \"query\" and \"document\" messages (sentence-transformers' roles for a causal-LM re-ranker): give the folder a chat_template.jinja that does, e.g. with messages | selectattr(\"role\", \"eq\", \"query\")",
                dir.display()
            );
        }
        chat.suffix = chat.tail(tokenizer)?;
        Ok(chat)
    }

    /// The prompt of one pair.
    fn render(&self, query: &str, document: &str) -> Result<String> {
        let mut ctx = self.specials.clone();
        ctx.insert(
            "messages".into(),
            json!([{"role": "query", "content": query}, {"role": "document", "content": document}]),
        );
        ctx.insert("add_generation_prompt".into(), Value::from(false));
        let rendered = self
            .env
            .get_template("chat")?
            .render(minijinja::value::Serde(Value::Object(ctx)));
        rendered.map_err(|e| match e.kind() {
            minijinja::ErrorKind::OutOfFuel => anyhow!(
                "the chat template {} did more work on one pair than the limit of {TEMPLATE_FUEL} steps (about that many instructions, or 64 bytes of text each): a re-ranker's template renders two messages, it does not loop without bound",
                self.name
            ),
            _ => anyhow!(e).context(format!(
                "the chat template {} failed on a pair (it must render the \"query\" and \"document\" roles)",
                self.name
            )),
        })
    }

    /// The tokens every prompt ends with: the longest common tail of two prompts whose texts
    /// tokenize differently (sentence-transformers' fillers), if the texts leave one.
    fn tail(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        let ids = |filler: &str| -> Result<Vec<u32>> {
            let text = self.render(filler, filler)?;
            let enc = tokenizer
                .encode(text, false)
                .map_err(|e| anyhow!("tokenization failed: {e}"))?;
            Ok(enc.get_ids().to_vec())
        };
        let (first, second) = (ids("0")?, ids("1 2 3 4")?);
        let common = first
            .iter()
            .rev()
            .zip(second.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        Ok(match common > 0 && common < first.len().min(second.len()) {
            true => first[first.len() - common..].to_vec(),
            false => Vec::new(),
        })
    }

    /// `e` (cut at the max length) with its last tokens replaced by the template's tail.
    fn restore_suffix(&self, e: &Encoding, tokenizer: &Tokenizer) -> Encoding {
        let keep = self.suffix.len().min(e.len());
        let start = e.len() - keep;
        let tokens = e
            .get_ids()
            .iter()
            .zip(e.get_offsets())
            .enumerate()
            .map(|(i, (&id, &offsets))| {
                let id = match i >= start {
                    true => self.suffix[self.suffix.len() - keep + i - start],
                    false => id,
                };
                let value = tokenizer.id_to_token(id).unwrap_or_default();
                Token::new(id, value, offsets)
            })
            .collect();
        Encoding::from_tokens(tokens, 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(ids: &[u32], types: &[u32]) -> Encoding {
        let n = ids.len();
        let (tokens, words) = (vec![String::new(); n], vec![None; n]);
        let masks = (vec![0; n], vec![1; n]);
        let ranges = Default::default();
        Encoding::new(
            ids.to_vec(),
            types.to_vec(),
            tokens,
            words,
            vec![(0, 0); n],
            masks.0,
            masks.1,
            vec![],
            ranges,
        )
    }

    #[test]
    fn sequences_pack_as_their_encodings_and_widen_past_u16() {
        let encodings = [
            encoding(&[101, 7, 102, 9, 102], &[0, 0, 0, 1, 1]),
            encoding(&[0, 5, 2], &[0, 0, 0]),
            encoding(&[101, 70_000, 102, 3, 102], &[0, 0, 0, 1, 1]),
        ];
        for with_types in [true, false] {
            let mut seqs = Sequences::new(with_types);
            for e in &encodings[..2] {
                seqs.push(e).unwrap();
            }
            assert!(matches!(seqs.ids, Ids::U16(_)));
            seqs.push(&encodings[2]).unwrap();
            assert!(matches!(seqs.ids, Ids::U32(_)));
            let tokens = seqs.pack([2, 0]);
            let picked = [&encodings[2], &encodings[0]];
            let ids: Vec<u32> = picked.iter().flat_map(|e| e.get_ids().to_vec()).collect();
            let types: Vec<u32> = picked
                .iter()
                .flat_map(|e| e.get_type_ids().to_vec())
                .collect();
            assert_eq!(tokens.input_ids, ids);
            assert_eq!(tokens.token_type_ids, with_types.then_some(types));
            assert_eq!(tokens.offsets, [0, 5, 10]);
            assert_eq!((seqs.len(), seqs.tokens(), seqs.seq_len(1)), (3, 13, 3));
            let mut joined = Sequences::new(with_types);
            joined.append(&seqs);
            joined.append(&seqs);
            assert_eq!(joined.pack([5]).input_ids, encodings[2].get_ids());
            assert_eq!(joined.pack(0..6).input_ids.len(), 26);
            let mut narrow = Sequences::new(with_types);
            narrow.push(&encodings[0]).unwrap();
            joined.append(&narrow);
            assert_eq!(joined.pack([6]).input_ids, encodings[0].get_ids());
            assert_eq!(joined.type_ids(6), encodings[0].get_type_ids());
        }
    }

    #[test]
    fn token_types_other_than_two_segments_are_refused() {
        let err = Sequences::new(true)
            .push(&encoding(&[1, 2, 3], &[0, 1, 0]))
            .unwrap_err();
        assert!(err.to_string().contains("0s, then 1s"), "{err}");
    }
}
