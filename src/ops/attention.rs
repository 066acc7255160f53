//! Multi-head self-attention over a packed batch: the rows of every sequence lie back to back
//! (`offsets[s]..offsets[s + 1]`), with no padding, so no padding mask is needed and no work is
//! spent on pad tokens. Forward and backward each run one task per sequence; each head's
//! products are strided `gemm` calls on its columns of the fused QKV projection, with no
//! transposes or copies. The probabilities are recomputed in the backward pass (as flash
//! attention does) instead of being stored. [`Mask`] limits the keys a query sees: a sliding
//! window (ModernBERT's local layers) or the past (a causal LM); [`Heads`] allows fewer key/value
//! heads than query heads (grouped-query attention).

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
pub(super) fn softmax_rows(p: &mut [f32], len: usize) {
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
pub(super) fn softmax_backward_rows(dp: &mut [f32], p: &[f32], len: usize, scale: f32) {
    for (pr, gr) in p.chunks_exact(len).zip(dp.chunks_exact_mut(len)) {
        let dot = super::dot(pr, gr);
        gr.iter_mut()
            .zip(pr)
            .for_each(|(g, x)| *g = x * (*g - dot) * scale);
    }
}

/// The heads of a layer: `q` query heads and `kv` key/value heads (grouped-query attention when
/// fewer; query head `i` reads key/value head `i / (q / kv)`), each `d` wide. A token's row of the
/// fused projection holds every query head, then every key head, then every value head.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub d: usize,
}

impl Heads {
    /// Plain multi-head attention: `heads` heads splitting `h` columns.
    pub fn new(h: usize, heads: usize) -> Self {
        Heads {
            q: heads,
            kv: heads,
            d: h / heads,
        }
    }

    /// Columns of a token's fused Q, K, V row.
    pub fn width(&self) -> usize {
        (self.q + 2 * self.kv) * self.d
    }

    /// Columns of the attention output (the query heads).
    pub fn out_width(&self) -> usize {
        self.q * self.d
    }
}

/// The keys that query `i` sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    All,
    /// Keys at most this far from the query, on either side.
    Window(usize),
    /// Keys `0..=i` (a causal LM).
    Causal,
}

impl Mask {
    /// The keys `lo..hi` that query `i` of a `len`-token sequence sees.
    fn keys(self, i: usize, len: usize) -> (usize, usize) {
        match self {
            Mask::All => (0, len),
            Mask::Window(w) => (i.saturating_sub(w), (i + w + 1).min(len)),
            Mask::Causal => (0, i + 1),
        }
    }
}

/// Shape of one call, shared by both passes.
#[derive(Clone, Copy)]
struct Dims {
    heads: Heads,
    scale: f32,
    mask: Mask,
}

impl Dims {
    fn new(heads: Heads, mask: Mask) -> Self {
        Dims {
            heads,
            scale: 1.0 / (heads.d as f32).sqrt(),
            mask,
        }
    }

    /// The first column of query head `head`'s part `part` (0: Q, 1: K, 2: V) in a row.
    fn column(&self, part: usize, head: usize) -> usize {
        let Heads { q, kv, d } = self.heads;
        match part {
            0 => head * d,
            _ => (q + (part - 1) * kv + head / (q / kv)) * d,
        }
    }

    /// Head `head`'s `[len, d]` columns of part `part` of a sequence's QKV rows.
    fn qkv<'a>(&self, x: &'a [f32], len: usize, part: usize, head: usize) -> View<'a> {
        let (d, width) = (self.heads.d, self.heads.width());
        View::rows(&x[self.column(part, head)..], len, d, width)
    }

    /// Dropout index of probability `(i, j)` of `head` in the pass's sequence `s` is
    /// `base + i * len + j` (the sequence numbered in the global batch).
    fn dropout_base(&self, d: &Dropout, s: usize, head: usize) -> u64 {
        (d.row(s) * self.heads.q as u64 + head as u64) << 32
    }

    /// Softmax probabilities of every query of `head` over the keys, `[len, len]` in `p`.
    fn probs(&self, qkv: &[f32], len: usize, head: usize, p: &mut [f32]) {
        let scaled = Product {
            scale: self.scale,
            ..Product::SERIAL
        };
        let k = self.qkv(qkv, len, 1, head).t();
        matmul(p, len, self.qkv(qkv, len, 0, head), k, scaled);
        if self.mask == Mask::All {
            return softmax_rows(p, len);
        }
        // Softmax over the keys each query sees alone; the others get probability 0.
        for (i, row) in p.chunks_exact_mut(len).enumerate() {
            let (lo, hi) = self.mask.keys(i, len);
            softmax_rows(&mut row[lo..hi], hi - lo);
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
        }
    }

    fn drop(&self, dropout: Option<Dropout>, s: usize, head: usize, p: &mut [f32]) {
        if let Some(d) = dropout {
            d.apply_from(p, self.dropout_base(&d, s, head));
        }
    }
}

