//! AdamW with decoupled weight decay (`torch.optim.AdamW`), parameter groups that exempt biases
//! and LayerNorm weights from decay, and global gradient-norm clipping, over the flat buffers
//! of [`crate::model::weights::Weights`].
//!
//! Clipping is fused into the update: the clip coefficient scales each gradient element as the
//! update reads it (the same arithmetic as scaling the gradients first), so the step reads the
//! parameters, gradients and both moments once and writes the parameters and moments once.
//!
//! The word-embedding table can be updated lazily: it is half of a small model's parameters,
//! and a batch touches a few hundred of its rows. An untouched row's gradient is exactly zero,
//! yet AdamW still moves it (its moments decay, weight decay shrinks it), so a row that is not
//! touched is left as it is and the steps it missed are replayed, with each step's own
//! constants, when it is next touched or when [`AdamW::flush`] brings every row up to date.
//! The replay runs the same arithmetic on the same values in the same order, so the result is
//! bit-identical to the eager update, for a fraction of the memory traffic.

use multiversion::multiversion;
use rayon::prelude::*;
use std::ops::Range;

use crate::model::weights::Entry;
use crate::ops::bf16::Copies;

/// AdamW's settings (PyTorch's defaults, weight decay 0.01 as sentence-transformers').
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    /// First moment's decay.
    pub beta1: f64,
    /// Second moment's decay.
    pub beta2: f64,
    /// Added to the second moment's root.
    pub eps: f64,
    /// Decoupled weight decay (not applied to biases and LayerNorm weights).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW over the flat weight buffer, with an exact lazy update of untouched embedding rows.
pub struct AdamW {
    /// First and second moments, laid out as the weights.
    pub m: Vec<f32>,
    /// Second moments, laid out as the weights.
    pub v: Vec<f32>,
    /// Each parameter's range and whether it decays.
    groups: Vec<(Range<usize>, bool)>,
    /// Updates applied so far (the bias-correction step count).
    pub steps: usize,
    /// Its settings.
    pub cfg: AdamWConfig,
    lazy: Option<LazyTable>,
    /// The constants of every step since the last restore (`history[s - first_step]` for step
    /// `s + 1`), for replaying the steps that a lazy row missed.
    history: Vec<Constants>,
    first_step: usize,
}

/// A table whose rows are updated only when touched (see the module docs).
struct LazyTable {
    range: Range<usize>,
    width: usize,
    decay: bool,
    /// How many steps each row has received.
    done: Vec<usize>,
    /// Rows whose gradient the current step may touch.
    touched: Vec<bool>,
}

/// Biases and LayerNorm parameters get no weight decay, as in the reference trainer.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// Elements per parallel task of the element-wise passes.
const CHUNK: usize = 1 << 15;

impl AdamW {
    /// The optimizer of `entries` (each parameter's range and whether it decays), moments zero.
    pub fn new(entries: &[Entry], cfg: AdamWConfig) -> Self {
        let n = entries.iter().map(|e| e.range.end).max().unwrap_or(0);
        AdamW {
            m: vec![0f32; n],
            v: vec![0f32; n],
            groups: entries
                .iter()
                .map(|e| (e.range.clone(), decays(&e.name)))
                .collect(),
            steps: 0,
            cfg,
            lazy: None,
            history: Vec::new(),
            first_step: 0,
        }
    }

    /// Updates the parameter at `range` (a `[rows, width]` table) lazily from now on.
    pub fn lazy_rows(&mut self, range: Range<usize>, width: usize) {
        let Some(i) = self.groups.iter().position(|g| g.0 == range) else {
            return;
        };
        let (range, decay) = self.groups.remove(i);
        let rows = range.len() / width;
        self.lazy = Some(LazyTable {
            range,
            width,
            decay,
            done: vec![self.steps; rows],
            touched: vec![false; rows],
        });
    }

    /// Brings `rows` of the lazy table up to date (a batch is about to read them) and marks
    /// them as touched by the current step.
    pub fn touch(&mut self, params: &mut [f32], rows: &[u32]) {
        let Some(t) = &mut self.lazy else { return };
        for &r in rows {
            if let Some(flag) = t.touched.get_mut(r as usize) {
                *flag = true;
            }
        }
        self.catch_up(params, true);
    }

