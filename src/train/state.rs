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
    #[serde(with = "exact")]
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
    /// The products' precision (`--dtype`; f32 in checkpoints of older versions).
    #[serde(default)]
    pub precision: crate::ops::Precision,
}

impl TrainerState {
    /// Whether a run in state `now` was made with the settings of this one (the seed, data,
    /// schedule and batching).
    pub fn same_settings(&self, now: &TrainerState) -> bool {
        let key = |s: &TrainerState| (s.seed, s.total_steps, s.train_examples);
        key(self) == key(now) && (self.schedule.is_none() || self.schedule == now.schedule)
    }

    /// Refuses to resume this checkpoint with other settings than it was made with (`now`).
    pub fn check_resumable(&self, now: &TrainerState, output: &Path) -> Result<()> {
        if !self.same_settings(now) {
            bail!(
                "the checkpoint in {} was made with other settings (seed {}, {} steps, {} examples, {:?}; now seed {}, {} steps, {} examples, {:?}): resume with the same settings, or use a new {set_output}",
                checkpoints_dir(output).display(),
                self.seed,
                self.total_steps,
                self.train_examples,
                self.schedule,
                now.seed,
                now.total_steps,
                now.train_examples,
                now.schedule,
                set_output = crate::setting::Setting::Output
            );
        }
        Ok(())
    }
}

/// The best metric as Rust writes an `f64`: the shortest text that reads back to the same bits
/// (NaN too). A JSON number may read back one ulp off in serde_json, and one ulp turns a later
/// tie into a new best: a resumed run would keep another model than the uninterrupted one.
mod exact {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|x| x.to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        /// Checkpoints of older versions hold a number.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Saved {
            Text(String),
            Number(f64),
        }
        match Option::<Saved>::deserialize(d)? {
            None => Ok(None),
            Some(Saved::Number(x)) => Ok(Some(x)),
            Some(Saved::Text(t)) => t.parse().map(Some).map_err(D::Error::custom),
        }
    }
}

pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

/// The state a run that finished writes into its output folder (as transformers' Trainer
/// does): `--resume` then knows there is nothing left to train.
pub fn final_state_path(output: &Path) -> PathBuf {
    output.join("trainer_state.json")
}

/// Records that the run in `output` finished, in state `st`.
pub fn save_final(output: &Path, st: &TrainerState) -> Result<()> {
    let text = serde_json::to_string_pretty(st)?;
    crate::model::cross_encoder::write_atomic(&final_state_path(output), text.as_bytes())
}

/// The state of a finished run in `output`, if one finished there.
pub fn read_final(output: &Path) -> Result<Option<TrainerState>> {
    let path = final_state_path(output);
    if !path.exists() {
        return Ok(None);
    }
    read_state(&path).map(Some)
}

fn read_state(path: &Path) -> Result<TrainerState> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid trainer state", path.display()))
}

/// The name of the temporary folder [`save`] writes a checkpoint into before renaming it.
fn partial_name(step: usize) -> String {
    format!(".checkpoint-{step}.tmp-{}", std::process::id())
}

/// Whether `path` is the temporary folder of a checkpoint being written, or left by a run that
/// was killed while writing it (no other folder has such a name).
fn is_partial(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with(".checkpoint-") && name.contains(".tmp-") && path.is_dir()
}

/// The entries of `output`'s checkpoints folder (none when it does not exist).
fn checkpoint_entries(output: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(checkpoints_dir(output)) {
        Ok(entries) => Ok(entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read {}", checkpoints_dir(output).display()))
        }
    }
}

/// Whether `output`'s checkpoints folder holds nothing but partial checkpoints.
pub fn only_partial(output: &Path) -> Result<bool> {
    Ok(checkpoint_entries(output)?.iter().all(|p| is_partial(p)))
}

/// Removes the partial checkpoints a killed run left in `output`.
pub fn remove_partial(output: &Path) -> Result<()> {
    for path in checkpoint_entries(output)?.iter().filter(|p| is_partial(p)) {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
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
    let tmp = root.join(partial_name(state.step));
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
    let state = read_state(&dir.join("trainer_state.json"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The best metric reads back bit for bit, NaN included (a JSON number read by serde_json
    /// may come back one ulp off, which made a later tie a new best on resume); the numbers of
    /// older checkpoints still read.
    #[test]
    fn the_best_metric_round_trips_exactly() {
        let state = |best| TrainerState {
            step: 1,
            total_steps: 2,
            seed: 3,
            train_examples: 4,
            best_metric: best,
            best_step: Some(1),
            schedule: None,
        };
        let values = (1..2000).map(|i| f64::from(i).sqrt() / 50.0);
        for v in values.chain([f64::NAN, 0.1 + 0.2]) {
            let text = serde_json::to_string(&state(Some(v))).unwrap();
            let back: TrainerState = serde_json::from_str(&text).unwrap();
            assert_eq!(
                back.best_metric.map(f64::to_bits),
                Some(v.to_bits()),
                "{text}"
            );
        }
        let older = r#"{"step":1,"total_steps":2,"seed":3,"train_examples":4,"best_metric":0.5,"best_step":1}"#;
        let back: TrainerState = serde_json::from_str(older).unwrap();
        assert_eq!(back.best_metric, Some(0.5));
    }
}
