//! The f32 product on AVX-512, for the linear layers: the right-hand side in [`Panels`], the
//! left-hand side's elements broadcast straight from its rows, or, where its columns lie side
//! by side (the weight gradient's `dyᵀ`, `xᵀ`), from a copy in tiles of `MR` rows: read in
//! place, that operand ran the weight gradient at 83-129 GFLOP/s on one Xeon (Emerald Rapids)
//! core against 138-148 copied, on MiniLM's and bert-base's shapes. The bias or the destination
//! is added in the epilogue. Beside the gemm crate, on MiniLM's shapes with a layer's
//! weights cold in cache (as in a pass over six layers), this runs 194-216 GFLOP/s against
//! 176-200 on 2 Zen 4 cores: the weights stream from one contiguous panel, not from rows
//! `n` floats apart that the gemm crate packs on every call.
//!
//! Register tile: `MR` rows by `NV` vectors of 16 columns (24 accumulators, 3 panel vectors and
//! a broadcast: 28 of the 32 registers), the same shape as the int8 kernel's.

use std::arch::x86_64::*;

use super::{Panels, Start, View, PANEL};

/// Rows of a register tile.
const MR: usize = 8;
/// Vectors of 16 columns in a register tile.
const NV: usize = PANEL / 16;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `dst` (row stride `dst_rs`) = `start` + `lhs` · `rhs`, on this thread. Call only where
/// [`available`] is true.
pub fn product(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: &Panels, start: Start) {
    let (rows, n) = (lhs.rows, rhs.n);
    assert!(available() && lhs.cols == rhs.k && n <= dst_rs);
    assert!((rows - 1) * dst_rs + n <= dst.len());
    if let Start::Bias(b) = start {
        assert!(b.len() == n);
    }
    // SAFETY: the CPU has the feature (asserted); `View::new` keeps `lhs`'s elements inside its
    // slice, and the asserts above keep the rows and columns written inside `dst`.
    unsafe { product_avx512(dst, dst_rs, lhs, rhs, start) }
}

#[target_feature(enable = "avx512f")]
fn product_avx512(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: &Panels, start: Start) {
    if lhs.cs == 1 {
        // Rows side by side: each tile's elements are broadcast straight from them.
        let tiles = |r0: usize| Rows {
            a: lhs.data.as_ptr().wrapping_add(r0 * lhs.rs),
            rs: lhs.rs,
            cs: 1,
        };
        return tiles_over_panels(dst, dst_rs, lhs.rows, tiles, rhs, start);
    }
    // Columns side by side (a transposed operand, as in the weight gradient `dyᵀ · x`): read in
    // place, each step of `k` would touch another row of memory, often another page, for
    // every tile of every panel; copied once into tiles of `MR` rows, it is one stream.
    PACKED.with_borrow_mut(|packed| {
        pack_rows(packed, lhs);
        let tiles = |r0: usize| Rows {
            a: packed.as_ptr().wrapping_add(r0 * lhs.cols),
            rs: 1,
            cs: MR,
        };
        tiles_over_panels(dst, dst_rs, lhs.rows, tiles, rhs, start)
    })
}

thread_local! {
    /// The left-hand side in tiles of `MR` rows, reused from call to call.
    static PACKED: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
}

/// Lays out `lhs` (`[m, k]`) in tiles of `MR` rows: tile `i`'s element `(r, t)` at
/// `i · MR · k + t · MR + r`, rows past `m` zero.
fn pack_rows(packed: &mut Vec<f32>, lhs: View) {
    let (m, k) = (lhs.rows, lhs.cols);
    packed.clear();
    packed.resize(m.div_ceil(MR) * MR * k, 0.0);
    // Steps of `k` in blocks, so that the rows of memory a block reads stay in cache while
    // every tile takes its elements from them.
    const BLOCK: usize = 32;
    for t0 in (0..k).step_by(BLOCK) {
        for (i, tile) in packed.chunks_exact_mut(MR * k).enumerate() {
            let rows = (m - i * MR).min(MR);
            for t in t0..(t0 + BLOCK).min(k) {
                let to = &mut tile[t * MR..t * MR + rows];
                let from = i * MR * lhs.rs + t * lhs.cs;
                if lhs.rs == 1 {
                    to.copy_from_slice(&lhs.data[from..from + rows]);
                } else {
                    to.iter_mut()
                        .enumerate()
                        .for_each(|(r, v)| *v = lhs.data[from + r * lhs.rs]);
                }
            }
        }
    }
}

