//! Word + position (+ token-type) embeddings, LayerNorm and dropout, forward and backward. The
//! family differences of the encoder input live here: RoBERTa's position ids, DistilBERT's
//! missing token types, ELECTRA's projection, GTE's missing position table (its positions are
//! rotary, in the attention).

use crate::setting::Setting;
use anyhow::{bail, Result};
use std::ops::Range;

use super::config::{Config, Family};
use super::encoder::Scratch;
use super::tokenize::Tokens;
use super::weights::Weights;
use super::{fit, LayerNorm, Linear};
use crate::ops::dropout::sites;
use crate::ops::linear::InputGrad;
use crate::ops::{dropout, Dropout, Pass};

pub struct Embeddings {
    word_embeddings: Range<usize>,
    /// `None` where positions are rotary (GTE) or relative only (DeBERTa-v3).
    position_embeddings: Option<Range<usize>>,
    token_type_embeddings: Option<Range<usize>>,
    layer_norm: LayerNorm,
    /// ELECTRA's `embeddings_project`, when `embedding_size != hidden_size`.
    embeddings_project: Option<Linear>,
    family: Family,
    pad_token_id: u32,
    dropout: f64,
    /// Rows of the three tables, to check ids against.
    vocab: usize,
    positions: usize,
    types: usize,
    /// Embedding width (`embedding_size`).
    e: usize,
}

/// What the embeddings' backward needs.
#[derive(Default)]
pub struct EmbeddingActs {
    positions: Vec<u32>,
    /// Sum of the three embeddings (LayerNorm's input) and its row stats, `[n, e]`.
    z: Vec<f32>,
    stats: Vec<f32>,
    /// LayerNorm's output after dropout: the projection's input (ELECTRA only).
    y: Vec<f32>,
}

impl Embeddings {
    pub fn new(cfg: &Config, w: &Weights) -> Result<Self> {
        let base = cfg.family.base_prefix();
        let pre = format!("{base}.embeddings");
        let e = cfg.embedding_size;
        let table = |name: &str, rows: usize| w.slot(&format!("{pre}.{name}.weight"), &[rows, e]);
        let token_type_embeddings = match cfg.type_vocab_size {
            0 => None,
            n => Some(table("token_type_embeddings", n)?),
        };
        let embeddings_project = if cfg.family == Family::Electra && e != cfg.hidden_size {
            let name = format!("{base}.embeddings_project");
            Some(Linear::new(w, &name, e, cfg.hidden_size)?)
        } else {
            None
        };
        Ok(Embeddings {
            word_embeddings: table("word_embeddings", cfg.vocab_size)?,
            position_embeddings: match cfg.position_table() {
                true => Some(table("position_embeddings", cfg.max_position_embeddings)?),
                false => None,
            },
            token_type_embeddings,
            layer_norm: LayerNorm::new(w, &format!("{pre}.LayerNorm"), e, cfg.layer_norm_eps)?,
            embeddings_project,
            family: cfg.family,
            pad_token_id: cfg.pad_token_id,
            dropout: cfg.hidden_dropout_prob,
            vocab: cfg.vocab_size,
            positions: cfg.max_position_embeddings,
            types: cfg.type_vocab_size,
            e,
        })
    }

    /// The word-embedding table's range in the flat buffer and its row width.
    pub fn word_table(&self) -> (Range<usize>, usize) {
        (self.word_embeddings.clone(), self.e)
    }

    /// BERT-style: 0..len per sequence. RoBERTa-style: count non-pad tokens from
    /// `padding_idx + 1`, a pad token keeps `padding_idx` (transformers'
    /// `create_position_ids_from_input_ids`).
    fn position_ids(&self, tokens: &Tokens, out: &mut Vec<u32>) {
        out.clear();
        let offset = self.family.position_offset(self.pad_token_id) as u32;
        for s in 0..tokens.sequences() {
            let ids = &tokens.input_ids[tokens.sequence(s)];
            if offset == 0 {
                out.extend(0..ids.len() as u32);
            } else {
                let mut count = 0;
                out.extend(ids.iter().map(|&id| {
                    if id == self.pad_token_id {
                        self.pad_token_id
                    } else {
                        count += 1;
                        count + self.pad_token_id
                    }
                }));
            }
        }
    }

