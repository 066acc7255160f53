//! f32 operands rounded to bf16 in the layouts that the kernels read: rows (AMX's `a`: a layer's
//! input, a gradient) and panels (`b`: [`super::Bf16Weight`]'s layout, each pair of rows
//! interleaved into words of two). Training rounds both operands of every product, so this is
//! on the step's path: an operand that arrives transposed (a weight read as `Wᵀ`, a gradient as
//! `dyᵀ`) is rounded 16 x 16 words at a time and transposed in registers where the CPU has
//! AVX-512 (`native`); the plain loops here are the model those blocks are tested against.

use multiversion::multiversion;
use rayon::prelude::*;

use super::{PAIR, PANEL};
use crate::ops::amx;
use crate::ops::matmul::View;

/// 32 bf16 values on a cache line of their own: AMX loads whole lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

/// bf16 values on whole, aligned cache lines.
#[derive(Clone, Default)]
pub(super) struct Lines(Vec<Line>);

/// The length only: a layer's `Debug` would otherwise print every weight.
impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Lines({} values)", self.0.len() * 32)
    }
}

impl Lines {
    /// At least `len` values: grown (new values zero), never shrunk, as the buffers that
    /// hold each call's operands are reused from call to call.
    pub(super) fn reserve(&mut self, len: usize) {
        let lines = len.div_ceil(32);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 32]));
        }
    }

    pub(super) fn as_slice(&self) -> &[u16] {
        // SAFETY: a `Line` is 32 `u16`s with no padding (`repr(C)`, 64 bytes).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 32) }
    }

    /// The values as words of two (whole lines: a multiple of 16 words).
    pub(super) fn words_mut(&mut self) -> &mut [u32] {
        // SAFETY: a `Line` is 16 `u32`s as well, suitably aligned.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 16) }
    }
}

/// The bits of `x` with its bf16 rounding (to nearest, ties to even) in the top half; a NaN
/// stays a NaN, made quiet. Integer operations only, so that loops over it vectorise.
#[inline(always)]
fn rounded(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        bits | 0x0040_0000
    } else {
        bits + 0x7fff + ((bits >> 16) & 1)
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits; a NaN stays a NaN.
#[inline(always)]
pub fn round(x: f32) -> u16 {
    (rounded(x) >> 16) as u16
}

/// The f32 that bf16 `b` stands for.
#[inline(always)]
pub fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `lo` and `hi` rounded to bf16 as one word, `lo` in the low half: a pair as the kernels read
/// it.
#[inline(always)]
fn word(lo: f32, hi: f32) -> u32 {
    (rounded(hi) & 0xffff_0000) | (rounded(lo) >> 16)
}

/// Pairs of rows that `k` rows take: whole tiles of `K_STEP` rows.
pub(super) fn pairs(k: usize) -> usize {
    k.next_multiple_of(amx::K_STEP) / 2
}

/// bf16 values of a `[k, n]` right-hand side in panels.
pub(super) fn panels_len(k: usize, n: usize) -> usize {
    n.div_ceil(PANEL) * pairs(k) * PAIR
}

/// `rhs` (`[k, n]`) rounded into `dst` in panels of `PANEL` columns, `pairs(k)` words of two
/// rows each (zero past `k` and `n`), as [`super::Bf16Weight`] lays out its weight.
pub(super) fn pack_panels(dst: &mut Lines, rhs: View) {
    let (k, n) = rhs.shape();
    let len = pairs(k) * PANEL;
    dst.reserve(panels_len(k, n));
    let words = &mut dst.words_mut()[..panels_len(k, n) / 2];
    if !rhs.row_major() {
        // Each panel from `PANEL` rows of the source.
        return words
            .par_chunks_mut(len)
            .enumerate()
            .for_each(|(p, out)| panel(out, rhs, p * PANEL));
    }
    // Each block of `PANEL` rows, read along the rows, into its pairs in every panel.
    row_blocks(words, k, n)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, outs)| {
            let r0 = b * PANEL;
            if r0 >= k {
                // Padding: the buffer may hold an earlier call's values.
                return outs.into_iter().for_each(|out| out.fill(0));
            }
            let block = rhs.sub_rows(r0, PANEL.min(k - r0));
            for (p, out) in outs.into_iter().enumerate() {
                panel(out, block, p * PANEL);
            }
        });
}

/// The panels (`[k, n]` in `words`) split by blocks of `PANEL` rows: for each block, its
/// `PANEL / 2` pairs in each panel, so that a block's rows are written side by side. The last
/// blocks may lie wholly in the padding past `k`.
pub(super) fn row_blocks(words: &mut [u32], k: usize, n: usize) -> Vec<Vec<&mut [u32]>> {
    let mut blocks: Vec<Vec<&mut [u32]>> = (0..pairs(k).div_ceil(PANEL / 2))
        .map(|_| Vec::with_capacity(n.div_ceil(PANEL)))
        .collect();
    for panel in words.chunks_exact_mut(pairs(k) * PANEL) {
        for (b, part) in blocks.iter_mut().zip(panel.chunks_mut(PANEL / 2 * PANEL)) {
            b.push(part);
        }
    }
    blocks
}

