//! Multi-head self-attention over padded batches, fused: scores, key mask, softmax, dropout on
//! the probabilities, and the weighted sum of values, forward and backward in one kernel each.
//!
//! Inputs and output stay in the `[batch, seq, hidden]` layout of the projections: each head's
//! products are strided `gemm` calls on its columns, so no head transposes or copies are needed.
//! The probabilities are recomputed in the backward pass (as flash attention does) instead of
//! being stored. Parallel over batch items.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::dropout::mix;
use super::f32_data;
use super::matmul::{matmul, Product, View};

/// `softmax(q kᵀ / sqrt(d) + mask) v` per head. `q`, `k`, `v`: `[batch, seq, hidden]`;
/// `mask`: `[batch * seq]`, 1 for real tokens and 0 for padding. With `dropout = Some((p, seed))`
/// the probabilities are dropped with a mask derived from `seed`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &[u32],
    heads: usize,
    dropout: Option<(f32, u64)>,
) -> Result<Tensor> {
    let op = Attention {
        heads,
        mask: Arc::new(mask.to_vec()),
        dropout,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Clone)]
struct Attention {
    heads: usize,
    mask: Arc<Vec<u32>>,
    dropout: Option<(f32, u64)>,
}

/// Shape of one call, shared by both kernels.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    h: usize,
    d: usize,
    heads: usize,
    scale: f32,
}

impl Dims {
    /// Head `head`'s `[t, d]` columns of a `[t, hidden]` item.
    fn head<'a>(&self, x: &'a [f32], head: usize) -> View<'a> {
        View::rows(&x[head * self.d..], self.t, self.d, self.h)
    }
}

impl Attention {
    fn dims(&self, l: &Layout) -> Result<(usize, Dims)> {
        let (b, t, h) = l.shape().dims3()?;
        let d = h / self.heads;
        Ok((
            b,
            Dims {
                t,
                h,
                d,
                heads: self.heads,
                scale: 1.0 / (d as f32).sqrt(),
            },
        ))
    }

