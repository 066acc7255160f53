//! Matrix products on slices. [`matmul`]: strided products on the `gemm` crate (the one inside
//! candle's matmul), for kernels that parallelise over batch items themselves; it takes strides,
//! so a head's columns of a `[seq, hidden]` projection are used in place, with no transposes or
//! copies. [`product`]: the linear layers' products on crossenc's own AVX-512 kernel, the
//! right-hand side laid out in [`Panels`] (once, at load, for a model that only scores).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// A matrix inside a slice: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// Panics if the last element lies outside `data`, which keeps the `gemm` call in bounds.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(rows > 0 && cols > 0 && (rows - 1) * rs + (cols - 1) * cs < data.len());
        View {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// `rows x cols`, row-major with row stride `rs`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        View::new(data, rows, cols, rs, 1)
    }

    /// Whether each row's elements lie side by side (what [`Panels::pack`] copies as slices).
    pub fn row_major(&self) -> bool {
        self.cs == 1
    }

    /// Rows and columns.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Element `(r, c)`.
    #[inline(always)]
    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }

    /// Row `r` as a slice, where the view is row-major.
    #[inline(always)]
    pub fn row(&self, r: usize) -> Option<&'a [f32]> {
        self.row_major()
            .then(|| &self.data[r * self.rs..r * self.rs + self.cols])
    }

    /// Column `c` as a slice, where each column's elements lie side by side.
    #[inline(always)]
    pub fn col(&self, c: usize) -> Option<&'a [f32]> {
        (self.rs == 1).then(|| &self.data[c * self.cs..c * self.cs + self.rows])
    }

    /// Rows `r0..r0 + rows`.
    pub fn sub_rows(&self, r0: usize, rows: usize) -> Self {
        View::new(
            &self.data[r0 * self.rs..],
            rows,
            self.cols,
            self.rs,
            self.cs,
        )
    }

    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// How [`matmul`] combines and schedules: `dst = accumulate * dst + scale * lhs · rhs`.
#[derive(Clone, Copy)]
pub struct Product {
    pub scale: f32,
    /// Add to `dst` instead of overwriting it.
    pub accumulate: bool,
    /// Split over rayon's threads; kernels that already run one task per batch item don't.
    pub parallel: bool,
}

impl Product {
    pub const SERIAL: Product = Product {
        scale: 1.0,
        accumulate: false,
        parallel: false,
    };
}

/// `lhs · rhs` into `dst`, row-major with row stride `dst_rs`, as `how` says.
pub fn matmul(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: View, how: Product) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(rhs.rows == k && (m - 1) * dst_rs + n <= dst.len());
    let parallelism = if how.parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above and in `View::new` keep every read inside `lhs.data` and
    // `rhs.data` and every write inside `dst`, which is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            how.accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            how.scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Columns of a panel: one register tile of the AVX-512 kernel wide.
const PANEL: usize = 48;

/// Whether [`product`] runs on this CPU (AVX-512); where it does not, the linear layers use
/// [`matmul`].
pub fn own_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    return avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A right-hand side `[k, n]` in panels of `PANEL` columns, each `k` rows of `PANEL` floats
/// one after the other, so the kernel reads a panel as one stream. Columns past `n` are zero.
#[derive(Clone, Default)]
pub struct Panels {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

/// The shape only: a layer's `Debug` would otherwise print every weight.
impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panels([{}, {}])", self.k, self.n)
    }
}

impl Panels {
    pub fn new(rhs: View) -> Self {
        let mut p = Panels::default();
        p.pack(rhs);
        p
    }

