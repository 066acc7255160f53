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
//! Training's products in mixed precision ([`product`]) round the activations and
//! gradients of each call into the same layouts (`pack.rs`); a weight's bf16 copies, for the
//! forward and the input gradient, are written by the optimizer as it updates the weight
//! ([`Copies`]), so no product rounds a weight.

use rayon::prelude::*;
use std::cell::Cell;

mod pack;

use pack::{pack_panels, pack_rows, pairs, panels_len, Lines};
pub use pack::{round, widen};

use super::amx;
use super::linear::WeightLayout;
use super::matmul::{Start, View};

/// Rows of a register tile.
const MR: usize = 8;
/// Vectors of 16 columns in a register tile.
const NV: usize = 3;
/// Columns of a weight panel: one register tile wide.
pub(crate) const PANEL: usize = 16 * NV;
/// bf16 values of a panel's pair of rows: `PANEL` columns of two.
pub(crate) const PAIR: usize = PANEL * 2;

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

/// A linear layer's weight in bf16, laid out for the kernels: panel `p`'s pair `q` (rows `2q`
/// and `2q + 1` of `Wᵀ`, `[in, out]`) is `PAIR` values, column `c`'s two at `2c`, as
/// `vdpbf16ps` and `tdpbf16ps` read them. Columns past `n` and rows past `k` are zero; the
/// pairs are padded to a whole tile's 16.
#[derive(Clone, Debug)]
pub struct Bf16Weight {
    data: Lines,
    k: usize,
    n: usize,
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
        (self.data.as_slice(), 2 * pairs(self.k))
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
        let mut a = ROWS.take();
        let k2 = pack_rows(&mut a, View::rows(x, rows, k, k));
        let start = bias.map_or(Start::Zero, Start::Bias);
        let w = Packed::of(&self.data, k, n);
        rows_times_panels(y, (rows, n), (a.as_slice(), k2), w, start);
        ROWS.set(a);
    }
}

/// `dst` (`[m, n]`, row stride `dst_rs`) = `start` + `lhs` · `rhs`, both rounded to bf16, the
/// sums in f32, over rayon's threads: training's products in mixed precision. Only where
/// [`available`].
pub fn product(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: View, start: Start) {
    let mut b = PANELS.take();
    pack_panels(&mut b, rhs);
    let (k, n) = rhs.shape();
    product_packed(dst, dst_rs, lhs, Packed::of(&b, k, n), start);
    PANELS.set(b);
}

/// [`product`] with `rhs` rounded and laid out ahead (a training weight's [`Copies`]).
pub fn product_packed(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: Packed, start: Start) {
    assert_eq!(lhs.shape().1, rhs.k, "the operands' inner sizes differ");
    let mut a = ROWS.take();
    let kp = pack_rows(&mut a, lhs);
    let m = lhs.shape().0;
    rows_times_panels(dst, (m, dst_rs), (a.as_slice(), kp), rhs, start);
    ROWS.set(a);
}

/// `dst` (`m` rows, `dst_rs` apart) = `start` + `a` (rounded rows `k2` apart, as
/// [`pack_rows`] lays them out) · `rhs`, on AMX where the CPU has it, else on AVX-512 BF16,
/// each thread a share of the rows (whole register tiles) over every panel.
fn rows_times_panels(
    dst: &mut [f32],
    (m, dst_rs): (usize, usize),
    (a, k2): (&[u16], usize),
    rhs: Packed,
    start: Start,
) {
    assert!(available(), "the CPU has no bf16 kernel");
    if m == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + rhs.n <= dst.len() && a.len() >= m * k2);
    if amx::available() {
        let a = &a[..m.next_multiple_of(amx::BLOCK) * k2];
        return amx::bf16_product_par(dst, (m, dst_rs), (a, k2), (rhs.panels, rhs.n), start);
    }
    let part = m
        .div_ceil(rayon::current_num_threads())
        .next_multiple_of(MR);
    dst[..(m - 1) * dst_rs + rhs.n]
        .par_chunks_mut(part * dst_rs)
        .zip(a[..m * k2].par_chunks(part * k2))
        .for_each(|(dst, a)| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the features (asserted above); `a` holds whole rows of `k2`,
            // and `dst` as many rows `dst_rs` apart, the last one `rhs.n` long at least.
            unsafe {
                avx512::product(dst, dst_rs, (a, k2), rhs, start)
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (dst, a);
        });
}

