//! Multi-head self-attention over a packed batch: the rows of every sequence lie back to back
//! (`offsets[s]..offsets[s + 1]`), with no padding, so no padding mask is needed and no work is
//! spent on pad tokens. Forward and backward each run one task per sequence. The forward's two
//! products (`k qᵀ` and `p v`) are register-tiled kernels below: a head of a short pair is a
//! product of some 30 x 32 x 30, where a general `gemm` call spends most of its time packing and
//! dispatching (measured: 384 ms of a scoring pass of STS-B test with strided `gemm` calls). A
//! head's probabilities are kept transposed, a row per key and a column per query, so softmax
//! runs down the columns with whole-vector max and sum and no lane folding (measured in a
//! scoring pass: 341-387 -> 255-277 ms, 0.31-0.33 -> 0.24 of the QKV product's time). On
//! AVX-512 the tiles are two vectors wide, of fused multiply-adds (`avx512`; the attention of a
//! scoring pass of STS-B test 242-292 -> 190-209 ms). The
//! backward's products are strided `gemm` calls on the head's columns of the fused QKV
//! projection. The probabilities are recomputed in the backward pass (as flash attention does)
//! instead of being stored. [`Mask`] limits the keys a query sees: a sliding window
//! (ModernBERT's local layers) or the past (a causal LM); [`Heads`] allows fewer key/value heads
//! than query heads (grouped-query attention).

use multiversion::multiversion;
use rayon::prelude::*;

use super::activation::exp;
use super::matmul::{matmul, Product, View};
// `LANES` (16 floats: one AVX-512 vector, two AVX2 ones) are also the queries (in [`scores`])
// or output columns (in [`context`]) of a register tile; a head's transposed probabilities are
// `[len, len rounded up to LANES]`, so softmax runs on whole vectors too.
use super::{Dropout, LANES};

/// Key rows (in [`scores`]) or query rows (in [`context`]) of a register tile.
const ROWS: usize = 4;

/// `acc[r] += a[r] · b` for a tile: `ROWS` broadcasts times one vector.
#[inline(always)]
fn fma_tile(acc: &mut [[f32; LANES]; ROWS], a: [f32; ROWS], b: &[f32; LANES]) {
    for r in 0..ROWS {
        for l in 0..LANES {
            acc[r][l] += a[r] * b[l];
        }
    }
}

/// `pt = scale · k qᵀ` (the scores transposed) for one head of a `len`-token sequence, key
/// `j`'s row at `j * lp`, where `qt` (the queries transposed) is `[d, lp]`, zero past `len`,
/// and `k` is `[len, d]`: the queries from `from` on (the ones before are [`avx512`]'s). Tiles
/// of `ROWS` keys by `LANES` queries stay in registers over the `d` products.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn scores(
    pt: &mut [f32],
    k: &[f32],
    qt: &[f32],
    (len, d): (usize, usize),
    scale: f32,
    from: usize,
) {
    let lp = qt.len() / d;
    for jb in (0..len).step_by(ROWS) {
        // Rows past the sequence repeat its last; their results are not written.
        let k: [&[f32]; ROWS] = std::array::from_fn(|r| &k[(jb + r).min(len - 1) * d..][..d]);
        for ib in (from..lp).step_by(LANES) {
            let mut acc = [[0f32; LANES]; ROWS];
            for (c, q) in qt.chunks_exact(lp).enumerate() {
                let q = q[ib..].first_chunk().expect("lp is a multiple of LANES");
                fma_tile(&mut acc, std::array::from_fn(|r| k[r][c]), q);
            }
            for (r, a) in acc.iter().enumerate().take(len - jb) {
                let row = &mut pt[(jb + r) * lp + ib..][..LANES];
                row.iter_mut().zip(a).for_each(|(o, a)| *o = a * scale);
            }
        }
    }
}