    /// Lays out `rhs` here, reusing the buffer; the panels are filled in parallel.
    pub fn pack(&mut self, rhs: View) {
        let (k, n) = (rhs.rows, rhs.cols);
        (self.k, self.n) = (k, n);
        // Every element is written below (columns past `n` as zeros): no clearing first.
        self.data.resize(n.div_ceil(PANEL) * k * PANEL, 0.0);
        self.data
            .par_chunks_mut(k * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                let (c0, cols) = (p * PANEL, (n - p * PANEL).min(PANEL));
                if rhs.cs == 1 {
                    // Rows of the panel are slices of rows of `rhs`.
                    for (t, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                        let from = t * rhs.rs + c0;
                        row[..cols].copy_from_slice(&rhs.data[from..from + cols]);
                        row[cols..].fill(0.0);
                    }
                } else {
                    // Columns of `rhs` are strided slices: read each down, write across.
                    for c in 0..PANEL {
                        let column = (c < cols).then(|| (c0 + c) * rhs.cs);
                        for (t, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                            row[c] = column.map_or(0.0, |at| rhs.data[at + t * rhs.rs]);
                        }
                    }
                }
            });
    }
}

thread_local! {
    /// Panels reused by [`with_panels`] on each thread (a fresh buffer costs page faults).
    static SCRATCH: std::cell::Cell<Panels> = std::cell::Cell::default();
}

/// Runs `f` on `rhs` laid out in this thread's reusable panels.
pub fn with_panels<R>(rhs: View, f: impl FnOnce(&Panels) -> R) -> R {
    // Taken out while in use: a nested call on this thread gets a buffer of its own.
    let mut panels = SCRATCH.take();
    panels.pack(rhs);
    let r = f(&panels);
    SCRATCH.set(panels);
    r
}

/// What a [`product`] adds its result to.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    Zero,
    /// What the destination holds.
    Add,
    /// A bias, one per column.
    Bias(&'a [f32]),
}