/// A right-hand side `[k, n]` in bf16 panels, as [`Bf16Weight`] lays out its weight.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    panels: &'a [u16],
    k: usize,
    n: usize,
}

impl<'a> Packed<'a> {
    /// The `[k, n]` panels at the start of `lines`.
    fn of(lines: &'a Lines, k: usize, n: usize) -> Self {
        let panels = &lines.as_slice()[..panels_len(k, n)];
        Packed { panels, k, n }
    }
}

/// A training weight's bf16 copies, in the layouts of its two products (`Wᵀ` in the forward,
/// `W` in the input gradient), written by the optimizer as it updates the weight
/// ([`Copies::blocks`]) so that no product rounds the weight on each call.
#[derive(Clone, Debug)]
pub struct Copies {
    /// The stored weight's rows in pairs, in panels of its columns.
    by_rows: Lines,
    /// Its columns in pairs, in panels of its rows.
    by_cols: Lines,
    /// Rows and columns as stored.
    shape: (usize, usize),
    layout: WeightLayout,
}

impl Copies {
    /// The copies of `w` (`[out, in]` or `[in, out]` as `layout` says).
    pub fn new(w: &[f32], in_dim: usize, layout: WeightLayout) -> Self {
        let out_dim = w.len() / in_dim;
        let (rows, cols) = match layout {
            WeightLayout::OutIn => (out_dim, in_dim),
            WeightLayout::InOut => (in_dim, out_dim),
        };
        let (mut by_rows, mut by_cols) = (Lines::default(), Lines::default());
        by_rows.reserve(panels_len(rows, cols));
        by_cols.reserve(panels_len(cols, rows));
        let mut copies = Copies {
            by_rows,
            by_cols,
            shape: (rows, cols),
            layout,
        };
        let len = copies.block_len();
        copies
            .blocks()
            .into_par_iter()
            .zip(w.par_chunks(len))
            .for_each(|(b, w)| b.write(w));
        copies
    }

    /// Values of the stored weight in each of [`Copies::blocks`]: `PANEL` whole rows.
    pub fn block_len(&self) -> usize {
        PANEL * self.shape.1
    }

    /// The places in both copies of each block of `PANEL` stored rows (the last one may be
    /// shorter), to be written side by side as the weight's blocks are updated.
    pub fn blocks(&mut self) -> Vec<CopyBlock<'_>> {
        let (rows, cols) = self.shape;
        let by_rows = &mut self.by_rows.words_mut()[..panels_len(rows, cols) / 2];
        let by_rows = pack::row_blocks(by_rows, rows, cols);
        self.by_cols.words_mut()[..panels_len(cols, rows) / 2]
            .chunks_exact_mut(pairs(cols) * PANEL)
            .zip(by_rows)
            .map(|(by_cols, by_rows)| CopyBlock {
                by_cols,
                by_rows,
                cols,
            })
            .collect()
    }

    /// `Wᵀ` (`[in, out]`), the forward's operand.
    pub fn wt(&self) -> Packed<'_> {
        match self.layout {
            WeightLayout::OutIn => self.by_cols(),
            WeightLayout::InOut => self.by_rows(),
        }
    }

    /// `W` (`[out, in]`), the input gradient's operand.
    pub fn w(&self) -> Packed<'_> {
        match self.layout {
            WeightLayout::OutIn => self.by_rows(),
            WeightLayout::InOut => self.by_cols(),
        }
    }

    /// The stored weight as a right-hand side.
    fn by_rows(&self) -> Packed<'_> {
        Packed::of(&self.by_rows, self.shape.0, self.shape.1)
    }

    /// Its transpose as a right-hand side.
    fn by_cols(&self) -> Packed<'_> {
        Packed::of(&self.by_cols, self.shape.1, self.shape.0)
    }
}

