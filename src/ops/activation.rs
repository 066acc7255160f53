//! Element-wise activations, forward and backward: GELU (exact erf form, transformers' `gelu`),
//! GELU's tanh approximation (`gelu_new`), ReLU, tanh and SiLU.

use multiversion::multiversion;
use rayon::prelude::*;
use std::f32::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, LOG2_E};

const CHUNK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Gelu,
    GeluTanh,
    Relu,
    Tanh,
    /// `x · sigmoid(x)` (SiLU, Swish): the gate of LLaMA-style MLPs.
    Silu,
}

/// erf as a rational approximation on [-4, 4] (Eigen's `generic_fast_erf_float`, a few ulp
/// from the exact value): branch-free, so it vectorises, unlike libm's `erff`.
#[inline]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// `e^x` within 2 ulp of libm's `expf` on [-87, 88] (smaller inputs give e^-87, about 1.6e-38,
/// larger ones e^88): a degree-6 polynomial on
/// `[-ln 2 / 2, ln 2 / 2]` scaled by `2^k` through the exponent bits (Cephes' `expf`). Unlike
/// libm's, it has no branches or calls, so loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5 * 2^23 trick (no SSE4.1 `roundps` needed): the sum's low
    // mantissa bits then hold `k` as an integer, read without a float-to-int conversion (Rust's
    // saturating `as i32` does not vectorise).
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2_E + MAGIC;
    let k = shifted - MAGIC;
    let ki = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    // x - k ln 2, with ln 2 split in two so that k * the first part is exact.
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((ki + 127) << 23) as u32);
    e * scale
}

/// `y[i] = f(x[i])`, compiled for AVX-512 and AVX2 too.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn map(y: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f(v);
    }
}

/// `d[i] *= f(x[i], y[i])`, compiled for AVX-512 and AVX2 too.
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn scale_by(d: &mut [f32], x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((g, &a), &b) in d.iter_mut().zip(x).zip(y) {
        *g *= f(a, b);
    }
}

/// Which half of a gated unit's row goes through the activation.
#[derive(Debug, Clone, Copy)]
pub enum Half {
    First,
    Second,
}

impl Half {
    /// A `2m` row as (the activated half, the other).
    fn split(self, row: &[f32], m: usize) -> (&[f32], &[f32]) {
        let (a, b) = row.split_at(m);
        match self {
            Half::First => (a, b),
            Half::Second => (b, a),
        }
    }

    fn split_mut(self, row: &mut [f32], m: usize) -> (&mut [f32], &mut [f32]) {
        let (a, b) = row.split_at_mut(m);
        match self {
            Half::First => (a, b),
            Half::Second => (b, a),
        }
    }
}

/// `sqrt(2 / pi)` and the cubic coefficient of the tanh approximation.
const TANH_K: f32 = FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
const TANH_C: f32 = 0.044_715;

impl Act {
    #[inline]
    fn f(self, x: f32) -> f32 {
        match self {
            Act::Gelu => 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2)),
            Act::GeluTanh => 0.5 * x * (1.0 + tanh(TANH_K * (x + TANH_C * x * x * x))),
            Act::Relu => x.max(0.0),
            Act::Tanh => tanh(x),
            Act::Silu => x / (1.0 + exp(-x)),
        }
    }

    /// The derivative at input `x` with output `y`.
    #[inline]
    fn df(self, x: f32, y: f32) -> f32 {
        match self {
            Act::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
                let pdf = exp(-0.5 * x * x) * (0.5 * TANH_K);
                cdf + x * pdf
            }
            Act::GeluTanh => {
                let t = tanh(TANH_K * (x + TANH_C * x * x * x));
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * TANH_K * (1.0 + 3.0 * TANH_C * x * x)
            }
            Act::Relu => (x > 0.0) as u8 as f32,
            Act::Tanh => 1.0 - y * y,
            Act::Silu => {
                let s = 1.0 / (1.0 + exp(-x));
                s * (1.0 + x * (1.0 - s))
            }
        }
    }

    /// `y = act(x)`.
    pub fn forward(self, y: &mut [f32], x: &[f32]) {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| self.serial_forward(yc, xc));
    }

    /// `d *= act'(x)`, in place: `d` holds dL/dy on entry and dL/dx on return.
    pub fn backward(self, d: &mut [f32], x: &[f32], y: &[f32]) {
        d.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(y.par_chunks(CHUNK))
            .for_each(|((dc, xc), yc)| self.serial_backward(dc, xc, yc));
    }

    /// `y = act(x)` on the calling thread.
    pub(crate) fn serial_forward(self, y: &mut [f32], x: &[f32]) {
        match self {
            Act::Gelu => map(y, x, |v| Act::Gelu.f(v)),
            Act::GeluTanh => map(y, x, |v| Act::GeluTanh.f(v)),
            Act::Relu => map(y, x, |v| Act::Relu.f(v)),
            Act::Tanh => map(y, x, |v| Act::Tanh.f(v)),
            Act::Silu => map(y, x, |v| Act::Silu.f(v)),
        }
    }

    fn serial_backward(self, d: &mut [f32], x: &[f32], y: &[f32]) {
        match self {
            Act::Gelu => scale_by(d, x, y, |a, b| Act::Gelu.df(a, b)),
            Act::GeluTanh => scale_by(d, x, y, |a, b| Act::GeluTanh.df(a, b)),
            Act::Relu => scale_by(d, x, y, |a, b| Act::Relu.df(a, b)),
            Act::Tanh => scale_by(d, x, y, |a, b| Act::Tanh.df(a, b)),
            Act::Silu => scale_by(d, x, y, |a, b| Act::Silu.df(a, b)),
        }
    }

    /// A gated linear unit: each row of `u` (`[rows, 2m]`) holds two halves; `g = act(one
    /// half)` (the `act` half) and `a = g · the other half`, both `[rows, m]` (`g` kept for the
    /// backward). ModernBERT activates the first half, GTE the second.
    pub fn glu_forward(self, a: &mut [f32], g: &mut [f32], u: &[f32], m: usize, act: Half) {
        let rows = (CHUNK / m).max(1);
        a.par_chunks_mut(rows * m)
            .zip(g.par_chunks_mut(rows * m))
            .zip(u.par_chunks(rows * 2 * m))
            .for_each(|((ab, gb), ub)| {
                let it = ab.chunks_mut(m).zip(gb.chunks_mut(m)).zip(ub.chunks(2 * m));
                for ((ar, gr), ur) in it {
                    let (input, gate) = act.split(ur, m);
                    self.serial_forward(gr, input);
                    ar.iter_mut()
                        .zip(gr.iter().zip(gate))
                        .for_each(|(o, (x, y))| *o = x * y);
                }
            });
    }

    /// dL/du (`[rows, 2m]`) into `du` from dL/da, the forward's input `u` and `g`.
    pub fn glu_backward(
        self,
        du: &mut [f32],
        da: &[f32],
        u: &[f32],
        g: &[f32],
        m: usize,
        act: Half,
    ) {
        let rows = (CHUNK / m).max(1);
        du.par_chunks_mut(rows * 2 * m)
            .zip(da.par_chunks(rows * m))
            .zip(u.par_chunks(rows * 2 * m).zip(g.par_chunks(rows * m)))
            .for_each(|((db, dab), (ub, gb))| {
                let it = db.chunks_mut(2 * m).zip(dab.chunks(m));
                for ((dr, dar), (ur, gr)) in it.zip(ub.chunks(2 * m).zip(gb.chunks(m))) {
                    let (d_input, d_gate) = act.split_mut(dr, m);
                    let (input, gate) = act.split(ur, m);
                    for i in 0..m {
                        d_gate[i] = dar[i] * gr[i];
                        d_input[i] = dar[i] * gate[i];
                    }
                    self.serial_backward(d_input, input, gr);
                }
            });
    }
}

