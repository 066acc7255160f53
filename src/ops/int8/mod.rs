//! Dynamic int8 quantization of linear layers, for scoring: ONNX Runtime's `quantize_dynamic`
//! with finer scales. Weights are quantized once, symmetric int8 per output channel; each call
//! quantizes its input per row (per token) to u8 with a zero point, so one outlier token does
//! not cost the others their precision. The product accumulates in i32 and is turned back into
//! f32 (`acc · row scale · channel scale + bias`); everything else stays f32.
//!
//! The products run, on CPUs with AVX-512 VNNI, on this module's own kernel (`vnni`: no
//! packing of the inputs, the dequantization in its epilogue); elsewhere on `rten-gemm`'s u8 x
//! i8 kernels, the best for the CPU chosen at run time: AVX-512BW or AVX2 (`vpmaddubsw` +
//! `vpmaddwd`), or a generic one. Where the kernel sums two u8 x i8 products in 16 bits
//! (`vpmaddubsw`), weights keep 7 bits so that the sum cannot saturate (`2 · 255 · 63 <
//! 2^15`), as ONNX Runtime's `reduce_range` does. The tests hold the kernel the CPU picks to the
//! exact integer result of a plain loop (the pick is made at run time, so each kernel is
//! tested on a CPU that picks it).

use multiversion::multiversion;
use rayon::prelude::*;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix};
use rten_tensor::NdTensorView;
use std::cell::RefCell;

use super::linear::WeightLayout;
use super::{Act, ROW_BLOCK};

#[cfg(target_arch = "x86_64")]
mod vnni;

/// The kernel the products run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AMX's tiles (`tdpbusd`, see [`super::amx`]).
    Amx,
    /// `vnni`'s AVX-512 kernel.
    Vnni,
    /// rten-gemm's, the best for the CPU.
    Rten,
}

/// The best kernel this CPU runs.
fn best_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if super::amx::int8_available() {
        return Kernel::Amx;
    } else if vnni::available() {
        return Kernel::Vnni;
    }
    Kernel::Rten
}

thread_local! {
    /// rten's executor is not `Sync`; every thread's picks the same kernel, so weights packed
    /// on one thread run on any.
    static EXECUTOR: GemmExecutor<u8, i8, i32> = GemmExecutor::default();
}

fn with_executor<R>(f: impl FnOnce(&GemmExecutor<u8, i8, i32>) -> R) -> R {
    EXECUTOR.with(f)
}

/// The int8 kernel this CPU runs, for `/info` and `bench`: crossenc's own, or rten's name, the
/// instruction that does its multiply-adds, and the weights' bits.
pub fn kernel() -> String {
    match best_kernel() {
        Kernel::Amx => return "crossenc amx (tdpbusd, 8-bit weights)".into(),
        Kernel::Vnni => return "crossenc avx512-vnni (vpdpbusd, 8-bit weights)".into(),
        Kernel::Rten => {}
    }
    with_executor(|e| {
        let name = e.kernel_name();
        let instruction = if !e.may_saturate() {
            "vpdpbusd"
        } else if name.contains("x86") {
            "vpmaddubsw"
        } else {
            "generic"
        };
        format!("{name} ({instruction}, {}-bit weights)", weight_bits())
    })
}

/// Bits of the quantized weights: 8, or 7 where the kernel sums two u8 x i8 products in 16
/// bits, which `2 · 255 · 127` would overflow. Measured by forcing 7 bits on a VNNI machine:
/// STS-B test Spearman still within 0.003 of f32, the golden models' error up to 0.30.
pub fn weight_bits() -> u32 {
    if best_kernel() == Kernel::Rten && with_executor(|e| e.may_saturate()) {
        7
    } else {
        8
    }
}

/// The largest weight magnitude: `2^(bits - 1) - 1`.
fn weight_limit() -> f32 {
    ((1 << (weight_bits() - 1)) - 1) as f32
}

/// A linear layer's weight as int8 `[in, out]`, packed for the kernel, with one scale per
/// output channel and its column sums (for the inputs' zero points).
#[derive(Clone)]
pub struct QuantizedWeight {
    packed: Packed,
    scales: Vec<f32>,
    col_sums: Vec<i32>,
    in_dim: usize,
    out_dim: usize,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "QuantizedWeight([{}, {}])", self.in_dim, self.out_dim)
    }
}

