//! DeBERTa's disentangled self-attention over a packed batch (transformers'
//! `DisentangledSelfAttention`): the score of query `i` for key `j` adds to `q_i · k_j` a
//! content-to-position term `q_i · pk_δ` and a position-to-content term `k_j · pq_δ`, where
//! `δ = idx(i - j)` indexes the relative-position table (log-bucketed beyond a distance) and
//! `pk`, `pq` are the table's rows projected as keys and queries; all three are divided by
//! `sqrt(d · (1 + terms))`. The forward is hand-written over strided products (only the table
//! rows a sequence can reach are multiplied); the backward is composed (see
//! [`crate::ops::composed`]): the same computation from candle's differentiable primitives,
//! differentiated on a recomputed forward, exact but slower, the reference for a kernel to come.

use candle_core::{Tensor, D};
use rayon::prelude::*;

use super::attention::{per_sequence, softmax_rows};
use super::matmul::{matmul, Product, View};
use super::{composed, Dropout};

/// The relative-position settings of a model: which terms, the table's half size, and the
/// table row of every signed distance.
#[derive(Debug, Clone)]
pub struct Relative {
    pub c2p: bool,
    pub p2c: bool,
    /// Half the table's rows (`position_buckets`, or `max_relative_positions`).
    pub span: usize,
    /// `rows[δ + longest - 1]`: the table row of distance `δ = i - j`.
    rows: Vec<usize>,
    longest: usize,
}

impl Relative {
    /// Distances up to `longest - 1` either way; `buckets` > 0 log-buckets the distances beyond
    /// `buckets / 2` as transformers' `make_log_bucket_position` does (in f32, as it computes).
    pub fn new(c2p: bool, p2c: bool, buckets: usize, max_relative: usize, longest: usize) -> Self {
        let span = if buckets > 0 { buckets } else { max_relative };
        let bucket = |rel: i64| -> i64 {
            if buckets == 0 {
                return rel;
            }
            let mid = (buckets / 2) as i64;
            let abs = if rel < mid && rel > -mid {
                mid - 1
            } else {
                rel.abs()
            };
            if abs <= mid {
                return rel;
            }
            let ratio = ((max_relative - 1) as f32 / mid as f32).ln();
            let log =
                ((abs as f32 / mid as f32).ln() / ratio * (mid - 1) as f32).ceil() + mid as f32;
            log as i64 * rel.signum()
        };
        let top = 2 * span as i64 - 1;
        let rows = (-(longest as i64 - 1)..longest as i64)
            .map(|rel| (bucket(rel) + span as i64).clamp(0, top) as usize)
            .collect();
        Relative {
            c2p,
            p2c,
            span,
            rows,
            longest,
        }
    }

    /// The table row of query `i` and key `j`.
    fn row(&self, i: usize, j: usize) -> usize {
        self.rows[i + self.longest - 1 - j]
    }

    /// `1 / sqrt(d · (1 + terms))`.
    fn scale(&self, d: usize) -> f32 {
        let terms = 1 + self.c2p as usize + self.p2c as usize;
        1.0 / ((d * terms) as f32).sqrt()
    }

    /// The rows `lo..hi` that a sequence of `len` tokens reaches.
    fn reach(&self, len: usize) -> (usize, usize) {
        let (a, b) = (self.row(0, len - 1), self.row(len - 1, 0));
        (a.min(b), a.max(b) + 1)
    }
}

/// Dropout index of probability `(i, j)` of `head` in the pass's sequence `s` is
/// `base + i * len + j` (the sequence numbered in the global batch, as attention numbers it).
fn dropout_base(d: &Dropout, heads: usize, s: usize, head: usize) -> u64 {
    (d.row(s) * heads as u64 + head as u64) << 32
}

