//! `torch.nn.Linear` (`y = x · Wᵀ + b`) over row-major slices: the bias goes into the product
//! (its starting value, or the own kernel's epilogue), the backward is two products and a
//! column sum.
//!
//! The weight is stored as `[out, in]` (PyTorch's layout), or transposed as `[in, out]` where
//! that makes the products faster: measured with the gemm crate on 2 AVX-512 cores and 900
//! rows, a `1536 -> 384` layer runs its forward at 219 GFLOP/s from `[in, out]` but 175 from
//! `[out, in]`, and its weight gradient at 210 vs 186, while the `384 -> 1536` and `384 ->
//! 1152` layers are fastest (or equal) as `[out, in]`.
//!
//! On AVX-512 CPUs the products run on crossenc's own kernel ([`super::matmul::product`])
//! wherever its right-hand side can be laid out cheaply: a scoring model's weights once, at
//! load ([`panels`]); during training, operands whose rows are slices, copied on each call
//! (the weight's transpose would be a strided gather that costs what the kernel gains, so
//! those products stay on the gemm crate).

use rayon::prelude::*;

use super::matmul::{matmul, own_kernel, product, with_panels, Panels, Product, Start, View};
use super::{add_column_sums, bf16};

/// How a weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`, as PyTorch stores it.
    OutIn,
    /// `[in, out]`.
    InOut,
}

impl WeightLayout {
    /// `Wᵀ` (`[in, out]`) as a view, for `x · Wᵀ`.
    pub(crate) fn transposed<'a>(self, w: &'a [f32], in_dim: usize, out_dim: usize) -> View<'a> {
        match self {
            WeightLayout::OutIn => View::rows(w, out_dim, in_dim, in_dim).t(),
            WeightLayout::InOut => View::rows(w, in_dim, out_dim, out_dim),
        }
    }
}

/// Rows per thread from which [`forward`] gives each thread a share of the rows, whole, rather
/// than letting the gemm crate split one product: on MiniLM's four shapes, 2 threads, best of
/// 40, the split is 1-7% faster at 870 rows and 0-8% at 450, but up to 21% slower on the wide
/// layers at 30 and 120 rows.
const SPLIT_ROWS: usize = 128;

/// `Wᵀ` laid out for [`forward`] once, for a model whose weights no longer change.
pub fn panels(w: &[f32], in_dim: usize, layout: WeightLayout) -> Panels {
    Panels::new(layout.transposed(w, in_dim, w.len() / in_dim))
}

/// How a layer's products run: in f32, on the weight as stored or laid out once by [`panels`]
/// (for a model that only scores); or in bf16, on the copies that the optimizer writes, or
/// without them rounding the weight on each call.
#[derive(Clone, Copy, Debug)]
pub enum Products<'a> {
    F32(Option<&'a Panels>),
    Bf16(Option<&'a bf16::Copies>),
}

/// `y` (`[rows, out]`) = `x` (`[rows, in]`) · `w`ᵀ + `b`, `w` stored as `layout` says, the
/// product as `products` says.
pub fn forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    in_dim: usize,
    layout: WeightLayout,
    products: Products,
) {
    let out_dim = w.len() / in_dim;
    let rows = x.len() / in_dim;
    if rows == 0 {
        return;
    }
    let wt = layout.transposed(w, in_dim, out_dim);
    let panels = match products {
        Products::F32(panels) => panels,
        Products::Bf16(copies) => {
            let xv = View::rows(x, rows, in_dim, in_dim);
            let start = b.map_or(Start::Zero, Start::Bias);
            return match copies {
                Some(c) => bf16::product_packed(y, out_dim, xv, c.wt(), start),
                None => bf16::product(y, out_dim, xv, wt, start),
            };
        }
    };
    let on_gemm = |y: &mut [f32], x: &[f32], parallel: bool| {
        let how = Product {
            accumulate: b.is_some(),
            parallel,
            ..Product::SERIAL
        };
        if let Some(b) = b {
            y.chunks_exact_mut(out_dim)
                .for_each(|r| r.copy_from_slice(b));
        }
        let xv = View::rows(x, x.len() / in_dim, in_dim, in_dim);
        matmul(y, out_dim, xv, wt, how);
    };
    let y = &mut y[..rows * out_dim];
    let threads = rayon::current_num_threads();
    if rows < SPLIT_ROWS * threads {
        return on_gemm(y, x, true);
    }
    let part = rows.div_ceil(threads);
    // Laid out on every call, the weight pays only where its rows are slices (a copy); a
    // transposed one (`[out, in]`) goes to the gemm crate unless laid out once (`panels`).
    if own_kernel() && (panels.is_some() || wt.row_major()) {
        let start = b.map_or(Start::Zero, Start::Bias);
        let mut split = |panels: &Panels| {
            y.par_chunks_mut(part * out_dim)
                .zip(x.par_chunks(part * in_dim))
                .for_each(|(y, x)| {
                    let xv = View::rows(x, x.len() / in_dim, in_dim, in_dim);
                    product(y, out_dim, xv, panels, start)
                })
        };
        return match panels {
            Some(p) => split(p),
            None => with_panels(wt, split),
        };
    }
    y.par_chunks_mut(part * out_dim)
        .zip(x.par_chunks(part * in_dim))
        .for_each(|(y, x)| on_gemm(y, x, false));
}

