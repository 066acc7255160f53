//! Checksums of what every rank of a data-parallel run must share, for [`super::group::agree`]:
//! ranks started with a different executable, settings, data, model or checkpoint would take
//! different steps and sum their gradients all the same.

use anyhow::{Context, Result};
use crc32fast::Hasher;
use std::io::BufRead;
use std::sync::Arc;

use super::{group, TrainConfig};
use crate::progress::Silent;
use crate::CrossEncoder;

/// A fact and its checksum.
pub type Fact = (&'static str, u32);

/// What the ranks must agree on before training: this process's executable file, the
/// settings, the tokenized training data with its labels, and the model's starting weights.
pub fn start(ce: &CrossEncoder, train: &super::TrainData, cfg: &TrainConfig) -> Result<Vec<Fact>> {
    let settings = TrainConfig {
        progress: Arc::new(Silent),
        group: Arc::new(group::Single),
        ..cfg.clone()
    };
    let settings = format!("{settings:?} {:?} {}", ce.config, ce.tokenizer.max_length);
    let mut data = Hasher::new();
    let mut bytes = Vec::new();
    for (s, &label) in train.labels.iter().enumerate() {
        bytes.clear();
        let ids = train.sequences.ids(s);
        bytes.extend(ids.iter().flat_map(|id| id.to_le_bytes()));
        bytes.extend((ids.len() as u32).to_le_bytes());
        bytes.extend((label as f32).to_le_bytes());
        data.update(&bytes);
    }
    Ok(vec![
        ("executable", executable()?),
        ("settings", crc32fast::hash(settings.as_bytes())),
        (
            "training data (as tokenized, with its labels)",
            data.finalize(),
        ),
        ("model's weights", {
            let mut h = Hasher::new();
            add_weights(&mut h, &ce.model.weights.data);
            h.finalize()
        }),
    ])
}

/// Where a resumed run starts: its step and weights.
pub fn resumed(step: usize, w: &[f32]) -> Fact {
    let mut h = Hasher::new();
    h.update(&(step as u64).to_le_bytes());
    add_weights(&mut h, w);
    (
        "checkpoint to resume from (each rank reads it from the output folder, which every rank must share)",
        h.finalize(),
    )
}

fn add_weights(h: &mut Hasher, w: &[f32]) {
    let mut bytes = Vec::new();
    for chunk in w.chunks(1 << 16) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&bytes);
    }
}

/// The checksum of the file this process runs.
fn executable() -> Result<u32> {
    let path = std::env::current_exe().context("cannot find this process's executable")?;
    let read = || -> std::io::Result<u32> {
        let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
        let mut h = Hasher::new();
        loop {
            let buf = file.fill_buf()?;
            if buf.is_empty() {
                return Ok(h.finalize());
            }
            h.update(buf);
            let n = buf.len();
            file.consume(n);
        }
    };
    read().with_context(|| format!("cannot read {}", path.display()))
}