/// `out = p v` for one head: `pt` the probabilities transposed (key `j`'s row at `j * lp`),
/// `v` the values `[len, dp]` (`d` rounded up to `LANES`, zero past `d`), output row `i` at
/// `out[i * out_rs..][..d]`: the columns from `from` on (the ones before are [`avx512`]'s).
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn context(
    (out, out_rs): (&mut [f32], usize),
    pt: &[f32],
    v: &[f32],
    (len, d): (usize, usize),
    from: usize,
) {
    let (lp, dp) = (pt.len() / len, v.len() / len);
    for ib in (0..len).step_by(ROWS) {
        for cb in (from..dp).step_by(LANES) {
            let mut acc = [[0f32; LANES]; ROWS];
            for (p, v) in pt.chunks_exact(lp).zip(v.chunks_exact(dp)) {
                let v = v[cb..].first_chunk().expect("dp is a multiple of LANES");
                // `ib + ROWS <= lp`: rows past the sequence read padding, and are not written.
                let p = p[ib..].first_chunk().expect("lp is a multiple of ROWS");
                fma_tile(&mut acc, *p, v);
            }
            let n = LANES.min(d - cb);
            for (r, a) in acc.iter().enumerate().take(len - ib) {
                out[(ib + r) * out_rs + cb..][..n].copy_from_slice(&a[..n]);
            }
        }
    }
}

/// Floats across a tile of [`avx512`]'s kernels: two vectors.
const WIDE: usize = 2 * LANES;

/// Columns of a row `width` floats wide that [`avx512`]'s kernels take, where the CPU runs
/// them; the generic kernels take the rest.
fn wide_part(width: usize) -> usize {
    match super::matmul::own_kernel() {
        true => width - width % WIDE,
        false => 0,
    }
}

/// [`scores`] and [`context`] on AVX-512, over whole tiles of `ROWS` by `WIDE`: eight
/// accumulators, each a fused multiply-add a step, where the generic kernels' `ROWS` by
/// `LANES` tiles of separate multiplies and adds leave the FMA units idle half the time
/// (AVX2's 16 registers would not hold the wider tile).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ROWS, WIDE};
    use std::arch::x86_64::*;

    /// [`super::scores`] for queries `0..wide` (a multiple of `WIDE`).
    #[target_feature(enable = "avx512f")]
    pub(super) fn scores(
        pt: &mut [f32],
        k: &[f32],
        qt: &[f32],
        (len, d): (usize, usize),
        scale: f32,
        wide: usize,
    ) {
        let lp = qt.len() / d;
        assert!(wide.is_multiple_of(WIDE) && wide <= lp && pt.len() >= len * lp);
        for jb in (0..len).step_by(ROWS) {
            // Rows past the sequence repeat its last; their results are not written.
            let k: [&[f32]; ROWS] = std::array::from_fn(|r| &k[(jb + r).min(len - 1) * d..][..d]);
            for ib in (0..wide).step_by(WIDE) {
                let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                for (c, q) in qt.chunks_exact(lp).enumerate() {
                    let q: &[f32; WIDE] = q[ib..].first_chunk().expect("wide <= lp");
                    // SAFETY: `q` holds two vectors.
                    let q = unsafe { [_mm512_loadu_ps(&q[0]), _mm512_loadu_ps(&q[16])] };
                    for (acc, k) in acc.iter_mut().zip(k) {
                        let a = _mm512_set1_ps(k[c]);
                        acc[0] = _mm512_fmadd_ps(a, q[0], acc[0]);
                        acc[1] = _mm512_fmadd_ps(a, q[1], acc[1]);
                    }
                }
                let scale = _mm512_set1_ps(scale);
                for (r, acc) in acc.iter().enumerate().take(len - jb) {
                    let row: &mut [f32; WIDE] = pt[(jb + r) * lp + ib..]
                        .first_chunk_mut()
                        .expect("wide <= lp");
                    // SAFETY: `row` holds two vectors.
                    unsafe {
                        _mm512_storeu_ps(&mut row[0], _mm512_mul_ps(acc[0], scale));
                        _mm512_storeu_ps(&mut row[16], _mm512_mul_ps(acc[1], scale));
                    }
                }
            }
        }
    }

    /// [`super::context`] for columns `0..wide` (a multiple of `WIDE`).
    #[target_feature(enable = "avx512f")]
    pub(super) fn context(
        (out, out_rs): (&mut [f32], usize),
        pt: &[f32],
        v: &[f32],
        (len, d): (usize, usize),
        wide: usize,
    ) {
        let (lp, dp) = (pt.len() / len, v.len() / len);
        assert!(wide.is_multiple_of(WIDE) && wide <= dp && lp.is_multiple_of(ROWS));
        for ib in (0..len).step_by(ROWS) {
            for cb in (0..wide).step_by(WIDE) {
                let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                for (p, v) in pt.chunks_exact(lp).zip(v.chunks_exact(dp)) {
                    let v: &[f32; WIDE] = v[cb..].first_chunk().expect("wide <= dp");
                    // SAFETY: `v` holds two vectors.
                    let v = unsafe { [_mm512_loadu_ps(&v[0]), _mm512_loadu_ps(&v[16])] };
                    // `ib + ROWS <= lp`: rows past the sequence read padding, not written.
                    let p: &[f32; ROWS] = p[ib..].first_chunk().expect("lp is a multiple of ROWS");
                    for (acc, &p) in acc.iter_mut().zip(p) {
                        let a = _mm512_set1_ps(p);
                        acc[0] = _mm512_fmadd_ps(a, v[0], acc[0]);
                        acc[1] = _mm512_fmadd_ps(a, v[1], acc[1]);
                    }
                }
                // Columns past `d` are left alone: masked stores.
                let n = WIDE.min(d - cb);
                let masks = crate::ops::column_masks::<2>(d, cb);
                for (r, acc) in acc.iter().enumerate().take(len - ib) {
                    let row = &mut out[(ib + r) * out_rs + cb..][..n];
                    let at = row.as_mut_ptr();
                    // SAFETY: the masks keep both stores within the `n` floats of `row`.
                    unsafe {
                        _mm512_mask_storeu_ps(at, masks[0], acc[0]);
                        _mm512_mask_storeu_ps(at.wrapping_add(16), masks[1], acc[1]);
                    }
                }
            }
        }
    }
}

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