/// tanh from [`exp`]: `1 - 2 / (e^{2x} + 1)`, exact to a few ulp, saturating at ±1.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn fast_erf_is_within_a_few_ulp_of_libm() {
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let exact = candle_core::cpu::erf::erf_f32(x);
            assert!(
                (erf(x) - exact).abs() < 5e-7,
                "erf({x}): {} vs {exact}",
                erf(x)
            );
        }
    }

    #[test]
    fn fast_exp_and_tanh_are_within_a_few_ulp_of_libm() {
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}): {got} vs {want}"
            );
            let (got, want) = (tanh(x), x.tanh());
            assert!((got - want).abs() <= 2e-7, "tanh({x}): {got} vs {want}");
        }
        assert!(exp(-1000.0) < 1.7e-38);
    }

    #[test]
    fn every_activation_matches_candle_values_and_gradients() {
        let n = 7 * 333;
        let x = randn(n, 3.0, 1);
        let probe = randn(n, 1.0, 2);
        for act in [Act::Gelu, Act::GeluTanh, Act::Relu, Act::Tanh, Act::Silu] {
            let xv = var(&x, &[7, 333]);
            let composed = match act {
                Act::Gelu => xv.gelu_erf(),
                Act::GeluTanh => xv.gelu(),
                Act::Relu => xv.relu(),
                Act::Tanh => xv.tanh(),
                Act::Silu => xv.silu(),
            };
            let (want, grads) = reference(composed, &probe, &[&xv]);
            let mut y = vec![0f32; n];
            act.forward(&mut y, &x);
            assert!(max_diff(&y, &want) < 1e-5, "{act:?} forward");
            let mut d = probe.clone();
            act.backward(&mut d, &x, &y);
            let diff = rel_diff(&d, &grads[0]);
            assert!(
                diff < 1e-4,
                "{act:?}: gradient differs by {diff} (relative)"
            );
        }
    }

    #[test]
    fn glu_matches_candle_values_and_gradients() {
        // Rows past one parallel block (CHUNK / m), and an odd width.
        let (rows, m) = (300, 37);
        let u = randn(rows * 2 * m, 2.0, 3);
        let probe = randn(rows * m, 1.0, 4);
        let uv = var(&u, &[rows, 2 * m]);
        for (half, at) in [(Half::First, 0), (Half::Second, m)] {
            let other = m - at;
            let composed = (|| {
                uv.narrow(1, at, m)?
                    .gelu_erf()?
                    .mul(&uv.narrow(1, other, m)?)
            })();
            let (want, grads) = reference(composed, &probe, &[&uv]);
            let (mut a, mut g) = (vec![0f32; rows * m], vec![0f32; rows * m]);
            Act::Gelu.glu_forward(&mut a, &mut g, &u, m, half);
            assert!(max_diff(&a, &want) < 1e-5, "{half:?}");
            let mut du = vec![f32::NAN; rows * 2 * m];
            Act::Gelu.glu_backward(&mut du, &probe, &u, &g, m, half);
            assert!(rel_diff(&du, &grads[0]) < 1e-4, "{half:?}");
        }
    }
}
