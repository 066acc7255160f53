//! Every parameter of a model in one flat `f32` buffer, under its HF name.
//!
//! One buffer means the gradient, AdamW's moments (and an all-reduce) are flat buffers of the
//! same layout, updated in one pass. Tensors that the engine uses as one matrix are laid out
//! next to each other: a layer's query, key and value weights form the `[3h, h]` matrix of one
//! fused product (and their biases one `[3h]` vector), with no copy at load or save, since each
//! name still maps to its own slice. A 2-D weight whose products run faster from `[in, out]`
//! (see [`crate::ops::linear`]) is stored transposed and transposed back on save.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::checkpoint::Params;
use crate::ops::linear::WeightLayout;

/// One named tensor's place in the flat buffer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    /// The shape under its HF name (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    pub range: Range<usize>,
    /// Stored as the transpose of `shape` (a `[in, out]` linear weight).
    pub transposed: bool,
}

impl Entry {
    /// This entry's values in `flat` (this layout), in HF's layout.
    pub fn hf_values(&self, flat: &[f32]) -> Vec<f32> {
        let data = &flat[self.range.clone()];
        match self.transposed {
            true => transpose(data, self.shape[1], self.shape[0]),
            false => data.to_vec(),
        }
    }
}

/// The transpose of a row-major `[rows, cols]` matrix.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; x.len()];
    for (r, row) in x.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

#[derive(Clone)]
pub struct Weights {
    pub data: Vec<f32>,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    /// Where the weights came from, for error messages.
    pub source: PathBuf,
}

impl Weights {
    /// Packs `params`: the names in `first` in that order (so that neighbours stay neighbours),
    /// then the rest in name order; the 2-D weights named in `transposed` stored transposed.
    /// Names that `params` lacks are skipped here and reported by [`Weights::slot`].
    pub fn pack(params: &Params, first: &[String], transposed: &[String]) -> Result<Self> {
        let mut order: Vec<&String> = first
            .iter()
            .filter(|n| params.tensors.contains_key(*n))
            .collect();
        let firsts: std::collections::HashSet<&String> = order.iter().copied().collect();
        order.extend(params.tensors.keys().filter(|n| !firsts.contains(n)));
        let total = order.iter().map(|n| params.tensors[*n].elem_count()).sum();
        let mut data = Vec::with_capacity(total);
        let mut entries = Vec::with_capacity(order.len());
        for name in order {
            let t = &params.tensors[name];
            let start = data.len();
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            // A NaN or an infinity would turn every score it reaches into NaN, silently.
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!(
                    "weight \"{name}\" in {} holds {} at element {i}: the checkpoint is corrupt (a diverged training run?)",
                    params.source.display(),
                    values[i]
                );
            }
            let flip = t.dims().len() == 2 && transposed.contains(name);
            match flip {
                true => data.extend(transpose(&values, t.dim(0)?, t.dim(1)?)),
                false => data.extend(values),
            }
            entries.push(Entry {
                name: name.clone(),
                shape: t.dims().to_vec(),
                range: start..data.len(),
                transposed: flip,
            });
        }
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(Weights {
            data,
            entries,
            index,
            source: params.source.clone(),
        })
    }

    /// The range of tensor `name`, checked against the shape the config implies.
    pub fn slot(&self, name: &str, dims: &[usize]) -> Result<Range<usize>> {
        let e = self
            .index
            .get(name)
            .map(|&i| &self.entries[i])
            .with_context(|| format!("missing weight \"{name}\" in {}", self.source.display()))?;
        if e.shape != dims {
            bail!(
                "weight \"{name}\" in {} has shape {:?}, config.json implies {dims:?}",
                self.source.display(),
                e.shape
            );
        }
        Ok(e.range.clone())
    }

    /// The tensors `names`, of shapes `dims`, as one range (they were packed side by side).
    pub fn slots(&self, names: &[String], dims: &[Vec<usize>]) -> Result<Range<usize>> {
        let ranges = names
            .iter()
            .zip(dims)
            .map(|(n, d)| self.slot(n, d))
            .collect::<Result<Vec<_>>>()?;
        if ranges.windows(2).any(|w| w[0].end != w[1].start) {
            bail!("weights {names:?} are not adjacent in the packed buffer");
        }
        Ok(ranges[0].start..ranges[ranges.len() - 1].end)
    }

    /// How the 2-D weight `name` is stored.
    pub fn layout(&self, name: &str) -> WeightLayout {
        match self.index.get(name).map(|&i| self.entries[i].transposed) {
            Some(true) => WeightLayout::InOut,
            _ => WeightLayout::OutIn,
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values of tensor `name` in HF's layout.
    pub fn get(&self, name: &str) -> Option<Vec<f32>> {
        let &i = self.index.get(name)?;
        Some(self.entries[i].hf_values(&self.data))
    }

    /// `flat` (the weights, a gradient or a moment: this layout) as named candle tensors.
    pub fn tensors(&self, flat: &[f32], prefix: &str) -> Result<HashMap<String, Tensor>> {
        self.entries
            .iter()
            .map(|e| {
                let t = Tensor::from_vec(e.hf_values(flat), e.shape.as_slice(), &Device::Cpu)?;
                Ok((format!("{prefix}{}", e.name), t))
            })
            .collect()
    }

    /// Fills `flat` (this layout) from named tensors, as [`Weights::tensors`] wrote them.
    pub fn read_into(
        &self,
        flat: &mut [f32],
        map: &HashMap<String, Tensor>,
        prefix: &str,
        file: &Path,
    ) -> Result<()> {
        for e in &self.entries {
            let key = format!("{prefix}{}", e.name);
            match map.get(&key) {
                Some(t) if t.dims() == e.shape.as_slice() => {
                    let values = t.flatten_all()?.to_vec1::<f32>()?;
                    let values = match e.transposed {
                        true => transpose(&values, e.shape[0], e.shape[1]),
                        false => values,
                    };
                    flat[e.range.clone()].copy_from_slice(&values)
                }
                Some(_) => bail!(
                    "{}: \"{key}\" has another shape than the model's",
                    file.display()
                ),
                None => bail!(
                    "{}: \"{key}\" is missing (a checkpoint of another model?)",
                    file.display()
                ),
            }
        }
        Ok(())
    }

    /// Writes every parameter to `path` as safetensors (f32, HF names), readable by all like
    /// the other files of a model folder (the safetensors writer creates it owner-only).
    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.tensors(&self.data, "")?, path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
        }
        Ok(())
    }
}

/// Two disjoint ranges of one buffer, both mutable (a weight's and a bias's gradient).
pub fn two_mut(x: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
    assert!(a.end <= b.start || b.end <= a.start, "overlapping ranges");
    if a.start < b.start {
        let (lo, hi) = x.split_at_mut(b.start);
        (&mut lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = x.split_at_mut(a.start);
        (&mut hi[..a.end - a.start], &mut lo[b])
    }
}