/// The weight laid out for the kernel this CPU runs.
#[derive(Clone)]
enum Packed {
    /// `vnni`'s panels, their quads padded to whole tiles.
    #[cfg(target_arch = "x86_64")]
    Amx(vnni::Panels),
    #[cfg(target_arch = "x86_64")]
    Vnni(vnni::Panels),
    Rten(PackedBMatrix<i8>),
}

impl QuantizedWeight {
    /// Quantizes `w` (`[out, in]` or `[in, out]` as `layout` says).
    pub fn new(w: &[f32], in_dim: usize, layout: WeightLayout) -> Self {
        let (q, scales) = quantize_weight(w, in_dim, layout);
        Self::from_int8(&q, scales, in_dim)
    }

    /// A weight already quantized: `q` int8 `[in, out]`, one scale per output channel.
    fn from_int8(q: &[i8], scales: Vec<f32>, in_dim: usize) -> Self {
        Self::for_kernel(q, scales, in_dim, best_kernel())
    }

    /// As [`QuantizedWeight::from_int8`], laid out for `kernel` (one the CPU runs).
    fn for_kernel(q: &[i8], scales: Vec<f32>, in_dim: usize, kernel: Kernel) -> Self {
        let out_dim = q.len() / in_dim;
        let mut col_sums = vec![0i32; out_dim];
        for row in q.chunks_exact(out_dim) {
            col_sums
                .iter_mut()
                .zip(row)
                .for_each(|(c, &v)| *c += v as i32);
        }
        #[cfg(target_arch = "x86_64")]
        let packed = match kernel {
            Kernel::Amx => Packed::Amx(vnni::Panels::padded(q, in_dim, AMX_K)),
            Kernel::Vnni => Packed::Vnni(vnni::Panels::padded(q, in_dim, 4)),
            Kernel::Rten => Packed::Rten(prepack(q, in_dim)),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let packed = {
            debug_assert!(kernel == Kernel::Rten, "crossenc's kernels are for x86_64");
            Packed::Rten(prepack(q, in_dim))
        };
        QuantizedWeight {
            packed,
            scales,
            col_sums,
            in_dim,
            out_dim,
        }
    }

    /// `y` (`[rows, out]`) = `x` (`[rows, in]`) · `w`ᵀ (+ `bias`), the product in int8; `next`
    /// as in [`QuantizedWeight::forward_quantized`].
    pub fn forward(
        &self,
        y: &mut [f32],
        x: &[f32],
        bias: Option<&[f32]>,
        next: Option<(Act, &mut QuantizedRows)>,
    ) {
        INPUT.with_borrow_mut(|input| {
            input.quantize(x, self.in_dim);
            self.forward_quantized(y, input, bias, next)
        });
    }

    /// `y` = `x` · `w`ᵀ (+ `bias`) from rows quantized ahead; with `next`, also `act(y)`
    /// quantized into `next.1` in the same pass over each block of rows, as the next product's
    /// input: the activation is never written out in f32, nor read back to be quantized.
    pub fn forward_quantized(
        &self,
        y: &mut [f32],
        x: &QuantizedRows,
        bias: Option<&[f32]>,
        mut next: Option<(Act, &mut QuantizedRows)>,
    ) {
        let (rows, n) = (x.scale.len(), self.out_dim);
        if let Some((_, q)) = &mut next {
            q.resize(rows, n);
        }
        if rows == 0 {
            return;
        }
        let (y, k) = (&mut y[..rows * n], self.in_dim);
        match &self.packed {
            Packed::Rten(b) => product(as_i32(y), &x.values, b),
            #[cfg(target_arch = "x86_64")]
            Packed::Amx(w) => amx_product(as_i32(y), &x.values, k, w),
            #[cfg(target_arch = "x86_64")]
            Packed::Vnni(_) => {}
        }
        let blocks = y
            .par_chunks_mut(n * ROW_BLOCK)
            .zip(x.values.par_chunks(k * ROW_BLOCK))
            .zip(x.scale.par_chunks(ROW_BLOCK))
            .zip(x.zero.par_chunks(ROW_BLOCK));
        // A block of rows: the product (or the dequantization of rten's), then the activation
        // and its quantization while the block is in cache.
        let block = |yb: &mut [f32], ab: &[u8], sb: &[f32], zb: &[u8]| match &self.packed {
            #[cfg(target_arch = "x86_64")]
            Packed::Vnni(w) => {
                let dq = vnni::Dequantize {
                    scale: sb,
                    zero: zb,
                    col_scale: &self.scales,
                    col_sums: &self.col_sums,
                    bias,
                };
                vnni::forward(yb, ab, w, &dq)
            }
            // The accumulators are in `yb` already.
            _ => dequantize_rows(yb, sb, zb, &self.scales, &self.col_sums, bias, n),
        };
        match next {
            None => blocks.for_each(|(((yb, ab), sb), zb)| block(yb, ab, sb, zb)),
            Some((act, q)) => {
                blocks.zip(q.blocks_mut(n)).for_each_init(
                    Vec::new,
                    |a, ((((yb, ab), sb), zb), ((qv, qs), qz))| {
                        block(yb, ab, sb, zb);
                        a.resize(yb.len(), 0.0);
                        act.serial_forward(a, yb);
                        quantize_rows(qv, qs, qz, a, n);
                    },
                );
            }
        }
    }
}

/// `w` (`[out, in]` or `[in, out]` as `layout` says) as int8 `[in, out]` and one scale per
/// output channel: each channel's largest magnitude maps to the kernel's limit.
fn quantize_weight(w: &[f32], in_dim: usize, layout: WeightLayout) -> (Vec<i8>, Vec<f32>) {
    let out_dim = w.len() / in_dim;
    let at = |k: usize, j: usize| match layout {
        WeightLayout::OutIn => w[j * in_dim + k],
        WeightLayout::InOut => w[k * out_dim + j],
    };
    let limit = weight_limit();
    let scales: Vec<f32> = (0..out_dim)
        .map(|j| {
            let largest = (0..in_dim).fold(0f32, |m, k| m.max(at(k, j).abs()));
            if largest > 0.0 {
                largest / limit
            } else {
                1.0
            }
        })
        .collect();
    let mut q = vec![0i8; in_dim * out_dim];
    for k in 0..in_dim {
        for j in 0..out_dim {
            q[k * out_dim + j] = (at(k, j) / scales[j]).round().clamp(-limit, limit) as i8;
        }
    }
    (q, scales)
}

/// `q` (int8 `[k, n]`) packed for rten's kernel.
fn prepack(q: &[i8], k: usize) -> PackedBMatrix<i8> {
    with_executor(|e| e.prepack_b(NdTensorView::from_data([k, q.len() / k], q)))
}

/// The i32 accumulators are written into the f32 output buffer and converted in place.
fn as_i32(y: &mut [f32]) -> &mut [i32] {
    // SAFETY: i32 and f32 have the same size and alignment, and every bit pattern is valid
    // for both; the exclusive borrow of `y` carries over to the result.
    unsafe { std::slice::from_raw_parts_mut(y.as_mut_ptr().cast::<i32>(), y.len()) }
}

/// `acc[i, j] = Σ_k a[i, k] · b[k, j]`: `a` u8 `[rows, k]`, `b` packed int8. The inputs'
/// zero points are applied afterwards, as `- zero[i] · Σ_k b[k, j]`: rten-gemm 0.27's own
/// per-row zero points are wrong past the kernel's first row panel (its A packing indexes them
/// by the row within the panel). Each thread takes a share of the rows and packs it once:
/// given all rows, rten splits the columns among the threads and every thread packs the whole
/// of `a` (measured on MiniLM's four shapes at 870 rows, best of 40: 4-19% faster this way).
fn product(acc: &mut [i32], a: &[u8], b: &PackedBMatrix<i8>) {
    let (k, n) = (b.rows(), b.cols());
    let rows = a.len() / k;
    let part = rows.div_ceil(rayon::current_num_threads()).max(1);
    acc[..rows * n]
        .par_chunks_mut(part * n)
        .zip(a.par_chunks(part * k))
        .for_each(|(acc, a)| {
            with_executor(|e| {
                let a = e.prepack_a(NdTensorView::from_data([a.len() / k, k], a));
                e.gemm(
                    acc,
                    GemmInputA::Packed(&a),
                    GemmInputB::Packed(b),
                    GemmOptions::default(),
                )
            })
            .expect("int8 product shapes are checked by the caller");
        });
}

/// `k` of the AMX kernel's rows and quads: whole tile rows of 64 bytes.
const AMX_K: usize = 64;

/// [`product`] on AMX's tiles: the rows copied with `k` padded to whole tile rows (zeros, which
/// add nothing) and their count to whole blocks.
#[cfg(target_arch = "x86_64")]
fn amx_product(acc: &mut [i32], a: &[u8], k: usize, w: &vnni::Panels) {
    let (kp, rows, n) = (k.next_multiple_of(AMX_K), a.len() / k, w.cols());
    AMX_ROWS.with_borrow_mut(|padded| {
        padded.clear();
        padded.resize(rows.next_multiple_of(super::amx::BLOCK) * kp, 0);
        padded
            .par_chunks_mut(kp * ROW_BLOCK)
            .zip(a.par_chunks(k * ROW_BLOCK))
            .for_each(|(p, a)| {
                p.chunks_exact_mut(kp)
                    .zip(a.chunks_exact(k))
                    .for_each(|(p, a)| p[..k].copy_from_slice(a))
            });
        super::amx::int8_product_par(&mut acc[..rows * n], (padded, kp), (w.data(), n));
    });
}

/// Rows quantized for a product: u8 values `[rows, k]`, and each row's scale and zero point.
#[derive(Default)]
pub struct QuantizedRows {
    values: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<u8>,
}

thread_local! {
    /// Reused from call to call, so scoring allocates nothing per layer.
    static INPUT: RefCell<QuantizedRows> = RefCell::default();
    /// The rows padded for AMX, reused likewise.
    static AMX_ROWS: RefCell<Vec<u8>> = RefCell::default();
}

impl QuantizedRows {
    /// Quantizes the rows of `x` (`[rows, k]`), each over its own range (0 included).
    fn quantize(&mut self, x: &[f32], k: usize) {
        self.resize(x.len() / k, k);
        self.blocks_mut(k)
            .zip(x.par_chunks(k * ROW_BLOCK))
            .for_each(|(((q, s), z), xb)| quantize_rows(q, s, z, xb, k));
    }

