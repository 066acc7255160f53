//! Products on Intel AMX's tile unit (Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums, 8,192 multiply-adds in one
//! instruction, several times the f32 FMA rate of AVX-512 on the same core.
//!
//! The driver ([`bf16_product`]) is generic over [`Tiles`], the few tile instructions it
//! issues: [`Native`] issues them (inline `asm!`: stable Rust has no AMX intrinsics), [`Model`]
//! computes what Intel's pseudo-code says they compute, in plain Rust. So the blocking, the
//! operands' layout and the edge blocks are tested exactly on any CPU, and the native
//! instructions are tested against the model where the CPU has them.
//!
//! Blocking: each step loads two row tiles `A[i]` (32 rows of the left-hand side, 32 values of
//! `k`) and two column tiles `B[j]` (32 values of `k`, 32 columns) and adds the four products
//! into the accumulators `C[i][j]`, a 32 x 32 block of the result, which the epilogue stores
//! once with the bias (as [`Start`] says). Row and column tails are computed whole, on padding
//! (rows) or on a repeated column tile, and only their real part is stored.

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::matmul::Start;

/// Rows of a tile.
const TILE_ROWS: usize = 16;
/// Bytes of a tile's row.
const TILE_BYTES: usize = 64;
/// Rows and columns of a block of the result: two tiles each way.
pub const BLOCK: usize = 2 * TILE_ROWS;
/// Values of `k` that one step covers: a tile row of bf16.
pub const K_STEP: usize = TILE_BYTES / 2;

/// Whether this CPU has AMX's bf16 tiles and Linux lets this process use them (asked once, at
/// the first call: `arch_prctl(ARCH_REQ_XCOMP_PERM)`; a refusal means no AMX).
pub fn available() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_ulong = 18;
            // SAFETY: the request only asks the kernel for a permission; it writes nothing.
            unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                ) == 0
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// The tile instructions the driver issues, on a fixed use of the eight tiles: accumulators
/// `C[i][j]` in tiles `2i + j`, row tiles `A[i]` in `4 + i`, column tiles `B[j]` in `6 + j`.
/// Every tile is 16 rows of 64 bytes.
pub trait Tiles {
    /// `C[i][j] = 0`.
    fn zero(&mut self);
    /// Loads `A[i]` from `a[i]`, `B[j]` from `b[j]` (each 16 rows, `stride` bytes apart), then
    /// `C[i][j] += A[i] · B[j]` as `tdpbf16ps` does.
    ///
    /// # Safety
    /// The 16 rows of 64 bytes at each pointer are readable.
    unsafe fn bf16_step(&mut self, a: [*const u16; 2], a_stride: usize, b: [*const u16; 2]);
    /// `C` into `c`, row `16i + r`, column `16j + s` at `c[16i + r][16j + s]`.
    fn store(&mut self, c: &mut Block);
}

/// A block of the result as the tiles hold it, 64-byte aligned for `tilestored`.
#[repr(C, align(64))]
pub struct Block(pub [[f32; BLOCK]; BLOCK]);

impl Default for Block {
    fn default() -> Self {
        Block([[0.0; BLOCK]; BLOCK])
    }
}

/// Bytes between the rows of a column tile in [`super::bf16::Bf16Weight`]'s panels (a panel's
/// pair of rows: 48 columns of two bf16).
pub const B_STRIDE: usize = super::bf16::PAIR * 2;