/// `x` cut into the rows of each sequence (`width` floats a row).
pub(super) fn per_sequence<'a>(
    mut x: &'a mut [f32],
    offsets: &[usize],
    width: usize,
) -> Vec<&'a mut [f32]> {
    offsets
        .windows(2)
        .map(|w| {
            let (head, tail) = std::mem::take(&mut x).split_at_mut((w[1] - w[0]) * width);
            x = tail;
            head
        })
        .collect()
}

/// `softmax(q kᵀ / sqrt(d)) v` per head and sequence into `ctx` (`[tokens, q · d]`), from `qkv`
/// (`[tokens, heads.width()]`: Q, K, V side by side), each query seeing the keys `mask` lets it.
/// `dropout` drops probabilities.
pub fn forward(
    ctx: &mut [f32],
    qkv: &[f32],
    offsets: &[usize],
    heads: Heads,
    mask: Mask,
    dropout: Option<Dropout>,
) {
    let (width, h) = (heads.width(), heads.out_width());
    let dm = Dims::new(heads, mask);
    per_sequence(ctx, offsets, h)
        .into_par_iter()
        .enumerate()
        .for_each(|(s, out)| {
            let (o, len) = (offsets[s], offsets[s + 1] - offsets[s]);
            if len == 0 {
                return;
            }
            let x = &qkv[o * width..(o + len) * width];
            let mut p = vec![0f32; len * len];
            for head in 0..heads.q {
                dm.probs(x, len, head, &mut p);
                dm.drop(dropout, s, head, &mut p);
                let v = dm.qkv(x, len, 2, head);
                let pv = View::rows(&p, len, len, len);
                matmul(&mut out[head * heads.d..], h, pv, v, Product::SERIAL);
            }
        });
}

