//! Multi-head self-attention over a packed batch: the rows of every sequence lie back to back
//! (`offsets[s]..offsets[s + 1]`), with no padding, so no mask is needed and no work is spent on
//! pad tokens. Forward and backward each run one task per sequence; each head's products are
//! strided `gemm` calls on its columns of the fused `[tokens, 3 * hidden]` QKV projection, with
//! no transposes or copies. The probabilities are recomputed in the backward pass (as flash
//! attention does) instead of being stored. A sliding window (ModernBERT's local layers) masks
//! the keys farther than `window` from the query.

use multiversion::multiversion;
use rayon::prelude::*;

use super::activation::exp;
use super::matmul::{matmul, Product, View};
use super::Dropout;

/// Softmax of each `len`-wide row of `p`, in place; compiled for AVX-512 and AVX2 too.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn softmax_rows(p: &mut [f32], len: usize) {
    for row in p.chunks_exact_mut(len) {
        let max = super::max(row);
        row.iter_mut().for_each(|x| *x = exp(*x - max));
        let inv = 1.0 / super::sum(row);
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// `dS = P (dP - rowsum(P dP)) * scale` per row, in place of `dp`.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn softmax_backward_rows(dp: &mut [f32], p: &[f32], len: usize, scale: f32) {
    for (pr, gr) in p.chunks_exact(len).zip(dp.chunks_exact_mut(len)) {
        let dot = super::dot(pr, gr);
        gr.iter_mut()
            .zip(pr)
            .for_each(|(g, x)| *g = x * (*g - dot) * scale);
    }
}

/// Shape of one call, shared by both passes.
#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    d: usize,
    heads: usize,
    scale: f32,
    window: Option<usize>,
}

impl Dims {
    fn new(h: usize, heads: usize, window: Option<usize>) -> Self {
        let d = h / heads;
        Dims {
            h,
            d,
            heads,
            scale: 1.0 / (d as f32).sqrt(),
            window,
        }
    }

    /// Head `head`'s `[len, d]` columns of part `part` (0: Q, 1: K, 2: V) of a sequence's
    /// `[len, 3h]` QKV rows.
    fn qkv<'a>(&self, x: &'a [f32], len: usize, part: usize, head: usize) -> View<'a> {
        View::rows(&x[part * self.h + head * self.d..], len, self.d, 3 * self.h)
    }

    /// Dropout index of probability `(i, j)` of `head` in sequence `s` is `base + i * len + j`.
    fn dropout_base(&self, s: usize, head: usize) -> u64 {
        ((s * self.heads + head) as u64) << 32
    }

    /// Softmax probabilities of every query of `head` over the keys, `[len, len]` in `p`.
    fn probs(&self, qkv: &[f32], len: usize, head: usize, p: &mut [f32]) {
        let scaled = Product {
            scale: self.scale,
            ..Product::SERIAL
        };
        let k = self.qkv(qkv, len, 1, head).t();
        matmul(p, len, self.qkv(qkv, len, 0, head), k, scaled);
        let Some(w) = self.window else {
            return softmax_rows(p, len);
        };
        // Softmax over each query's window alone; the keys outside it get probability 0.
        for (i, row) in p.chunks_exact_mut(len).enumerate() {
            let (lo, hi) = (i.saturating_sub(w), (i + w + 1).min(len));
            softmax_rows(&mut row[lo..hi], hi - lo);
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
        }
    }

    fn drop(&self, dropout: Option<Dropout>, s: usize, head: usize, p: &mut [f32]) {
        if let Some(d) = dropout {
            d.apply_from(p, self.dropout_base(s, head));
        }
    }
}

/// `x` cut into the rows of each sequence (`width` floats a row).
fn per_sequence<'a>(mut x: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    offsets
        .windows(2)
        .map(|w| {
            let (head, tail) = std::mem::take(&mut x).split_at_mut((w[1] - w[0]) * width);
            x = tail;
            head
        })
        .collect()
}