    /// Brings every row of the lazy table up to date: before the weights are read as a whole
    /// (evaluation, saving, a checkpoint).
    pub fn flush(&mut self, params: &mut [f32]) {
        self.catch_up(params, false);
    }

    /// Replays the steps they missed (zero gradient) on every row, or on the touched rows only.
    fn catch_up(&mut self, params: &mut [f32], only_touched: bool) {
        let (steps, first) = (self.steps, self.first_step);
        let Some(t) = &mut self.lazy else { return };
        let history = &self.history;
        let zeros = vec![0f32; t.width];
        let w = t.width;
        params[t.range.clone()]
            .par_chunks_mut(w)
            .zip(self.m[t.range.clone()].par_chunks_mut(w))
            .zip(self.v[t.range.clone()].par_chunks_mut(w))
            .zip(t.done.par_iter_mut().zip(t.touched.par_iter()))
            .filter(|(_, (done, touched))| **done < steps && (**touched || !only_touched))
            .for_each(|(((p, m), v), (done, _))| {
                for k in &history[*done - first..steps - first] {
                    update(p, m, v, &zeros, *k);
                }
                *done = steps;
            });
    }

    /// One update of `params` with learning rate `lr` from `grads * grad_scale` (the clip
    /// coefficient), in place; clears `grads` as it reads them, ready for the next step. Each
    /// of `copies` (a linear weight's bf16 copies, with the weight's range) is written from
    /// the weight's new values block by block as they are updated: no pass of its own.
    pub fn step(
        &mut self,
        params: &mut [f32],
        grads: &mut [f32],
        lr: f64,
        grad_scale: f32,
        mut copies: Vec<(Range<usize>, &mut Copies)>,
    ) {
        self.steps += 1;
        let c = self.cfg;
        let t = self.steps as i32;
        let b1 = c.beta1 as f32;
        let b2 = c.beta2 as f32;
        let eps = c.eps as f32;
        let step_size = (lr / (1.0 - c.beta1.powi(t))) as f32;
        let inv_bc2_sqrt = (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32;
        let k = Constants {
            b1,
            b2,
            eps,
            step_size,
            inv_bc2_sqrt,
            shrink: 1.0,
            grad_scale,
        };
        let decayed = Constants {
            shrink: (1.0 - lr * c.weight_decay) as f32,
            ..k
        };
        // A copied weight is one range however many parameters it fuses (all of them decay:
        // they are linear weights); every other parameter is a range of its own.
        let mut ranges: Vec<(Range<usize>, bool, Option<&mut Copies>)> = Vec::new();
        for (range, decay) in &self.groups {
            match copies.iter().position(|(r, _)| r.contains(&range.start)) {
                Some(i) => {
                    assert!(*decay, "a copied weight decays");
                    let (r, c) = copies.swap_remove(i);
                    ranges.push((r, true, Some(c)));
                }
                None if ranges.iter().any(|(r, _, _)| r.contains(&range.start)) => {}
                None => ranges.push((range.clone(), *decay, None)),
            }
        }
        assert!(
            copies.is_empty(),
            "copies of a weight the optimizer does not update"
        );
        for (range, decay, copy) in ranges {
            let k = if decay { decayed } else { k };
            let (len, mut blocks) = match copy {
                Some(c) => (c.block_len(), c.blocks().into_iter().map(Some).collect()),
                None => (CHUNK, Vec::new()),
            };
            blocks.resize_with(range.len().div_ceil(len), || None);
            params[range.clone()]
                .par_chunks_mut(len)
                .zip(self.m[range.clone()].par_chunks_mut(len))
                .zip(self.v[range.clone()].par_chunks_mut(len))
                .zip(grads[range.clone()].par_chunks_mut(len))
                .zip(blocks)
                .for_each(|((((p, m), v), g), copy)| {
                    update(p, m, v, g, k);
                    g.fill(0.0);
                    if let Some(c) = copy {
                        c.write(p);
                    }
                });
        }
        if let Some(t) = &mut self.lazy {
            let k = if t.decay { decayed } else { k };
            self.history.push(k);
            let (w, steps) = (t.width, self.steps);
            params[t.range.clone()]
                .par_chunks_mut(w)
                .zip(self.m[t.range.clone()].par_chunks_mut(w))
                .zip(self.v[t.range.clone()].par_chunks_mut(w))
                .zip(grads[t.range.clone()].par_chunks_mut(w))
                .zip(t.done.par_iter_mut().zip(t.touched.par_iter_mut()))
                .filter(|(_, (_, touched))| **touched)
                .for_each(|((((p, m), v), g), (done, touched))| {
                    debug_assert_eq!(*done, steps - 1, "a touched row is up to date");
                    update(p, m, v, g, k);
                    g.fill(0.0);
                    *done = steps;
                    *touched = false;
                });
        }
    }

    /// After restoring weights and moments saved at step `steps` (all rows up to date).
    pub fn restored(&mut self, steps: usize) {
        self.steps = steps;
        self.first_step = steps;
        self.history.clear();
        if let Some(t) = &mut self.lazy {
            t.done.fill(steps);
            t.touched.fill(false);
        }
    }
}

#[derive(Clone, Copy)]
struct Constants {
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    inv_bc2_sqrt: f32,
    /// `1 - lr * weight_decay`, or 1 for parameters without decay.
    shrink: f32,
    grad_scale: f32,
}

/// The AdamW update of one chunk, as `torch.optim.AdamW` computes it; compiled for AVX-512
/// and AVX2 too.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: Constants) {
    for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
        let g = g * k.grad_scale;
        *m = k.b1 * *m + (1.0 - k.b1) * g;
        *v = k.b2 * *v + (1.0 - k.b2) * g * g;
        let denom = v.sqrt() * k.inv_bc2_sqrt + k.eps;
        *p = *p * k.shrink - k.step_size * *m / denom;
    }
}

