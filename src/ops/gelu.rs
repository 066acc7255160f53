//! GELU, the exact erf form (transformers' `gelu`), forward and backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;

const CHUNK: usize = 4096;

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

/// `0.5 * x * (1 + erf(x / sqrt(2)))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "gelu")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| {
                for (o, &v) in yc.iter_mut().zip(xc) {
                    *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluBackward)?))
    }
}

/// `dx = dy * (Phi(x) + x * phi(x))`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "gelu-backward")?;
        let dy = f32_data(s2, l2, "gelu-backward")?;
        let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(dy.par_chunks(CHUNK))
            .for_each(|((dc, xc), gc)| {
                for ((o, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
                    let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
                    let pdf = (-0.5 * v * v).exp() * inv_sqrt_2pi;
                    *o = g * (cdf + v * pdf);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_diff, rel_diff};
    use candle_core::{Device, Var};

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
    fn matches_candle_gelu_erf_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (7, 333), &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (7, 333), &dev)?;
        let fused = gelu(&x)?;
        let reference = x.gelu_erf()?;
        assert!(max_diff(&fused, &reference)? < 1e-5);
        let gf = fused.mul(&probe)?.sum_all()?.backward()?;
        let gr = reference.mul(&probe)?.sum_all()?.backward()?;
        let d = rel_diff(gf.get(&x).unwrap(), gr.get(&x).unwrap())?;
        assert!(d < 1e-4, "gradient differs by {d} (relative)");
        Ok(())
    }
}
