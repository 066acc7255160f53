//! Products on Intel AMX's tile unit (Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums, 8,192 multiply-adds in one
//! instruction, several times the f32 FMA rate of AVX-512 on the same core; `tdpbusd` does the
//! same for u8 x i8 quads into i32 sums (16,384 multiply-adds).
//!
//! Both read their operands the same way in bytes (a tile row is 64 bytes: 32 bf16 or 64 u8 of
//! `k`; a column tile's row is 16 columns of a pair or a quad of `k`), so one driver
//! ([`product`]) serves both. It is generic over [`Tiles`], the few tile instructions it
//! issues: [`Native`] issues them (inline `asm!`: stable Rust has no AMX intrinsics), [`Model`]
//! computes what Intel's pseudo-code says they compute, in plain Rust. So the blocking, the
//! operands' layout and the edge blocks are tested exactly on any CPU, and the native
//! instructions are tested against the model where the CPU has them.
//!
//! Blocking: each step loads two row tiles `A[i]` (16 rows of the left-hand side each, 64
//! bytes of `k`) and two column tiles `B[j]` (16 columns each, over the same `k`) and adds the
//! four products into the accumulators `C[i][j]`, a 32 x 32 block of the result, which the
//! caller's `finish` turns into outputs once (a bias as [`Start`] says for bf16; int8's
//! accumulators go to its dequantization). Row and column tails are computed whole, on padding
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
    tiles().0
}

/// Whether this CPU has AMX's int8 tiles and this process may use them.
pub fn int8_available() -> bool {
    tiles().1
}

/// AMX's bf16 and int8 tiles, as usable here: read once (CPUID may trap to a hypervisor).
fn tiles() -> (bool, bool) {
    static TILES: OnceLock<(bool, bool)> = OnceLock::new();
    *TILES.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7, EDX: bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_ulong = 18;
            let permitted = edx & (1 << 24) != 0
                // SAFETY: the request only asks the kernel for a permission; it writes nothing.
                && unsafe {
                    libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
                } == 0;
            (
                permitted && edx & (1 << 22) != 0,
                permitted && edx & (1 << 25) != 0,
            )
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        (false, false)
    })
}

/// The product a step issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dot {
    /// `tdpbf16ps`: pairs of bf16, summed in f32.
    Bf16,
    /// `tdpbusd`: quads of u8 (rows) by i8 (columns), summed in i32.
    Int8,
}

/// The tile instructions the driver issues, on a fixed use of the eight tiles: accumulators
/// `C[i][j]` in tiles `2i + j`, row tiles `A[i]` in `4 + i`, column tiles `B[j]` in `6 + j`.
/// Every tile is 16 rows of 64 bytes.
pub trait Tiles {
    /// `C[i][j] = 0`.
    fn zero(&mut self);
    /// Loads `A[i]` from `a[i]` (rows `a_stride` bytes apart) and `B[j]` from `b[j]` (rows
    /// [`B_STRIDE`] apart), then `C[i][j] += A[i] · B[j]` as `dot`'s instruction does.
    ///
    /// # Safety
    /// The 16 rows of 64 bytes at each pointer are readable.
    unsafe fn step(&mut self, dot: Dot, a: [*const u8; 2], a_stride: usize, b: [*const u8; 2]);
    /// `C` into `c`, row `16i + r`, column `16j + s` at `c[16i + r][16j + s]`.
    fn store(&mut self, c: &mut Block);
}

/// A block of the result as the tiles hold it (f32 or i32 bits), 64-byte aligned for
/// `tilestored`.
#[repr(C, align(64))]
pub struct Block(pub [[u32; BLOCK]; BLOCK]);

impl Default for Block {
    fn default() -> Self {
        Block([[0; BLOCK]; BLOCK])
    }
}

/// Bytes of `b` that [`product`] keeps in L2 at a time.
const B_CHUNK_BYTES: usize = 1 << 19;