/// Every panel by every tile of `rows` rows, tile `r0`'s left-hand rows given by `tiles`.
#[inline]
#[target_feature(enable = "avx512f")]
fn tiles_over_panels(
    dst: &mut [f32],
    dst_rs: usize,
    rows: usize,
    tiles: impl Fn(usize) -> Rows,
    rhs: &Panels,
    start: Start,
) {
    let k = rhs.k;
    for (p, panel) in rhs.data.chunks_exact(k * PANEL).enumerate() {
        let c0 = p * PANEL;
        // Columns past `n` get an empty mask: no load or store touches them.
        let masks = crate::ops::column_masks::<NV>(rhs.n, c0);
        for r0 in (0..rows).step_by(MR) {
            let out = Out {
                dst: dst.as_mut_ptr().wrapping_add(r0 * dst_rs + c0),
                rs: dst_rs,
                masks,
                start: match start {
                    Start::Bias(b) => Start::Bias(&b[c0..]),
                    s => s,
                },
            };
            let a = tiles(r0);
            // SAFETY: rows `r0..r0 + R` of `lhs` and of `dst` exist (R is at most what is left).
            unsafe {
                match rows - r0 {
                    1 => tile::<1>(a, panel, k, out),
                    2 => tile::<2>(a, panel, k, out),
                    3 => tile::<3>(a, panel, k, out),
                    4 => tile::<4>(a, panel, k, out),
                    5 => tile::<5>(a, panel, k, out),
                    6 => tile::<6>(a, panel, k, out),
                    7 => tile::<7>(a, panel, k, out),
                    _ => tile::<MR>(a, panel, k, out),
                }
            }
        }
    }
}

/// A tile's left-hand rows: element `(r, t)` at `a + r · rs + t · cs`.
#[derive(Clone, Copy)]
struct Rows {
    a: *const f32,
    rs: usize,
    cs: usize,
}

/// Where a tile's outputs go: row `r`, column `c` at `dst + r · rs + c`.
struct Out<'a> {
    dst: *mut f32,
    rs: usize,
    masks: [__mmask16; NV],
    start: Start<'a>,
}

/// `acc[r] + a[r] · b` for each row of a tile, `b` one row of a panel. By value, so that the
/// accumulators stay in registers.
#[inline(always)]
unsafe fn fma<const R: usize>(
    mut acc: [[__m512; NV]; R],
    b: *const f32,
    a: Rows,
) -> [[__m512; NV]; R] {
    // SAFETY (caller): `b` points to `PANEL` floats, `a` to rows `0..R` of the tile.
    let b: [__m512; NV] = std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b.add(16 * v)) });
    for (r, acc) in acc.iter_mut().enumerate() {
        let x = unsafe { _mm512_set1_ps(*a.a.add(r * a.rs)) };
        for (acc, &b) in acc.iter_mut().zip(&b) {
            *acc = _mm512_fmadd_ps(x, b, *acc);
        }
    }
    acc
}

/// `R` rows by one panel over all of `k`, then stored. The caller guarantees the rows.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(a: Rows, panel: &[f32], k: usize, out: Out) {
    debug_assert!(panel.len() == k * PANEL);
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    for t in 0..k {
        // SAFETY: row `t` of the panel; column `t` of the tile's rows (caller).
        unsafe {
            let at = Rows {
                a: a.a.add(t * a.cs),
                ..a
            };
            acc = fma(acc, panel.as_ptr().add(t * PANEL), at);
        }
    }
    // Written out once, here: `store` takes them from memory.
    let mut acc_out = std::mem::MaybeUninit::uninit();
    unsafe { store(acc_out.write(acc), out) }
}

/// The tile's outputs: `start` plus the accumulators. Out of line, as in the int8 kernel:
/// inlined, it would keep the accumulators in memory for the whole product.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn store<const R: usize>(acc: &[[__m512; NV]; R], out: Out) {
    for (r, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            let mask = out.masks[v];
            // SAFETY (caller): the mask keeps every access within the row's columns.
            unsafe {
                let at = out.dst.add(r * out.rs + 16 * v);
                let sum = match out.start {
                    Start::Zero => acc,
                    Start::Add => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), acc),
                    Start::Bias(b) => {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, b.as_ptr().add(16 * v)), acc)
                    }
                };
                _mm512_mask_storeu_ps(at, mask, sum);
            }
        }
    }
}
