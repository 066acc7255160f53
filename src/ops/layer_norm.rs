//! Layer normalisation over the last dimension (`torch.nn.LayerNorm`), forward and backward.
//! The forward pass saves each row's mean and reciprocal standard deviation for the backward.

use rayon::prelude::*;

use super::ROW_BLOCK;

/// `y = (x - mean) / sqrt(var + eps) * w + b` per row of `x` (`[rows, w.len()]`); `stats`
/// (`[rows, 2]`) receives each row's mean and `1 / sqrt(var + eps)`.
pub fn forward(y: &mut [f32], stats: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    y.par_chunks_mut(h * ROW_BLOCK)
        .zip(stats.par_chunks_mut(2 * ROW_BLOCK))
        .zip(x.par_chunks(h * ROW_BLOCK))
        .for_each(|((yb, sb), xb)| {
            for ((yr, s), xr) in yb.chunks_mut(h).zip(sb.chunks_mut(2)).zip(xb.chunks(h)) {
                let n = h as f32;
                let mean = xr.iter().sum::<f32>() / n;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
                let rstd = 1.0 / (var + eps).sqrt();
                for i in 0..h {
                    yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
                }
                s[0] = mean;
                s[1] = rstd;
            }
        });
}

/// Writes dL/dx into `dx` and adds dL/dw, dL/db into `dw`, `db`, from `dy` and the forward's
/// input and `stats`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    stats: &[f32],
    w: &[f32],
) {
    let h = w.len();
    // Each block of rows writes its dx and returns its partial dw/db sums, added in order.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(h * ROW_BLOCK)
        .zip(x.par_chunks(h * ROW_BLOCK))
        .zip(dy.par_chunks(h * ROW_BLOCK))
        .zip(stats.par_chunks(2 * ROW_BLOCK))
        .map(|(((dxb, xb), dyb), sb)| {
            let mut acc = vec![0f32; 2 * h];
            let rows = dxb.chunks_mut(h).zip(xb.chunks(h)).zip(dyb.chunks(h));
            for (((dxr, xr), dyr), s) in rows.zip(sb.chunks(2)) {
                let (mean, rstd) = (s[0], s[1]);
                let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                for i in 0..h {
                    let xhat = (xr[i] - mean) * rstd;
                    let g = dyr[i] * w[i];
                    sum_g += g;
                    sum_gx += g * xhat;
                    acc[i] += dyr[i] * xhat;
                    acc[h + i] += dyr[i];
                }
                let (mean_g, mean_gx) = (sum_g / h as f32, sum_gx / h as f32);
                for i in 0..h {
                    let xhat = (xr[i] - mean) * rstd;
                    dxr[i] = rstd * (dyr[i] * w[i] - mean_g - xhat * mean_gx);
                }
            }
            acc
        })
        .collect();
    for p in partials {
        dw.iter_mut().zip(&p[..h]).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&p[h..]).for_each(|(a, b)| *a += b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Result, Tensor, D};

    /// The same computation from differentiable candle primitives.
    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    #[test]
    fn matches_composed_values_and_gradients() {
        let (rows, h) = (3 * 37, 24);
        let x: Vec<f32> = randn(rows * h, 2.0, 1).iter().map(|v| v + 1.0).collect();
        let w: Vec<f32> = randn(h, 0.5, 2).iter().map(|v| v + 1.0).collect();
        let b = randn(h, 0.5, 3);
        let probe = randn(rows * h, 1.0, 4);
        let (xv, wv, bv) = (var(&x, &[rows, h]), var(&w, &[h]), var(&b, &[h]));
        let (want, g) = reference(composed(&xv, &wv, &bv, 1e-12), &probe, &[&xv, &wv, &bv]);
        let (mut y, mut stats) = (vec![0f32; rows * h], vec![0f32; 2 * rows]);
        forward(&mut y, &mut stats, &x, &w, &b, 1e-12);
        assert!(max_diff(&y, &want) < 1e-5);
        let (mut dx, mut dw, mut db) = (vec![0f32; rows * h], vec![1f32; h], vec![1f32; h]);
        backward(&mut dx, &mut dw, &mut db, &probe, &x, &stats, &w);
        // dw and db started at 1: the kernel adds to them.
        let dw: Vec<f32> = dw.iter().map(|v| v - 1.0).collect();
        let db: Vec<f32> = db.iter().map(|v| v - 1.0).collect();
        for (got, want) in [(&dx, &g[0]), (&dw, &g[1]), (&db, &g[2])] {
            let d = rel_diff(got, want);
            assert!(d < 1e-4, "gradient differs by {d} (relative)");
        }
    }
}
