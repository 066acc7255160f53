//! `torch.nn.Linear` (`x · Wᵀ + b`) as one op: the bias is the matrix product's starting value
//! and its gradient is a column sum, instead of candle's broadcast add, whose backward reduces
//! over rows one scalar (and one integer division) at a time.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::f32_data;
use super::matmul::{matmul, Product, View};

/// `x`: `[..., in]`; `weight`: `[out, in]`; `bias`: `[out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / in_dim.max(1);
    let y =
        x.contiguous()?
            .reshape((rows, in_dim))?
            .apply_op3(&weight.contiguous()?, bias, Linear)?;
    if let Some(last) = dims.last_mut() {
        *last = weight.dim(0)?;
    }
    y.reshape(dims)
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
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
            f32_data(s1, l1, "linear")?,
            f32_data(s2, l2, "linear")?,
            f32_data(s3, l3, "linear")?,
        );
        let (rows, in_dim) = l1.shape().dims2()?;
        let (out_dim, w_in) = l2.shape().dims2()?;
        if w_in != in_dim || b.len() != out_dim {
            candle_core::bail!(
                "linear: input [{rows}, {in_dim}], weight [{out_dim}, {w_in}], bias [{}]",
                b.len()
            )
        }
        let mut y = Vec::with_capacity(rows * out_dim);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        if rows > 0 {
            let how = Product {
                accumulate: true,
                parallel: true,
                ..Product::SERIAL
            };
            let (xv, wt) = (
                View::rows(x, rows, in_dim, in_dim),
                View::rows(w, out_dim, in_dim, in_dim).t(),
            );
            matmul(&mut y, out_dim, xv, wt, how);
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.matmul(w)?;
        let dw = dy.t()?.matmul(x)?;
        let db = dy.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Sums a `[rows, cols]` matrix over its rows, in row order.
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "column-sum")?;
        let (_, cols) = l.shape().dims2()?;
        let mut sum = vec![0f32; cols];
        for row in x.chunks_exact(cols) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        Ok((CpuStorage::F32(sum), Shape::from(cols)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_diff, rel_diff};
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 7), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 3, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 5, 3), &dev)?;
        let fused = linear(&x, &w, &b)?;
        let composed = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let reference = candle_nn::Module::forward(&composed, x.as_tensor())?;
        assert_eq!(fused.dims(), &[2, 5, 3]);
        assert!(max_diff(&fused, &reference)? < 1e-5);
        let gf = fused.mul(&probe)?.sum_all()?.backward()?;
        let gr = reference.mul(&probe)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let d = rel_diff(gf.get(v).unwrap(), gr.get(v).unwrap())?;
            assert!(d < 1e-5, "gradient differs by {d} (relative)");
        }
        Ok(())
    }
}