/// The vector of `row` at column `c` (a multiple of `LANES`, as the row's length is).
#[inline(always)]
fn vector(row: &mut [f32], c: usize) -> &mut [f32; LANES] {
    row[c..].first_chunk_mut().expect("rows are whole vectors")
}

/// Softmax down each column of `pt` (rows `lp` wide, a multiple of `LANES`): the columns are
/// queries and the rows keys, so the max and the sum run across rows, whole vectors at a time.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn softmax_columns(pt: &mut [f32], lp: usize) {
    for c in (0..lp).step_by(LANES) {
        let mut max = [f32::NEG_INFINITY; LANES];
        for row in pt.chunks_exact_mut(lp) {
            let x = vector(row, c);
            for l in 0..LANES {
                max[l] = if x[l] > max[l] { x[l] } else { max[l] };
            }
        }
        let mut sum = [0f32; LANES];
        for row in pt.chunks_exact_mut(lp) {
            let x = vector(row, c);
            for l in 0..LANES {
                x[l] = exp(x[l] - max[l]);
                sum[l] += x[l];
            }
        }
        let inv: [f32; LANES] = std::array::from_fn(|l| 1.0 / sum[l]);
        for row in pt.chunks_exact_mut(lp) {
            let x = vector(row, c);
            for l in 0..LANES {
                x[l] *= inv[l];
            }
        }
    }
}