/// The attention of every sequence into `ctx` (`[tokens, h]`) from `qkv` (`[tokens, 3h]`) and the
/// projected table `pos_k`, `pos_q` (`[2 · span, h]`; empty for a term the model lacks).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &mut [f32],
    qkv: &[f32],
    pos_k: &[f32],
    pos_q: &[f32],
    offsets: &[usize],
    heads: usize,
    rel: &Relative,
    dropout: Option<Dropout>,
) {
    let h = ctx.len() / offsets.last().copied().unwrap_or(0).max(1);
    let d = h / heads;
    let scale = rel.scale(d);
    per_sequence(ctx, offsets, h)
        .into_par_iter()
        .enumerate()
        .for_each(|(s, out)| {
            let (o, len) = (offsets[s], offsets[s + 1] - offsets[s]);
            if len == 0 {
                return;
            }
            let x = &qkv[o * 3 * h..(o + len) * 3 * h];
            let (lo, hi) = rel.reach(len);
            let reach = hi - lo;
            let mut p = vec![0f32; len * len];
            let mut terms = vec![0f32; len * reach];
            let scaled = Product {
                scale,
                ..Product::SERIAL
            };
            for head in 0..heads {
                let c = head * d;
                let part = |k: usize| View::rows(&x[k * h + c..], len, d, 3 * h);
                matmul(&mut p, len, part(0), part(1).t(), scaled);
                for (on, table, by_query) in [(rel.c2p, pos_k, true), (rel.p2c, pos_q, false)] {
                    if !on {
                        continue;
                    }
                    // Content (queries for c2p, keys for p2c) against the reachable table rows.
                    let rows = View::rows(&table[lo * h + c..], reach, d, h);
                    let content = part(if by_query { 0 } else { 1 });
                    matmul(&mut terms, reach, content, rows.t(), scaled);
                    for i in 0..len {
                        for j in 0..len {
                            let owner = if by_query { i } else { j };
                            p[i * len + j] += terms[owner * reach + rel.row(i, j) - lo];
                        }
                    }
                }
                softmax_rows(&mut p, len);
                if let Some(drop) = dropout {
                    drop.apply_from(&mut p, dropout_base(&drop, heads, s, head));
                }
                let pv = View::rows(&p, len, len, len);
                matmul(&mut out[c..], h, pv, part(2), Product::SERIAL);
            }
        });
}

/// The same attention from candle's differentiable primitives (inputs: `qkv`, `pos_k`,
/// `pos_q`, each `[rows, width]`).
fn composed_attention(
    t: &[Tensor],
    offsets: &[usize],
    heads: usize,
    rel: &Relative,
    dropout: Option<Dropout>,
) -> candle_core::Result<Tensor> {
    let (qkv, pos_k, pos_q) = (&t[0], &t[1], &t[2]);
    let h = qkv.dim(1)? / 3;
    let d = h / heads;
    let scale = rel.scale(d) as f64;
    let dev = qkv.device();
    // [heads, rows, d] from `[rows, h]` columns.
    let split = |x: &Tensor, rows: usize| -> candle_core::Result<Tensor> {
        x.reshape((rows, heads, d))?.transpose(0, 1)?.contiguous()
    };
    let span2 = 2 * rel.span;
    let mut outs = Vec::new();
    for (s, w) in offsets.windows(2).enumerate() {
        let len = w[1] - w[0];
        let rows = qkv.narrow(0, w[0], len)?;
        let part = |k: usize| split(&rows.narrow(1, k * h, h)?, len);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        let index = |f: &dyn Fn(usize, usize) -> usize| -> candle_core::Result<Tensor> {
            let idx: Vec<u32> = (0..heads * len * len)
                .map(|x| f((x / len) % len, x % len) as u32)
                .collect();
            Tensor::from_vec(idx, (heads, len, len), dev)
        };
        if rel.c2p {
            let c2p = q.matmul(&split(pos_k, span2)?.t()?)?;
            let gathered = c2p
                .contiguous()?
                .gather(&index(&|i, j| rel.row(i, j))?, D::Minus1)?;
            scores = (scores + (gathered * scale)?)?;
        }
        if rel.p2c {
            let p2c = k.matmul(&split(pos_q, span2)?.t()?)?;
            // G[a][b] = p2c[a][row(b, a)]; the score of (i, j) is G[j][i].
            let gathered = p2c
                .contiguous()?
                .gather(&index(&|a, b| rel.row(b, a))?, D::Minus1)?;
            scores = (scores + (gathered.transpose(1, 2)? * scale)?)?;
        }
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let mut p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        if let Some(drop) = dropout {
            let mut keep = vec![1f32; heads * len * len];
            for (head, m) in keep.chunks_mut(len * len).enumerate() {
                drop.apply_from(m, dropout_base(&drop, heads, s, head));
            }
            p = p.mul(&Tensor::from_vec(keep, (heads, len, len), dev)?)?;
        }
        outs.push(p.matmul(&v)?.transpose(0, 1)?.reshape((len, h))?);
    }
    Tensor::cat(&outs, 0)
}