/// Bytes between the rows of a column tile in the panels of [`super::bf16::Bf16Weight`] and
/// `int8::vnni` (a panel's row: 48 columns of a bf16 pair or an int8 quad).
pub const B_STRIDE: usize = super::bf16::PAIR * 2;

/// The operands of a product, in bytes: `a`'s rows `a_stride` bytes apart (a multiple of 64:
/// whole steps of `k`), padded to whole blocks of rows; `b` in panels of 48 columns, each
/// `groups` rows (pairs or quads of `k`, a multiple of 16) of [`B_STRIDE`] bytes, `n` columns.
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    pub a: &'a [u8],
    pub a_stride: usize,
    pub b: &'a [u8],
    pub groups: usize,
    pub n: usize,
}

/// The blocks of `rows` x `cols` of `a · b` (each a range of whole blocks but for the result's
/// own end), each handed to `finish(r0, c0, block)` once its sums are complete.
pub fn product<T: Tiles + ?Sized>(
    tiles: &mut T,
    dot: Dot,
    ops: Operands,
    rows: Range<usize>,
    cols: Range<usize>,
    mut finish: impl FnMut(usize, usize, &Block),
) {
    let Operands {
        a,
        a_stride,
        b,
        groups,
        n,
    } = ops;
    assert!(a_stride.is_multiple_of(TILE_BYTES) && a_stride / TILE_BYTES == groups / TILE_ROWS);
    assert!(rows.start.is_multiple_of(BLOCK) && cols.start.is_multiple_of(BLOCK));
    assert!(a.len() >= rows.end.next_multiple_of(BLOCK) * a_stride);
    assert!(b.len() == n.div_ceil(48) * groups * B_STRIDE && cols.end <= n);
    // Column tile `j`'s first row: 16 columns of its panel.
    let column = |j: usize| (j / 3) * groups * B_STRIDE + (j % 3) * TILE_BYTES;
    let mut c = Block::default();
    // Each row block passes over a chunk of column blocks whose share of `b` stays in L2
    // (a wide layer's `b` does not fit).
    let per_column = groups * B_STRIDE / 48;
    let chunk = (B_CHUNK_BYTES / per_column / BLOCK).max(1) * BLOCK;
    for cc in cols.clone().step_by(chunk) {
        for r0 in rows.clone().step_by(BLOCK) {
            for c0 in (cc..(cc + chunk).min(cols.end)).step_by(BLOCK) {
                let j = c0 / TILE_ROWS;
                // A last block one tile wide repeats its tile rather than read past the panels.
                let bj = [
                    column(j),
                    column(if c0 + TILE_ROWS < n { j + 1 } else { j }),
                ];
                tiles.zero();
                for s in 0..groups / TILE_ROWS {
                    let at =
                        [r0 * a_stride, (r0 + TILE_ROWS) * a_stride].map(|i| i + s * TILE_BYTES);
                    let b_at = bj.map(|i| i + s * TILE_ROWS * B_STRIDE);
                    // SAFETY: rows `r0..r0 + 32` of `a` and rows `16s..16s + 16` of the two column
                    // tiles lie within `a` and `b` (asserted above).
                    unsafe {
                        let (a, b) = (a.as_ptr(), b.as_ptr());
                        tiles.step(dot, at.map(|i| a.add(i)), a_stride, b_at.map(|i| b.add(i)))
                    }
                }
                tiles.store(&mut c);
                finish(r0, c0, &c);
            }
        }
    }
}

