//! Element-wise activations, forward and backward: GELU (exact erf form, transformers' `gelu`),
//! GELU's tanh approximation (`gelu_new`), ReLU and tanh.

use rayon::prelude::*;
use std::f32::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

const CHUNK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Gelu,
    GeluTanh,
    Relu,
    Tanh,
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

/// `sqrt(2 / pi)` and the cubic coefficient of the tanh approximation.
const TANH_K: f32 = FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
const TANH_C: f32 = 0.044_715;

impl Act {
    #[inline]
    fn f(self, x: f32) -> f32 {
        match self {
            Act::Gelu => 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2)),
            Act::GeluTanh => 0.5 * x * (1.0 + (TANH_K * (x + TANH_C * x * x * x)).tanh()),
            Act::Relu => x.max(0.0),
            Act::Tanh => x.tanh(),
        }
    }

    /// The derivative at input `x` with output `y`.
    #[inline]
    fn df(self, x: f32, y: f32) -> f32 {
        match self {
            Act::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * (0.5 * TANH_K);
                cdf + x * pdf
            }
            Act::GeluTanh => {
                let t = (TANH_K * (x + TANH_C * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * TANH_K * (1.0 + 3.0 * TANH_C * x * x)
            }
            Act::Relu => (x > 0.0) as u8 as f32,
            Act::Tanh => 1.0 - y * y,
        }
    }

    /// `y = act(x)`.
    pub fn forward(self, y: &mut [f32], x: &[f32]) {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| {
                yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = self.f(v));
            });
    }

    /// `d *= act'(x)`, in place: `d` holds dL/dy on entry and dL/dx on return.
    pub fn backward(self, d: &mut [f32], x: &[f32], y: &[f32]) {
        d.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(y.par_chunks(CHUNK))
            .for_each(|((dc, xc), yc)| {
                for ((g, &x), &y) in dc.iter_mut().zip(xc).zip(yc) {
                    *g *= self.df(x, y);
                }
            });
    }
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
    fn every_activation_matches_candle_values_and_gradients() {
        let n = 7 * 333;
        let x = randn(n, 3.0, 1);
        let probe = randn(n, 1.0, 2);
        for act in [Act::Gelu, Act::GeluTanh, Act::Relu, Act::Tanh] {
            let xv = var(&x, &[7, 333]);
            let composed = match act {
                Act::Gelu => xv.gelu_erf(),
                Act::GeluTanh => xv.gelu(),
                Act::Relu => xv.relu(),
                Act::Tanh => xv.tanh(),
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
}