/// Equal copies: the same weight rounded the same way.
impl PartialEq for Copies {
    fn eq(&self, other: &Self) -> bool {
        (self.shape, self.layout) == (other.shape, other.layout)
            && self.wt().panels == other.wt().panels
            && self.w().panels == other.w().panels
    }
}

/// One block of a weight's rows' places in its [`Copies`].
pub struct CopyBlock<'a> {
    /// The block's own panel of the transpose.
    by_cols: &'a mut [u32],
    /// The block's pairs in each panel of the stored weight.
    by_rows: Vec<&'a mut [u32]>,
    cols: usize,
}

impl CopyBlock<'_> {
    /// Rounds the block's rows (`values`: whole rows as stored) into both copies.
    pub fn write(self, values: &[f32]) {
        let s = View::rows(values, values.len() / self.cols, self.cols, self.cols);
        pack::panel(self.by_cols, s.t(), 0);
        for (p, out) in self.by_rows.into_iter().enumerate() {
            pack::panel(out, s, p * PANEL);
        }
    }
}

thread_local! {
    /// The products' operands (a layer's input rows, training's right-hand sides), reused from
    /// call to call; taken out while in use (a task that rayon runs on this thread meanwhile
    /// gets buffers of its own).
    static ROWS: Cell<Lines> = Cell::default();
    static PANELS: Cell<Lines> = Cell::default();
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Packed, MR, NV, PAIR, PANEL};
    use crate::ops::matmul::Start;
    use std::arch::x86_64::*;

    /// `y` (rows `rs` apart) = `start` + `a` (bf16 rows of `k2`, `k2` even) · `w`, on this
    /// thread.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn product(
        y: &mut [f32],
        rs: usize,
        (a, k2): (&[u16], usize),
        w: Packed,
        start: Start,
    ) {
        let rows = a.len() / k2;
        assert!(k2 == 2 * super::pairs(w.k) && a.len() == rows * k2);
        assert!(rows > 0 && y.len() >= (rows - 1) * rs + w.n);
        let out = Out { rs, n: w.n, start };
        // Rows in blocks that stay in L2 while every panel passes by, so that each panel is
        // read once per block and the rows once in all (rather than once per panel).
        let block = (BLOCK_BYTES / (2 * k2)).max(MR) / MR * MR;
        for b0 in (0..rows).step_by(block) {
            let end = rows.min(b0 + block);
            for (p, panel) in w.panels.chunks_exact(k2 / 2 * PAIR).enumerate() {
                for r0 in (b0..end).step_by(MR) {
                    tile_of(y, a, panel, (r0, p * PANEL), rows - r0, out);
                }
            }
        }
    }

    /// Bytes of bf16 rows in a block: about a third of a Zen 4 core's L2 (1 MB), beside a panel.
    const BLOCK_BYTES: usize = 384 << 10;

    /// The tile of rows from `at.0` (`left` of them remain), of at most `MR` rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn tile_of(y: &mut [f32], a: &[u16], panel: &[u16], at: (usize, usize), left: usize, out: Out) {
        match left {
            1 => tile::<1>(y, a, panel, at, out),
            2 => tile::<2>(y, a, panel, at, out),
            3 => tile::<3>(y, a, panel, at, out),
            4 => tile::<4>(y, a, panel, at, out),
            5 => tile::<5>(y, a, panel, at, out),
            6 => tile::<6>(y, a, panel, at, out),
            7 => tile::<7>(y, a, panel, at, out),
            _ => tile::<MR>(y, a, panel, at, out),
        }
    }

    /// Where a tile's sums go: rows `rs` apart, `n` columns, on top of `start`.
    #[derive(Clone, Copy)]
    struct Out<'a> {
        rs: usize,
        n: usize,
        start: Start<'a>,
    }

    /// Rows `r0..r0 + R` by the panel's columns from `c0`, over all of `k`, into `y`. The
    /// caller guarantees the rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn tile<const R: usize>(
        y: &mut [f32],
        a: &[u16],
        panel: &[u16],
        (r0, c0): (usize, usize),
        out: Out,
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
        let mut sums = std::mem::MaybeUninit::uninit();
        store(sums.write(acc), y, (r0, c0), out);
    }

    /// The tile's sums on top of `out.start` into rows `r0..r0 + R` of `y`, columns from `c0`.
    /// Out of line, as `int8::vnni`'s is: inlined, it keeps the accumulators in memory.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn store<const R: usize>(
        acc: &[[__m512; NV]; R],
        y: &mut [f32],
        (r0, c0): (usize, usize),
        Out { rs, n, start }: Out,
    ) {
        // Columns past `n` get an empty mask: no load or store touches them.
        let masks = crate::ops::column_masks::<NV>(n, c0);
        assert!(y.len() >= (r0 + R - 1) * rs + n);
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let (c, mask) = (c0 + 16 * v, masks[v]);
                let dst = y.as_mut_ptr().wrapping_add((r0 + r) * rs + c);
                // SAFETY: the mask keeps every load and store within columns `c..n` of row
                // `r0 + r`, which `y` holds, and of the bias.
                unsafe {
                    let base = match start {
                        Start::Zero => _mm512_setzero_ps(),
                        Start::Add => _mm512_maskz_loadu_ps(mask, dst),
                        Start::Bias(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().wrapping_add(c)),
                    };
                    _mm512_mask_storeu_ps(dst, mask, _mm512_add_ps(base, acc));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::randn;

    /// The copies are the weight's two operands as training's products would round them on
    /// each call, and writing new values block by block gives the copies of the new values.
    #[test]
    fn copies_are_the_weights_operands_and_follow_block_writes() {
        for (out, inp) in [(1, 1), (50, 70), (97, 33), (3, 130)] {
            for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
                let w = randn(out * inp, 1.0, out as u64);
                let copies = Copies::new(&w, inp, layout);
                let wt = layout.transposed(&w, inp, out);
                for (packed, view) in [(copies.wt(), wt), (copies.w(), wt.t())] {
                    let mut want = Lines::default();
                    pack_panels(&mut want, view);
                    assert_eq!(packed.panels, want.as_slice(), "{out}x{inp} {layout:?}");
                    assert_eq!((packed.k, packed.n), view.shape());
                }
                let moved_to = randn(out * inp, 1.0, 99);
                let mut moved = copies.clone();
                let len = moved.block_len();
                for (b, v) in moved.blocks().into_iter().zip(moved_to.chunks(len)) {
                    b.write(v);
                }
                assert!(moved == Copies::new(&moved_to, inp, layout));
                assert!(moved != copies);
            }
        }
    }

    /// Training's product on every operand layout, packed and run on the tiles' model (on any
    /// CPU) and, where the CPU has a bf16 kernel (AMX or AVX-512 BF16), on the CPU, against an
    /// f64 loop over the same bf16 values.
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
                if available() {
                    // Rows 3 apart from each other's ends: the gaps keep their values.
                    let rs = n + 3;
                    let mut native = vec![7.0; m * rs];
                    for (row, init) in native.chunks_exact_mut(rs).zip(init.chunks_exact(n)) {
                        row[..n].copy_from_slice(init);
                    }
                    product(&mut native, rs, lhs, rhs, Start::Add);
                    let rows = native.chunks_exact(rs);
                    assert!(rows.clone().all(|r| r[n..] == [7.0; 3]), "wrote past a row");
                    results.push(rows.flat_map(|r| &r[..n]).copied().collect());
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
            // Rows past one block of `avx512::BLOCK_BYTES` on each of two threads.
            (200, 3000, 20, 7),
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
