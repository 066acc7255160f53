//! AdamW with decoupled weight decay (`torch.optim.AdamW`), parameter groups that exempt biases
//! and LayerNorm weights from decay, and global gradient-norm clipping, over the flat buffers
//! of [`crate::model::weights::Weights`].
//!
//! Clipping is fused into the update: the clip coefficient scales each gradient element as the
//! update reads it (the same arithmetic as scaling the gradients first), so the step reads the
//! parameters, gradients and both moments once and writes the parameters and moments once.

use multiversion::multiversion;
use rayon::prelude::*;
use std::ops::Range;

use crate::model::weights::Entry;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
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

pub struct AdamW {
    /// First and second moments, laid out as the weights.
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Each parameter's range and whether it decays.
    groups: Vec<(Range<usize>, bool)>,
    /// Updates applied so far (the bias-correction step count).
    pub steps: usize,
    pub cfg: AdamWConfig,
}

/// Biases and LayerNorm parameters get no weight decay, as in the reference trainer.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// Elements per parallel task of the element-wise passes.
const CHUNK: usize = 1 << 15;

impl AdamW {
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
        }
    }

    /// One update of `params` with learning rate `lr` from `grads * grad_scale` (the clip
    /// coefficient), in place.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f64, grad_scale: f32) {
        self.steps += 1;
        let c = self.cfg;
        let t = self.steps as i32;
        let b1 = c.beta1 as f32;
        let b2 = c.beta2 as f32;
        let eps = c.eps as f32;
        let step_size = (lr / (1.0 - c.beta1.powi(t))) as f32;
        let inv_bc2_sqrt = (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32;
        for (range, decay) in &self.groups {
            let shrink = if *decay {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            params[range.clone()]
                .par_chunks_mut(CHUNK)
                .zip(self.m[range.clone()].par_chunks_mut(CHUNK))
                .zip(self.v[range.clone()].par_chunks_mut(CHUNK))
                .zip(grads[range.clone()].par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| {
                    let k = Constants {
                        b1,
                        b2,
                        eps,
                        step_size,
                        inv_bc2_sqrt,
                        shrink,
                        grad_scale,
                    };
                    update(p, m, v, g, k)
                });
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
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: Constants) {
    for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
        let g = g * k.grad_scale;
        *m = k.b1 * *m + (1.0 - k.b1) * g;
        *v = k.b2 * *v + (1.0 - k.b2) * g * g;
        let denom = v.sqrt() * k.inv_bc2_sqrt + k.eps;
        *p = *p * k.shrink - k.step_size * *m / denom;
    }
}

/// The global L2 norm of `grads` and the factor that scales it to at most `max_norm`
/// (`clip_grad_norm_`'s coefficient; 1 when the norm is already below).
pub fn clip_coefficient(grads: &[f32], max_norm: f64) -> (f64, f32) {
    // Partial sums over fixed chunks in parallel, then a fixed-order total: the same bits on
    // every run, which kill-and-resume reproducibility relies on.
    let squares: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|x| (*x as f64) * (*x as f64)).sum())
        .collect();
    let total = squares.iter().sum::<f64>().sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0) as f32;
    (total, coef)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, range: Range<usize>) -> Entry {
        Entry {
            name: name.into(),
            shape: vec![range.len()],
            range,
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
        opt.step(&mut p, &[1.0, -0.5, 4.0], 0.01, 0.5);
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

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let (norm, coef) = clip_coefficient(&[3.0, 4.0], 1.0);
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((coef - 0.2).abs() < 1e-6);
        assert_eq!(clip_coefficient(&[0.3], 1.0).1, 1.0);
    }
}