/// `dst[r, c] = start + Σ_t a[r, t] · b[t, c]` over `rows` and `cols` of the result (as
/// [`product`]), `a` rows of `k` bf16 (a multiple of [`K_STEP`]), `b`
/// [`super::bf16::Bf16Weight`]'s panels of `n` columns over the same `k`.
///
/// # Safety
/// `dst` is valid for writes of every element of `rows` x `cols` (row stride `dst_rs`), and no
/// one else reads or writes those elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn bf16_product<T: Tiles + ?Sized>(
    tiles: &mut T,
    dst: *mut f32,
    dst_rs: usize,
    (a, k): (&[u16], usize),
    (b, n): (&[u16], usize),
    rows: Range<usize>,
    cols: Range<usize>,
    start: Start,
) {
    assert!(k.is_multiple_of(K_STEP));
    let ops = Operands {
        a: bytes(a),
        a_stride: 2 * k,
        b: bytes(b),
        groups: k / 2,
        n,
    };
    let end = (rows.end, cols.end);
    product(tiles, Dot::Bf16, ops, rows, cols, |r0, c0, c| {
        let (vr, vc) = ((end.0 - r0).min(BLOCK), (end.1 - c0).min(BLOCK));
        for (r, c) in c.0[..vr].iter().enumerate() {
            // SAFETY: the caller lends these elements of `dst`.
            let d = unsafe { std::slice::from_raw_parts_mut(dst.add((r0 + r) * dst_rs + c0), vc) };
            let c = c[..vc].iter().map(|&w| f32::from_bits(w));
            match start {
                Start::Zero => d.iter_mut().zip(c).for_each(|(d, c)| *d = c),
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
    });
}

/// `u16`s as their bytes.
fn bytes(v: &[u16]) -> &[u8] {
    // SAFETY: any `u16` is two initialised bytes; `u8` needs no alignment.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), 2 * v.len()) }
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
struct Shared<T>(*mut T);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer (a method, so that a closure captures the `Shared`, not its field).
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: the tasks that share it write disjoint elements.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

/// `f(tiles, out, rows, cols)` on each of [`shares`]' shares of an `m` x `n` result, over
/// rayon's threads, on the CPU's tiles. Only where [`available`].
fn on_shares<E>(
    out: &mut [E],
    (m, n): (usize, usize),
    f: impl Fn(&mut dyn Tiles, *mut E, Range<usize>, Range<usize>) + Sync,
) {
    assert!(available() || int8_available(), "the CPU has no AMX");
    let out = Shared(out.as_mut_ptr());
    shares(m, n, rayon::current_num_threads())
        .into_par_iter()
        .for_each(|(rows, cols)| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the tiles (asserted above).
            f(&mut unsafe { Native::new() }, out.get(), rows, cols);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (&f, out, rows, cols);
        });
}

/// [`bf16_product`] of all of `dst` (`m` rows, `dst_rs` apart) over rayon's threads, on the
/// CPU's tiles. Only where [`available`].
pub fn bf16_product_par(
    dst: &mut [f32],
    (m, dst_rs): (usize, usize),
    (a, k): (&[u16], usize),
    (b, n): (&[u16], usize),
    start: Start,
) {
    assert!(m == 0 || (m - 1) * dst_rs + n <= dst.len());
    on_shares(dst, (m, n), |tiles, out, rows, cols| {
        // SAFETY: the shares are disjoint and within `dst`.
        unsafe { bf16_product(tiles, out, dst_rs, (a, k), (b, n), rows, cols, start) }
    });
}

/// `acc` (`[m, n]`) = `a` · `b` in i32: `a` u8 rows `k` apart (a multiple of 64), padded to
/// whole blocks of rows; `b` int8 quads in panels of 48 columns (as `int8::vnni`'s, its quads
/// padded to a multiple of 16). Over rayon's threads, on the CPU's tiles; only where
/// [`available`].
pub fn int8_product_par(acc: &mut [i32], (a, k): (&[u8], usize), (b, n): (&[i8], usize)) {
    let m = acc.len() / n;
    // SAFETY: any `i8` is a byte.
    let b = unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), b.len()) };
    let ops = Operands {
        a,
        a_stride: k,
        b,
        groups: k / 4,
        n,
    };
    on_shares(acc, (m, n), |tiles, out, rows, cols| {
        let end = (rows.end, cols.end);
        product(tiles, Dot::Int8, ops, rows, cols, |r0, c0, c| {
            let (vr, vc) = ((end.0 - r0).min(BLOCK), (end.1 - c0).min(BLOCK));
            for (r, c) in c.0[..vr].iter().enumerate() {
                // SAFETY: the shares are disjoint and within `acc`.
                let d = unsafe { std::slice::from_raw_parts_mut(out.add((r0 + r) * n + c0), vc) };
                d.iter_mut().zip(c).for_each(|(d, &c)| *d = c as i32);
            }
        })
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

    unsafe fn step(&mut self, dot: Dot, a: [*const u8; 2], a_stride: usize, b: [*const u8; 2]) {
        /// The loads and the four products of `$dot`.
        macro_rules! step {
            ($dot:literal) => {
                std::arch::asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    concat!($dot, " tmm0, tmm4, tmm6"),
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    concat!($dot, " tmm1, tmm4, tmm7"),
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    concat!($dot, " tmm2, tmm5, tmm6"),
                    concat!($dot, " tmm3, tmm5, tmm7"),
                    a0 = in(reg) a[0],
                    a1 = in(reg) a[1],
                    b0 = in(reg) b[0],
                    b1 = in(reg) b[1],
                    sa = in(reg) a_stride,
                    sb = in(reg) B_STRIDE,
                    options(nostack, readonly)
                )
            };
        }
        // SAFETY: the caller's promise: every row loaded is readable.
        unsafe {
            match dot {
                Dot::Bf16 => step!("tdpbf16ps"),
                Dot::Int8 => step!("tdpbusd"),
            }
        }
    }

    fn store(&mut self, c: &mut Block) {
        let base = c.0.as_mut_ptr().cast::<u32>();
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
/// `TDPBF16PS`, `TDPBUSD`). `tdpbf16ps`: in each row, the even and the odd products of the 16 pairs are summed apart,
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

impl Model {
    /// `tdpbusd tmm<c>, tmm<a>, tmm<b>`: each row's four u8 by the column's four i8, summed
    /// into the i32 accumulator (wrapping, as the instruction does).
    fn dpbusd(&mut self, c: usize, a: usize, b: usize) {
        for m in 0..TILE_ROWS {
            for n in 0..16 {
                let mut acc = self.tiles[c][m][n] as i32;
                for k in 0..16 {
                    let (x, y) = (
                        self.tiles[a][m][k].to_le_bytes(),
                        self.tiles[b][k][n].to_le_bytes(),
                    );
                    for i in 0..4 {
                        acc = acc.wrapping_add(x[i] as i32 * y[i] as i8 as i32);
                    }
                }
                self.tiles[c][m][n] = acc as u32;
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

    unsafe fn step(&mut self, dot: Dot, a: [*const u8; 2], a_stride: usize, b: [*const u8; 2]) {
        // SAFETY: the caller's promise.
        unsafe {
            self.load(4, a[0], a_stride);
            self.load(5, a[1], a_stride);
            self.load(6, b[0], B_STRIDE);
            self.load(7, b[1], B_STRIDE);
        }
        for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            match dot {
                Dot::Bf16 => self.dpbf16(2 * i + j, 4 + i, 6 + j),
                Dot::Int8 => self.dpbusd(2 * i + j, 4 + i, 6 + j),
            }
        }
    }

    fn store(&mut self, c: &mut Block) {
        for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            for (r, row) in self.tiles[2 * i + j].iter().enumerate() {
                let out = &mut c.0[TILE_ROWS * i + r][TILE_ROWS * j..][..16];
                out.copy_from_slice(row);
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
            // The model alone is tested (above); `bf16`'s tests run the AVX-512 kernel instead.
            eprintln!("no AMX on this CPU: the native tiles are not tested here");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for (m, k, n, scale) in [(33, 64, 49, 1.0), (64, 384, 96, 3e-38), (40, 96, 33, 1e18)] {
            let x: Vec<f32> = randn(m * k, 1.0, 5).iter().map(|v| v * scale).collect();
            let w = randn(n * k, 1.0, 6);
            let weight = Bf16Weight::new(&w, k, WeightLayout::OutIn);
            let (panels, kp) = weight.panels();
            let a = rows(&x, m, k, kp);
            let (init, bias) = (randn(m * n, 1.0, 7), randn(n, 1.0, 8));
            let args = ((&a[..], kp), (panels, n));
            for start in [Start::Zero, Start::Add, Start::Bias(&bias)] {
                let run = |tiles: &mut dyn Tiles| {
                    let mut dst = init.clone();
                    // SAFETY: the tiles are usable; the whole result lies within `dst`.
                    unsafe {
                        let out = dst.as_mut_ptr();
                        bf16_product(tiles, out, n, args.0, args.1, 0..m, 0..n, start)
                    };
                    dst
                };
                // SAFETY: the CPU has the tiles.
                let native = run(&mut unsafe { Native::new() });
                let model = run(&mut Model::default());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&native),
                    bits(&model),
                    "{m}x{k}x{n} at {scale} {start:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod int8_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `w` (int8 `[k, n]`) in the panels `int8::vnni` lays out, quads padded to whole tiles.
    fn panels(w: &[i8], k: usize, n: usize) -> (Vec<u8>, usize) {
        let kp = k.next_multiple_of(64);
        let quads = kp / 4;
        let mut data = vec![0u8; n.div_ceil(48) * quads * B_STRIDE];
        for t in 0..k {
            for j in 0..n {
                data[((j / 48) * quads + t / 4) * B_STRIDE + (j % 48) * 4 + t % 4] =
                    w[t * n + j] as u8;
            }
        }
        (data, kp)
    }

    /// The int8 product of `a` (u8 `[m, k]`) and `w` on `tiles`, as i32.
    fn run(
        tiles: &mut dyn Tiles,
        a: &[u8],
        w: &[i8],
        (m, k, n): (usize, usize, usize),
    ) -> Vec<i32> {
        let (b, kp) = panels(w, k, n);
        let mut rows = vec![0u8; m.next_multiple_of(BLOCK) * kp];
        for r in 0..m {
            rows[r * kp..r * kp + k].copy_from_slice(&a[r * k..(r + 1) * k]);
        }
        let ops = Operands {
            a: &rows,
            a_stride: kp,
            b: &b,
            groups: kp / 4,
            n,
        };
        let mut out = vec![i32::MIN; m * n];
        product(tiles, Dot::Int8, ops, 0..m, 0..n, |r0, c0, c| {
            for r in r0..(r0 + BLOCK).min(m) {
                for j in c0..(c0 + BLOCK).min(n) {
                    out[r * n + j] = c.0[r - r0][j - c0] as i32;
                }
            }
        });
        out
    }

    /// The driver on the model equals the plain integer loop on every edge (`k` short of, at
    /// and past a step of 64; rows and columns off the blocks), extremes included; the CPU's
    /// `tdpbusd` equals the model bit for bit where it has AMX.
    #[test]
    fn the_int8_driver_is_exact_on_the_model_and_the_cpu() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (m, k, n) in [(1, 1, 1), (17, 33, 5), (33, 64, 49), (40, 130, 97)] {
            let a: Vec<u8> = (0..m * k).map(|_| rng.random()).collect();
            let w: Vec<i8> = (0..k * n).map(|_| rng.random()).collect();
            for (a, w) in [(a, w), (vec![255; m * k], vec![-128; k * n])] {
                let want: Vec<i32> = (0..m * n)
                    .map(|i| {
                        (0..k)
                            .map(|t| a[i / n * k + t] as i32 * w[t * n + i % n] as i32)
                            .sum()
                    })
                    .collect();
                let model = run(&mut Model::default(), &a, &w, (m, k, n));
                assert_eq!(model, want, "{m}x{k}x{n}");
                #[cfg(target_arch = "x86_64")]
                if !int8_available() {
                    eprintln!("no AMX int8 on this CPU: the native tiles are not tested here");
                } else {
                    // SAFETY: the CPU has the tiles.
                    let native = run(&mut unsafe { Native::new() }, &a, &w, (m, k, n));
                    assert_eq!(native, model, "{m}x{k}x{n} native");
                }
            }
        }
    }
}