    fn resize(&mut self, rows: usize, k: usize) {
        self.values.resize(rows * k, 0);
        self.scale.resize(rows, 0.0);
        self.zero.resize(rows, 0);
    }

    /// Blocks of `ROW_BLOCK` rows: their values, scales and zero points.
    #[allow(clippy::type_complexity)]
    fn blocks_mut(
        &mut self,
        k: usize,
    ) -> impl IndexedParallelIterator<Item = ((&mut [u8], &mut [f32]), &mut [u8])> {
        self.values
            .par_chunks_mut(k * ROW_BLOCK)
            .zip(self.scale.par_chunks_mut(ROW_BLOCK))
            .zip(self.zero.par_chunks_mut(ROW_BLOCK))
    }
}

/// `x` clamped to [0, 255] and rounded to the nearest integer (ties to even): adding 1.5 · 2^23
/// leaves the integer in the low mantissa bits. Bit operations only, so loops over it vectorise
/// (a float-to-u8 cast does not).
#[inline(always)]
fn round_to_u8(x: f32) -> u8 {
    const MAGIC: f32 = 12_582_912.0;
    (x.clamp(0.0, 255.0) + MAGIC).to_bits() as u8
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn quantize_rows(q: &mut [u8], scale: &mut [f32], zero: &mut [u8], x: &[f32], k: usize) {
    for (((qr, s), z), xr) in q
        .chunks_mut(k)
        .zip(scale.iter_mut())
        .zip(zero.iter_mut())
        .zip(x.chunks(k))
    {
        let (lo, hi) = (super::min(xr).min(0.0), super::max(xr).max(0.0));
        let step = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let inv = 1.0 / step;
        let zp = round_to_u8(-lo * inv);
        for (o, &v) in qr.iter_mut().zip(xr) {
            *o = round_to_u8(v * inv + zp as f32);
        }
        *s = step;
        *z = zp;
    }
}

/// `y[i, j] = (acc[i, j] - zero[i] · col_sums[j]) · scale[i] · col_scale[j] (+ bias[j])`, `acc`
/// read from `y`'s bits (`n` columns); the integer part is exact.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn dequantize_rows(
    y: &mut [f32],
    scale: &[f32],
    zero: &[u8],
    col_scale: &[f32],
    col_sums: &[i32],
    bias: Option<&[f32]>,
    n: usize,
) {
    for ((yr, &s), &z) in y.chunks_mut(n).zip(scale).zip(zero) {
        let z = z as i32;
        for ((v, &c), &sum) in yr.iter_mut().zip(col_scale).zip(col_sums) {
            *v = ((v.to_bits() as i32) - z * sum) as f32 * (s * c);
        }
        if let Some(bias) = bias {
            yr.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{randn, rel_diff};
    use rand::{Rng, SeedableRng};

    /// The plain loop every kernel must equal exactly: `a` u8 `[m, k]` · `b` i8 `[k, n]`.
    fn reference(a: &[u8], b: &[i8], k: usize) -> Vec<i32> {
        let n = b.len() / k;
        let mut acc = vec![0i32; a.len() / k * n];
        for (i, row) in acc.chunks_exact_mut(n).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..k)
                    .map(|t| a[i * k + t] as i32 * b[t * n + j] as i32)
                    .sum();
            }
        }
        acc
    }