/// The panel of columns `c0..` of `rhs` (`[k, n]`) into `out`: whole pairs of rows from
/// `rhs`'s first, a multiple of 16 of them where `rhs` is transposed.
pub(super) fn panel(out: &mut [u32], rhs: View, c0: usize) {
    match (rhs.row_major(), native::available()) {
        (true, _) => panel_from_rows(out, rhs, c0),
        // SAFETY: the CPU has the features.
        #[cfg(target_arch = "x86_64")]
        (false, true) => unsafe { native::panel_from_columns(out, rhs.t(), c0) },
        _ => panel_from_columns(out, rhs.t(), c0),
    }
}

/// Blocks of rows per parallel task of [`pack_rows`].
const TASK_BLOCKS: usize = 4;

/// `lhs` (`[m, k]`) rounded into `dst` as rows of `k` values padded to whole steps (returned),
/// the rows padded with zeros to whole blocks, as AMX's driver reads them.
pub(super) fn pack_rows(dst: &mut Lines, lhs: View) -> usize {
    let (m, k) = lhs.shape();
    let kp = 2 * pairs(k);
    let padded = m.next_multiple_of(amx::BLOCK);
    dst.reserve(padded * kp);
    let native = native::available();
    // Tasks of several blocks: the source of a transposed operand is read along its rows.
    dst.words_mut()[..padded * kp / 2]
        .par_chunks_mut(TASK_BLOCKS * amx::BLOCK * kp / 2)
        .enumerate()
        .for_each(|(b, block)| match (lhs.row_major(), native) {
            (true, _) => rows_from_rows(block, lhs, b * TASK_BLOCKS * amx::BLOCK),
            // SAFETY: the CPU has the features.
            #[cfg(target_arch = "x86_64")]
            (false, true) => unsafe {
                native::rows_from_columns(block, lhs.t(), b * TASK_BLOCKS * amx::BLOCK)
            },
            _ => rows_from_columns(block, lhs.t(), b * TASK_BLOCKS * amx::BLOCK),
        });
    kp
}

/// The panel of columns `c0..` of row-major `rhs`: pair `q` is rows `2q` and `2q + 1`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn panel_from_rows(panel: &mut [u32], rhs: View, c0: usize) {
    let (k, n) = rhs.shape();
    let cols = (n - c0).min(PANEL);
    let row = |t: usize| (t < k).then(|| &rhs.row(t).unwrap()[c0..c0 + cols]);
    for (q, out) in panel.chunks_exact_mut(PANEL).enumerate() {
        match (row(2 * q), row(2 * q + 1)) {
            (Some(lo), Some(hi)) => {
                for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = word(l, h);
                }
            }
            (Some(lo), None) => out.iter_mut().zip(lo).for_each(|(o, &l)| *o = word(l, 0.0)),
            _ => out[..cols].fill(0),
        }
        out[cols..].fill(0);
    }
}

/// The panel of rows `c0..` of row-major `s` (`rhs`ᵀ, `[n, k]`): pair `q` of column `c` is
/// `s[c][2q]` and `s[c][2q + 1]`. The model of `native::panel_from_columns`.
fn panel_from_columns(panel: &mut [u32], s: View, c0: usize) {
    let (n, k) = s.shape();
    for (q, out) in panel.chunks_exact_mut(PANEL).enumerate() {
        for (c, o) in out.iter_mut().enumerate() {
            let at = |t: usize| match c0 + c < n && t < k {
                true => s.at(c0 + c, t),
                false => 0.0,
            };
            *o = word(at(2 * q), at(2 * q + 1));
        }
    }
}

/// Rows `r0..` of row-major `lhs` into `block` (whole rows of words; zero past `lhs`'s rows and
/// columns).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn rows_from_rows(block: &mut [u32], lhs: View, r0: usize) {
    let (m, k) = lhs.shape();
    let width = k.next_multiple_of(amx::K_STEP) / 2;
    for (i, out) in block.chunks_exact_mut(width).enumerate() {
        let Some(x) = (r0 + i < m).then(|| lhs.row(r0 + i).unwrap()) else {
            out.fill(0);
            continue;
        };
        let (whole, odd) = x.as_chunks::<2>();
        for (o, p) in out.iter_mut().zip(whole) {
            *o = word(p[0], p[1]);
        }
        let mut done = whole.len();
        if let [last] = odd {
            out[done] = word(*last, 0.0);
            done += 1;
        }
        out[done..].fill(0);
    }
}