/// `softmax(q kᵀ / sqrt(d)) v` per head and sequence into `ctx` (`[tokens, h]`), from `qkv`
/// (`[tokens, 3h]`: Q, K, V side by side). `window`: each query sees only the keys at most
/// that far away. `dropout` drops probabilities.
pub fn forward(
    ctx: &mut [f32],
    qkv: &[f32],
    offsets: &[usize],
    heads: usize,
    window: Option<usize>,
    dropout: Option<Dropout>,
) {
    let h = qkv.len() / offsets.last().copied().unwrap_or(0).max(1) / 3;
    let dm = Dims::new(h, heads, window);
    per_sequence(ctx, offsets, h)
        .into_par_iter()
        .enumerate()
        .for_each(|(s, out)| {
            let (o, len) = (offsets[s], offsets[s + 1] - offsets[s]);
            if len == 0 {
                return;
            }
            let x = &qkv[o * 3 * h..(o + len) * 3 * h];
            let mut p = vec![0f32; len * len];
            for head in 0..heads {
                dm.probs(x, len, head, &mut p);
                dm.drop(dropout, s, head, &mut p);
                let v = dm.qkv(x, len, 2, head);
                let pv = View::rows(&p, len, len, len);
                matmul(&mut out[head * dm.d..], h, pv, v, Product::SERIAL);
            }
        });
}

