//! DeBERTa's disentangled self-attention over a packed batch (transformers'
//! `DisentangledSelfAttention`): the score of query `i` for key `j` adds to `q_i · k_j` a
//! content-to-position term `q_i · pk_δ` and a position-to-content term `k_j · pq_δ`, where
//! `δ = idx(i - j)` indexes the relative-position table (log-bucketed beyond a distance) and
//! `pk`, `pq` are the table's rows projected as keys and queries; all three are divided by
//! `sqrt(d · (1 + terms))`. The forward is hand-written over strided products (only the table
//! rows a sequence can reach are multiplied), and so is the backward, which recomputes the
//! probabilities as flash attention does. The same computation composed from candle's
//! differentiable primitives is their test reference.

use rayon::prelude::*;

use super::attention::{per_sequence, softmax_backward_rows, softmax_rows};
use super::matmul::{matmul, Product, View};
use super::Dropout;

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

/// One sequence of a call: its rows of the fused projection and the table rows it reaches.
struct Sequence<'a> {
    x: &'a [f32],
    len: usize,
    /// The table rows `lo..lo + reach` that its distances index.
    lo: usize,
    reach: usize,
    h: usize,
    d: usize,
    scale: f32,
}

impl<'a> Sequence<'a> {
    fn new(
        qkv: &'a [f32],
        offsets: &[usize],
        s: usize,
        h: usize,
        heads: usize,
        rel: &Relative,
    ) -> Self {
        let (o, len) = (offsets[s], offsets[s + 1] - offsets[s]);
        let (lo, hi) = rel.reach(len.max(1));
        let d = h / heads;
        Sequence {
            x: &qkv[o * 3 * h..(o + len) * 3 * h],
            len,
            lo,
            reach: hi - lo,
            h,
            d,
            scale: rel.scale(d),
        }
    }

    /// Head `head`'s `[len, d]` columns of part `k` (0: Q, 1: K, 2: V).
    fn part(&self, k: usize, head: usize) -> View<'a> {
        View::rows(
            &self.x[k * self.h + head * self.d..],
            self.len,
            self.d,
            3 * self.h,
        )
    }

    /// Head `head`'s `[reach, d]` columns of a projected table's reachable rows.
    fn rows<'t>(&self, table: &'t [f32], head: usize) -> View<'t> {
        View::rows(
            &table[self.lo * self.h + head * self.d..],
            self.reach,
            self.d,
            self.h,
        )
    }

    fn scaled(&self) -> Product {
        Product {
            scale: self.scale,
            ..Product::SERIAL
        }
    }

    /// The softmax probabilities of `head` into `p` (`[len, len]`); `terms` is scratch.
    #[allow(clippy::too_many_arguments)]
    fn probs(
        &self,
        head: usize,
        pos_k: &[f32],
        pos_q: &[f32],
        rel: &Relative,
        p: &mut [f32],
        terms: &mut [f32],
    ) {
        let (len, reach) = (self.len, self.reach);
        matmul(
            p,
            len,
            self.part(0, head),
            self.part(1, head).t(),
            self.scaled(),
        );
        for (on, table, by_query) in [(rel.c2p, pos_k, true), (rel.p2c, pos_q, false)] {
            if !on {
                continue;
            }
            // Content (queries for c2p, keys for p2c) against the reachable table rows.
            let content = self.part(if by_query { 0 } else { 1 }, head);
            matmul(
                terms,
                reach,
                content,
                self.rows(table, head).t(),
                self.scaled(),
            );
            for i in 0..len {
                for j in 0..len {
                    let owner = if by_query { i } else { j };
                    p[i * len + j] += terms[owner * reach + rel.row(i, j) - self.lo];
                }
            }
        }
        softmax_rows(p, len);
    }
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
    per_sequence(ctx, offsets, h)
        .into_par_iter()
        .enumerate()
        .for_each(|(s, out)| {
            let seq = Sequence::new(qkv, offsets, s, h, heads, rel);
            if seq.len == 0 {
                return;
            }
            let mut p = vec![0f32; seq.len * seq.len];
            let mut terms = vec![0f32; seq.len * seq.reach];
            for head in 0..heads {
                seq.probs(head, pos_k, pos_q, rel, &mut p, &mut terms);
                if let Some(drop) = dropout {
                    drop.apply_from(&mut p, dropout_base(&drop, heads, s, head));
                }
                let pv = View::rows(&p, seq.len, seq.len, seq.len);
                matmul(
                    &mut out[head * seq.d..],
                    h,
                    pv,
                    seq.part(2, head),
                    Product::SERIAL,
                );
            }
        });
}