    /// Checks that every id has a row in its table, so that a tokenizer that does not match
    /// the weights is an error instead of an out-of-bounds read.
    fn check(&self, tokens: &Tokens, positions: &[u32]) -> Result<()> {
        // The position table, not a sequence's length, bounds RoBERTa-style positions.
        tokens.check(self.vocab, usize::MAX)?;
        let over = |ids: &[u32], rows: usize| ids.iter().copied().find(|&i| i as usize >= rows);
        if let Some(p) = over(positions, self.positions) {
            bail!(
                "position {p} is outside the model's position table (max_position_embeddings {}): lower {set_max_length}",
                self.positions,
                set_max_length = Setting::MaxLength
            );
        }
        if let Some(types) = &tokens.token_type_ids {
            if let Some(t) = over(types, self.types.max(1)) {
                bail!(
                    "token type {t} is outside the model's type_vocab_size ({})",
                    self.types
                );
            }
        }
        Ok(())
    }

    /// The embedded tokens (`[n, hidden]`) into `out`, keeping what the backward needs.
    pub fn forward(
        &self,
        w: &[f32],
        tokens: &Tokens,
        out: &mut Vec<f32>,
        acts: &mut EmbeddingActs,
        pass: Option<Pass>,
    ) -> Result<()> {
        let (n, e) = (tokens.len(), self.e);
        self.position_ids(tokens, &mut acts.positions);
        self.check(tokens, &acts.positions)?;
        fit(&mut acts.z, n * e);
        fit(&mut acts.stats, 2 * n);
        let word = &w[self.word_embeddings.clone()];
        let pos = self.position_embeddings.clone().map(|r| &w[r]);
        let types = self.token_type_embeddings.clone().map(|r| &w[r]);
        for (t, z) in acts.z.chunks_exact_mut(e).enumerate() {
            let id = tokens.input_ids[t] as usize;
            z.copy_from_slice(&word[id * e..][..e]);
            if let Some(table) = pos {
                let p = acts.positions[t] as usize;
                z.iter_mut()
                    .zip(&table[p * e..][..e])
                    .for_each(|(z, b)| *z += b);
            }
            if let Some(table) = types {
                let tt = tokens.token_type_ids.as_ref().map_or(0, |v| v[t] as usize);
                z.iter_mut()
                    .zip(&table[tt * e..][..e])
                    .for_each(|(z, c)| *z += c);
            }
        }
        let drop = Dropout::tokens(pass, sites::EMBEDDINGS, self.dropout, tokens.len());
        match &self.embeddings_project {
            Some(proj) => {
                fit(&mut acts.y, n * e);
                self.layer_norm
                    .forward(w, &acts.z, &mut acts.y, &mut acts.stats);
                dropout::apply(drop, &mut acts.y);
                fit(out, n * proj.out_dim);
                proj.forward(w, &acts.y, out);
            }
            None => {
                fit(out, n * e);
                self.layer_norm.forward(w, &acts.z, out, &mut acts.stats);
                dropout::apply(drop, out);
            }
        }
        Ok(())
    }

    /// Adds the tables', LayerNorm's and projection's gradients into `g` from dL/d(output)
    /// (`dy`, used as scratch).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        w: &[f32],
        g: &mut [f32],
        tokens: &Tokens,
        acts: &EmbeddingActs,
        dy: &mut [f32],
        s: &mut Scratch,
        pass: Option<Pass>,
    ) {
        let (n, e) = (tokens.len(), self.e);
        let drop = Dropout::tokens(pass, sites::EMBEDDINGS, self.dropout, tokens.len());
        let dnorm: &mut [f32] = match &self.embeddings_project {
            Some(proj) => {
                fit(&mut s.dh2, n * e);
                proj.backward(w, g, dy, &acts.y, InputGrad::Write(&mut s.dh2));
                &mut s.dh2
            }
            None => dy,
        };
        dropout::apply(drop, dnorm);
        fit(&mut s.dh1, n * e);
        self.layer_norm
            .backward(w, g, dnorm, &acts.z, &acts.stats, &mut s.dh1);
        let mut scatter = |table: &Range<usize>, row: usize, d: &[f32]| {
            let start = table.start + row * e;
            g[start..start + e]
                .iter_mut()
                .zip(d)
                .for_each(|(a, b)| *a += b);
        };
        for (t, d) in s.dh1.chunks_exact(e).enumerate() {
            scatter(&self.word_embeddings, tokens.input_ids[t] as usize, d);
            if let Some(table) = &self.position_embeddings {
                scatter(table, acts.positions[t] as usize, d);
            }
            if let Some(table) = &self.token_type_embeddings {
                let tt = tokens.token_type_ids.as_ref().map_or(0, |v| v[t] as usize);
                scatter(table, tt, d);
            }
        }
    }
}
