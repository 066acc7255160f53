//! Fused CPU kernels with hand-written backward passes, as candle `CustomOp`s.
//!
//! Each op's forward and backward kernels sit side by side (as llm.c pairs them) and are tested
//! against the same computation composed from candle primitives. candle-nn's fused
//! `layer_norm` / `softmax_last_dim` are not used in training: they record no backward and would
//! cut gradients silently.

mod attention;
mod dropout;
mod gelu;
mod layer_norm;
mod linear;
mod matmul;

pub use attention::attention;
pub use dropout::Dropout;
pub use gelu::gelu;
pub use layer_norm::layer_norm;
pub use linear::linear;

use candle_core::{bail, CpuStorage, Layout, Result};

/// The contiguous f32 data of a CPU tensor.
fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: only f32 tensors are supported")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// Rows per parallel task: big enough to amortise scheduling, fixed so that reductions over
/// rows add up in the same order on every run.
const ROW_BLOCK: usize = 16;

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Result, Tensor};

    pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Largest absolute difference relative to the largest element of `b`.
    pub fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        let scale = b
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?
            .max(1e-12);
        Ok(max_diff(a, b)? / scale)
    }
}
