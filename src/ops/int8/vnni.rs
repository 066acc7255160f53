//! The int8 product on AVX-512 VNNI (`vpdpbusd`: four u8 x i8 products summed into each i32
//! lane), with the dequantization in its epilogue. Where rten-gemm packs the quantized rows
//! for every product and writes i32 accumulators that a second pass turns into floats, this
//! kernel broadcasts each row's four bytes straight from the quantized rows and writes the
//! finished f32 outputs from its registers.
//!
//! Register tile: `MR` rows by `NV` vectors of 16 columns (24 accumulators, 3 weight vectors and
//! a broadcast: 28 of the 32 registers). Weights are laid out once, at load, in panels of
//! `PANEL` columns (see [`Panels`]).

use std::arch::x86_64::*;

/// Rows of a register tile.
const MR: usize = 8;
/// Vectors of 16 columns in a register tile.
const NV: usize = 3;
/// Columns of a weight panel: one register tile wide.
const PANEL: usize = 16 * NV;
/// Bytes of a panel's quad of `k`: `PANEL` columns of four bytes.
const QUAD: usize = PANEL * 4;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// int8 weights `[k, n]` in panels of `PANEL` columns: panel `p`'s quad `q` (rows `4q..4q + 4`
/// of the weight) is `QUAD` bytes, column `c`'s four bytes at `4c`, as `vpdpbusd` reads them.
/// Columns past `n` and rows past `k` are zero, so they add nothing.
#[derive(Clone)]
pub struct Panels {
    data: Vec<i8>,
    k: usize,
    n: usize,
}

impl Panels {
    /// Lays out `w`, int8 `[k, n]`, its quads padded with zeros to a multiple of `multiple`
    /// values of `k` (4 for this kernel; 64 for AMX's tiles, which read these panels too).
    pub fn padded(w: &[i8], k: usize, multiple: usize) -> Self {
        let n = w.len() / k;
        let quads = k.next_multiple_of(multiple) / 4;
        let mut data = vec![0i8; n.div_ceil(PANEL) * quads * QUAD];
        for (t, row) in w.chunks_exact(n).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let (p, c) = (j / PANEL, j % PANEL);
                data[(p * quads + t / 4) * QUAD + c * 4 + t % 4] = v;
            }
        }
        Panels { data, k, n }
    }

    /// The panels' bytes.
    pub fn data(&self) -> &[i8] {
        &self.data
    }

    /// Columns of the weight.
    pub fn cols(&self) -> usize {
        self.n
    }
}

/// What turns a row's accumulators into outputs: `y[i, j] = (acc[i, j] - zero[i] ·
/// col_sums[j]) · (scale[i] · col_scale[j]) (+ bias[j])`, the same operations in the same order
/// as the scalar dequantization, so both give the same bits.
pub struct Dequantize<'a> {
    pub scale: &'a [f32],
    pub zero: &'a [u8],
    pub col_scale: &'a [f32],
    pub col_sums: &'a [i32],
    pub bias: Option<&'a [f32]>,
}

/// `y` (`[rows, n]`) = the dequantized product of `a` (u8 `[rows, k]`) and `w`, on this thread.
/// Call only where [`available`] is true.
pub fn forward(y: &mut [f32], a: &[u8], w: &Panels, dq: &Dequantize) {
    let (k, n) = (w.k, w.n);
    let rows = a.len() / k;
    assert!(available() && a.len() == rows * k && y.len() == rows * n);
    assert!(dq.scale.len() >= rows && dq.zero.len() >= rows);
    assert!(dq.col_scale.len() == n && dq.col_sums.len() == n);
    assert!(dq.bias.is_none_or(|b| b.len() == n));
    // SAFETY: the CPU has the features (asserted), and the shapes are checked above.
    unsafe { forward_avx512(y, a, w, dq) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn forward_avx512(y: &mut [f32], a: &[u8], w: &Panels, dq: &Dequantize) {
    let rows = a.len() / w.k;
    let quads = w.k.div_ceil(4);
    for (p, panel) in w.data.chunks_exact(quads * QUAD).enumerate() {
        for r0 in (0..rows).step_by(MR) {
            let at = (r0, p * PANEL);
            match rows - r0 {
                1 => tile::<1>(y, a, w, panel, at, dq),
                2 => tile::<2>(y, a, w, panel, at, dq),
                3 => tile::<3>(y, a, w, panel, at, dq),
                4 => tile::<4>(y, a, w, panel, at, dq),
                5 => tile::<5>(y, a, w, panel, at, dq),
                6 => tile::<6>(y, a, w, panel, at, dq),
                7 => tile::<7>(y, a, w, panel, at, dq),
                _ => tile::<MR>(y, a, w, panel, at, dq),
            }
        }
    }
}

/// `acc[r] + x[r] · b` for each row of a tile: `x[r]` a row's four bytes broadcast, `b` a
/// quad of the panel (`QUAD` bytes). By value, so that the accumulators stay in registers.
#[inline(always)]
unsafe fn dot<const R: usize>(
    mut acc: [[__m512i; NV]; R],
    b: *const i8,
    x: [i32; R],
) -> [[__m512i; NV]; R] {
    // SAFETY (caller): `b` points to `QUAD` bytes, `NV` vectors of 64.
    let b: [__m512i; NV] =
        std::array::from_fn(|v| unsafe { _mm512_loadu_si512(b.add(64 * v).cast()) });
    for r in 0..R {
        let x = _mm512_set1_epi32(x[r]);
        for v in 0..NV {
            acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], x, b[v]);
        }
    }
    acc
}

