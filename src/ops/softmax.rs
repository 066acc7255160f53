//! Softmax over the keys of attention scores, with padded keys masked out.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_data, ROW_BLOCK};

/// `scores`: `[batch, heads, queries, keys]`; `mask`: `[batch, keys]`, 1 for real tokens and 0
/// for padding. Padded keys get probability 0, as adding transformers' `finfo.min` bias does.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (_, heads, queries, _) = scores.dims4()?;
    let mask = mask.to_dtype(candle_core::DType::F32)?.contiguous()?;
    scores.contiguous()?.apply_op2(
        &mask,
        MaskedSoftmax {
            rows_per_item: heads * queries,
        },
    )
}

struct MaskedSoftmax {
    /// Score rows that share one mask row (heads x queries).
    rows_per_item: usize,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scores = f32_data(s1, l1, "masked-softmax")?;
        let mask = f32_data(s2, l2, "masked-softmax")?;
        let keys = *l1.dims().last().expect("4-d scores");
        let mut y = vec![0f32; scores.len()];
        y.par_chunks_mut(keys * ROW_BLOCK)
            .zip(scores.par_chunks(keys * ROW_BLOCK))
            .enumerate()
            .for_each(|(blk, (yb, sb))| {
                for (j, (yr, sr)) in yb.chunks_mut(keys).zip(sb.chunks(keys)).enumerate() {
                    let item = (blk * ROW_BLOCK + j) / self.rows_per_item;
                    let m = &mask[item * keys..(item + 1) * keys];
                    let max = sr
                        .iter()
                        .zip(m)
                        .filter(|(_, k)| **k != 0.0)
                        .map(|(s, _)| *s)
                        .fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for i in 0..keys {
                        let e = if m[i] != 0.0 {
                            (sr[i] - max).exp()
                        } else {
                            0.0
                        };
                        yr[i] = e;
                        sum += e;
                    }
                    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                    yr.iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBackward)?),
            None,
        ))
    }
}

/// `dx = y * (dy - sum(dy * y))` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, "softmax-backward")?;
        let dy = f32_data(s2, l2, "softmax-backward")?;
        let keys = *l1.dims().last().expect("4-d scores");
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(keys * ROW_BLOCK)
            .zip(y.par_chunks(keys * ROW_BLOCK))
            .zip(dy.par_chunks(keys * ROW_BLOCK))
            .for_each(|((db, yb), gb)| {
                for ((dr, yr), gr) in db
                    .chunks_mut(keys)
                    .zip(yb.chunks(keys))
                    .zip(gb.chunks(keys))
                {
                    let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for i in 0..keys {
                        dr[i] = yr[i] * (gr[i] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_diff, rel_diff};
    use candle_core::{Device, Var, D};

    /// transformers' way: add `(1 - mask) * finfo.min`, then softmax, from candle primitives.
    fn composed(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, _, _, t) = scores.dims4()?;
        let bias = ((mask.to_dtype(candle_core::DType::F32)? - 1.0)? * -(f32::MIN as f64))?
            .reshape((b, 1, 1, t))?;
        let x = scores.broadcast_add(&bias)?;
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    #[test]
    fn matches_composed_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let scores = Var::from_tensor(&Tensor::randn(0f32, 3.0, (2, 3, 5, 5), &dev)?)?;
        let mask = Tensor::new(&[[1u32, 1, 1, 0, 0], [1, 1, 1, 1, 1]], &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev)?;
        let fused = masked_softmax(&scores, &mask)?;
        let reference = composed(&scores, &mask)?;
        assert!(max_diff(&fused, &reference)? < 1e-5);
        assert_eq!(
            fused.get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?[3..],
            [0.0, 0.0]
        );
        let gf = fused.mul(&probe)?.sum_all()?.backward()?;
        let gr = reference.mul(&probe)?.sum_all()?.backward()?;
        let d = rel_diff(gf.get(&scores).unwrap(), gr.get(&scores).unwrap())?;
        assert!(d < 1e-4, "gradient differs by {d} (relative)");
        Ok(())
    }
}