/// `dst[r, c] = start + Σ_t a[r, t] · b[t, c]` over `rows` and `cols` of the result, each a
/// range of whole blocks but for the result's own end. `a` holds rows of `k` bf16 (a multiple
/// of [`K_STEP`]), padded to whole blocks; `b` holds [`super::bf16::Bf16Weight`]'s panels of
/// `n` columns over the same `k`.
///
/// # Safety
/// `dst` is valid for writes of every element of `rows` x `cols` (row stride `dst_rs`), and no
/// one else reads or writes those elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn bf16_product<T: Tiles>(
    tiles: &mut T,
    dst: *mut f32,
    dst_rs: usize,
    (a, k): (&[u16], usize),
    (b, n): (&[u16], usize),
    rows: Range<usize>,
    cols: Range<usize>,
    start: Start,
) {
    use super::bf16::{PAIR, PANEL};
    assert!(k.is_multiple_of(K_STEP));
    assert!(rows.start.is_multiple_of(BLOCK) && cols.start.is_multiple_of(BLOCK));
    assert!(a.len() >= rows.end.next_multiple_of(BLOCK) * k);
    let pairs = k / 2;
    assert!(b.len() == n.div_ceil(PANEL) * pairs * PAIR && cols.end <= n);
    // Column tile `j`'s first pair: 16 columns of its panel.
    let column = |j: usize| (j / 3) * pairs * PAIR + (j % 3) * TILE_ROWS * 2;
    let mut c = Block::default();
    for r0 in rows.clone().step_by(BLOCK) {
        for c0 in cols.clone().step_by(BLOCK) {
            let j = c0 / TILE_ROWS;
            // A last block one tile wide repeats its tile rather than read past the panels.
            let bj = [
                column(j),
                column(if c0 + TILE_ROWS < n { j + 1 } else { j }),
            ];
            tiles.zero();
            for q in (0..pairs).step_by(TILE_ROWS) {
                let t = 2 * q;
                let at = [r0 * k + t, (r0 + TILE_ROWS) * k + t];
                // SAFETY: rows `r0..r0 + 32` of `a` and pairs `q..q + 16` of the two column
                // tiles lie within `a` and `b` (asserted above).
                unsafe {
                    tiles.bf16_step(
                        at.map(|i| a.as_ptr().add(i)),
                        2 * k,
                        bj.map(|i| b.as_ptr().add(i + q * PAIR)),
                    )
                }
            }
            tiles.store(&mut c);
            let (vr, vc) = ((rows.end - r0).min(BLOCK), (cols.end - c0).min(BLOCK));
            for (r, c) in c.0[..vr].iter().enumerate() {
                // SAFETY: the caller lends these elements of `dst`.
                let d =
                    unsafe { std::slice::from_raw_parts_mut(dst.add((r0 + r) * dst_rs + c0), vc) };
                let c = &c[..vc];
                match start {
                    Start::Zero => d.copy_from_slice(c),
                    Start::Add => d.iter_mut().zip(c).for_each(|(d, c)| *d += c),
                    Start::Bias(bias) => {
                        let bias = &bias[c0..c0 + vc];
                        d.iter_mut()
                            .zip(c)
                            .zip(bias)
                            .for_each(|((d, c), b)| *d = c + b)
                    }
                }
            }
        }
    }
}

/// The result's blocks split into one share per thread (rows, columns): by rows where each
/// thread gets at least one block row, else by columns.
pub fn shares(m: usize, n: usize, threads: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let split = |len: usize, parts: usize| -> Vec<Range<usize>> {
        let per = len.div_ceil(BLOCK).div_ceil(parts).max(1) * BLOCK;
        (0..len)
            .step_by(per)
            .map(|s| s..(s + per).min(len))
            .collect()
    };
    if m.div_ceil(BLOCK) >= threads || n.div_ceil(BLOCK) < 2 {
        split(m, threads).into_iter().map(|r| (r, 0..n)).collect()
    } else {
        split(n, threads).into_iter().map(|c| (0..m, c)).collect()
    }
}

/// A pointer that rayon's tasks may share: each writes its own elements (see [`shares`]).
#[derive(Clone, Copy)]
pub struct Shared(*mut f32);
impl Shared {
    /// The pointer (a method, so that a closure captures the `Shared`, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the tasks that share it write disjoint elements.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// [`bf16_product`] of all of `dst` (`m` rows, `dst_rs` apart) over rayon's threads, on the
/// CPU's tiles. Only where [`available`].
pub fn bf16_product_par(
    dst: &mut [f32],
    (m, dst_rs): (usize, usize),
    (a, k): (&[u16], usize),
    (b, n): (&[u16], usize),
    start: Start,
) {
    assert!(available(), "the CPU has no AMX");
    assert!(m == 0 || (m - 1) * dst_rs + n <= dst.len());
    let out = Shared(dst.as_mut_ptr());
    shares(m, n, rayon::current_num_threads())
        .into_par_iter()
        .for_each(|(rows, cols)| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the tiles (asserted above); the shares are disjoint and
            // within `dst`.
            unsafe {
                bf16_product(
                    &mut Native::new(),
                    out.get(),
                    dst_rs,
                    (a, k),
                    (b, n),
                    rows,
                    cols,
                    start,
                )
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (out, rows, cols);
        });
}

/// The tiles' configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = TILE_BYTES as u8;
        c[48 + t] = TILE_ROWS as u8;
        t += 1;
    }
    Config(c)
};

