//! RMS normalisation over the last dimension (transformers' `Qwen3RMSNorm`, T5's LayerNorm):
//! `x / sqrt(mean(x²) + eps) · w`. Forward only: the causal-LM re-rankers that use it score and
//! do not train yet.

use multiversion::multiversion;
use rayon::prelude::*;

use super::ROW_BLOCK;

/// `y = x / sqrt(mean(x²) + eps) · w` per `w.len()`-wide row of `x`.
pub fn forward(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let h = w.len();
    y.par_chunks_mut(h * ROW_BLOCK)
        .zip(x.par_chunks(h * ROW_BLOCK))
        .for_each(|(yb, xb)| {
            yb.copy_from_slice(xb);
            in_place(yb, w, eps)
        });
}

/// [`forward`] in place, on the calling thread: Qwen3's per-head norms of one token's query and
/// key heads (`w.len()` wide each).
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let h = w.len();
    for xr in x.chunks_mut(h) {
        let square: f32 = super::lanes(xr, 0.0, |a, v| a + v * v).iter().sum();
        let inv = 1.0 / (square / h as f32 + eps).sqrt();
        xr.iter_mut().zip(w).for_each(|(v, w)| *v = *v * inv * w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::D;

    #[test]
    fn matches_composed_values() {
        let (rows, h) = (3 * 37, 24);
        let x = randn(rows * h, 2.0, 1);
        let w: Vec<f32> = randn(h, 0.5, 2).iter().map(|v| v + 1.0).collect();
        let (xv, wv) = (var(&x, &[rows, h]), var(&w, &[h]));
        let composed = (|| {
            let rms = (xv.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?;
            xv.broadcast_div(&rms)?.broadcast_mul(&wv)
        })();
        let want = flat(&composed.unwrap());
        let mut y = vec![0f32; rows * h];
        forward(&mut y, &x, &w, 1e-6);
        assert!(max_diff(&y, &want) < 1e-5);
        let mut z = x.clone();
        in_place(&mut z, &w, 1e-6);
        assert_eq!(y, z);
    }
}