    /// The product on crossenc's kernel (`own`) or rten's, through the layer with unit scales
    /// and zero points: each output is its accumulator as f32, which holds every integer of
    /// magnitude up to 2^24 exactly.
    fn kernel_product(a: &[u8], b: &[i8], k: usize, own: Kernel) -> Vec<i32> {
        let (rows, n) = (a.len() / k, b.len() / k);
        let weight = QuantizedWeight::for_kernel(b, vec![1.0; n], k, own);
        let x = QuantizedRows {
            values: a.to_vec(),
            scale: vec![1.0; rows],
            zero: vec![0; rows],
        };
        let mut y = vec![f32::NAN; rows * n];
        weight.forward_quantized(&mut y, &x, None, None);
        y.iter().map(|&v| v as i32).collect()
    }

    /// The kernels this CPU can run: rten's (the one it picks for the CPU), crossenc's where
    /// the CPU has VNNI, and AMX's where it has AMX.
    fn kernels() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Rten];
        #[cfg(target_arch = "x86_64")]
        {
            if vnni::available() {
                kernels.push(Kernel::Vnni);
            }
            if crate::ops::amx::int8_available() {
                kernels.push(Kernel::Amx);
            }
        }
        kernels
    }

    #[test]
    fn each_kernel_equals_the_plain_loop_exactly() {
        let limit = weight_limit() as i8;
        let lowest = if with_executor(|e| e.may_saturate()) {
            -limit
        } else {
            i8::MIN
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Odd shapes, rows not a multiple of any tile, and MiniLM's (more than one block of
        // rows, and the extremes' sums within f32's exact integers).
        for (m, k, n) in [
            (1, 1, 1),
            (17, 33, 5),
            (3, 384, 1152),
            (33, 512, 384),
            (9, 7, 70),
            (20, 6, 49),
        ] {
            let a: Vec<u8> = (0..m * k).map(|_| rng.random()).collect();
            let b: Vec<i8> = (0..k * n)
                .map(|_| rng.random_range(lowest..=limit))
                .collect();
            let want = reference(&a, &b, k);
            assert!(want.iter().all(|v| v.unsigned_abs() <= 1 << 24));
            for own in kernels() {
                assert_eq!(kernel_product(&a, &b, k, own), want, "{m}x{k}x{n} {own:?}");
            }
            // Extremes: every product at its largest magnitude, of either sign.
            for (av, bv) in [(255, limit), (255, lowest), (0, limit), (1, lowest)] {
                let (a, b) = (vec![av; m * k], vec![bv; k * n]);
                let want = reference(&a, &b, k);
                assert!(want.iter().all(|v| v.unsigned_abs() <= 1 << 24));
                for own in kernels() {
                    let got = kernel_product(&a, &b, k, own);
                    assert_eq!(got, want, "{m}x{k}x{n} {av} {bv} {own:?}");
                }
            }
        }
    }

    /// The whole layer against its definition on the same quantized values: only the final
    /// float multiply-add may round differently.
    #[test]
    fn the_layer_applies_zero_points_and_scales() {
        let (rows, i, o) = (37, 96, 40);
        let x = randn(rows * i, 1.0, 5);
        let w = randn(o * i, 0.1, 6);
        let b = randn(o, 0.1, 7);
        let mut y = vec![f32::NAN; rows * o];
        QuantizedWeight::new(&w, i, WeightLayout::OutIn).forward(&mut y, &x, Some(&b), None);
        let (q, scales) = quantize_weight(&w, i, WeightLayout::OutIn);
        let mut input = QuantizedRows::default();
        input.quantize(&x, i);
        for r in 0..rows {
            for j in 0..o {
                let z = input.zero[r] as i32;
                let acc: i32 = (0..i)
                    .map(|t| (input.values[r * i + t] as i32 - z) * q[t * o + j] as i32)
                    .sum();
                let want = acc as f32 * (input.scale[r] * scales[j]) + b[j];
                let got = y[r * o + j];
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{r} {j}");
            }
        }
    }

    #[test]
    fn quantized_linear_is_close_to_f32() {
        let (rows, i, o) = (37, 96, 40);
        let x = randn(rows * i, 1.0, 1);
        let w = randn(o * i, 0.1, 2);
        let b = randn(o, 0.1, 3);
        let mut want = vec![0f32; rows * o];
        crate::ops::linear::forward(
            &mut want,
            &x,
            &w,
            Some(&b),
            i,
            WeightLayout::OutIn,
            crate::ops::linear::Products::F32(None),
        );
        let wt: Vec<f32> = (0..i * o).map(|k| w[(k % o) * i + k / o]).collect();
        for (weight, layout) in [(&w, WeightLayout::OutIn), (&wt, WeightLayout::InOut)] {
            let mut y = vec![f32::NAN; rows * o];
            QuantizedWeight::new(weight, i, layout).forward(&mut y, &x, Some(&b), None);
            let err = rel_diff(&y, &want);
            assert!(err < 0.02, "{layout:?}: {err}");
            assert!(err > 0.0, "int8 cannot be exact on random weights");
        }
    }

    #[test]
    fn the_fused_activation_equals_the_separate_passes_exactly() {
        // Two layers, 70 rows (more than one block of rows, the last one short), on each
        // kernel; the two kernels also give the same bits.
        let (rows, i, m, o) = (70, 24, 40, 8);
        let x = randn(rows * i, 1.0, 8);
        let (w1, b1) = (randn(m * i, 0.3, 9), randn(m, 0.1, 10));
        let (w2, b2) = (randn(o * m, 0.3, 11), randn(o, 0.1, 12));
        let layer = |w: &[f32], k: usize, own: Kernel| {
            let (q, scales) = quantize_weight(w, k, WeightLayout::OutIn);
            QuantizedWeight::for_kernel(&q, scales, k, own)
        };
        let mut outputs = Vec::new();
        for own in kernels() {
            let (first, second) = (layer(&w1, i, own), layer(&w2, m, own));
            let (mut u, mut a, mut want) = (
                vec![0f32; rows * m],
                vec![0f32; rows * m],
                vec![0f32; rows * o],
            );
            first.forward(&mut u, &x, Some(&b1), None);
            Act::Gelu.forward(&mut a, &u);
            second.forward(&mut want, &a, Some(&b2), None);
            let (mut fused_u, mut got, mut q) = (
                vec![0f32; rows * m],
                vec![0f32; rows * o],
                QuantizedRows::default(),
            );
            first.forward(&mut fused_u, &x, Some(&b1), Some((Act::Gelu, &mut q)));
            second.forward_quantized(&mut got, &q, Some(&b2), None);
            assert_eq!(fused_u, u, "{own:?}");
            assert_eq!(got, want, "{own:?}");
            outputs.push(got);
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn input_rows_round_trip_within_half_a_step() {
        let k = 50;
        let mut x = randn(3 * k, 2.0, 4);
        x[..k].iter_mut().for_each(|v| *v = v.abs() + 1.0); // all positive: zero point 0
        x[k..2 * k].fill(0.0); // a zero row
        let mut input = QuantizedRows::default();
        input.quantize(&x, k);
        for r in 0..3 {
            let (s, z) = (input.scale[r], input.zero[r] as f32);
            for t in 0..k {
                let back = (input.values[r * k + t] as f32 - z) * s;
                assert!((back - x[r * k + t]).abs() <= s * 0.5 + 1e-6, "row {r}");
            }
        }
        assert_eq!(input.zero[0], 0);
        assert!(input.values[k..2 * k].iter().all(|&v| v == input.zero[1]));
    }
}
