//! Single-threaded strided matrix products on slices, for kernels that parallelise over batch
//! items themselves. The `gemm` crate (the one inside candle's matmul) takes strides, so a head's
//! columns of a `[seq, hidden]` projection are used in place, with no transposes or copies.

/// A matrix inside a slice: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// Panics if the last element lies outside `data`, which keeps the `gemm` call in bounds.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(rows > 0 && cols > 0 && (rows - 1) * rs + (cols - 1) * cs < data.len());
        View {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// `rows x cols`, row-major with row stride `rs`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        View::new(data, rows, cols, rs, 1)
    }

    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// How [`matmul`] combines and schedules: `dst = accumulate * dst + scale * lhs · rhs`.
#[derive(Clone, Copy)]
pub struct Product {
    pub scale: f32,
    /// Add to `dst` instead of overwriting it.
    pub accumulate: bool,
    /// Split over rayon's threads; kernels that already run one task per batch item don't.
    pub parallel: bool,
}

impl Product {
    pub const SERIAL: Product = Product {
        scale: 1.0,
        accumulate: false,
        parallel: false,
    };
}

/// `lhs · rhs` into `dst`, row-major with row stride `dst_rs`, as `how` says.
pub fn matmul(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: View, how: Product) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(rhs.rows == k && (m - 1) * dst_rs + n <= dst.len());
    let parallelism = if how.parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above and in `View::new` keep every read inside `lhs.data` and
    // `rhs.data` and every write inside `dst`, which is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            how.accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            how.scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_naive() {
        // lhs: 2x3 columns 1..4 of a 2x5 row-major buffer; rhs: transpose of a 2x3 buffer.
        let a: Vec<f32> = (0..10).map(|x| x as f32).collect();
        let b: Vec<f32> = (0..6).map(|x| (x as f32) - 2.0).collect();
        let lhs = View::rows(&a[1..], 2, 3, 5);
        let rhs = View::rows(&b, 2, 3, 3).t();
        let mut dst = vec![f32::NAN; 4];
        let half = Product {
            scale: 0.5,
            ..Product::SERIAL
        };
        matmul(&mut dst, 2, lhs, rhs, half);
        let mut want = vec![0f32; 4];
        for i in 0..2 {
            for j in 0..2 {
                want[i * 2 + j] =
                    0.5 * (0..3).map(|c| a[1 + i * 5 + c] * b[j * 3 + c]).sum::<f32>();
            }
        }
        assert_eq!(dst, want);
        // Accumulating, in parallel: dst + 0.5 * lhs · rhs.
        let twice = Product {
            accumulate: true,
            parallel: true,
            ..half
        };
        matmul(&mut dst, 2, lhs, rhs, twice);
        assert_eq!(dst, want.iter().map(|x| 2.0 * x).collect::<Vec<_>>());
    }
}
