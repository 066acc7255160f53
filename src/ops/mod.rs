//! The engine's kernels: plain functions over `f32` slices, each forward beside its backward
//! (as llm.c pairs them), each tested against the same computation composed from candle's
//! differentiable primitives or against finite differences.
//!
//! No kernel allocates its output or keeps a graph: the caller owns every buffer (the model's
//! saved activations, reused from step to step), backward passes add parameter gradients into
//! the caller's flat gradient buffer, and everything runs on rayon's pool. Row-parallel
//! reductions split rows into fixed blocks, so the same batch adds up in the same order on
//! every run (resume is bit-identical).

pub mod activation;
pub mod attention;
pub mod dropout;
pub mod layer_norm;
pub mod linear;
pub mod matmul;

pub use activation::Act;
pub use dropout::Dropout;

/// Rows per parallel task: big enough to amortise scheduling, fixed so that reductions over
/// rows add up in the same order on every run.
const ROW_BLOCK: usize = 16;

/// Adds every row of a `[rows, cols]` matrix into `sum` (`[cols]`), in row order.
pub fn add_column_sums(sum: &mut [f32], x: &[f32]) {
    for row in x.chunks_exact(sum.len()) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Result, Tensor, Var};

    pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Largest absolute difference relative to the largest element of `b`.
    pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
        max_diff(a, b) / scale
    }

    pub fn randn(n: usize, std: f32, seed: u64) -> Vec<f32> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, std).unwrap();
        (0..n).map(|_| normal.sample(&mut rng)).collect()
    }

    pub fn var(data: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(data, shape, &Device::Cpu).unwrap()).unwrap()
    }

    pub fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The composed reference's output and the gradients of `sum(output * probe)` with
    /// respect to `inputs`.
    pub fn reference(
        out: Result<Tensor>,
        probe: &[f32],
        inputs: &[&Var],
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let out = out.unwrap();
        let p = Tensor::from_slice(probe, out.shape(), &Device::Cpu).unwrap();
        let grads = out.mul(&p).unwrap().sum_all().unwrap().backward().unwrap();
        let g = inputs
            .iter()
            .map(|v| flat(grads.get(v.as_tensor()).unwrap()))
            .collect();
        (flat(&out), g)
    }
}
