//! Weights in and out: `model.safetensors` or `pytorch_model.bin` in, HF names kept verbatim.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{Config, Family};

/// Named parameters, keyed by the names of the HF `*ForSequenceClassification` model
/// (`bert.encoder.layer.0.attention.self.query.weight`, `classifier.weight`, ...).
#[derive(Clone, Default)]
pub struct Params {
    pub tensors: BTreeMap<String, Tensor>,
    /// Where the weights came from, for error messages.
    pub source: PathBuf,
}

impl Params {
    /// Reads the weights of a model folder and maps them onto sequence-classification names.
    pub fn load(dir: &Path, cfg: &Config) -> Result<Self> {
        let (source, raw) = read_weight_file(dir)?;
        let prefix = cfg.family.base_prefix();
        // A bare encoder (`BertModel`, all-MiniLM-L6-v2) stores `embeddings.*` without the
        // base-model prefix; its head is created later.
        let bare = !raw.iter().any(|(k, _)| {
            k.starts_with(&format!("{prefix}."))
                || (cfg.family == Family::Gte && k.starts_with("new."))
        });
        let mut tensors = BTreeMap::new();
        for (name, t) in raw {
            let name = legacy_layer_norm_name(&name);
            // The hub's GTE checkpoints (remote code `new`) hold transformers' `gte` names
            // under another prefix.
            let name = match (cfg.family, name.strip_prefix("new.")) {
                (Family::Gte, Some(rest)) => format!("{prefix}.{rest}"),
                _ => name,
            };
            let name = if bare {
                format!("{prefix}.{name}")
            } else {
                name
            };
            // Buffers such as `position_ids` are recomputed, not learned.
            if name.ends_with(".position_ids") {
                continue;
            }
            // Integers cast to f32 would be used as weights, silently.
            if !t.dtype().is_float() {
                bail!(
                    "weight \"{name}\" in {} is {:?}: weights must be floating point",
                    source.display(),
                    t.dtype()
                );
            }
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
        Ok(Params { tensors, source })
    }
}

/// Old TF-converted checkpoints name LayerNorm parameters `gamma`/`beta`.
fn legacy_layer_norm_name(name: &str) -> String {
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name.to_string()
    }
}

fn read_weight_file(dir: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>)> {
    let st = dir.join("model.safetensors");
    if st.exists() {
        let map = candle_core::safetensors::load(&st, &Device::Cpu).with_context(|| {
            format!(
                "cannot read {} (corrupt or not a safetensors file?)",
                st.display()
            )
        })?;
        return Ok((st, map.into_iter().collect()));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.exists() {
        let tensors = candle_core::pickle::read_all(&bin).with_context(|| {
            format!(
                "cannot read {} (corrupt or not a PyTorch checkpoint?)",
                bin.display()
            )
        })?;
        return Ok((bin, tensors));
    }
    bail!(
        "no weights in {}: expected model.safetensors or pytorch_model.bin",
        dir.display()
    )
}