/// dL/dqkv (written into `dqkv`, `[tokens, heads.width()]`) from dL/dctx, recomputing the
/// probabilities (and regenerating the dropout mask) of the forward pass. The query heads of a
/// group add their key and value gradients into their shared head's.
pub fn backward(
    dqkv: &mut [f32],
    dctx: &[f32],
    qkv: &[f32],
    offsets: &[usize],
    heads: Heads,
    mask: Mask,
    dropout: Option<Dropout>,
) {
    let (width, h) = (heads.width(), heads.out_width());
    let dm = Dims::new(heads, mask);
    let group = heads.q / heads.kv;
    per_sequence(dqkv, offsets, width)
        .into_par_iter()
        .enumerate()
        .for_each(|(s, dx)| {
            let (o, len) = (offsets[s], offsets[s + 1] - offsets[s]);
            if len == 0 {
                return;
            }
            let x = &qkv[o * width..(o + len) * width];
            let dout = &dctx[o * h..(o + len) * h];
            let (mut p, mut pd, mut dp) = (
                vec![0f32; len * len],
                vec![0f32; len * len],
                vec![0f32; len * len],
            );
            for head in 0..heads.q {
                let c = head * heads.d;
                let dout_h = View::rows(&dout[c..], len, heads.d, h);
                dm.probs(x, len, head, &mut p);
                pd.copy_from_slice(&p);
                dm.drop(dropout, s, head, &mut pd);
                // The group's first query head writes its key and value gradients, the rest add.
                let shared = Product {
                    accumulate: head % group != 0,
                    ..Product::SERIAL
                };
                // dV = P_dropᵀ dO; dP = (dO Vᵀ) * keep.
                let pdv = View::rows(&pd, len, len, len).t();
                matmul(&mut dx[dm.column(2, head)..], width, pdv, dout_h, shared);
                let vt = dm.qkv(x, len, 2, head).t();
                matmul(&mut dp, len, dout_h, vt, Product::SERIAL);
                dm.drop(dropout, s, head, &mut dp);
                // dS in place of dP; then dQ and dK.
                softmax_backward_rows(&mut dp, &p, len, dm.scale);
                let ds = View::rows(&dp, len, len, len);
                let (q, k) = (dm.qkv(x, len, 0, head), dm.qkv(x, len, 1, head));
                matmul(&mut dx[c..], width, ds, k, Product::SERIAL);
                matmul(&mut dx[dm.column(1, head)..], width, ds.t(), q, shared);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Result, Tensor, D};

    /// transformers' eager attention from candle primitives, one sequence at a time: key and
    /// value heads repeated for their query heads (`repeat_kv`), the mask as an additive -inf.
    fn composed(qkv: &Tensor, offsets: &[usize], heads: Heads, mask: Mask) -> Result<Tensor> {
        let Heads { q, kv, d } = heads;
        let mut outs = Vec::new();
        for w in offsets.windows(2) {
            let rows = qkv.narrow(0, w[0], w[1] - w[0])?;
            let len = w[1] - w[0];
            let split = |start: usize, n: usize| -> Result<Tensor> {
                let t = rows.narrow(1, start * d, n * d)?.reshape((len, n, d))?;
                // [n, len, d], each key/value head repeated for its group of query heads.
                let t = t.transpose(0, 1)?.contiguous()?;
                let idx: Vec<u32> = (0..q).map(|i| (i / (q / n)) as u32).collect();
                t.index_select(&Tensor::new(idx.as_slice(), t.device())?, 0)
            };
            let (qs, ks, vs) = (split(0, q)?, split(q, kv)?, split(q + kv, kv)?);
            let scores = (qs.matmul(&ks.t()?)? / (d as f64).sqrt())?;
            let additive: Vec<f32> = (0..len * len)
                .map(|k| {
                    let (lo, hi) = mask.keys(k / len, len);
                    match (lo..hi).contains(&(k % len)) {
                        true => 0.0,
                        false => f32::NEG_INFINITY,
                    }
                })
                .collect();
            let additive = Tensor::from_vec(additive, (len, len), qkv.device())?;
            let scores = scores.broadcast_add(&additive)?;
            let max = scores.max_keepdim(D::Minus1)?.detach();
            let e = scores.broadcast_sub(&max)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            outs.push(p.matmul(&vs)?.transpose(0, 1)?.reshape((len, q * d))?);
        }
        Tensor::cat(&outs, 0)
    }

    #[test]
    fn matches_composed_values_and_gradients() {
        let offsets = [0, 4, 11, 12];
        let n = 12;
        // Multi-head, and grouped-query (4 query heads on 2 key/value heads); every head
        // sees all keys, a window narrower than a sequence (2) or than none (8), or the past.
        for heads in [Heads::new(24, 3), Heads { q: 4, kv: 2, d: 6 }] {
            let qkv = randn(n * heads.width(), 1.0, 1);
            let probe = randn(n * heads.out_width(), 1.0, 2);
            let qv = var(&qkv, &[n, heads.width()]);
            for mask in [Mask::All, Mask::Window(2), Mask::Window(8), Mask::Causal] {
                let (want, g) = reference(composed(&qv, &offsets, heads, mask), &probe, &[&qv]);
                let mut ctx = vec![f32::NAN; n * heads.out_width()];
                forward(&mut ctx, &qkv, &offsets, heads, mask, None);
                assert!(max_diff(&ctx, &want) < 1e-5, "{heads:?} {mask:?}");
                let mut dqkv = vec![f32::NAN; n * heads.width()];
                backward(&mut dqkv, &probe, &qkv, &offsets, heads, mask, None);
                let d = rel_diff(&dqkv, &g[0]);
                assert!(
                    d < 1e-4,
                    "{heads:?} {mask:?}: gradient differs by {d} (relative)"
                );
            }
        }
    }

    #[test]
    fn dropout_gradients_match_finite_differences() {
        // With dropout the mask is a fixed function of the seed, so the op is still a smooth
        // function of qkv: compare the analytic gradient with central differences.
        let (h, heads) = (8, Heads::new(8, 2));
        let offsets = [0, 5, 8];
        let n = 8;
        let drop = Dropout::site(Some(crate::ops::Pass::new(99)), 0, 0.3);
        let qkv = randn(n * 3 * h, 1.0, 3);
        let loss = |x: &[f32]| -> f64 {
            let mut ctx = vec![0f32; n * h];
            forward(&mut ctx, x, &offsets, heads, Mask::All, drop);
            ctx.iter().map(|v| (*v as f64) * (*v as f64)).sum()
        };
        let mut ctx = vec![0f32; n * h];
        forward(&mut ctx, &qkv, &offsets, heads, Mask::All, drop);
        let dctx: Vec<f32> = ctx.iter().map(|v| 2.0 * v).collect();
        let mut g = vec![0f32; n * 3 * h];
        backward(&mut g, &dctx, &qkv, &offsets, heads, Mask::All, drop);
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