/// `dst` (rows of `lhs`, row stride `dst_rs`) = `start` + `lhs` · `rhs`, on this thread. Only
/// where [`own_kernel`] is true.
pub fn product(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: &Panels, start: Start) {
    #[cfg(target_arch = "x86_64")]
    avx512::product(dst, dst_rs, lhs, rhs, start);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, dst_rs, lhs, rhs, start);
        unreachable!("crossenc's own f32 kernel is x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_naive() {
        // lhs: 2x3 columns 1..4 of a 2x5 row-major buffer; rhs: transpose of a 2x3 buffer.
        let a: Vec<f32> = (0..10).map(|x| x as f32).collect();
        let b: Vec<f32> = (0..6).map(|x| (x as f32) - 2.0).collect();
        let lhs = View::rows(&a[1..], 2, 3, 5);
        let rhs = View::rows(&b, 2, 3, 3).t();
        let mut dst = vec![f32::NAN; 4];
        let half = Product {
            scale: 0.5,
            ..Product::SERIAL
        };
        matmul(&mut dst, 2, lhs, rhs, half);
        let mut want = vec![0f32; 4];
        for i in 0..2 {
            for j in 0..2 {
                want[i * 2 + j] =
                    0.5 * (0..3).map(|c| a[1 + i * 5 + c] * b[j * 3 + c]).sum::<f32>();
            }
        }
        assert_eq!(dst, want);
        // Accumulating, in parallel: dst + 0.5 * lhs · rhs.
        let twice = Product {
            accumulate: true,
            parallel: true,
            ..half
        };
        matmul(&mut dst, 2, lhs, rhs, twice);
        assert_eq!(dst, want.iter().map(|x| 2.0 * x).collect::<Vec<_>>());
    }

    /// `start + lhs · rhs` in f64, element `(r, c)` of `lhs` at `lhs[r * lrs + c * lcs]`.
    #[allow(clippy::too_many_arguments)]
    fn plain(
        (m, k, n): (usize, usize, usize),
        lhs: &[f32],
        (lrs, lcs): (usize, usize),
        rhs: &[f32],
        (rrs, rcs): (usize, usize),
        start: &[f32],
    ) -> Vec<f32> {
        (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                let dot: f64 = (0..k)
                    .map(|t| lhs[r * lrs + t * lcs] as f64 * rhs[t * rrs + c * rcs] as f64)
                    .sum();
                (start[i] as f64 + dot) as f32
            })
            .collect()
    }

    #[test]
    fn own_kernel_matches_a_plain_loop() {
        use crate::ops::testing::{randn, rel_diff};
        if !own_kernel() {
            // Never called on this CPU: the linear layers run on the gemm crate, which
            // `strided_product_matches_naive` and `ops::linear`'s tests cover.
            return;
        }
        // Tails in rows (not a multiple of 8), columns (of 48 and of 16) and tiny sizes; and
        // MiniLM's widest layer.
        for (m, k, n) in [
            (1, 1, 1),
            (17, 33, 5),
            (9, 7, 70),
            (20, 6, 49),
            (13, 384, 1152),
            (70, 100, 50),
        ] {
            let (a, b) = (randn(2 * m * k, 1.0, 1), randn(k * n, 1.0, 2));
            let (bias, init) = (randn(n, 1.0, 3), randn(m * n, 1.0, 4));
            // `rhs` given row-major and transposed; `lhs` row-major, transposed (packed into
            // tiles by the kernel) and strided both ways.
            for rhs_t in [false, true] {
                let (rrs, rcs) = if rhs_t { (1, k) } else { (n, 1) };
                let panels = Panels::new(View::new(&b, k, n, rrs, rcs));
                for (lrs, lcs) in [(k, 1), (1, m), (2, 2 * m)] {
                    let lhs = View::new(&a, m, k, lrs, lcs);
                    let repeated: Vec<f32> = (0..m * n).map(|i| bias[i % n]).collect();
                    for (start, from) in [
                        (Start::Zero, vec![0.0; m * n]),
                        (Start::Add, init.clone()),
                        (Start::Bias(&bias), repeated),
                    ] {
                        let mut dst = init.clone();
                        product(&mut dst, n, lhs, &panels, start);
                        let want = plain((m, k, n), &a, (lrs, lcs), &b, (rrs, rcs), &from);
                        let err = rel_diff(&dst, &want);
                        assert!(err < 1e-5, "{m}x{k}x{n} {rhs_t} {lrs},{lcs}: {err}");
                    }
                }
            }
        }
        // Into a wider destination (row stride past `n`): the columns beyond are untouched.
        let (a, b) = (randn(10 * 3, 1.0, 5), randn(3 * 20, 1.0, 6));
        let mut dst = vec![7f32; 10 * 25];
        let panels = Panels::new(View::rows(&b, 3, 20, 20));
        product(&mut dst, 25, View::rows(&a, 10, 3, 3), &panels, Start::Zero);
        let want = plain((10, 3, 20), &a, (3, 1), &b, (20, 1), &[0.0; 200]);
        for r in 0..10 {
            assert!(rel_diff(&dst[r * 25..r * 25 + 20], &want[r * 20..r * 20 + 20]) < 1e-5);
            assert!(dst[r * 25 + 20..r * 25 + 25].iter().all(|&v| v == 7.0));
        }
    }

    #[test]
    fn panels_are_reused_and_refilled() {
        // A smaller right-hand side after a larger one: stale values must not leak into the
        // padding columns, which the kernel reads.
        let big = vec![9f32; 5 * 100];
        let small: Vec<f32> = (0..4 * 10).map(|x| x as f32).collect();
        let mut p = Panels::new(View::rows(&big, 5, 100, 100));
        p.pack(View::rows(&small, 4, 10, 10));
        assert_eq!(p.data.len(), 4 * PANEL);
        for (t, row) in p.data.chunks_exact(PANEL).enumerate() {
            assert_eq!(&row[..10], &small[t * 10..t * 10 + 10]);
            assert!(row[10..].iter().all(|&v| v == 0.0));
        }
        // Transposed, into the same buffer.
        p.pack(View::rows(&small, 4, 10, 10).t());
        for (t, row) in p.data.chunks_exact(PANEL).enumerate() {
            assert!((0..4).all(|c| row[c] == small[c * 10 + t]));
            assert!(row[4..].iter().all(|&v| v == 0.0));
        }
    }
}
