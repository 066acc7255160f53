//! The slower, exact path for an op whose backward is not written yet: its forward composed from
//! candle's differentiable primitives, its backward by candle's autograd. The backward recomputes
//! the forward on `Var`s (as activation checkpointing does) and differentiates
//! `sum(output * dL/doutput)`, so the gradients are exact; only the speed is candle's. A new
//! family's layer can train through this first and get a hand-written kernel later, with the
//! composed version kept as that kernel's test reference.
//!
//! Do not compose from candle-nn's fused `layer_norm`, `softmax_last_dim`, `rms_norm` or `sdpa`:
//! they record no backward and would cut the gradient silently.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};

/// An input of a composed op: its values and shape.
pub type Input<'a> = (&'a [f32], &'a [usize]);

/// `f(inputs)`, flattened.
pub fn forward(
    f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    inputs: &[Input],
) -> Result<Vec<f32>> {
    let tensors = inputs
        .iter()
        .map(|(x, shape)| Tensor::from_slice(x, *shape, &Device::Cpu))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(f(&tensors)?.flatten_all()?.to_vec1()?)
}

/// The gradient of every input from `dout` (dL/d`f(inputs)`), in input order.
pub fn backward(
    f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    inputs: &[Input],
    dout: &[f32],
) -> Result<Vec<Vec<f32>>> {
    let vars = inputs
        .iter()
        .map(|(x, shape)| Var::from_slice(x, *shape, &Device::Cpu))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors)?;
    let probe = Tensor::from_slice(dout, out.shape(), &Device::Cpu)?;
    let grads = out.mul(&probe)?.sum_all()?.backward()?;
    vars.iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.flatten_all()?.to_vec1()?),
            // Not on the output's path: a zero gradient.
            None => Ok(vec![0f32; v.elem_count()]),
        })
        .collect::<Result<_>>()
        .context("composed backward")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::layer_norm;
    use crate::ops::testing::*;
    use candle_core::D;

    /// LayerNorm composed from primitives.
    fn composed_layer_norm(t: &[Tensor]) -> candle_core::Result<Tensor> {
        let (x, w, b) = (&t[0], &t[1], &t[2]);
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(var + 1e-12)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    #[test]
    fn composed_path_gives_the_hand_written_kernels_gradients() {
        let (rows, h) = (9, 16);
        let x = randn(rows * h, 2.0, 1);
        let w = randn(h, 1.0, 2);
        let b = randn(h, 1.0, 3);
        let dy = randn(rows * h, 1.0, 4);
        let inputs: [Input; 3] = [(&x, &[rows, h]), (&w, &[h]), (&b, &[h])];
        let y = forward(composed_layer_norm, &inputs).unwrap();
        let g = backward(composed_layer_norm, &inputs, &dy).unwrap();
        let (mut yk, mut stats) = (vec![0f32; rows * h], vec![0f32; 2 * rows]);
        layer_norm::forward(&mut yk, &mut stats, &x, &w, Some(&b), 1e-12);
        let (mut dx, mut dw, mut db) = (vec![0f32; rows * h], vec![0f32; h], vec![0f32; h]);
        layer_norm::backward(&mut dx, &mut dw, Some(&mut db), &dy, &x, &stats, &w);
        assert!(max_diff(&y, &yk) < 1e-5);
        for (composed, kernel) in g.iter().zip([&dx, &dw, &db]) {
            assert!(rel_diff(kernel, composed) < 1e-4);
        }
    }
}
