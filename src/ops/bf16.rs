//! bf16 scoring on CPUs with AMX (`tdpbf16ps`, see [`super::amx`]) or AVX-512 BF16
//! (`vdpbf16ps`: two bf16 products summed into each f32 lane, twice the multiply-adds of an
//! f32 FMA per instruction). Weights are rounded to bf16 once, at load; each call rounds its
//! input rows; the products accumulate in f32, and everything else (bias, GELU, layer norm,
//! softmax, the head) stays f32. bf16 keeps f32's range with an 8-bit mantissa: no scales to
//! choose, and each value is off by at most 2^-9 of itself, where int8 is off by a step of its
//! row's range.
//!
//! The AVX-512 kernel is `matmul::avx512`'s and `int8::vnni`'s shape: `MR` rows by `NV`
//! vectors of 16 columns in registers, a row's pair of bf16 broadcast straight from the
//! rounded rows, the weight in panels of `PANEL` columns laid out once, the bias added in the
//! epilogue. AMX's column tiles are 16 columns of the same panels.
//!
//! Training's products in mixed precision ([`product`], on AMX only) round both operands of
//! each call into the same layouts (the weights on every call: they change at every step).

use rayon::prelude::*;
use std::cell::{Cell, RefCell};

use super::amx;
use super::linear::WeightLayout;
use super::matmul::{Start, View};
use super::ROW_BLOCK;

/// Rows of a register tile.
const MR: usize = 8;
/// Vectors of 16 columns in a register tile.
const NV: usize = 3;
/// Columns of a weight panel: one register tile wide.
pub(crate) const PANEL: usize = 16 * NV;
/// bf16 values of a panel's pair of rows: `PANEL` columns of two.
pub(crate) const PAIR: usize = PANEL * 2;

/// 32 bf16 values on a cache line of their own: AMX loads whole lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

/// bf16 values on whole, aligned cache lines.
#[derive(Clone, Default)]
struct Lines(Vec<Line>);

impl Lines {
    /// At least `len` values (more only to the line's end); new values are zero.
    fn resize(&mut self, len: usize) {
        self.0.resize(len.div_ceil(32), Line([0; 32]));
    }

    fn as_slice(&self) -> &[u16] {
        // SAFETY: a `Line` is 32 `u16`s with no padding (`repr(C)`, 64 bytes).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 32) }
    }

    fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: as in `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 32) }
    }
}

/// The bf16 kernel this CPU runs, for `/info` and `bench`; `None` where there is none.
pub fn kernel() -> Option<&'static str> {
    if amx::available() {
        Some("crossenc amx (tdpbf16ps)")
    } else if avx512_available() {
        Some("crossenc avx512-bf16 (vdpbf16ps)")
    } else {
        None
    }
}

/// Whether this CPU runs a bf16 kernel.
pub fn available() -> bool {
    kernel().is_some()
}

/// Whether this CPU has AVX-512 BF16.
fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits; a NaN stays a NaN. Bit
/// operations only, so loops over it vectorise.
#[inline(always)]
pub fn round(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// The f32 that bf16 `b` stands for.
#[inline(always)]
pub fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A linear layer's weight in bf16, laid out for the kernels: panel `p`'s pair `q` (rows `2q`
/// and `2q + 1` of `Wᵀ`, `[in, out]`) is `PAIR` values, column `c`'s two at `2c`, as
/// `vdpbf16ps` and `tdpbf16ps` read them. Columns past `n` and rows past `k` are zero; the
/// pairs are padded to a whole tile's 16.
#[derive(Clone)]
pub struct Bf16Weight {
    data: Lines,
    k: usize,
    n: usize,
}

impl std::fmt::Debug for Bf16Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Bf16Weight([{}, {}])", self.k, self.n)
    }
}

impl Bf16Weight {
    /// Rounds `w` (`[out, in]` or `[in, out]` as `layout` says).
    pub fn new(w: &[f32], in_dim: usize, layout: WeightLayout) -> Self {
        let (k, n) = (in_dim, w.len() / in_dim);
        let mut data = Lines::default();
        pack_panels(&mut data, layout.transposed(w, k, n));
        Bf16Weight { data, k, n }
    }

    /// The panels as the kernels read them, and the padded `k` they cover.
    #[cfg(test)]
    pub(crate) fn panels(&self) -> (&[u16], usize) {
        (self.data.as_slice(), 2 * Self::pairs(self.k))
    }

    /// Pairs of rows that `k` rows take: whole tiles of `K_STEP` rows.
    fn pairs(k: usize) -> usize {
        k.next_multiple_of(amx::K_STEP) / 2
    }

    /// `y` (`[rows, out]`) = `x` (`[rows, in]`) · `w`ᵀ (+ `bias`), `x` rounded to bf16 first.
    /// Call only where [`available`] is true.
    pub fn forward(&self, y: &mut [f32], x: &[f32], bias: Option<&[f32]>) {
        let (k, n) = (self.k, self.n);
        let rows = x.len() / k;
        assert!(available(), "the CPU has no bf16 kernel");
        assert!(x.len() == rows * k && y.len() >= rows * n);
        assert!(bias.is_none_or(|b| b.len() == n));
        if rows == 0 {
            return;
        }
        let amx = amx::available();
        INPUT.with_borrow_mut(|a| {
            // Rows as long as the weight's pairs, zero past `k`; for AMX, whole blocks of rows.
            let k2 = 2 * Self::pairs(k);
            let padded = if amx {
                rows.next_multiple_of(amx::BLOCK)
            } else {
                rows
            };
            a.resize(padded * k2);
            let a = &mut a.as_mut_slice()[..padded * k2];
            a[rows * k2..].fill(0);
            a.par_chunks_mut(k2 * ROW_BLOCK)
                .zip(x.par_chunks(k * ROW_BLOCK))
                .for_each(|(a, x)| {
                    for (a, x) in a.chunks_exact_mut(k2).zip(x.chunks_exact(k)) {
                        a.iter_mut().zip(x).for_each(|(a, &v)| *a = round(v));
                        a[k..].fill(0);
                    }
                });
            let (y, w) = (&mut y[..rows * n], self.data.as_slice());
            if amx {
                let start = bias.map_or(Start::Zero, Start::Bias);
                return amx::bf16_product_par(y, (rows, n), (a, k2), (w, n), start);
            }
            // Each thread a share of the rows, whole tiles, over every panel.
            let part = rows
                .div_ceil(rayon::current_num_threads())
                .next_multiple_of(MR);
            y.par_chunks_mut(part * n)
                .zip(a.par_chunks(part * k2))
                .for_each(|(y, a)| {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has the features (asserted above); `a` holds whole rows
                    // of `k2` and `y` as many rows of `n`.
                    unsafe {
                        avx512::product(y, a, self, bias)
                    }
                });
        });
    }
}

/// Two values rounded to bf16 as one word: `lo` in the low half, as the kernels read a pair.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    round(lo) as u32 | (round(hi) as u32) << 16
}

/// `values` (from a [`Lines`] buffer, whole lines) as words of two.
fn words(values: &mut [u16]) -> &mut [u32] {
    // SAFETY: any two `u16`s make a `u32`; `align_to_mut` gives the aligned middle, which is
    // all of it for whole lines (asserted).
    let (head, words, tail) = unsafe { values.align_to_mut::<u32>() };
    assert!(head.is_empty() && tail.is_empty());
    words
}

/// `rhs` (`[k, n]`) rounded into `dst` as [`Bf16Weight`] lays out its weight. Read along its
/// rows or its columns, whichever lie side by side.
fn pack_panels(dst: &mut Lines, rhs: View) {
    let (k, n) = rhs.shape();
    let pairs = Bf16Weight::pairs(k);
    dst.resize(n.div_ceil(PANEL) * pairs * PAIR);
    dst.as_mut_slice()
        .par_chunks_mut(pairs * PAIR)
        .enumerate()
        .for_each(|(p, panel)| {
            let (c0, cols) = (p * PANEL, (n - p * PANEL).min(PANEL));
            panel.fill(0);
            if rhs.row_major() {
                // Rows `2q` and `2q + 1` of the panel's columns, as words of two.
                let panel = words(panel);
                let row = |t: usize| (t < k).then(|| &rhs.row(t).unwrap()[c0..c0 + cols]);
                for (q, out) in panel
                    .chunks_exact_mut(PAIR / 2)
                    .enumerate()
                    .take(k.div_ceil(2))
                {
                    let (lo, hi) = (row(2 * q).unwrap(), row(2 * q + 1));
                    match hi {
                        Some(hi) => {
                            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                                *o = pair(l, h);
                            }
                        }
                        None => out.iter_mut().zip(lo).for_each(|(o, &l)| *o = pair(l, 0.0)),
                    }
                }
            } else {
                // Blocks of 8 pairs (a cache line of each column), so that the block's
                // stretch of the panel stays in L1 while its 48 columns are read.
                let panel = words(panel);
                let at = |t: usize, c: usize| rhs.at(t, c0 + c);
                let whole = k / 2;
                for q0 in (0..whole).step_by(8) {
                    let q1 = (q0 + 8).min(whole);
                    for c in 0..cols {
                        match rhs.col(c0 + c) {
                            Some(col) => {
                                for q in q0..q1 {
                                    panel[q * (PAIR / 2) + c] = pair(col[2 * q], col[2 * q + 1]);
                                }
                            }
                            None => (q0..q1).for_each(|q| {
                                panel[q * (PAIR / 2) + c] = pair(at(2 * q, c), at(2 * q + 1, c))
                            }),
                        }
                    }
                }
                // An odd `k`'s last row, alone in its pair.
                if k % 2 == 1 {
                    for c in 0..cols {
                        panel[whole * (PAIR / 2) + c] = pair(at(k - 1, c), 0.0);
                    }
                }
            }
        });
}

/// `lhs` (`[m, k]`) rounded into `dst` as rows of `k` padded to whole steps (returned), the rows
/// padded with zeros to whole blocks, as AMX's driver reads them. A transposed `lhs` (a
/// gradient's `dyᵀ`) is read two rows of its source at a time, into `ROW_BLOCK` rows.
fn pack_rows(dst: &mut Lines, lhs: View) -> usize {
    let (m, k) = lhs.shape();
    let kp = k.next_multiple_of(amx::K_STEP);
    let padded = m.next_multiple_of(amx::BLOCK);
    dst.resize(padded * kp);
    dst.as_mut_slice()[..padded * kp]
        .par_chunks_mut(kp * ROW_BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            let r0 = b * ROW_BLOCK;
            block.fill(0);
            if r0 >= m {
                return;
            }
            let rows = (m - r0).min(ROW_BLOCK);
            if lhs.row_major() {
                for (i, row) in block.chunks_exact_mut(kp).enumerate().take(rows) {
                    let x = lhs.row(r0 + i).unwrap();
                    row.iter_mut().zip(x).for_each(|(a, &v)| *a = round(v));
                }
            } else {
                // Columns `2q` and `2q + 1` of `lhs` at a time (side by side in its source where
                // `lhs` is transposed), as words of two in each of the block's rows.
                let column = lhs.t();
                let at = |t: usize, i: usize| match t < k {
                    false => 0.0,
                    true => lhs.at(r0 + i, t),
                };
                let block = words(block);
                for q in 0..k.div_ceil(2) {
                    let t = 2 * q;
                    match (
                        column.row(t),
                        (t + 1 < k).then(|| column.row(t + 1)).flatten(),
                    ) {
                        (Some(lo), Some(hi)) => {
                            let (lo, hi) = (&lo[r0..r0 + rows], &hi[r0..r0 + rows]);
                            for (i, (&l, &h)) in lo.iter().zip(hi).enumerate() {
                                block[i * kp / 2 + q] = pair(l, h);
                            }
                        }
                        _ => (0..rows)
                            .for_each(|i| block[i * kp / 2 + q] = pair(at(t, i), at(t + 1, i))),
                    }
                }
            }
        });
    kp
}

/// `dst` (`[m, n]`, row stride `dst_rs`) = `start` + `lhs` · `rhs`, both rounded to bf16, the
/// sums in f32, on AMX over rayon's threads: training's products in mixed precision. Only
/// where [`amx::available`].
pub fn product(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: View, start: Start) {
    let (mut a, mut b) = (ROWS.take(), PANELS.take());
    let kp = pack_rows(&mut a, lhs);
    pack_panels(&mut b, rhs);
    let (m, n) = (lhs.shape().0, rhs.shape().1);
    amx::bf16_product_par(
        dst,
        (m, dst_rs),
        (a.as_slice(), kp),
        (b.as_slice(), n),
        start,
    );
    ROWS.set(a);
    PANELS.set(b);
}

thread_local! {
    /// The input rows in bf16, reused from call to call.
    static INPUT: RefCell<Lines> = RefCell::default();
    /// [`product`]'s operands, reused; taken out while in use (a task that rayon runs on this
    /// thread meanwhile gets buffers of its own).
    static ROWS: Cell<Lines> = Cell::default();
    static PANELS: Cell<Lines> = Cell::default();
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Bf16Weight, MR, NV, PAIR, PANEL};
    use std::arch::x86_64::*;

    /// `y` (`[rows, n]`) = `a` (bf16 `[rows, k2]`, `k2` even) · `w` (+ `bias`), on this thread.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn product(y: &mut [f32], a: &[u16], w: &Bf16Weight, bias: Option<&[f32]>) {
        let pairs = Bf16Weight::pairs(w.k);
        let rows = a.len() / (2 * pairs);
        assert!(a.len() == rows * 2 * pairs && y.len() == rows * w.n);
        for (p, panel) in w.data.as_slice().chunks_exact(pairs * PAIR).enumerate() {
            for r0 in (0..rows).step_by(MR) {
                let at = (r0, p * PANEL);
                match rows - r0 {
                    1 => tile::<1>(y, a, w.n, panel, at, bias),
                    2 => tile::<2>(y, a, w.n, panel, at, bias),
                    3 => tile::<3>(y, a, w.n, panel, at, bias),
                    4 => tile::<4>(y, a, w.n, panel, at, bias),
                    5 => tile::<5>(y, a, w.n, panel, at, bias),
                    6 => tile::<6>(y, a, w.n, panel, at, bias),
                    7 => tile::<7>(y, a, w.n, panel, at, bias),
                    _ => tile::<MR>(y, a, w.n, panel, at, bias),
                }
            }
        }
    }

    /// Rows `r0..r0 + R` by the panel's columns from `c0`, over all of `k`, into `y`. The
    /// caller guarantees the rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn tile<const R: usize>(
        y: &mut [f32],
        a: &[u16],
        n: usize,
        panel: &[u16],
        (r0, c0): (usize, usize),
        bias: Option<&[f32]>,
    ) {
        let pairs = panel.len() / PAIR;
        let k2 = 2 * pairs;
        assert!(a.len() >= (r0 + R) * k2);
        let rows = a[r0 * k2..].as_ptr();
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for q in 0..pairs {
            // SAFETY: pair `q` of rows `r0..r0 + R` and of the panel lie within them.
            unsafe {
                let b: [__m512bh; NV] = std::array::from_fn(|v| {
                    let p = panel.as_ptr().add(q * PAIR + 32 * v);
                    std::mem::transmute(_mm512_loadu_si512(p.cast()))
                });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = rows.add(r * k2 + 2 * q).cast::<i32>().read_unaligned();
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    for v in 0..NV {
                        acc[v] = _mm512_dpbf16_ps(acc[v], x, b[v]);
                    }
                }
            }
        }
        // Written out once, here: `store` takes them from memory.
        let mut out = std::mem::MaybeUninit::uninit();
        store(out.write(acc), y, (r0, c0), n, bias);
    }

    /// The tile's outputs (+ bias) into rows `r0..r0 + R` of `y`, columns from `c0`. Out of
    /// line, as `int8::vnni`'s is: inlined, it keeps the accumulators in memory.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn store<const R: usize>(
        acc: &[[__m512; NV]; R],
        y: &mut [f32],
        (r0, c0): (usize, usize),
        n: usize,
        bias: Option<&[f32]>,
    ) {
        // Columns past `n` get an empty mask: no load or store touches them.
        let masks = crate::ops::column_masks::<NV>(n, c0);
        assert!(y.len() >= (r0 + R) * n);
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let (c, mask) = (c0 + 16 * v, masks[v]);
                // SAFETY: the mask keeps every load and store within columns `c..n` of row
                // `r0 + r`, which `y` holds.
                unsafe {
                    let out = match bias {
                        Some(b) => _mm512_add_ps(
                            acc,
                            _mm512_maskz_loadu_ps(mask, b.as_ptr().wrapping_add(c)),
                        ),
                        None => acc,
                    };
                    let dst = y.as_mut_ptr().wrapping_add((r0 + r) * n + c);
                    _mm512_mask_storeu_ps(dst, mask, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::randn;

    #[test]
    fn rounding_is_to_the_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 · 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even, 1 + 2^-6.
        assert_eq!(round(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(round(1.0 + 1.0 / 128.0 + 1.0 / 1024.0), 0x3f81);
        assert_eq!(round(-2.5), 0xc020);
        assert_eq!(widen(round(f32::MAX)), f32::INFINITY);
        assert!(widen(round(f32::NAN)).is_nan());
        assert!(widen(round(f32::from_bits(0x7fff_ffff))).is_nan());
        for x in randn(1000, 3.0, 1) {
            let back = widen(round(x));
            assert!((back - x).abs() <= x.abs() / 256.0, "{x} -> {back}");
        }
    }

    /// Training's product on every operand layout, packed and run on the tiles' model (on any
    /// CPU) and, where the CPU has AMX, on the CPU, against an f64 loop over the same bf16 values.
    #[test]
    fn the_general_product_packs_every_operand_layout() {
        use crate::ops::amx::{bf16_product, Model};
        for (m, k, n) in [(1, 1, 1), (17, 40, 50), (70, 33, 97)] {
            let (a, b) = (randn(m * k, 1.0, 1), randn(k * n, 1.0, 2));
            let init = randn(m * n, 1.0, 3);
            let q = |v: f32| widen(round(v)) as f64;
            for (lt, rt) in [(false, false), (true, false), (false, true), (true, true)] {
                // Each operand given row-major or as the transpose of a row-major buffer.
                let lhs = match lt {
                    false => View::rows(&a, m, k, k),
                    true => View::rows(&a, k, m, m).t(),
                };
                let rhs = match rt {
                    false => View::rows(&b, k, n, n),
                    true => View::rows(&b, n, k, k).t(),
                };
                let want: Vec<f64> = (0..m * n)
                    .map(|i| {
                        let (r, c) = (i / n, i % n);
                        init[i] as f64
                            + (0..k)
                                .map(|t| q(lhs.at(r, t)) * q(rhs.at(t, c)))
                                .sum::<f64>()
                    })
                    .collect();
                let (mut pa, mut pb) = (Lines::default(), Lines::default());
                let kp = pack_rows(&mut pa, lhs);
                pack_panels(&mut pb, rhs);
                let mut model = init.clone();
                // SAFETY: the whole result lies within `model`, which nothing else touches.
                unsafe {
                    let ops = ((pa.as_slice(), kp), (pb.as_slice(), n));
                    let out = model.as_mut_ptr();
                    bf16_product(
                        &mut Model::default(),
                        out,
                        n,
                        ops.0,
                        ops.1,
                        0..m,
                        0..n,
                        Start::Add,
                    )
                };
                let mut results = vec![model];
                if amx::available() {
                    let mut native = init.clone();
                    product(&mut native, n, lhs, rhs, Start::Add);
                    results.push(native);
                }
                for got in results {
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()) * k as f64,
                            "{m}x{k}x{n} {lt} {rt} {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// The layer against a plain f64 loop over the same bf16 values: their products are exact,
    /// so only the f32 sums may differ.
    #[test]
    fn the_kernel_matches_a_plain_loop_on_odd_shapes() {
        if !available() {
            // The layer refuses to run (and the loader to build one: tests/cli.rs).
            let w = Bf16Weight::new(&[1.0; 4], 2, WeightLayout::OutIn);
            let run = std::panic::catch_unwind(|| w.forward(&mut [0.0; 2], &[1.0; 2], None));
            assert!(run.is_err(), "bf16 ran on a CPU without AVX-512 BF16");
            return;
        }
        for (m, k, n, seed) in [
            (1, 1, 1, 1),
            (17, 33, 5, 2),
            (9, 7, 70, 3),
            (20, 6, 49, 4),
            (37, 384, 1152, 5),
            (3, 1536, 384, 6),
        ] {
            let x = randn(m * k, 1.0, seed);
            let w = randn(n * k, 0.1, seed + 10);
            let b = randn(n, 0.1, seed + 20);
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let q = |v: f32| widen(round(v)) as f64;
            for (weight, layout) in [(&w, WeightLayout::OutIn), (&wt, WeightLayout::InOut)] {
                for bias in [None, Some(&b[..])] {
                    let mut y = vec![f32::NAN; m * n];
                    Bf16Weight::new(weight, k, layout).forward(&mut y, &x, bias);
                    for i in 0..m {
                        for j in 0..n {
                            let terms = (0..k).map(|t| q(x[i * k + t]) * q(w[j * k + t]));
                            let size: f64 = terms.clone().map(f64::abs).sum();
                            let want = terms.sum::<f64>() + bias.map_or(0.0, |b| b[j] as f64);
                            let got = y[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-6 * (size + 1.0),
                                "{m}x{k}x{n} {layout:?} ({i}, {j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