/// dL/dqkv (written into `dqkv`, `[tokens, 3h]`), and dL/dpos_k and dL/dpos_q (returned) from
/// dL/dctx, recomputing the probabilities (and
/// regenerating the dropout masks) of the forward pass. Per head, with `dS` the scores'
/// gradient (scaled): `dQ = dS K + dC pk`, `dK = dSᵀ Q + dP pq`, where `dC[i, δ]` and
/// `dP[j, δ]` gather `dS[i, j]` by the table row `δ` of `(i, j)`, and `dpk += dCᵀ Q`,
/// `dpq += dPᵀ K` (each sequence's share added in sequence order, so runs repeat exactly).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    dctx: &[f32],
    qkv: &[f32],
    pos_k: &[f32],
    pos_q: &[f32],
    offsets: &[usize],
    heads: usize,
    rel: &Relative,
    dropout: Option<Dropout>,
) -> [Vec<f32>; 2] {
    let h = dctx.len() / offsets.last().copied().unwrap_or(0).max(1);
    // Each sequence's gradient of the table rows it reaches, `[reach, h]` each.
    let shares: Vec<[Vec<f32>; 2]> = per_sequence(dqkv, offsets, 3 * h)
        .into_par_iter()
        .enumerate()
        .map(|(s, dx)| {
            let seq = Sequence::new(qkv, offsets, s, h, heads, rel);
            let (len, reach, d, lo) = (seq.len, seq.reach, seq.d, seq.lo);
            let (mut dpk, mut dpq) = (vec![0f32; reach * h], vec![0f32; reach * h]);
            if len == 0 {
                return [dpk, dpq];
            }
            let dout = &dctx[offsets[s] * h..offsets[s + 1] * h];
            let (mut p, mut pd, mut ds) = (
                vec![0f32; len * len],
                vec![0f32; len * len],
                vec![0f32; len * len],
            );
            let (mut terms, mut dterm) = (vec![0f32; len * reach], vec![0f32; len * reach]);
            let add = Product {
                accumulate: true,
                ..Product::SERIAL
            };
            for head in 0..heads {
                let c = head * d;
                let dout_h = View::rows(&dout[c..], len, d, h);
                seq.probs(head, pos_k, pos_q, rel, &mut p, &mut terms);
                pd.copy_from_slice(&p);
                let base = dropout.map(|drop| (drop, dropout_base(&drop, heads, s, head)));
                if let Some((drop, b)) = base {
                    drop.apply_from(&mut pd, b);
                }
                // dV = P_dropᵀ dO; dP = (dO Vᵀ) * keep; dS (scaled) in place of dP.
                let pdv = View::rows(&pd, len, len, len).t();
                matmul(&mut dx[2 * h + c..], 3 * h, pdv, dout_h, Product::SERIAL);
                matmul(&mut ds, len, dout_h, seq.part(2, head).t(), Product::SERIAL);
                if let Some((drop, b)) = base {
                    drop.apply_from(&mut ds, b);
                }
                softmax_backward_rows(&mut ds, &p, len, seq.scale);
                let dsv = View::rows(&ds, len, len, len);
                let (q, k) = (seq.part(0, head), seq.part(1, head));
                matmul(&mut dx[c..], 3 * h, dsv, k, Product::SERIAL);
                matmul(&mut dx[h + c..], 3 * h, dsv.t(), q, Product::SERIAL);
                for (on, table, dtable, by_query) in [
                    (rel.c2p, pos_k, &mut dpk, true),
                    (rel.p2c, pos_q, &mut dpq, false),
                ] {
                    if !on {
                        continue;
                    }
                    // Gather dS by table row: c2p by query, p2c by key.
                    dterm.fill(0.0);
                    for i in 0..len {
                        for j in 0..len {
                            let owner = if by_query { i } else { j };
                            dterm[owner * reach + rel.row(i, j) - lo] += ds[i * len + j];
                        }
                    }
                    let dt = View::rows(&dterm, len, reach, reach);
                    let (content, dcontent) = match by_query {
                        true => (q, c),
                        false => (k, h + c),
                    };
                    matmul(&mut dx[dcontent..], 3 * h, dt, seq.rows(table, head), add);
                    matmul(&mut dtable[c..], h, dt.t(), content, add);
                }
            }
            [dpk, dpq]
        })
        .collect();
    // Each share covers the rows from its sequence's `lo`.
    let table_grad = |on: bool, which: usize| {
        if !on {
            return Vec::new();
        }
        let mut total = vec![0f32; 2 * rel.span * h];
        for (s, share) in shares.iter().enumerate() {
            let lo = Sequence::new(qkv, offsets, s, h, heads, rel).lo;
            let rows = &mut total[lo * h..][..share[which].len()];
            rows.iter_mut()
                .zip(&share[which])
                .for_each(|(a, b)| *a += b);
        }
        total
    };
    [table_grad(rel.c2p, 0), table_grad(rel.p2c, 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use crate::ops::{composed, Pass};
    use candle_core::{Tensor, D};

    /// The same attention from candle's differentiable primitives (inputs: `qkv`, `pos_k`,
    /// `pos_q`, each `[rows, width]`): the kernels' test reference.
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

    #[test]
    fn matches_the_composed_attention_values_and_gradients() {
        let (h, heads) = (8, 2);
        let offsets = [0, 3, 13];
        let n = 13;
        let qkv = randn(n * 3 * h, 1.0, 1);
        let probe = randn(n * h, 1.0, 4);
        // Log buckets and plain distances, each term alone and both, with and without dropout.
        let cases = [
            (4, 20, true, true),
            (0, 6, true, true),
            (4, 20, true, false),
            (0, 6, false, true),
        ];
        for (buckets, max_rel, c2p, p2c) in cases {
            for dropout in [None, Dropout::site(Some(Pass::new(3)), 0, 0.2)] {
                let rel = Relative::new(c2p, p2c, buckets, max_rel, 20);
                let span2 = 2 * rel.span;
                let pk = if c2p {
                    randn(span2 * h, 1.0, 2)
                } else {
                    Vec::new()
                };
                let pq = if p2c {
                    randn(span2 * h, 1.0, 3)
                } else {
                    Vec::new()
                };
                let what = format!(
                    "buckets {buckets}, c2p {c2p}, p2c {p2c}, dropout {}",
                    dropout.is_some()
                );
                let full = |t: &[f32]| {
                    if t.is_empty() {
                        vec![0f32; span2 * h]
                    } else {
                        t.to_vec()
                    }
                };
                let (fk, fq) = (full(&pk), full(&pq));
                let inputs: [composed::Input; 3] =
                    [(&qkv, &[n, 3 * h]), (&fk, &[span2, h]), (&fq, &[span2, h])];
                let f = |t: &[Tensor]| composed_attention(t, &offsets, heads, &rel, dropout);
                let mut ctx = vec![f32::NAN; n * h];
                forward(&mut ctx, &qkv, &pk, &pq, &offsets, heads, &rel, dropout);
                let want = composed::forward(f, &inputs).unwrap();
                assert!(max_diff(&ctx, &want) < 1e-5, "{what}: forward");
                let mut dqkv = vec![f32::NAN; n * 3 * h];
                let [dpk, dpq] = backward(
                    &mut dqkv, &probe, &qkv, &pk, &pq, &offsets, heads, &rel, dropout,
                );
                let got = [dqkv, dpk, dpq];
                let want = composed::backward(f, &inputs, &probe).unwrap();
                for (k, on) in [(0, true), (1, c2p), (2, p2c)] {
                    match on {
                        true => assert!(rel_diff(&got[k], &want[k]) < 1e-4, "{what}: gradient {k}"),
                        false => {
                            assert!(got[k].is_empty(), "{what}: gradient {k} of an absent term")
                        }
                    }
                }
            }
        }
    }
}
