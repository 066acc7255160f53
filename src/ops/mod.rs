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
pub mod amx;
pub mod attention;
pub mod bf16;
pub mod composed;
pub mod disentangled;
pub mod dropout;
pub mod int8;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod profile;
pub mod rms_norm;
pub mod rotary;

pub use activation::Act;

pub use dropout::{Dropout, Pass};

/// The precision of the linear layers' products in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 operands, f32 sums, everything else in f32 (as PyTorch's autocast splits it), on
    /// AMX or AVX-512 BF16 (see [`bf16::product`]).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown dtype {s:?}: f32 or bf16")),
        }
    }
}

impl Precision {
    /// Whether this CPU trains in this precision: bf16 needs a bf16 kernel.
    pub fn check(self) -> anyhow::Result<()> {
        if self == Precision::Bf16 && !bf16::available() {
            anyhow::bail!(
                "bf16 training needs a CPU with AMX or AVX-512 BF16 (amx_bf16 or avx512_bf16 in \
                 lscpu's flags: Intel Xeon Sapphire Rapids or later, AMD Zen 4 or later), which \
                 this one lacks: train in f32 (no {set_precision})",
                set_precision = crate::setting::Setting::Precision
            );
        }
        Ok(())
    }
}

/// Rows per parallel task: big enough to amortise scheduling, fixed so that reductions over
/// rows add up in the same order on every run.
const ROW_BLOCK: usize = 16;

/// Store masks of `NV` vectors of 16 floats from column `c0` of rows `n` wide: a lane's bit is
/// set where its column lies within the row. The AVX-512 kernels store their tiles' column tails
/// through them.
#[cfg(target_arch = "x86_64")]
pub(crate) fn column_masks<const NV: usize>(n: usize, c0: usize) -> [u16; NV] {
    std::array::from_fn(|v| {
        let left = n.saturating_sub(c0 + 16 * v).min(16);
        ((1u32 << left) - 1) as u16
    })
}

/// Lanes of the reductions below: independent partial results that the compiler keeps in
/// vector registers (a single running sum is a chain of dependent adds that cannot vectorise).
const LANES: usize = 16;

/// Applies `f` lane-wise over `x` into `LANES` accumulators starting at `init`, the tail
/// into lane 0..; returns the lanes.
#[inline(always)]
pub(crate) fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> [f32; LANES] {
    let mut acc = [init; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = f(acc[i], c[i]);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = f(*a, v);
    }
    acc
}

/// Sum of `x` in a fixed order (lane-wise, then the lanes in order).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    lanes(x, 0.0, |a, v| a + v).iter().sum()
}

/// Largest element of `x` (`-inf` when empty).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    lanes(x, f32::NEG_INFINITY, f32::max)
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// Smallest element of `x` (`inf` when empty).
#[inline(always)]
pub fn min(x: &[f32]) -> f32 {
    lanes(x, f32::INFINITY, f32::min)
        .iter()
        .fold(f32::INFINITY, |a, &b| a.min(b))
}

/// Dot product of `a` and `b` in a fixed order.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += x * y;
    }
    acc.iter().sum()
}

/// Adds every row of a `[rows, cols]` matrix into `sum` (`[cols]`), in row order.
pub fn add_column_sums(sum: &mut [f32], x: &[f32]) {
    for row in x.chunks_exact(sum.len()) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reductions_match_plain_loops() {
        for n in [0, 1, 15, 16, 17, 100, 385] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let y: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 * 0.5).collect();
            // Small integers and halves: every order of summation gives the exact result.
            assert_eq!(super::sum(&x), x.iter().sum::<f32>(), "{n}");
            let plain_dot: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            assert_eq!(super::dot(&x, &y), plain_dot, "{n}");
            let plain_max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(super::max(&x), plain_max, "{n}");
            let plain_min = x.iter().fold(f32::INFINITY, |a, &b| a.min(b));
            assert_eq!(super::min(&x), plain_min, "{n}");
        }
    }

    /// `scripts/test-avx2.sh` runs the tests on an emulated AVX2-only CPU: this checks that the
    /// CPU is one (AVX2 and FMA, no AVX-512), so that the run took the AVX2 paths, which the
    /// kernels pick at run time. On a host with AVX-512 it fails, hence ignored in plain runs.
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "a check of the emulated CPU of scripts/test-avx2.sh, which runs it"]
    fn the_cpu_is_avx2_only() {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        assert!(
            !is_x86_feature_detected!("avx512f"),
            "the CPU has AVX-512: not the AVX2-only one expected"
        );
        assert!(!super::bf16::available());
        assert_eq!(super::int8::weight_bits(), 7, "{}", super::int8::kernel());
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
