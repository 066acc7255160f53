//! bf16 scoring on CPUs with AVX-512 BF16 (`vdpbf16ps`: two bf16 products summed into each f32
//! lane, twice the multiply-adds of an f32 FMA per instruction). Weights are rounded to bf16
//! once, at load; each call rounds its input rows; the products accumulate in f32, and
//! everything else (bias, GELU, layer norm, softmax, the head) stays f32. bf16 keeps f32's
//! range with an 8-bit mantissa: no scales to choose, and each value is off by at most 2^-9
//! of itself, where int8 is off by a step of its row's range.
//!
//! The kernel is `matmul::avx512`'s and `int8::vnni`'s shape: `MR` rows by `NV` vectors of 16
//! columns in registers, a row's pair of bf16 broadcast straight from the rounded rows, the
//! weight in panels of `PANEL` columns laid out once, the bias added in the epilogue.

use rayon::prelude::*;
use std::cell::RefCell;

use super::linear::WeightLayout;
use super::ROW_BLOCK;

/// Rows of a register tile.
const MR: usize = 8;
/// Vectors of 16 columns in a register tile.
const NV: usize = 3;
/// Columns of a weight panel: one register tile wide.
const PANEL: usize = 16 * NV;
/// bf16 values of a panel's pair of rows: `PANEL` columns of two.
const PAIR: usize = PANEL * 2;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
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

/// A linear layer's weight in bf16, laid out for the kernel: panel `p`'s pair `q` (rows `2q`
/// and `2q + 1` of `Wᵀ`, `[in, out]`) is `PAIR` values, column `c`'s two at `2c`, as
/// `vdpbf16ps` reads them. Columns past `n` and a row past an odd `k` are zero.
#[derive(Clone)]
pub struct Bf16Weight {
    data: Vec<u16>,
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
        let pairs = k.div_ceil(2);
        let mut data = vec![0u16; n.div_ceil(PANEL) * pairs * PAIR];
        for t in 0..k {
            for j in 0..n {
                let v = match layout {
                    WeightLayout::OutIn => w[j * k + t],
                    WeightLayout::InOut => w[t * n + j],
                };
                let (p, c) = (j / PANEL, j % PANEL);
                data[(p * pairs + t / 2) * PAIR + 2 * c + t % 2] = round(v);
            }
        }
        Bf16Weight { data, k, n }
    }

    /// `y` (`[rows, out]`) = `x` (`[rows, in]`) · `w`ᵀ (+ `bias`), `x` rounded to bf16 first.
    /// Call only where [`available`] is true.
    pub fn forward(&self, y: &mut [f32], x: &[f32], bias: Option<&[f32]>) {
        let (k, n) = (self.k, self.n);
        let rows = x.len() / k;
        assert!(available(), "the CPU has no AVX-512 BF16");
        assert!(x.len() == rows * k && y.len() >= rows * n);
        assert!(bias.is_none_or(|b| b.len() == n));
        if rows == 0 {
            return;
        }
        INPUT.with_borrow_mut(|a| {
            // Rows of an even length, zero past `k`: every pair the kernel reads is whole.
            let k2 = k.next_multiple_of(2);
            a.resize(rows * k2, 0);
            a.par_chunks_mut(k2 * ROW_BLOCK)
                .zip(x.par_chunks(k * ROW_BLOCK))
                .for_each(|(a, x)| {
                    for (a, x) in a.chunks_exact_mut(k2).zip(x.chunks_exact(k)) {
                        a.iter_mut().zip(x).for_each(|(a, &v)| *a = round(v));
                        a[k..].fill(0);
                    }
                });
            // Each thread a share of the rows, whole tiles, over every panel.
            let part = rows
                .div_ceil(rayon::current_num_threads())
                .next_multiple_of(MR);
            y[..rows * n]
                .par_chunks_mut(part * n)
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

thread_local! {
    /// The input rows in bf16, reused from call to call.
    static INPUT: RefCell<Vec<u16>> = RefCell::default();
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Bf16Weight, MR, NV, PAIR, PANEL};
    use std::arch::x86_64::*;

    /// `y` (`[rows, n]`) = `a` (bf16 `[rows, k2]`, `k2` even) · `w` (+ `bias`), on this thread.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn product(y: &mut [f32], a: &[u16], w: &Bf16Weight, bias: Option<&[f32]>) {
        let pairs = w.k.div_ceil(2);
        let rows = a.len() / (2 * pairs);
        assert!(a.len() == rows * 2 * pairs && y.len() == rows * w.n);
        for (p, panel) in w.data.chunks_exact(pairs * PAIR).enumerate() {
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