/// Rows `r0..` of `s`ᵀ (`s` row-major `[k, m]`, the transposed operand's source) into `block`:
/// word `q` of row `i` is `s[2q][i]` and `s[2q + 1][i]`. The model of
/// `native::rows_from_columns`.
fn rows_from_columns(block: &mut [u32], s: View, r0: usize) {
    let (k, m) = s.shape();
    let width = k.next_multiple_of(amx::K_STEP) / 2;
    for (i, out) in block.chunks_exact_mut(width).enumerate() {
        let at = |t: usize| match r0 + i < m && t < k {
            true => s.at(t, r0 + i),
            false => 0.0,
        };
        for (q, o) in out.iter_mut().enumerate() {
            *o = word(at(2 * q), at(2 * q + 1));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod native {
    use super::PANEL;
    use crate::ops::matmul::View;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }

    /// [`super::rounded`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn rounded(x: __m512) -> __m512i {
        let bits = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let near = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
        let magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fff_ffff));
        let nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
        _mm512_mask_or_epi32(near, nan, bits, _mm512_set1_epi32(0x0040_0000))
    }

    /// [`super::word`] of `lo` and `hi`, lane by lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn pairs(lo: __m512, hi: __m512) -> __m512i {
        let high = _mm512_and_si512(rounded(hi), _mm512_set1_epi32(0xffff_0000_u32 as i32));
        _mm512_or_si512(high, _mm512_srli_epi32::<16>(rounded(lo)))
    }

    /// The words of 32 consecutive values (`a`, then `b`): the top halves of their roundings,
    /// in order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn adjacent(a: __m512, b: __m512) -> __m512i {
        const ODD: [u16; 32] = {
            let mut i = [0; 32];
            let mut p = 0;
            while p < 32 {
                i[p] = 2 * p as u16 + 1;
                p += 1;
            }
            i
        };
        // SAFETY: `ODD` is 64 bytes.
        let odd = unsafe { _mm512_loadu_si512(ODD.as_ptr().cast()) };
        _mm512_permutex2var_epi16(rounded(a), odd, rounded(b))
    }

    /// A 16 x 16 block of words transposed: `unpack` within 128-bit lanes (4 x 4 blocks), then
    /// the lanes moved into place.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn transpose(r: &[__m512i; 16]) -> [__m512i; 16] {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // `u[4b + c]`'s lane `l`: column `4l + c` of rows `4b..4b + 4`.
        let mut u = [_mm512_setzero_si512(); 16];
        for b in 0..4 {
            let (x, y) = (4 * b, 4 * b + 2);
            u[4 * b] = _mm512_unpacklo_epi64(t[x], t[y]);
            u[4 * b + 1] = _mm512_unpackhi_epi64(t[x], t[y]);
            u[4 * b + 2] = _mm512_unpacklo_epi64(t[x + 1], t[y + 1]);
            u[4 * b + 3] = _mm512_unpackhi_epi64(t[x + 1], t[y + 1]);
        }
        // Column `4l + c`: lane `l` of `u[c]`, `u[4 + c]`, `u[8 + c]`, `u[12 + c]`.
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let (a, b, x, y) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
            let low = _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b);
            let high = _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b);
            let low2 = _mm512_shuffle_i32x4::<0b01_00_01_00>(x, y);
            let high2 = _mm512_shuffle_i32x4::<0b11_10_11_10>(x, y);
            out[c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(low, low2);
            out[4 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(low, low2);
            out[8 + c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(high, high2);
            out[12 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(high, high2);
        }
        out
    }

    /// The first `n` (at most 16) lanes.
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// As [`super::panel_from_columns`]: 16 rows of `s` rounded to words along the row, then
    /// transposed into 16 pairs of the panel's 16 columns.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn panel_from_columns(panel: &mut [u32], s: View, c0: usize) {
        let (n, k) = s.shape();
        let pairs = panel.len() / PANEL;
        assert!(pairs.is_multiple_of(16) && panel.len() == pairs * PANEL);
        for q0 in (0..pairs).step_by(16) {
            let left = k.saturating_sub(2 * q0);
            let (ma, mb) = (mask(left), mask(left.saturating_sub(16)));
            for v in 0..PANEL / 16 {
                let mut rows = [_mm512_setzero_si512(); 16];
                for (i, r) in rows.iter_mut().enumerate() {
                    let c = c0 + 16 * v + i;
                    if c < n {
                        let p = s.row(c).unwrap().as_ptr().wrapping_add(2 * q0);
                        // SAFETY: the masks keep the loads within the row's `k` values.
                        *r = unsafe {
                            let a = _mm512_maskz_loadu_ps(ma, p);
                            adjacent(a, _mm512_maskz_loadu_ps(mb, p.wrapping_add(16)))
                        };
                    }
                }
                for (i, w) in transpose(&rows).iter().enumerate() {
                    let out = &mut panel[(q0 + i) * PANEL + 16 * v..][..16];
                    // SAFETY: `out` is 16 words.
                    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), *w) };
                }
            }
        }
    }

    /// As [`super::rows_from_columns`]: 16 pairs of `s`'s rows rounded to words along the
    /// rows, then transposed into 16 words of 16 of the block's rows.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn rows_from_columns(block: &mut [u32], s: View, r0: usize) {
        let (k, m) = s.shape();
        let width = k.next_multiple_of(crate::ops::amx::K_STEP) / 2;
        assert!(width.is_multiple_of(16) && block.len().is_multiple_of(16 * width));
        let zero = _mm512_setzero_ps();
        // Along the source's rows: 32 of them at a time, each read over all of the block's
        // columns before the next 32.
        for q0 in (0..width).step_by(16) {
            for i0 in (0..block.len() / width).step_by(16) {
                let cols = mask(m.saturating_sub(r0 + i0));
                let load = |t: usize| match t < k {
                    // SAFETY: the mask keeps the load within row `t`'s `m` values.
                    true => unsafe {
                        let row = s.row(t).unwrap().as_ptr();
                        _mm512_maskz_loadu_ps(cols, row.wrapping_add(r0 + i0))
                    },
                    false => zero,
                };
                let mut rows = [_mm512_setzero_si512(); 16];
                for (j, r) in rows.iter_mut().enumerate() {
                    let t = 2 * (q0 + j);
                    *r = pairs(load(t), load(t + 1));
                }
                for (j, w) in transpose(&rows).iter().enumerate() {
                    let out = &mut block[(i0 + j) * width + q0..][..16];
                    // SAFETY: `out` is 16 words.
                    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), *w) };
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod native {
    pub fn available() -> bool {
        false
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
        assert!(widen(round(f32::from_bits(0xff80_0001))).is_nan());
        assert_eq!(word(1.0, -2.5), 0xc020_3f80);
        for x in randn(1000, 3.0, 1) {
            let back = widen(round(x));
            assert!((back - x).abs() <= x.abs() / 256.0, "{x} -> {back}");
        }
    }

    /// Values with every rounding case: ties, NaNs, infinities, denormals, signed zeros.
    fn awkward(len: usize, seed: u64) -> Vec<f32> {
        let odd = [
            1.0 + 1.0 / 256.0,
            -(1.0 + 3.0 / 256.0),
            f32::NAN,
            f32::from_bits(0xff80_0001),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            1e-40,
            -0.0,
        ];
        let mut v = randn(len, 2.0, seed);
        for (i, x) in v.iter_mut().enumerate().step_by(7) {
            *x = odd[i % odd.len()];
        }
        v
    }

    /// Both packers, on operands given row-major and transposed, equal the plain loops (the
    /// rows and panels of an operand and of its transpose are the same words).
    #[test]
    fn the_packers_match_the_plain_loops_on_every_layout() {
        // One buffer for every call, as training reuses it: first filled with NaNs, which no
        // later call may leave in its padding.
        let mut got = Lines::default();
        let nan = vec![f32::NAN; 200 * 200];
        pack_panels(&mut got, View::rows(&nan, 200, 200, 200));
        pack_rows(&mut got, View::rows(&nan, 200, 200, 200));
        for (m, k) in [(1, 1), (17, 40), (33, 7), (70, 97), (5, 130), (40, 3)] {
            let src = awkward(m * k, m as u64);
            let rows_major = View::rows(&src, m, k, k);
            let t_src: Vec<f32> = (0..m * k).map(|i| src[(i % m) * k + i / m]).collect();
            let transposed = View::rows(&t_src, k, m, m).t();
            let kp = k.next_multiple_of(amx::K_STEP);
            let padded = m.next_multiple_of(amx::BLOCK);
            let mut want = vec![0u32; padded * kp / 2];
            for (b, block) in want.chunks_exact_mut(amx::BLOCK * kp / 2).enumerate() {
                rows_from_columns(block, transposed.t(), b * amx::BLOCK);
            }
            for lhs in [rows_major, transposed] {
                assert_eq!(pack_rows(&mut got, lhs), kp);
                assert_eq!(&got.words_mut()[..want.len()], &want[..], "rows {m}x{k}");
            }
            // As a right-hand side, `[m, k]` has `k` columns in panels.
            let len = pairs(m) * PANEL;
            let mut want = vec![0u32; k.div_ceil(PANEL) * len];
            for (p, panel) in want.chunks_exact_mut(len).enumerate() {
                panel_from_columns(panel, transposed.t(), p * PANEL);
            }
            for rhs in [rows_major, transposed] {
                pack_panels(&mut got, rhs);
                assert_eq!(&got.words_mut()[..want.len()], &want[..], "panels {m}x{k}");
            }
        }
    }
}