    /// Softmax probabilities of every query of `head` over the keys, `[t, t]` row-major in `p`:
    /// scaled scores from one strided matrix product, then a masked softmax per row.
    fn probs(&self, dm: Dims, q: &[f32], k: &[f32], m: &[u32], head: usize, p: &mut [f32]) {
        let scaled = Product {
            scale: dm.scale,
            ..Product::SERIAL
        };
        matmul(p, dm.t, dm.head(q, head), dm.head(k, head).t(), scaled);
        for row in p.chunks_exact_mut(dm.t) {
            let max = row
                .iter()
                .zip(m)
                .filter(|(_, &keep)| keep != 0)
                .fold(f32::NEG_INFINITY, |a, (&s, _)| a.max(s));
            let mut sum = 0.0;
            for (x, &keep) in row.iter_mut().zip(m) {
                *x = if keep != 0 { (*x - max).exp() } else { 0.0 };
                sum += *x;
            }
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }

    /// The dropout keep-scales of `head`'s probabilities (`[t, t]`): `1 / (1 - p)` or 0, a
    /// hash of the seed and the element's index, so the backward pass regenerates the forward's
    /// mask. `None` without dropout.
    fn keep_mask(&self, dm: Dims, b: usize, head: usize) -> Option<Vec<f32>> {
        let (p, seed) = self.dropout?;
        let scale = 1.0 / (1.0 - p);
        let base = ((b * dm.heads + head) * dm.t * dm.t) as u64;
        let unit = 1.0 / (1u64 << 24) as f32;
        Some(
            (base..base + (dm.t * dm.t) as u64)
                .map(|idx| {
                    let r = (mix(seed ^ idx) >> 40) as f32 * unit;
                    if r >= p {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect(),
        )
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
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
        let (q, k, v) = (
            f32_data(s1, l1, "attention")?,
            f32_data(s2, l2, "attention")?,
            f32_data(s3, l3, "attention")?,
        );
        let (_, dm) = self.dims(l1)?;
        let (t, item) = (dm.t, dm.t * dm.h);
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(item).enumerate().for_each(|(b, ob)| {
            let (qb, kb, vb) = (
                &q[b * item..][..item],
                &k[b * item..][..item],
                &v[b * item..][..item],
            );
            let m = &self.mask[b * t..][..t];
            let mut p = vec![0f32; t * t];
            for head in 0..dm.heads {
                let o = head * dm.d;
                self.probs(dm, qb, kb, m, head, &mut p);
                if let Some(keep) = self.keep_mask(dm, b, head) {
                    p.iter_mut().zip(&keep).for_each(|(x, k)| *x *= k);
                }
                let pv = View::rows(&p, t, t, t);
                matmul(&mut ob[o..], dm.h, pv, dm.head(vb, head), Product::SERIAL);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, h) = q.dims3()?;
        // Packed [batch, 3, seq, hidden]: dq, dk, dv of each item side by side.
        let packed = Tensor::cat(&[q, k, v, &dout.contiguous()?], 1)?
            .apply_op1_no_bwd(&AttentionBackward(self.clone()))?;
        let packed = packed.reshape((b, 3, t, h))?;
        let grad = |i: usize| -> Result<Tensor> { packed.narrow(1, i, 1)?.squeeze(1) };
        Ok((Some(grad(0)?), Some(grad(1)?), Some(grad(2)?)))
    }
}

/// Input: q, k, v, dout concatenated along the sequence (`[batch, 4 * seq, hidden]`), so that
/// one op reads all four; output: dq, dk, dv the same way (`[batch, 3 * seq, hidden]`).
struct AttentionBackward(Attention);

impl candle_core::CustomOp1 for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = &self.0;
        let x = f32_data(s, l, "attention-backward")?;
        let (b, t4, h) = l.shape().dims3()?;
        let t = t4 / 4;
        let d = h / a.heads;
        let dm = Dims {
            t,
            h,
            d,
            heads: a.heads,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let item = t * h;
        let mut out = vec![0f32; b * 3 * item];
        out.par_chunks_mut(3 * item)
            .enumerate()
            .for_each(|(bi, ob)| {
                let xb = &x[bi * 4 * item..][..4 * item];
                let (q, k, v, dout) = (
                    &xb[..item],
                    &xb[item..2 * item],
                    &xb[2 * item..3 * item],
                    &xb[3 * item..],
                );
                let (dq, rest) = ob.split_at_mut(item);
                let (dk, dv) = rest.split_at_mut(item);
                let m = &a.mask[bi * t..][..t];
                let (mut p, mut dp) = (vec![0f32; t * t], vec![0f32; t * t]);
                for head in 0..a.heads {
                    let o = head * d;
                    a.probs(dm, q, k, m, head, &mut p);
                    let keep = a.keep_mask(dm, bi, head);
                    // dV = P_dropᵀ dO; dP = (dO Vᵀ) * keep.
                    let dropped: Vec<f32>;
                    let pd = match &keep {
                        Some(keep) => {
                            dropped = p.iter().zip(keep).map(|(x, k)| x * k).collect();
                            &dropped
                        }
                        None => &p,
                    };
                    matmul(
                        &mut dv[o..],
                        h,
                        View::rows(pd, t, t, t).t(),
                        dm.head(dout, head),
                        Product::SERIAL,
                    );
                    matmul(
                        &mut dp,
                        t,
                        dm.head(dout, head),
                        dm.head(v, head).t(),
                        Product::SERIAL,
                    );
                    if let Some(keep) = &keep {
                        dp.iter_mut().zip(keep).for_each(|(g, k)| *g *= k);
                    }
                    // dS = P (dP - sum(P dP)) * scale, in place of dP; then dQ and dK.
                    for (pr, gr) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
                        let dot: f32 = pr.iter().zip(gr.iter()).map(|(x, g)| x * g).sum();
                        gr.iter_mut()
                            .zip(pr)
                            .for_each(|(g, x)| *g = x * (*g - dot) * dm.scale);
                    }
                    let ds = View::rows(&dp, t, t, t);
                    matmul(&mut dq[o..], h, ds, dm.head(k, head), Product::SERIAL);
                    matmul(&mut dk[o..], h, ds.t(), dm.head(q, head), Product::SERIAL);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, 3 * t, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_diff, rel_diff};
    use candle_core::{Device, Var};

    /// transformers' eager attention from candle primitives: heads split out, scaled scores
    /// plus `(1 - mask) * finfo.min`, softmax, weighted sum of values.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, h) = q.dims3()?;
        let d = h / heads;
        let split = |x: &Tensor| x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
        let bias = ((mask.to_dtype(candle_core::DType::F32)? - 1.0)? * -(f32::MIN as f64))?
            .reshape((b, 1, 1, t))?;
        let scores =
            (split(q)?.matmul(&split(k)?.t()?)? / (d as f64).sqrt())?.broadcast_add(&bias)?;
        let max = scores.max_keepdim(candle_core::D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?;
        p.matmul(&split(v)?)?.transpose(1, 2)?.reshape((b, t, h))
    }

    #[test]
    fn matches_composed_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, h, heads) = (2, 7, 24, 3);
        let mk =
            || -> Result<Var> { Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h), &dev)?) };
        let (q, k, v) = (mk()?, mk()?, mk()?);
        let mask = vec![1u32, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1];
        let mask_t = Tensor::from_slice(&mask, (b, t), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (b, t, h), &dev)?;
        let fused = attention(&q, &k, &v, &mask, heads, None)?;
        let reference = composed(&q, &k, &v, &mask_t, heads)?;
        assert!(max_diff(&fused, &reference)? < 1e-5);
        let gf = fused.mul(&probe)?.sum_all()?.backward()?;
        let gr = reference.mul(&probe)?.sum_all()?.backward()?;
        for x in [&q, &k, &v] {
            let d = rel_diff(gf.get(x).unwrap(), gr.get(x).unwrap())?;
            assert!(d < 1e-4, "gradient differs by {d} (relative)");
        }
        Ok(())
    }

    #[test]
    fn dropout_gradients_match_finite_differences() -> Result<()> {
        // With dropout the mask is a fixed function of the seed, so the op is still a smooth
        // function of q, k, v: compare the analytic gradient with central differences.
        let dev = Device::Cpu;
        let (b, t, h, heads) = (1, 5, 8, 2);
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h), &dev)?)?;
        let k = Tensor::randn(0f32, 1.0, (b, t, h), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, t, h), &dev)?;
        let mask = vec![1u32; t];
        let drop = Some((0.3f32, 99u64));
        let f = |qv: &Tensor| -> Result<f64> {
            Ok(attention(qv, &k, &v, &mask, heads, drop)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64)
        };
        let grad = attention(&q, &k, &v, &mask, heads, drop)?
            .sqr()?
            .sum_all()?
            .backward()?;
        let g = grad.get(&q).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let base = q.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let eps = 1e-2f32;
        for idx in [0, 7, 13, 22, 39] {
            let mut plus = base.clone();
            plus[idx] += eps;
            let mut minus = base.clone();
            minus[idx] -= eps;
            let fp = f(&Tensor::from_vec(plus, (b, t, h), &dev)?)?;
            let fm = f(&Tensor::from_vec(minus, (b, t, h), &dev)?)?;
            let numeric = ((fp - fm) / (2.0 * eps as f64)) as f32;
            assert!(
                (numeric - g[idx]).abs() < 2e-2 * (1.0 + g[idx].abs()),
                "index {idx}: {numeric} vs {}",
                g[idx]
            );
        }
        Ok(())
    }
}