/// The CPU's tiles, configured for the driver while this value lives (released on drop).
#[cfg(target_arch = "x86_64")]
pub struct Native(());

#[cfg(target_arch = "x86_64")]
impl Native {
    /// # Safety
    /// Only where [`available`] is true.
    pub unsafe fn new() -> Self {
        // SAFETY: the CPU has the tiles and this process may use them (the caller's promise).
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
        Native(())
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Native {
    fn drop(&mut self) {
        // SAFETY: `new` configured the tiles.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

#[cfg(target_arch = "x86_64")]
impl Tiles for Native {
    fn zero(&mut self) {
        // SAFETY: the tiles are configured (`new`).
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        }
    }

    unsafe fn bf16_step(&mut self, a: [*const u16; 2], a_stride: usize, b: [*const u16; 2]) {
        // SAFETY: the caller's promise: every row loaded is readable.
        unsafe {
            std::arch::asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a[0],
                a1 = in(reg) a[1],
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                sa = in(reg) a_stride,
                sb = in(reg) B_STRIDE,
                options(nostack, readonly)
            )
        }
    }

    fn store(&mut self, c: &mut Block) {
        let base = c.0.as_mut_ptr().cast::<f32>();
        let p = [(0, 0), (0, 1), (1, 0), (1, 1)]
            .map(|(i, j)| base.wrapping_add(TILE_ROWS * (i * BLOCK + j)));
        // SAFETY: each tile's 16 rows of 64 bytes lie within `c`, whose rows are 128 bytes.
        unsafe {
            std::arch::asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) p[0],
                c1 = in(reg) p[1],
                c2 = in(reg) p[2],
                c3 = in(reg) p[3],
                s = in(reg) BLOCK * 4,
                options(nostack)
            )
        }
    }
}

/// The tile instructions in plain Rust, as Intel's pseudo-code for them reads (SDM vol. 2,
/// `TDPBF16PS`): in each row, the even and the odd products of the 16 pairs are summed apart,
/// each by FMA from zero in `k`'s order, then added together and to the accumulator; inputs
/// that are denormal count as zero, denormal results are flushed to zero, rounding is to the
/// nearest even.
#[derive(Clone)]
pub struct Model {
    /// Tile `t`'s row `r` as 16 words.
    tiles: [[[u32; 16]; TILE_ROWS]; 8],
}

impl Default for Model {
    fn default() -> Self {
        Model {
            tiles: [[[0; 16]; TILE_ROWS]; 8],
        }
    }
}

/// `x` with a denormal flushed to zero (its sign kept).
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

impl Model {
    /// `tileloadd`: 16 rows of 64 bytes, `stride` bytes apart.
    unsafe fn load(&mut self, t: usize, p: *const u8, stride: usize) {
        for (r, row) in self.tiles[t].iter_mut().enumerate() {
            for (w, word) in row.iter_mut().enumerate() {
                // SAFETY: the caller's promise.
                *word = unsafe { p.add(r * stride + 4 * w).cast::<u32>().read_unaligned() };
            }
        }
    }

    /// `tdpbf16ps tmm<c>, tmm<a>, tmm<b>`.
    fn dpbf16(&mut self, c: usize, a: usize, b: usize) {
        let half = |word: u32, i: usize| flush(f32::from_bits((word >> (16 * i)) << 16));
        for m in 0..TILE_ROWS {
            for n in 0..16 {
                let (mut even, mut odd) = (0f32, 0f32);
                for k in 0..16 {
                    let (x, y) = (self.tiles[a][m][k], self.tiles[b][k][n]);
                    even = flush(half(x, 0).mul_add(half(y, 0), even));
                    odd = flush(half(x, 1).mul_add(half(y, 1), odd));
                }
                let acc = f32::from_bits(self.tiles[c][m][n]);
                self.tiles[c][m][n] = flush(acc + flush(even + odd)).to_bits();
            }
        }
    }
}