/// dL/dqkv, dL/dpos_k and dL/dpos_q (written, in that order) from dL/dctx, by the composed path.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dctx: &[f32],
    qkv: &[f32],
    pos_k: &[f32],
    pos_q: &[f32],
    offsets: &[usize],
    heads: usize,
    rel: &Relative,
    dropout: Option<Dropout>,
) -> anyhow::Result<[Vec<f32>; 3]> {
    let n = offsets.last().copied().unwrap_or(0);
    let h = dctx.len() / n.max(1);
    let span2 = 2 * rel.span;
    // A term the model lacks has no table: a zero one keeps the shapes.
    let zeros = vec![0f32; span2 * h];
    let table = |t: &'_ [f32]| {
        if t.is_empty() {
            zeros.clone()
        } else {
            t.to_vec()
        }
    };
    let (pk, pq) = (table(pos_k), table(pos_q));
    let inputs: [composed::Input; 3] = [(qkv, &[n, 3 * h]), (&pk, &[span2, h]), (&pq, &[span2, h])];
    let f = |t: &[Tensor]| composed_attention(t, offsets, heads, rel, dropout);
    let mut g = composed::backward(f, &inputs, dctx)?.into_iter();
    let mut next = || g.next().unwrap_or_default();
    Ok([next(), next(), next()])
}

/// Runs the composed forward (for the tests).
#[cfg(test)]
fn composed_forward(
    qkv: &[f32],
    pos_k: &[f32],
    pos_q: &[f32],
    offsets: &[usize],
    heads: usize,
    rel: &Relative,
) -> Vec<f32> {
    let n = *offsets.last().unwrap();
    let h = qkv.len() / n / 3;
    let span2 = 2 * rel.span;
    let inputs: [composed::Input; 3] = [
        (qkv, &[n, 3 * h]),
        (pos_k, &[span2, h]),
        (pos_q, &[span2, h]),
    ];
    let f = |t: &[Tensor]| composed_attention(t, offsets, heads, rel, None);
    composed::forward(f, &inputs).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn forward_matches_composed_and_backward_matches_finite_differences() {
        let (h, heads) = (8, 2);
        let offsets = [0, 3, 13];
        let n = 13;
        for (buckets, max_rel) in [(4, 20), (0, 6)] {
            let rel = Relative::new(true, true, buckets, max_rel, 20);
            let span2 = 2 * rel.span;
            let qkv = randn(n * 3 * h, 1.0, 1);
            let pk = randn(span2 * h, 1.0, 2);
            let pq = randn(span2 * h, 1.0, 3);
            let mut ctx = vec![f32::NAN; n * h];
            forward(&mut ctx, &qkv, &pk, &pq, &offsets, heads, &rel, None);
            let want = composed_forward(&qkv, &pk, &pq, &offsets, heads, &rel);
            assert!(max_diff(&ctx, &want) < 1e-5, "buckets {buckets}");
            // Central differences of sum(ctx²) for a few inputs of each argument.
            let loss = |q: &[f32], k: &[f32], p: &[f32]| -> f64 {
                let mut c = vec![0f32; n * h];
                forward(&mut c, q, k, p, &offsets, heads, &rel, None);
                c.iter().map(|v| (*v as f64).powi(2)).sum()
            };
            let dctx: Vec<f32> = ctx.iter().map(|v| 2.0 * v).collect();
            let [dq, dk, dp] =
                backward(&dctx, &qkv, &pk, &pq, &offsets, heads, &rel, None).unwrap();
            let eps = 1e-2f32;
            let check = |grad: &[f32], which: usize, idx: usize| {
                let mut args = [qkv.clone(), pk.clone(), pq.clone()];
                args[which][idx] += eps;
                let plus = loss(&args[0], &args[1], &args[2]);
                args[which][idx] -= 2.0 * eps;
                let minus = loss(&args[0], &args[1], &args[2]);
                let numeric = ((plus - minus) / (2.0 * eps as f64)) as f32;
                assert!(
                    (numeric - grad[idx]).abs() < 2e-2 * (1.0 + grad[idx].abs()),
                    "input {which} index {idx}: {numeric} vs {}",
                    grad[idx]
                );
            };
            for idx in [0, 9, 30, 77, 150, 290] {
                check(&dq, 0, idx);
            }
            for idx in (0..span2 * h).step_by(13) {
                check(&dk, 1, idx);
                check(&dp, 2, idx);
            }
        }
    }
}
