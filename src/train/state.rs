//! Training checkpoints: weights, AdamW moments, the step counter and the best metric so far.
//!
//! Shuffling and dropout draw from generators seeded by `(seed, epoch)` and `(seed, step)`, so
//! the step number and the seed are the whole RNG and data-order state: a resumed run replays
//! exactly what the uninterrupted run would have done.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::optim::AdamW;
use crate::model::weights::Weights;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    pub seed: u64,
    pub train_examples: usize,
    pub best_metric: Option<f64>,
    pub best_step: Option<usize>,
    /// The learning-rate schedule and batching (absent in checkpoints of older versions).
    #[serde(default)]
    pub schedule: Option<Schedule>,
}

/// What must not change between a checkpoint and the run that resumes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    pub lr: f64,
    pub warmup_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
}

impl TrainerState {
    /// Refuses to resume this checkpoint with other settings than it was made with (`now`).
    pub fn check_resumable(&self, now: &TrainerState, output: &Path) -> Result<()> {
        let key = |s: &TrainerState| (s.seed, s.total_steps, s.train_examples);
        let schedule_differs = self.schedule.is_some() && self.schedule != now.schedule;
        if key(self) != key(now) || schedule_differs {
            bail!(
                "the checkpoint in {} was made with other settings (seed {}, {} steps, {} examples, {:?}; now seed {}, {} steps, {} examples, {:?}): resume with the same command, or use a new --output",
                checkpoints_dir(output).display(),
                self.seed,
                self.total_steps,
                self.train_examples,
                self.schedule,
                now.seed,
                now.total_steps,
                now.train_examples,
                now.schedule
            );
        }
        Ok(())
    }
}

pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

/// Writes `checkpoint-{step}` atomically (a temporary folder renamed into place) and keeps the
/// newest `keep` checkpoints. Every weight must be up to date (see
/// [`super::Trainable::flush`]).
pub fn save(
    output: &Path,
    state: &TrainerState,
    weights: &Weights,
    opt: &AdamW,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(output);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let dir = root.join(format!("checkpoint-{}", state.step));
    let tmp = root.join(format!(
        ".checkpoint-{}.tmp-{}",
        state.step,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_checkpoint(&tmp, state, weights, opt);
    if written.is_err() {
        // A full disk, say: leave no half-written folder behind.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot write {}", dir.display()))?;
    let mut all = list(output)?;
    while all.len() > keep.max(1) {
        let (_, old) = all.remove(0);
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dir)
}

/// The files of a checkpoint, into `dir`.
fn write_checkpoint(
    dir: &Path,
    state: &TrainerState,
    weights: &Weights,
    opt: &AdamW,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut moments = weights.tensors(&opt.m, "m.")?;
    moments.extend(weights.tensors(&opt.v, "v.")?);
    weights.save(&dir.join("model.safetensors"))?;
    let path = dir.join("optimizer.safetensors");
    candle_core::safetensors::save(&moments, &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("trainer_state.json");
    std::fs::write(&path, serde_json::to_string_pretty(state)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Complete checkpoints, oldest first.
pub fn list(output: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = checkpoints_dir(output);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if path.join("trainer_state.json").exists() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Restores weights and moments from the newest checkpoint; `None` when there is none.
pub fn restore_latest(
    output: &Path,
    weights: &mut Weights,
    opt: &mut AdamW,
) -> Result<Option<TrainerState>> {
    let Some((_, dir)) = list(output)?.pop() else {
        return Ok(None);
    };
    let state_path = dir.join("trainer_state.json");
    let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(&state_path)?)
        .with_context(|| format!("{} is not a valid trainer state", state_path.display()))?;
    let read = |name: &str| {
        let path = dir.join(name);
        candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("cannot read {}", path.display()))
            .map(|map| (map, path))
    };
    let (saved, path) = read("model.safetensors")?;
    let mut data = std::mem::take(&mut weights.data);
    let restored = weights.read_into(&mut data, &saved, "", &path);
    weights.data = data;
    restored?;
    let (moments, path) = read("optimizer.safetensors")?;
    weights.read_into(&mut opt.m, &moments, "m.", &path)?;
    weights.read_into(&mut opt.v, &moments, "v.", &path)?;
    opt.restored(state.step);
    Ok(Some(state))
}