impl Tiles for Model {
    fn zero(&mut self) {
        self.tiles[..4]
            .iter_mut()
            .for_each(|t| *t = [[0; 16]; TILE_ROWS]);
    }

    unsafe fn bf16_step(&mut self, a: [*const u16; 2], a_stride: usize, b: [*const u16; 2]) {
        // SAFETY: the caller's promise.
        unsafe {
            self.load(4, a[0].cast(), a_stride);
            self.load(5, a[1].cast(), a_stride);
            self.load(6, b[0].cast(), B_STRIDE);
            self.load(7, b[1].cast(), B_STRIDE);
        }
        for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            self.dpbf16(2 * i + j, 4 + i, 6 + j);
        }
    }

    fn store(&mut self, c: &mut Block) {
        for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            for (r, row) in self.tiles[2 * i + j].iter().enumerate() {
                let out = &mut c.0[TILE_ROWS * i + r][TILE_ROWS * j..][..16];
                out.iter_mut()
                    .zip(row)
                    .for_each(|(o, &w)| *o = f32::from_bits(w));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bf16::{round, widen, Bf16Weight};
    use crate::ops::linear::WeightLayout;
    use crate::ops::testing::randn;

    /// `x` (`[m, k]`) in bf16 rows of `kp` values, padded to whole blocks of rows.
    fn rows(x: &[f32], m: usize, k: usize, kp: usize) -> Vec<u16> {
        let mut a = vec![0u16; m.next_multiple_of(BLOCK) * kp];
        for r in 0..m {
            for t in 0..k {
                a[r * kp + t] = round(x[r * k + t]);
            }
        }
        a
    }

    /// Element `(r, c)` as the pseudo-code computes it, one `k` step after another: what the
    /// driver on [`Model`] must give bit for bit, whatever its blocking.
    fn reference(x: &[f32], w: &[f32], k: usize, (r, c): (usize, usize)) -> f32 {
        let q = |v: f32| flush(widen(round(v)));
        let mut acc = 0f32;
        for t0 in (0..k).step_by(K_STEP) {
            let (mut even, mut odd) = (0f32, 0f32);
            for t in (t0..(t0 + K_STEP).min(k)).step_by(2) {
                even = flush(q(x[r * k + t]).mul_add(q(w[c * k + t]), even));
                if t + 1 < k {
                    odd = flush(q(x[r * k + t + 1]).mul_add(q(w[c * k + t + 1]), odd));
                }
            }
            acc = flush(acc + flush(even + odd));
        }
        acc
    }

    #[test]
    fn the_driver_on_the_model_gives_the_pseudo_codes_sums_on_every_edge() {
        // Rows and columns in and past whole blocks and tiles, `k` short of, at and past a
        // step; a destination wider than the result.
        for (m, k, n) in [
            (1, 1, 1),
            (17, 7, 5),
            (33, 32, 16),
            (32, 33, 49),
            (40, 70, 97),
        ] {
            let (x, w, b) = (randn(m * k, 1.0, 1), randn(n * k, 1.0, 2), randn(n, 1.0, 3));
            let weight = Bf16Weight::new(&w, k, WeightLayout::OutIn);
            let (panels, kp) = weight.panels();
            let a = rows(&x, m, k, kp);
            let rs = n + 3;
            for (start, base) in [
                (Start::Zero, None),
                (Start::Add, Some(0.5)),
                (Start::Bias(&b), None),
            ] {
                let mut dst = vec![0.5f32; m * rs];
                let tiles = &mut Model::default();
                let out = dst.as_mut_ptr();
                // In two shares by columns, as a thread each would take them.
                let half = n.div_ceil(2).next_multiple_of(BLOCK).min(n);
                for cols in [0..half, half..n].into_iter().filter(|c| !c.is_empty()) {
                    // SAFETY: the shares lie within `dst` and the operands hold `m` rows.
                    unsafe {
                        bf16_product(tiles, out, rs, (&a, kp), (panels, n), 0..m, cols, start)
                    };
                }
                for r in 0..m {
                    for c in 0..n {
                        let sum = reference(&x, &w, k, (r, c));
                        let want = match start {
                            Start::Zero => sum,
                            Start::Add => base.unwrap() + sum,
                            Start::Bias(b) => sum + b[c],
                        };
                        assert_eq!(dst[r * rs + c], want, "{m}x{k}x{n} ({r}, {c})");
                    }
                    assert!(
                        dst[r * rs + n..][..3].iter().all(|&v| v == 0.5),
                        "past the row"
                    );
                }
            }
        }
    }

    #[test]
    fn the_model_flushes_denormals_and_sums_even_and_odd_apart() {
        let mut t = Model::default();
        let one = round(1.0) as u32;
        // Row 0 of A: pair 0 = (2^-130 (denormal), 1), pair 1 = (2^24, 1); B's column 0: pairs
        // (1, 1) and (1, 1). Even: 0 + 2^24; odd: 1 + 1; then 2^24 + 2 exactly.
        let tiny = f32::from_bits(1 << 16).to_bits() >> 16;
        t.tiles[4][0][0] = tiny | one << 16;
        t.tiles[4][0][1] = (round(16_777_216.0) as u32) | one << 16;
        t.tiles[6][0][0] = one | one << 16;
        t.tiles[6][1][0] = one | one << 16;
        t.dpbf16(0, 4, 6);
        assert_eq!(f32::from_bits(t.tiles[0][0][0]), 16_777_218.0);
        // Summed in one chain instead, 2^24 + 1 + 1 would round to 2^24 twice.
        assert_ne!(16_777_216f32 + 1.0 + 1.0, 16_777_218.0);
    }

    #[test]
    fn shares_cover_every_block_once() {
        for (m, n, threads) in [
            (1, 1, 2),
            (33, 100, 2),
            (64, 32, 2),
            (500, 1152, 4),
            (10, 384, 8),
        ] {
            let mut seen = vec![0u8; m * n];
            for (rows, cols) in shares(m, n, threads) {
                assert!(rows.start % BLOCK == 0 && cols.start % BLOCK == 0);
                for r in rows {
                    for c in cols.clone() {
                        seen[r * n + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{m}x{n} on {threads}");
        }
    }

    /// The CPU's instructions against the model, bit for bit, on values of every scale.
    #[test]
    fn the_native_tiles_match_the_model_bit_for_bit() {
        if !available() {
            // No AMX here: the model alone is tested (above); `bf16`'s tests run the
            // AVX-512 kernel instead.
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for (m, k, n, scale) in [(33, 64, 49, 1.0), (64, 384, 96, 3e-38), (40, 96, 33, 1e18)] {
            let x: Vec<f32> = randn(m * k, 1.0, 5).iter().map(|v| v * scale).collect();
            let w = randn(n * k, 1.0, 6);
            let weight = Bf16Weight::new(&w, k, WeightLayout::OutIn);
            let (panels, kp) = weight.panels();
            let a = rows(&x, m, k, kp);
            let run = |tiles: &mut dyn FnMut(*mut f32)| {
                let mut dst = vec![f32::NAN; m * n];
                tiles(dst.as_mut_ptr());
                dst
            };
            let args = ((&a[..], kp), (panels, n));
            // SAFETY: the CPU has the tiles; the whole result lies within `dst`.
            let native = run(&mut |out| unsafe {
                bf16_product(
                    &mut Native::new(),
                    out,
                    n,
                    args.0,
                    args.1,
                    0..m,
                    0..n,
                    Start::Zero,
                )
            });
            let model = run(&mut |out| unsafe {
                bf16_product(
                    &mut Model::default(),
                    out,
                    n,
                    args.0,
                    args.1,
                    0..m,
                    0..n,
                    Start::Zero,
                )
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&native), bits(&model), "{m}x{k}x{n} at {scale}");
        }
    }
}