/// [`softmax_columns`]' backward: `dSᵀ = Pᵀ (dPᵀ - colsum(Pᵀ dPᵀ)) * scale`, in place of
/// `dpt`.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn softmax_columns_backward(dpt: &mut [f32], pt: &[f32], lp: usize, scale: f32) {
    for c in (0..lp).step_by(LANES) {
        let at = |row: &[f32]| -> [f32; LANES] {
            *row[c..].first_chunk().expect("lp is a multiple of LANES")
        };
        let mut dot = [0f32; LANES];
        for (p, g) in pt.chunks_exact(lp).zip(dpt.chunks_exact(lp)) {
            let (p, g) = (at(p), at(g));
            for l in 0..LANES {
                dot[l] += p[l] * g[l];
            }
        }
        for (p, g) in pt.chunks_exact(lp).zip(dpt.chunks_exact_mut(lp)) {
            let p = at(p);
            let g = vector(g, c);
            for l in 0..LANES {
                g[l] = p[l] * (g[l] - dot[l]) * scale;
            }
        }
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

/// Space for a head's keys and transposed queries (see [`Dims::operands`]).
type Scratch<'a> = (&'a mut Vec<f32>, &'a mut Vec<f32>);

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

    /// Head `head`'s keys into `k`, `[len, d]`, and queries transposed into `qt`, `[d, lp]`,
    /// zero past `len`: the layouts [`scores`] reads from (contiguous, so they stay in L1
    /// across the tiles, where a token's QKV row is thousands of bytes wide).
    fn operands(&self, x: &[f32], len: usize, head: usize, (k, qt): Scratch) {
        let (d, width, col) = (self.heads.d, self.heads.width(), self.column(0, head));
        self.gather(x, len, (1, head), d, k);
        let lp = len.next_multiple_of(LANES);
        qt.clear();
        qt.resize(d * lp, 0.0);
        for (c, dst) in qt.chunks_exact_mut(lp).enumerate() {
            for (t, row) in dst.iter_mut().zip(x.chunks_exact(width).take(len)) {
                *t = row[col + c];
            }
        }
    }

    /// Head `head`'s part `part` (1: K, 2: V) into `buf`, `[len, dp]` (`dp >= d`, zero past
    /// `d`).
    fn gather(
        &self,
        x: &[f32],
        len: usize,
        (part, head): (usize, usize),
        dp: usize,
        buf: &mut Vec<f32>,
    ) {
        let (d, c0) = (self.heads.d, self.column(part, head));
        buf.clear();
        buf.resize(len * dp, 0.0);
        for (dst, row) in buf
            .chunks_exact_mut(dp)
            .zip(x.chunks_exact(self.heads.width()))
        {
            dst[..d].copy_from_slice(&row[c0..c0 + d]);
        }
    }

    /// Softmax probabilities of every query of `head` over the keys, transposed, into `pt`
    /// (`[len, lp]`: key `j`'s row holds every query's probability of it; the columns past
    /// `len` hold padding that nothing reads).
    fn probs(&self, qkv: &[f32], len: usize, head: usize, (k, qt): Scratch, pt: &mut [f32]) {
        self.operands(qkv, len, head, (k, qt));
        let (lp, dims) = (pt.len() / len, (len, self.heads.d));
        let wide = wide_part(lp);
        #[cfg(target_arch = "x86_64")]
        if wide > 0 {
            // SAFETY: `wide_part` is non-zero only where the CPU has AVX-512.
            unsafe { avx512::scores(pt, k, qt, dims, self.scale, wide) };
        }
        scores(pt, k, qt, dims, self.scale, wide);
        if self.mask != Mask::All {
            // The keys a query does not see get probability 0.
            for (j, row) in pt.chunks_exact_mut(lp).enumerate() {
                for (i, s) in row[..len].iter_mut().enumerate() {
                    let (lo, hi) = self.mask.keys(i, len);
                    if !(lo..hi).contains(&j) {
                        *s = f32::NEG_INFINITY;
                    }
                }
            }
        }
        softmax_columns(pt, lp);
    }

    /// Drops entries of `pt` (`[len, lp]`, transposed), probability `(i, j)` by its index
    /// `i * len + j`.
    fn drop(
        &self,
        dropout: Option<Dropout>,
        (s, len): (usize, usize),
        head: usize,
        pt: &mut [f32],
    ) {
        if let Some(d) = dropout {
            let base = self.dropout_base(&d, s, head);
            for (j, row) in pt.chunks_exact_mut(pt.len() / len).enumerate() {
                d.apply_strided(&mut row[..len], base + j as u64, len as u64);
            }
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
            let mut pt = vec![0f32; len * len.next_multiple_of(LANES)];
            let (mut k, mut qt, mut v) = (Vec::new(), Vec::new(), Vec::new());
            let dp = heads.d.next_multiple_of(LANES);
            let wide = wide_part(dp);
            for head in 0..heads.q {
                dm.probs(x, len, head, (&mut k, &mut qt), &mut pt);
                dm.drop(dropout, (s, len), head, &mut pt);
                dm.gather(x, len, (2, head), dp, &mut v);
                let (out, dims) = ((&mut out[head * heads.d..], h), (len, heads.d));
                #[cfg(target_arch = "x86_64")]
                if wide > 0 {
                    // SAFETY: `wide_part` is non-zero only where the CPU has AVX-512.
                    unsafe { avx512::context((&mut *out.0, h), &pt, &v, dims, wide) };
                }
                context(out, &pt, &v, dims, wide);
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
            // Probabilities and their gradients, transposed (`[len, lp]`, as [`Dims::probs`]);
            // the columns past `len` hold padding that no product reads.
            let lp = len.next_multiple_of(LANES);
            let (mut pt, mut pdt, mut dpt) = (
                vec![0f32; len * lp],
                vec![0f32; len * lp],
                vec![0f32; len * lp],
            );
            let (mut k, mut qt) = (Vec::new(), Vec::new());
            for head in 0..heads.q {
                let c = head * heads.d;
                let dout_h = View::rows(&dout[c..], len, heads.d, h);
                dm.probs(x, len, head, (&mut k, &mut qt), &mut pt);
                pdt.copy_from_slice(&pt);
                dm.drop(dropout, (s, len), head, &mut pdt);
                // The group's first query head writes its key and value gradients, the rest add.
                let shared = Product {
                    accumulate: head % group != 0,
                    ..Product::SERIAL
                };
                // dV = P_dropᵀ dO; dPᵀ = (V dOᵀ) * keep.
                let pdt = View::rows(&pdt, len, len, lp);
                matmul(&mut dx[dm.column(2, head)..], width, pdt, dout_h, shared);
                let v = dm.qkv(x, len, 2, head);
                matmul(&mut dpt, lp, v, dout_h.t(), Product::SERIAL);
                dm.drop(dropout, (s, len), head, &mut dpt);
                // dSᵀ in place of dPᵀ; then dQ = dS K and dK = dSᵀ Q.
                softmax_columns_backward(&mut dpt, &pt, lp, dm.scale);
                let dst = View::rows(&dpt, len, len, lp);
                let (q, k) = (dm.qkv(x, len, 0, head), dm.qkv(x, len, 1, head));
                matmul(&mut dx[c..], width, dst.t(), k, Product::SERIAL);
                matmul(&mut dx[dm.column(1, head)..], width, dst, q, shared);
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
        // Multi-head, and grouped-query (4 query heads on 2 key/value heads); heads narrower
        // than the kernels' vectors, as wide (32), one and a bit (20), and a wide tile and a
        // bit (40); sequences shorter and longer than a vector of keys (16), and than a wide
        // tile (33). Every head sees all keys, a window narrower than a sequence (2) or than
        // none (8), or the past.
        for (offsets, heads) in [
            (&[0, 4, 11, 12][..], Heads::new(24, 3)),
            (&[0, 4, 11, 12], Heads { q: 4, kv: 2, d: 6 }),
            (&[0, 21, 38, 39], Heads::new(64, 2)),
            (&[0, 17, 50], Heads { q: 4, kv: 2, d: 20 }),
            (&[0, 33, 36], Heads { q: 2, kv: 1, d: 40 }),
        ] {
            let n = *offsets.last().unwrap();
            let qkv = randn(n * heads.width(), 1.0, 1);
            let probe = randn(n * heads.out_width(), 1.0, 2);
            let qv = var(&qkv, &[n, heads.width()]);
            for mask in [Mask::All, Mask::Window(2), Mask::Window(8), Mask::Causal] {
                let (want, g) = reference(composed(&qv, offsets, heads, mask), &probe, &[&qv]);
                let mut ctx = vec![f32::NAN; n * heads.out_width()];
                forward(&mut ctx, &qkv, offsets, heads, mask, None);
                assert!(max_diff(&ctx, &want) < 1e-5, "{heads:?} {mask:?}");
                let mut dqkv = vec![f32::NAN; n * heads.width()];
                backward(&mut dqkv, &probe, &qkv, offsets, heads, mask, None);
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
