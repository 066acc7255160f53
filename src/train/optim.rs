//! AdamW with decoupled weight decay (`torch.optim.AdamW`), parameter groups that exempt biases
//! and LayerNorm weights from decay, and global gradient-norm clipping.
//!
//! The update runs on plain slices (in parallel across parameters) rather than as tensor ops:
//! a dozen element-wise tensor ops per parameter would allocate a dozen temporaries each step.

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use rayon::prelude::*;

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
    pub names: Vec<String>,
    pub vars: Vec<Var>,
    decay: Vec<bool>,
    /// First and second moments, one buffer per parameter.
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Updates applied so far (the bias-correction step count).
    pub steps: usize,
    pub cfg: AdamWConfig,
}

/// Biases and LayerNorm parameters get no weight decay, as in the reference trainer.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        let (names, vars): (Vec<String>, Vec<Var>) = params.into_iter().unzip();
        let m = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        let v = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        AdamW {
            decay: names.iter().map(|n| decays(n)).collect(),
            names,
            vars,
            m,
            v,
            steps: 0,
            cfg,
        }
    }

    /// Each parameter's gradient as a flat buffer (zeros where autograd recorded none).
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Vec<f32>>> {
        self.vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.flatten_all()?.to_vec1::<f32>()?),
                None => Ok(vec![0f32; v.elem_count()]),
            })
            .collect()
    }

    /// One update with learning rate `lr` from `grads` (in `self.names` order).
    pub fn step(&mut self, grads: &[Vec<f32>], lr: f64) -> Result<()> {
        self.steps += 1;
        let c = self.cfg;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (lr / bc1) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let updated: Vec<Vec<f32>> = self
            .vars
            .par_iter()
            .zip(self.m.par_iter_mut())
            .zip(self.v.par_iter_mut())
            .zip(grads.par_iter())
            .zip(self.decay.par_iter())
            .map(|((((var, m), v), g), &decay)| {
                let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                let shrink = if decay {
                    (1.0 - lr * c.weight_decay) as f32
                } else {
                    1.0
                };
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    let denom = v[i].sqrt() / bc2_sqrt as f32 + eps;
                    p[i] = p[i] * shrink - step_size * m[i] / denom;
                }
                Ok(p)
            })
            .collect::<Result<_>>()?;
        for (var, p) in self.vars.iter().zip(updated) {
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)
                .context("cannot update a parameter")?;
        }
        Ok(())
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (`clip_grad_norm_`);
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    // Per-parameter sums in parallel, then a fixed-order total: the same bits on every run,
    // which kill-and-resume reproducibility relies on.
    let squares: Vec<f64> = grads
        .par_iter()
        .map(|g| g.iter().map(|x| (*x as f64) * (*x as f64)).sum())
        .collect();
    let total = squares.iter().sum::<f64>().sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0) as f32;
    if coef < 1.0 {
        grads
            .par_iter_mut()
            .for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_step_matches_the_adamw_formula() -> Result<()> {
        let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let b = Var::new(&[0.5f32], &Device::Cpu)?;
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![
                ("dense.weight".into(), w.clone()),
                ("dense.bias".into(), b.clone()),
            ],
            cfg,
        );
        opt.step(&[vec![0.5, -0.25], vec![2.0]], 0.01)?;
        // After one step m_hat = g and v_hat = g^2, so the update is lr * sign(g) (up to eps);
        // the weight also shrinks by lr * wd, the bias does not.
        let wv = w.as_tensor().to_vec1::<f32>()?;
        assert!(
            (wv[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6,
            "{wv:?}"
        );
        assert!(
            (wv[1] - (-2.0 * (1.0 - 0.001) + 0.01)).abs() < 1e-6,
            "{wv:?}"
        );
        assert!((b.as_tensor().to_vec1::<f32>()?[0] - 0.49).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let norm = clip_grad_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((g[0][0] - 0.6).abs() < 1e-5 && (g[1][0] - 0.8).abs() < 1e-5);
        let mut small = vec![vec![0.3f32]];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small[0][0], 0.3);
    }
}
