//! Training pairs as a run keeps them: token ids, labels and lines, never the texts, so that
//! a million pairs of STS-B's length take about 90 MB.

use anyhow::Result;

use crate::data::Example;
use crate::model::tokenize::{PairTokenizer, Sequences};

/// Pairs tokenized at a time while reading: their texts are dropped once tokenized.
const CHUNK: usize = 4096;

/// Tokenized training pairs with their labels and the lines they came from (for messages).
#[derive(Debug, Clone)]
pub struct TrainData {
    /// Token ids of every pair.
    pub sequences: Sequences,
    /// Each pair's label.
    pub labels: Vec<f64>,
    /// Each pair's line in its file (or position in memory), for messages.
    pub lines: Vec<usize>,
}

impl TrainData {
    /// Tokenizes `examples`.
    pub fn new(tokenizer: &PairTokenizer, examples: &[Example]) -> Result<TrainData> {
        TrainData::read(tokenizer, examples.iter().cloned().map(Ok))
    }

    /// Tokenizes examples as they are read, 4,096 at a time: memory holds their ids, not
    /// their texts.
    pub fn read(
        tokenizer: &PairTokenizer,
        examples: impl IntoIterator<Item = Result<Example>>,
    ) -> Result<TrainData> {
        let mut data = TrainData {
            sequences: Sequences::new(tokenizer.with_type_ids),
            labels: Vec::new(),
            lines: Vec::new(),
        };
        let mut examples = examples.into_iter();
        loop {
            let chunk = examples.by_ref().take(CHUNK).collect::<Result<Vec<_>>>()?;
            if chunk.is_empty() {
                break;
            }
            let pairs: Vec<(&str, &str)> =
                chunk.iter().map(|e| (e.a.as_str(), e.b.as_str())).collect();
            data.sequences.append(&tokenizer.encode_pairs(&pairs)?);
            data.labels.extend(chunk.iter().map(|e| e.label));
            data.lines.extend(chunk.iter().map(|e| e.line));
        }
        Ok(data)
    }

    /// Training pairs.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no training pairs.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Each pair's line and label, for the checks that name a bad label's line.
    pub fn labelled(&self) -> impl Iterator<Item = (usize, f64)> + Clone + '_ {
        self.lines.iter().copied().zip(self.labels.iter().copied())
    }
}
