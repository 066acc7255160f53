//! Layer normalisation over the last dimension (`torch.nn.LayerNorm`), forward and backward.
//! The forward pass saves each row's mean and reciprocal standard deviation for the backward.

use multiversion::multiversion;
use rayon::prelude::*;

use super::ROW_BLOCK;

/// `y = (x - mean) / sqrt(var + eps) * w + b` per row of `x` (`[rows, w.len()]`), `b` left out
/// where the norm has no bias (ModernBERT); `stats` (`[rows, 2]`) receives each row's mean and
/// `1 / sqrt(var + eps)`.
pub fn forward(
    y: &mut [f32],
    stats: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
) {
    let h = w.len();
    y.par_chunks_mut(h * ROW_BLOCK)
        .zip(stats.par_chunks_mut(2 * ROW_BLOCK))
        .zip(x.par_chunks(h * ROW_BLOCK))
        .for_each(|((yb, sb), xb)| forward_rows(yb, sb, xb, w, b, eps));
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn forward_rows(
    y: &mut [f32],
    stats: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
) {
    let h = w.len();
    for ((yr, s), xr) in y.chunks_mut(h).zip(stats.chunks_mut(2)).zip(x.chunks(h)) {
        let n = h as f32;
        let mean = super::sum(xr) / n;
        let var: f32 = super::lanes(xr, 0.0, |a, v| a + (v - mean) * (v - mean))
            .iter()
            .sum();
        let rstd = 1.0 / (var / n + eps).sqrt();
        match b {
            Some(b) => (0..h).for_each(|i| yr[i] = (xr[i] - mean) * rstd * w[i] + b[i]),
            None => (0..h).for_each(|i| yr[i] = (xr[i] - mean) * rstd * w[i]),
        }
        s[0] = mean;
        s[1] = rstd;
    }
}

/// Writes dL/dx into `dx` and adds dL/dw, dL/db into `dw`, `db` (if the norm has a bias), from
/// `dy` and the forward's input and `stats`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: &mut [f32],
    dw: &mut [f32],
    mut db: Option<&mut [f32]>,
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
            backward_rows(dxb, &mut acc, xb, dyb, sb, w);
            acc
        })
        .collect();
    for p in partials {
        dw.iter_mut().zip(&p[..h]).for_each(|(a, b)| *a += b);
        if let Some(db) = db.as_deref_mut() {
            db.iter_mut().zip(&p[h..]).for_each(|(a, b)| *a += b);
        }
    }
}

/// One block of rows: dx written, dw and db sums added into `acc` (`[2, h]`).
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn backward_rows(dx: &mut [f32], acc: &mut [f32], x: &[f32], dy: &[f32], stats: &[f32], w: &[f32]) {
    let h = w.len();
    let rows = dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h));
    for (((dxr, xr), dyr), s) in rows.zip(stats.chunks(2)) {
        let (mean, rstd) = (s[0], s[1]);
        let (dw, db) = acc.split_at_mut(h);
        let (mut g, mut gx) = ([0f32; super::LANES], [0f32; super::LANES]);
        let l = super::LANES;
        let blocks = xr.chunks(l).zip(dyr.chunks(l)).zip(w.chunks(l));
        for (((xc, dyc), wc), (dwc, dbc)) in blocks.zip(dw.chunks_mut(l).zip(db.chunks_mut(l))) {
            for j in 0..xc.len() {
                let xhat = (xc[j] - mean) * rstd;
                let gj = dyc[j] * wc[j];
                g[j] += gj;
                gx[j] += gj * xhat;
                dwc[j] += dyc[j] * xhat;
                dbc[j] += dyc[j];
            }
        }
        let (sum_g, sum_gx) = (super::sum(&g), super::sum(&gx));
        let (mean_g, mean_gx) = (sum_g / h as f32, sum_gx / h as f32);
        for i in 0..h {
            let xhat = (xr[i] - mean) * rstd;
            dxr[i] = rstd * (dyr[i] * w[i] - mean_g - xhat * mean_gx);
        }
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
        forward(&mut y, &mut stats, &x, &w, Some(&b), 1e-12);
        assert!(max_diff(&y, &want) < 1e-5);
        let (mut dx, mut dw, mut db) = (vec![0f32; rows * h], vec![1f32; h], vec![1f32; h]);
        backward(&mut dx, &mut dw, Some(&mut db), &probe, &x, &stats, &w);
        // dw and db started at 1: the kernel adds to them.
        let dw: Vec<f32> = dw.iter().map(|v| v - 1.0).collect();
        let db: Vec<f32> = db.iter().map(|v| v - 1.0).collect();
        for (got, want) in [(&dx, &g[0]), (&dw, &g[1]), (&db, &g[2])] {
            let d = rel_diff(got, want);
            assert!(d < 1e-4, "gradient differs by {d} (relative)");
        }
    }
}