/// Where the input gradient goes: into a buffer, or added to one (a residual branch).
pub enum InputGrad<'a> {
    Write(&'a mut [f32]),
    Add(&'a mut [f32]),
}

/// From `dy` (`[rows, out]`): the input gradient `dy · W` as `dx` says, and `dyᵀ · x` and the
/// column sums of `dy` added into `dw` (in `layout`, as `w`) and `db`; the products as
/// `products` says (the column sums in f32; f32's panels are for scoring only).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: InputGrad,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    in_dim: usize,
    layout: WeightLayout,
    products: Products,
) {
    let out_dim = w.len() / in_dim;
    let rows = x.len() / in_dim;
    if rows == 0 {
        return;
    }
    let dyv = View::rows(dy, rows, out_dim, out_dim);
    let (dx, accumulate) = match dx {
        InputGrad::Write(d) => (d, false),
        InputGrad::Add(d) => (d, true),
    };
    let wv = layout.transposed(w, in_dim, out_dim).t();
    let xv = View::rows(x, rows, in_dim, in_dim);
    if let Products::Bf16(copies) = products {
        // Each product over both threads: AMX's blocks split well at these sizes, and so do
        // AVX-512 BF16's rows (one product per core measured slower on Zen 4: docs/speed.md).
        let start = if accumulate { Start::Add } else { Start::Zero };
        match copies {
            Some(c) => bf16::product_packed(dx, in_dim, dyv, c.w(), start),
            None => bf16::product(dx, in_dim, dyv, wv, start),
        }
        match layout {
            WeightLayout::OutIn => bf16::product(dw, in_dim, dyv.t(), xv, Start::Add),
            WeightLayout::InOut => bf16::product(dw, out_dim, xv.t(), dyv, Start::Add),
        }
        if let Some(db) = db {
            add_column_sums(db, dy);
        }
        return;
    }
    // The two products are independent and equally large: on two threads each runs whole on
    // one core, which beats splitting each over both at a training batch's few hundred rows.
    let parallel = rayon::current_num_threads() > 2;
    let own = own_kernel() && !parallel;
    rayon::join(
        || {
            let how = Product {
                accumulate,
                parallel,
                ..Product::SERIAL
            };
            if own && wv.row_major() {
                let start = if accumulate { Start::Add } else { Start::Zero };
                with_panels(wv, |w| product(dx, in_dim, dyv, w, start))
            } else {
                matmul(dx, in_dim, dyv, wv, how)
            }
        },
        || {
            let acc = Product {
                accumulate: true,
                parallel,
                ..Product::SERIAL
            };
            match (layout, own) {
                (WeightLayout::OutIn, true) => {
                    with_panels(xv, |x| product(dw, in_dim, dyv.t(), x, Start::Add))
                }
                (WeightLayout::InOut, true) => {
                    with_panels(dyv, |dy| product(dw, out_dim, xv.t(), dy, Start::Add))
                }
                (WeightLayout::OutIn, false) => matmul(dw, in_dim, dyv.t(), xv, acc),
                (WeightLayout::InOut, false) => matmul(dw, out_dim, xv.t(), dyv, acc),
            }
            if let Some(db) = db {
                add_column_sums(db, dy);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn matches_composed_values_and_gradients() {
        let (rows, i, o) = (10, 7, 3);
        let (x, w, b) = (
            randn(rows * i, 1.0, 1),
            randn(o * i, 1.0, 2),
            randn(o, 1.0, 3),
        );
        let probe = randn(rows * o, 1.0, 4);
        let (xv, wv, bv) = (var(&x, &[rows, i]), var(&w, &[o, i]), var(&b, &[o]));
        let composed = candle_nn::Module::forward(
            &candle_nn::Linear::new(wv.as_tensor().clone(), Some(bv.as_tensor().clone())),
            xv.as_tensor(),
        );
        let (want, g) = reference(composed, &probe, &[&xv, &wv, &bv]);
        // The same weight stored transposed, `[in, out]`.
        let wt: Vec<f32> = (0..i * o).map(|k| w[(k % o) * i + k / o]).collect();
        for (weight, layout) in [(&w, WeightLayout::OutIn), (&wt, WeightLayout::InOut)] {
            let mut y = vec![f32::NAN; rows * o];
            forward(&mut y, &x, weight, Some(&b), i, layout, Products::F32(None));
            assert!(max_diff(&y, &want) < 1e-5, "{layout:?}");
            let (mut dx, mut dw, mut db) = (vec![0f32; rows * i], vec![0f32; o * i], vec![0f32; o]);
            let dx_to = InputGrad::Write(&mut dx);
            backward(
                dx_to,
                &mut dw,
                Some(&mut db),
                &probe,
                &x,
                weight,
                i,
                layout,
                Products::F32(None),
            );
            // dw comes back in the weight's own layout.
            let dw_out_in: Vec<f32> = match layout {
                WeightLayout::OutIn => dw.clone(),
                WeightLayout::InOut => (0..o * i).map(|k| dw[(k % i) * o + k / i]).collect(),
            };
            for (got, want) in [(&dx, &g[0]), (&dw_out_in, &g[1]), (&db, &g[2])] {
                assert!(rel_diff(got, want) < 1e-5, "{layout:?}");
            }
            // Add: the input gradient lands on top of what the buffer held.
            let mut dx2 = vec![1f32; rows * i];
            backward(
                InputGrad::Add(&mut dx2),
                &mut dw,
                None,
                &probe,
                &x,
                weight,
                i,
                layout,
                Products::F32(None),
            );
            let shifted: Vec<f32> = g[0].iter().map(|v| v + 1.0).collect();
            assert!(max_diff(&dx2, &shifted) < 1e-5);
        }
    }

    #[test]
    fn split_rows_and_laid_out_weights_match_plain_loops() {
        // Enough rows for each thread to take a share (where the own kernel runs, on AVX-512),
        // odd widths, both layouts, the weight laid out per call and once.
        let (rows, i, o) = (SPLIT_ROWS * rayon::current_num_threads() + 13, 37, 53);
        let (x, w, b, dy) = (
            randn(rows * i, 1.0, 1),
            randn(o * i, 1.0, 2),
            randn(o, 1.0, 3),
            randn(rows * o, 1.0, 4),
        );
        let dot = |n: usize, f: &dyn Fn(usize) -> f64| (0..n).map(f).sum::<f64>() as f32;
        let want_y: Vec<f32> = (0..rows * o)
            .map(|k| b[k % o] + dot(i, &|t| (x[k / o * i + t] * w[k % o * i + t]) as f64))
            .collect();
        let want_dx: Vec<f32> = (0..rows * i)
            .map(|k| dot(o, &|j| (dy[k / i * o + j] * w[j * i + k % i]) as f64))
            .collect();
        let want_dw: Vec<f32> = (0..o * i)
            .map(|k| dot(rows, &|r| (dy[r * o + k / i] * x[r * i + k % i]) as f64))
            .collect();
        let wt: Vec<f32> = (0..i * o).map(|k| w[(k % o) * i + k / o]).collect();
        let bf16 = bf16::available();
        for (weight, layout) in [(&w, WeightLayout::OutIn), (&wt, WeightLayout::InOut)] {
            let laid_out = panels(weight, i, layout);
            let copies = bf16::Copies::new(weight, i, layout);
            // f32 on the weight as stored and laid out once (the forward only); bf16 (where
            // the CPU has a bf16 kernel) to bf16's precision, 8 bits of each operand, on the weight
            // rounded on each call and on the optimizer's copies.
            let mut runs = vec![
                (Products::F32(None), 1e-5),
                (Products::F32(Some(&laid_out)), 1e-5),
            ];
            if bf16 {
                runs.push((Products::Bf16(None), 1e-2));
                runs.push((Products::Bf16(Some(&copies)), 1e-2));
            }
            for (products, tol) in runs {
                let mut y = vec![f32::NAN; rows * o];
                forward(&mut y, &x, weight, Some(&b), i, layout, products);
                assert!(rel_diff(&y, &want_y) < tol, "{layout:?} {products:?}");
                if matches!(products, Products::F32(Some(_))) {
                    continue;
                }
                let (mut dx, mut dw, mut db) =
                    (vec![0f32; rows * i], vec![0f32; o * i], vec![0f32; o]);
                let dx_to = InputGrad::Write(&mut dx);
                backward(
                    dx_to,
                    &mut dw,
                    Some(&mut db),
                    &dy,
                    &x,
                    weight,
                    i,
                    layout,
                    products,
                );
                let dw_out_in: Vec<f32> = match layout {
                    WeightLayout::OutIn => dw,
                    WeightLayout::InOut => (0..o * i).map(|k| dw[(k % i) * o + k / i]).collect(),
                };
                assert!(rel_diff(&dx, &want_dx) < tol, "{layout:?} {products:?}");
                assert!(
                    rel_diff(&dw_out_in, &want_dw) < tol,
                    "{layout:?} {products:?}"
                );
            }
        }
    }
}
