//! AdamW with decoupled weight decay (`torch.optim.AdamW`), parameter groups that exempt biases
//! and LayerNorm weights from decay, and global gradient-norm clipping.
//!
//! The update runs as one in-place op per parameter on its storage, in parallel chunks, rather
//! than as tensor ops: a dozen element-wise tensor ops per parameter would allocate a dozen
//! temporaries each step.

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, CpuStorage, InplaceOp1, Layout, Var};
use rayon::prelude::*;
use std::sync::Mutex;

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

    /// One update with learning rate `lr` from `grads` (in `self.names` order), written into
    /// each parameter's storage in place.
    pub fn step(&mut self, grads: &[Vec<f32>], lr: f64) -> Result<()> {
        self.steps += 1;
        let c = self.cfg;
        let t = self.steps as i32;
        let k = Constants {
            b1: c.beta1 as f32,
            b2: c.beta2 as f32,
            eps: c.eps as f32,
            step_size: (lr / (1.0 - c.beta1.powi(t))) as f32,
            inv_bc2_sqrt: (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32,
            shrink: 1.0,
        };
        let params = self.vars.iter().zip(&mut self.m).zip(&mut self.v);
        for ((((var, m), v), g), &decay) in params.zip(grads).zip(&self.decay) {
            let shrink = if decay {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let op = Update {
                k: Constants { shrink, ..k },
                m: Mutex::new(m),
                v: Mutex::new(v),
                g,
            };
            var.as_tensor()
                .inplace_op1(&op)
                .context("cannot update a parameter")?;
        }
        Ok(())
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
}

/// One parameter's AdamW update as an in-place op on its storage: no copy of the weights out
/// of the tensor and back, and chunks of large matrices updated in parallel.
struct Update<'a> {
    k: Constants,
    m: Mutex<&'a mut Vec<f32>>,
    v: Mutex<&'a mut Vec<f32>>,
    g: &'a [f32],
}

impl InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("adamw: only f32 parameters are supported")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("adamw: the parameter must be contiguous")
        };
        let (mut m, mut v) = (self.m.lock().unwrap(), self.v.lock().unwrap());
        const CHUNK: usize = 1 << 15;
        let k = self.k;
        data[start..end]
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(self.g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    *m = k.b1 * *m + (1.0 - k.b1) * g;
                    *v = k.b2 * *v + (1.0 - k.b2) * g * g;
                    let denom = v.sqrt() * k.inv_bc2_sqrt + k.eps;
                    *p = *p * k.shrink - k.step_size * *m / denom;
                }
            });
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
