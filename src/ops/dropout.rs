//! Inverted dropout with masks from a counter-based hash: cheap, parallel, and reproducible
//! from the run's seed.

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;
use rand::RngCore;
use rayon::prelude::*;

/// Dropout state of a forward pass: off (evaluation, prediction) or on with a seeded
/// generator, so that a training run is reproducible from its seed.
pub struct Dropout(Option<StdRng>);

impl Dropout {
    pub fn off() -> Self {
        Dropout(None)
    }

    pub fn seeded(rng: StdRng) -> Self {
        Dropout(Some(rng))
    }

    /// A fresh seed for an op that draws its own mask (fused attention); `None` when off.
    pub fn seed(&mut self, p: f64) -> Option<(f32, u64)> {
        match &mut self.0 {
            Some(rng) if p > 0.0 => Some((p as f32, rng.next_u64())),
            _ => None,
        }
    }

    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
    pub fn apply(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match &mut self.0 {
            Some(rng) if p > 0.0 => x.mul(&mask(x, p, rng.next_u64())?),
            _ => Ok(x.clone()),
        }
    }
}

/// splitmix64: a well-mixed 64-bit hash of a counter.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A keep mask shaped like `x`: `1 / (1 - p)` with probability `1 - p`, else 0.
fn mask(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let threshold = (p * u32::MAX as f64) as u32;
    let key = mix(seed);
    let mut m = vec![0f32; x.elem_count()];
    m.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
        for (i, v) in chunk.iter_mut().enumerate() {
            let r = (mix(key ^ (c * 4096 + i) as u64) >> 32) as u32;
            *v = if r >= threshold { scale } else { 0.0 };
        }
    });
    Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    #[test]
    fn is_seeded_and_scaled() -> Result<()> {
        let x = Tensor::ones(10_000, DType::F32, &Device::Cpu)?;
        let run = |seed| {
            Dropout::seeded(StdRng::seed_from_u64(seed))
                .apply(&x, 0.25)?
                .to_vec1::<f32>()
        };
        let (a, b, c) = (run(7)?, run(7)?, run(8)?);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((2300..2700).contains(&zeros), "{zeros} zeros");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4. / 3.).abs() < 1e-6));
        assert_eq!(
            Dropout::off().apply(&x, 0.5)?.to_vec1::<f32>()?,
            vec![1.0; 10_000]
        );
        Ok(())
    }
}
