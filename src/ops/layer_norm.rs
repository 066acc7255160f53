//! Layer normalisation over the last dimension (`torch.nn.LayerNorm`), forward and backward.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, ROW_BLOCK};

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(weight, bias, LayerNorm { eps: eps as f32 })
}

struct LayerNorm {
    eps: f32,
}

/// Mean and reciprocal standard deviation of one row.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            f32_data(s1, l1, "layer-norm")?,
            f32_data(s2, l2, "layer-norm")?,
            f32_data(s3, l3, "layer-norm")?,
        );
        let h = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * ROW_BLOCK)
            .zip(x.par_chunks(h * ROW_BLOCK))
            .for_each(|(yb, xb)| {
                for (yr, xr) in yb.chunks_mut(h).zip(xb.chunks(h)) {
                    let (mean, rstd) = moments(xr, self.eps);
                    for i in 0..h {
                        yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let rows = x.elem_count() / h;
        let packed =
            x.apply_op3_no_bwd(w, &dy.contiguous()?, &LayerNormBackward { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(h)?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(h)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Gradients of layer norm, packed as `[rows + 2, h]`: dx rows, then dweight, then dbias.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (
            f32_data(s1, l1, "layer-norm-backward")?,
            f32_data(s2, l2, "layer-norm-backward")?,
            f32_data(s3, l3, "layer-norm-backward")?,
        );
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx, dwdb) = out.split_at_mut(rows * h);
        // Each block of rows writes its dx and returns its partial dweight/dbias sums.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(h * ROW_BLOCK)
            .zip(x.par_chunks(h * ROW_BLOCK))
            .zip(dy.par_chunks(h * ROW_BLOCK))
            .map(|((dxb, xb), dyb)| {
                let mut acc = vec![0f32; 2 * h];
                for ((dxr, xr), dyr) in dxb.chunks_mut(h).zip(xb.chunks(h)).zip(dyb.chunks(h)) {
                    let (mean, rstd) = moments(xr, self.eps);
                    let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                    for i in 0..h {
                        let xhat = (xr[i] - mean) * rstd;
                        let g = dyr[i] * w[i];
                        sum_g += g;
                        sum_gx += g * xhat;
                        acc[i] += dyr[i] * xhat;
                        acc[h + i] += dyr[i];
                    }
                    let (mean_g, mean_gx) = (sum_g / h as f32, sum_gx / h as f32);
                    for i in 0..h {
                        let xhat = (xr[i] - mean) * rstd;
                        dxr[i] = rstd * (dyr[i] * w[i] - mean_g - xhat * mean_gx);
                    }
                }
                acc
            })
            .collect();
        for p in partials {
            dwdb.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_diff, rel_diff};
    use candle_core::{Device, Var, D};

    /// The same computation from differentiable candle primitives.
    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    #[test]
    fn matches_composed_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 37, 24), &dev)? + 1.0)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.5, 24, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 24, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 37, 24), &dev)?;
        let fused = layer_norm(&x, &w, &b, 1e-12)?;
        let reference = composed(&x, &w, &b, 1e-12)?;
        assert!(max_diff(&fused, &reference)? < 1e-5);
        let gf = fused.mul(&probe)?.sum_all()?.backward()?;
        let gr = reference.mul(&probe)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let d = rel_diff(gf.get(v).unwrap(), gr.get(v).unwrap())?;
            assert!(d < 1e-4, "gradient differs by {d} (relative)");
        }
        Ok(())
    }
}
