//! Inverted dropout with masks from a counter-based hash: each element's keep decision is a
//! hash of (site key, element index), so the backward pass regenerates the forward's mask
//! instead of storing it, any thread can compute any part of it, and a run is reproducible
//! from its seed and step. The index is the element's place in the whole global batch: a
//! data-parallel rank's pass over its share ([`Pass`]) draws the masks that one process's pass
//! over the whole batch draws for the same rows.

use multiversion::multiversion;
use rayon::prelude::*;

/// A training pass's dropout: the seed of its step and micro-batch, and where its rows sit in
/// the global batch (a data-parallel rank's share starts past the other ranks' rows; one
/// process's pass at token 0 and sequence 0).
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub seed: u64,
    pub first_token: u64,
    pub first_sequence: u64,
}

impl Pass {
    /// A pass over a whole batch.
    pub fn new(seed: u64) -> Self {
        Pass {
            seed,
            first_token: 0,
            first_sequence: 0,
        }
    }
}

/// Every model's dropout sites, numbered in one place so that no two share a mask stream.
pub mod sites {
    /// The embeddings' output.
    pub const EMBEDDINGS: u64 = 0;

    /// Layer `index`'s attention probabilities, attention output and FFN (MLP) output.
    pub fn layer(index: usize) -> [u64; 3] {
        let first = 1 + 3 * index as u64;
        [first, first + 1, first + 2]
    }

    /// DeBERTa's relative position table as layer `index` reads it.
    pub fn relative_table(index: usize) -> u64 {
        (1 << 18) + index as u64
    }

    /// GTE's gated activation in layer `index`.
    pub fn gated_activation(index: usize) -> u64 {
        (1 << 19) + index as u64
    }

    /// The classification head's two (ModernBERT's head uses the first).
    pub const HEAD: [u64; 2] = [1 << 20, (1 << 20) + 1];
}

/// One dropout site (a layer's attention probabilities, its FFN output, ...) of one pass.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f32,
    scale: f32,
    key: u64,
    /// The global index of the pass's first row at this site (token or sequence), and how many
    /// rows the pass has (0: a site of whole tables, indexed from 0).
    first: u64,
    rows: u64,
}

/// splitmix64: a well-mixed 64-bit hash of a counter.
#[inline(always)]
pub(crate) fn mix(z: u64) -> u64 {
    finalize(z.wrapping_add(GOLDEN))
}

/// SplitMix64's increment (2^64 / φ).
pub(crate) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: every bit of `z` reaches every bit of the result.
#[inline(always)]
pub(crate) fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const CHUNK: usize = 4096;

impl Dropout {
    /// Site number `site` of `pass` (`None`: dropout off) over tensors that are not per token
    /// or sequence, with drop probability `p`; `None` when nothing is dropped.
    pub fn site(pass: Option<Pass>, site: u64, p: f64) -> Option<Self> {
        let pass = pass?;
        (p > 0.0).then(|| Dropout {
            p: p as f32,
            scale: (1.0 / (1.0 - p)) as f32,
            key: mix(pass.seed ^ mix(site)),
            first: 0,
            rows: 0,
        })
    }

    /// A site over the pass's `n` token rows.
    pub fn tokens(pass: Option<Pass>, site: u64, p: f64, n: usize) -> Option<Self> {
        let first = pass?.first_token;
        Self::site(pass, site, p).map(|d| d.at(first, n))
    }

    /// A site over the pass's `b` sequences (rows of the head; attention, per sequence).
    pub fn sequences(pass: Option<Pass>, site: u64, p: f64, b: usize) -> Option<Self> {
        let first = pass?.first_sequence;
        Self::site(pass, site, p).map(|d| d.at(first, b))
    }

    fn at(self, first: u64, rows: usize) -> Self {
        Dropout {
            first,
            rows: rows as u64,
            ..self
        }
    }

    /// The global index of the pass's row `r` (a sequence, for attention's probabilities).
    pub fn row(&self, r: usize) -> u64 {
        self.first + r as u64
    }

    /// The factor of element `idx`: `1 / (1 - p)` with probability `1 - p`, else 0.
    #[inline(always)]
    pub fn factor(&self, idx: u64) -> f32 {
        let r = (mix(self.key ^ idx) >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
        if r >= self.p {
            self.scale
        } else {
            0.0
        }
    }

    /// Multiplies element `i` of `x` (the pass's rows) by the factor of its global index: the
    /// forward pass on activations, and the backward pass on their gradients.
    pub fn apply(&self, x: &mut [f32]) {
        let base = match self.rows {
            0 => 0,
            rows => self.first * (x.len() as u64 / rows),
        };
        x.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| self.apply_from(chunk, base + (c * CHUNK) as u64));
    }

    /// Multiplies `x[i]` by `factor(base + i)`.
    pub fn apply_from(&self, x: &mut [f32], base: u64) {
        self.apply_strided(x, base, 1)
    }

    /// Multiplies `x[i]` by `factor(base + i · stride)`: a column of a table whose elements are
    /// indexed row after row (attention's probabilities, kept transposed); compiled for AVX-512
    /// (whose 64-bit multiplies vectorise the hash) and AVX2 too.
    pub fn apply_strided(&self, x: &mut [f32], base: u64, stride: u64) {
        #[multiversion(targets(
            "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
            "x86_64+avx2+fma"
        ))]
        fn run(d: &Dropout, x: &mut [f32], base: u64, stride: u64) {
            for (i, v) in x.iter_mut().enumerate() {
                *v *= d.factor(base + i as u64 * stride);
            }
        }
        run(self, x, base, stride)
    }
}

/// Applies `d` to `x` if there is a site.
pub fn apply(d: Option<Dropout>, x: &mut [f32]) {
    if let Some(d) = d {
        d.apply(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_seeded_and_scaled() {
        let run = |seed, site| {
            let mut x = vec![1f32; 10_000];
            apply(Dropout::site(Some(Pass::new(seed)), site, 0.25), &mut x);
            x
        };
        let (a, b) = (run(7, 0), run(7, 0));
        assert_eq!(a, b);
        assert_ne!(a, run(8, 0));
        assert_ne!(a, run(7, 1));
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((2300..2700).contains(&zeros), "{zeros} zeros");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4. / 3.).abs() < 1e-6));
        assert!(Dropout::site(None, 0, 0.5).is_none());
        assert!(Dropout::site(Some(Pass::new(1)), 0, 0.0).is_none());
    }

    #[test]
    fn a_share_of_the_rows_draws_the_whole_batchs_masks() {
        // 10 token rows of width 7: one pass over all, or two passes over rows 0..4 and 4..10.
        let whole = Pass::new(5);
        let mut all = vec![1f32; 70];
        apply(Dropout::tokens(Some(whole), 3, 0.5, 10), &mut all);
        let second = Pass {
            first_token: 4,
            ..whole
        };
        let (mut a, mut b) = (vec![1f32; 28], vec![1f32; 42]);
        apply(Dropout::tokens(Some(whole), 3, 0.5, 4), &mut a);
        apply(Dropout::tokens(Some(second), 3, 0.5, 6), &mut b);
        assert_eq!(all, [a, b].concat());
        assert!(all.contains(&0.0) && all.contains(&2.0));
    }
}