impl AdamW {
    /// The global L2 norm of `grads` (`clip_grad_norm_`'s), skipping the lazy table's
    /// untouched rows, whose gradient is zero.
    pub fn grad_norm(&self, grads: &[f32]) -> f64 {
        // Partial sums over fixed chunks in parallel, then a fixed-order total: the same bits
        // on every run, which kill-and-resume reproducibility relies on.
        let squares = |c: &[f32]| sum_of_squares(c);
        let mut parts: Vec<f64> = Vec::new();
        for (range, _) in &self.groups {
            parts.par_extend(grads[range.clone()].par_chunks(CHUNK).map(squares));
        }
        if let Some(t) = &self.lazy {
            parts.par_extend(
                grads[t.range.clone()]
                    .par_chunks(t.width)
                    .zip(t.touched.par_iter())
                    .filter(|(_, touched)| **touched)
                    .map(|(g, _)| squares(g)),
            );
        }
        parts.iter().sum::<f64>().sqrt()
    }
}

/// `sum(x^2)` in f64, over 8 independent lanes so that it vectorises; compiled for AVX-512 and
/// AVX2 too.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i] as f64 * c[i] as f64;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v as f64 * v as f64;
    }
    acc.iter().sum()
}

/// The factor that scales a gradient of norm `norm` to at most `max_norm` (`clip_grad_norm_`'s
/// coefficient; 1 when the norm is already below).
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, range: Range<usize>) -> Entry {
        Entry {
            name: name.into(),
            shape: vec![range.len()],
            range,
            transposed: false,
        }
    }

    #[test]
    fn one_step_matches_the_adamw_formula() {
        let entries = [entry("dense.weight", 0..2), entry("dense.bias", 2..3)];
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(&entries, cfg);
        let mut p = vec![1.0f32, -2.0, 0.5];
        // The gradient is scaled by 0.5 on the way in: the update only sees its sign here.
        let mut g = vec![1.0, -0.5, 4.0];
        opt.step(&mut p, &mut g, 0.01, 0.5, Vec::new());
        assert_eq!(g, vec![0.0; 3], "the step clears the gradient");
        // After one step m_hat = g and v_hat = g^2, so the update is lr * sign(g) (up to eps);
        // the weight also shrinks by lr * wd, the bias does not.
        assert!((p[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - (-2.0 * (1.0 - 0.001) + 0.01)).abs() < 1e-6, "{p:?}");
        assert!((p[2] - 0.49).abs() < 1e-6);
        assert!(
            (opt.m[0] - 0.1 * 0.5).abs() < 1e-7,
            "the moment saw the scaled gradient"
        );
    }

    /// A copied weight (two parameters fused, as a layer's query and key are) is updated as
    /// it is without copies, and its copies are those of its new values.
    #[test]
    fn copies_are_written_from_the_updated_weights() {
        use crate::ops::bf16::Copies;
        use crate::ops::linear::WeightLayout;
        use crate::ops::testing::randn;
        let (rows, cols) = (100, 37);
        let n = rows * cols;
        let entries = [
            entry("query.weight", 0..n / 2),
            entry("key.weight", n / 2..n),
            entry("query.bias", n..n + 50),
        ];
        let cfg = AdamWConfig::default();
        let (mut plain, mut copied) = (AdamW::new(&entries, cfg), AdamW::new(&entries, cfg));
        let init = randn(n + 50, 1.0, 1);
        let (mut p1, mut p2) = (init.clone(), init);
        let mut copies = Copies::new(&p2[..n], cols, WeightLayout::OutIn);
        for step in 0..3 {
            let g = randn(n + 50, 1.0, 10 + step);
            plain.step(&mut p1, &mut g.clone(), 1e-2, 0.7, Vec::new());
            copied.step(
                &mut p2,
                &mut g.clone(),
                1e-2,
                0.7,
                vec![(0..n, &mut copies)],
            );
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p1), bits(&p2));
        assert!(copies == Copies::new(&p2[..n], cols, WeightLayout::OutIn));
    }

    #[test]
    fn lazy_rows_are_bit_identical_to_the_eager_update() {
        use rand::{Rng, SeedableRng};
        let (rows, width) = (10, 4);
        let entries = [entry("emb.weight", 0..40), entry("dense.weight", 40..46)];
        let cfg = AdamWConfig::default();
        let (mut eager, mut lazy) = (AdamW::new(&entries, cfg), AdamW::new(&entries, cfg));
        lazy.lazy_rows(0..40, width);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let init: Vec<f32> = (0..46).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (mut pe, mut pl) = (init.clone(), init);
        for step in 0..12 {
            let touched: Vec<u32> = (0..rows as u32).filter(|_| rng.random_bool(0.3)).collect();
            let mut g = vec![0f32; 46];
            for &r in &touched {
                for x in &mut g[r as usize * width..][..width] {
                    *x = rng.random_range(-1.0..1.0);
                }
            }
            g[40..]
                .iter_mut()
                .for_each(|x| *x = rng.random_range(-1.0..1.0));
            let (lr, scale) = (1e-2 / (1 + step) as f64, 0.5 + 0.05 * step as f32);
            lazy.touch(&mut pl, &touched);
            // The rows a batch reads are up to date before it reads them.
            for &r in &touched {
                let row = r as usize * width..(r as usize + 1) * width;
                assert_eq!(pl[row.clone()], pe[row], "row {r} before step {step}");
            }
            let (nl, ne) = (lazy.grad_norm(&g), eager.grad_norm(&g));
            assert!(
                (nl - ne).abs() <= 1e-12 * ne,
                "untouched rows are zero: {nl} vs {ne}"
            );
            eager.step(&mut pe, &mut g.clone(), lr, scale, Vec::new());
            lazy.step(&mut pl, &mut g, lr, scale, Vec::new());
        }
        assert_ne!(pl, pe, "some rows were left behind until the flush");
        lazy.flush(&mut pl);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&pl), bits(&pe));
        assert_eq!(bits(&lazy.m), bits(&eager.m));
        assert_eq!(bits(&lazy.v), bits(&eager.v));
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let opt = AdamW::new(&[entry("w", 0..2)], AdamWConfig::default());
        let norm = opt.grad_norm(&[3.0, 4.0]);
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((clip_coefficient(norm, 1.0) - 0.2).abs() < 1e-6);
        assert_eq!(clip_coefficient(0.3, 1.0), 1.0);
    }
}