/// Rows `r0..r0 + R` by the panel's columns from `c0`, over all of `k`, then dequantized
/// into `y`. The caller guarantees the rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile<const R: usize>(
    y: &mut [f32],
    a: &[u8],
    w: &Panels,
    panel: &[i8],
    (r0, c0): (usize, usize),
    dq: &Dequantize,
) {
    let (k, n) = (w.k, w.n);
    debug_assert!(a.len() >= (r0 + R) * k && panel.len() == k.div_ceil(4) * QUAD);
    let rows = a[r0 * k..].as_ptr();
    let mut acc = [[_mm512_setzero_si512(); NV]; R];
    let full = k / 4;
    for q in 0..full {
        // SAFETY: quad `q < k / 4` of rows `r0..r0 + R` and of the panel lie within them.
        unsafe {
            let x = std::array::from_fn(|r| rows.add(r * k + 4 * q).cast::<i32>().read_unaligned());
            acc = dot(acc, panel.as_ptr().add(q * QUAD), x);
        }
    }
    if full * 4 < k {
        // The last quad, zero past `k` (as the panel is).
        let x = std::array::from_fn(|r| {
            let mut b = [0u8; 4];
            b[..k - 4 * full].copy_from_slice(&a[(r0 + r) * k + 4 * full..(r0 + r + 1) * k]);
            i32::from_le_bytes(b)
        });
        // SAFETY: the panel's last quad.
        acc = unsafe { dot(acc, panel.as_ptr().add(full * QUAD), x) };
    }
    // Written out once, here: `store` takes them from memory.
    let mut out = std::mem::MaybeUninit::uninit();
    store(out.write(acc), y, (r0, c0), n, dq);
}

/// The tile's outputs into `y`: [`Dequantize`]'s formula on rows `r0..r0 + R` and columns
/// from `c0`. Out of line: inlined, it would keep the accumulators in memory for the whole
/// of the product (measured: a 1.5 KB `memset` per tile).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn store<const R: usize>(
    acc: &[[__m512i; NV]; R],
    y: &mut [f32],
    (r0, c0): (usize, usize),
    n: usize,
    dq: &Dequantize,
) {
    // Columns past `n` get an empty mask: no load or store touches them.
    let masks = crate::ops::column_masks::<NV>(n, c0);
    for (r, acc) in acc.iter().enumerate() {
        let row = r0 + r;
        let zero = _mm512_set1_epi32(dq.zero[row] as i32);
        let scale = _mm512_set1_ps(dq.scale[row]);
        for (v, &acc) in acc.iter().enumerate() {
            let (c, mask) = (c0 + 16 * v, masks[v]);
            // SAFETY: the mask keeps every load and store within columns `c..n` of row `row`.
            unsafe {
                let sums = _mm512_maskz_loadu_epi32(mask, dq.col_sums.as_ptr().wrapping_add(c));
                let col_scale = _mm512_maskz_loadu_ps(mask, dq.col_scale.as_ptr().wrapping_add(c));
                let exact = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zero, sums));
                let mut out =
                    _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(scale, col_scale));
                if let Some(bias) = dq.bias {
                    let b = _mm512_maskz_loadu_ps(mask, bias.as_ptr().wrapping_add(c));
                    out = _mm512_add_ps(out, b);
                }
                _mm512_mask_storeu_ps(y.as_mut_ptr().wrapping_add(row * n + c), mask, out);
            }
        }
    }
}