/// dL/dqkv (written into `dqkv`, `[tokens, 3h]`) from dL/dctx, recomputing the probabilities
/// (and regenerating the dropout mask) of the forward pass.
pub fn backward(
    dqkv: &mut [f32],
    dctx: &[f32],
    qkv: &[f32],
    offsets: &[usize],
    heads: usize,
    window: Option<usize>,
    dropout: Option<Dropout>,
) {
    let h = dctx.len() / offsets.last().copied().unwrap_or(0).max(1);
    let dm = Dims::new(h, heads, window);
    per_sequence(dqkv, offsets, 3 * h)
        .into_par_iter()
        .enumerate()
        .for_each(|(s, dx)| {
            let (o, len) = (offsets[s], offsets[s + 1] - offsets[s]);
            if len == 0 {
                return;
            }
            let x = &qkv[o * 3 * h..(o + len) * 3 * h];
            let dout = &dctx[o * h..(o + len) * h];
            let (mut p, mut pd, mut dp) = (
                vec![0f32; len * len],
                vec![0f32; len * len],
                vec![0f32; len * len],
            );
            for head in 0..heads {
                let c = head * dm.d;
                let dout_h = View::rows(&dout[c..], len, dm.d, h);
                dm.probs(x, len, head, &mut p);
                pd.copy_from_slice(&p);
                dm.drop(dropout, s, head, &mut pd);
                // dV = P_dropᵀ dO; dP = (dO Vᵀ) * keep.
                let pdv = View::rows(&pd, len, len, len).t();
                matmul(&mut dx[2 * h + c..], 3 * h, pdv, dout_h, Product::SERIAL);
                let vt = dm.qkv(x, len, 2, head).t();
                matmul(&mut dp, len, dout_h, vt, Product::SERIAL);
                dm.drop(dropout, s, head, &mut dp);
                // dS in place of dP; then dQ and dK.
                softmax_backward_rows(&mut dp, &p, len, dm.scale);
                let ds = View::rows(&dp, len, len, len);
                let (q, k) = (dm.qkv(x, len, 0, head), dm.qkv(x, len, 1, head));
                matmul(&mut dx[c..], 3 * h, ds, k, Product::SERIAL);
                matmul(&mut dx[h + c..], 3 * h, ds.t(), q, Product::SERIAL);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Result, Tensor, D};

    /// transformers' eager attention from candle primitives, one sequence at a time, with its
    /// sliding-window mask (`|i - j| <= window`) as an additive -inf.
    fn composed(
        qkv: &Tensor,
        offsets: &[usize],
        heads: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let h = qkv.dim(1)? / 3;
        let d = h / heads;
        let mut outs = Vec::new();
        for w in offsets.windows(2) {
            let rows = qkv.narrow(0, w[0], w[1] - w[0])?;
            let len = w[1] - w[0];
            let split = |i: usize| -> Result<Tensor> {
                rows.narrow(1, i * h, h)?
                    .reshape((len, heads, d))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let mut scores = (split(0)?.matmul(&split(1)?.t()?)? / (d as f64).sqrt())?;
            if let Some(w) = window {
                let mask: Vec<f32> = (0..len * len)
                    .map(|k| match (k / len).abs_diff(k % len) <= w {
                        true => 0.0,
                        false => f32::NEG_INFINITY,
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (len, len), qkv.device())?;
                scores = scores.broadcast_add(&mask)?;
            }
            let max = scores.max_keepdim(D::Minus1)?.detach();
            let e = scores.broadcast_sub(&max)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            outs.push(p.matmul(&split(2)?)?.transpose(0, 1)?.reshape((len, h))?);
        }
        Tensor::cat(&outs, 0)
    }

    #[test]
    fn matches_composed_values_and_gradients() {
        let (h, heads) = (24, 3);
        let offsets = [0, 4, 11, 12];
        let n = 12;
        let qkv = randn(n * 3 * h, 1.0, 1);
        let probe = randn(n * h, 1.0, 2);
        let qv = var(&qkv, &[n, 3 * h]);
        // Global, and windows narrower than a sequence (2), than none (8).
        for window in [None, Some(2), Some(8)] {
            let (want, g) = reference(composed(&qv, &offsets, heads, window), &probe, &[&qv]);
            let mut ctx = vec![f32::NAN; n * h];
            forward(&mut ctx, &qkv, &offsets, heads, window, None);
            assert!(max_diff(&ctx, &want) < 1e-5, "window {window:?}");
            let mut dqkv = vec![f32::NAN; n * 3 * h];
            backward(&mut dqkv, &probe, &qkv, &offsets, heads, window, None);
            let d = rel_diff(&dqkv, &g[0]);
            assert!(
                d < 1e-4,
                "window {window:?}: gradient differs by {d} (relative)"
            );
        }
    }

    #[test]
    fn dropout_gradients_match_finite_differences() {
        // With dropout the mask is a fixed function of the seed, so the op is still a smooth
        // function of qkv: compare the analytic gradient with central differences.
        let (h, heads) = (8, 2);
        let offsets = [0, 5, 8];
        let n = 8;
        let drop = Dropout::site(Some(99), 0, 0.3);
        let qkv = randn(n * 3 * h, 1.0, 3);
        let loss = |x: &[f32]| -> f64 {
            let mut ctx = vec![0f32; n * h];
            forward(&mut ctx, x, &offsets, heads, None, drop);
            ctx.iter().map(|v| (*v as f64) * (*v as f64)).sum()
        };
        let mut ctx = vec![0f32; n * h];
        forward(&mut ctx, &qkv, &offsets, heads, None, drop);
        let dctx: Vec<f32> = ctx.iter().map(|v| 2.0 * v).collect();
        let mut g = vec![0f32; n * 3 * h];
        backward(&mut g, &dctx, &qkv, &offsets, heads, None, drop);
        let eps = 1e-2f32;
        for idx in [0, 7, 13, 22, 39, 60, 100, 150, 190] {
            let (mut plus, mut minus) = (qkv.clone(), qkv.clone());
            plus[idx] += eps;
            minus[idx] -= eps;
            let numeric = ((loss(&plus) - loss(&minus)) / (2.0 * eps as f64)) as f32;
            assert!(
                (numeric - g[idx]).abs() < 2e-2 * (1.0 + g[idx].abs()),
                "index {idx}: {numeric} vs {}",
                g[idx]
            );
        }
    }
}
