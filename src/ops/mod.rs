//! The differentiable building blocks of the encoder.
//!
//! Each op is composed from candle primitives that record their backward pass, so autograd
//! reaches every parameter. candle-nn's fused `layer_norm` / `softmax_last_dim` are deliberately
//! not used: they record no backward and would cut gradients silently.

use candle_core::{DType, Result, Tensor, D};
use rand::rngs::StdRng;
use rand::Rng;

/// Layer normalisation over the last dimension, as `torch.nn.LayerNorm`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension, max-subtracted for stability.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

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

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub fn apply(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match &mut self.0 {
            Some(rng) if p > 0.0 => dropout(x, p, rng),
            _ => Ok(x.clone()),
        }
    }

    /// The generator's state, saved in training checkpoints.
    pub fn rng(&self) -> Option<&StdRng> {
        self.0.as_ref()
    }
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by
/// `1 / (1 - p)`.
pub fn dropout(x: &Tensor, p: f64, rng: &mut impl Rng) -> Result<Tensor> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f64>() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// Additive attention bias `[batch, 1, 1, seq]`: 0 where the mask is 1, the dtype's minimum
/// where it is 0 (as transformers' extended attention mask).
pub fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let mask = mask.to_dtype(DType::F32)?;
    let bias = ((mask - 1.0)? * -(f32::MIN as f64))?;
    bias.reshape((b, 1, 1, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    #[test]
    fn layer_norm_matches_definition_and_passes_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 4., -1., 0., 3.], (2, 3), &dev)?;
        let w = Var::from_vec(vec![1f32, 0.5, 2.], 3, &dev)?;
        let b = Var::from_vec(vec![0f32, 1., -1.], 3, &dev)?;
        let y = layer_norm(&x, &w, &b, 1e-5)?;
        let rows = y.to_vec2::<f32>()?;
        // Row 0: mean 7/3, population variance 14/9.
        let sd = (14f32 / 9. + 1e-5).sqrt();
        let expect0 = [
            (1. - 7. / 3.) / sd,
            0.5 * (2. - 7. / 3.) / sd + 1.,
            2. * (4. - 7. / 3.) / sd - 1.,
        ];
        for (a, e) in rows[0].iter().zip(expect0) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        let grads = y.sqr()?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let g = grads.get(v).expect("gradient recorded");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }

    #[test]
    fn softmax_rows_sum_to_one_and_mask_zeroes() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3.], [0., 0., 0.]], &dev)?;
        let mask = Tensor::new(&[[1u32, 1, 0], [1, 1, 1]], &dev)?;
        let bias = attention_bias(&mask)?.reshape((2, 3))?;
        let p = softmax(&x.add(&bias)?)?.to_vec2::<f32>()?;
        assert_eq!(p[0][2], 0.0);
        let e = 1f32.exp() / (1f32.exp() + 2f32.exp());
        assert!((p[0][0] - e).abs() < 1e-6);
        assert!((p[1][1] - 1. / 3.).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_and_scaled() -> Result<()> {
        let x = Tensor::ones(1000, DType::F32, &Device::Cpu)?;
        let a = dropout(&x, 0.25, &mut rand::rngs::StdRng::seed_from_u64(7))?.to_vec1::<f32>()?;
        let b = dropout(&x, 0.25, &mut rand::rngs::StdRng::seed_from_u64(7))?.to_vec1::<f32>()?;
        assert_eq!(a, b);
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((200..300).contains(&zeros), "{zeros} zeros");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4. / 3.).abs() < 1e-6));
        Ok(())
    }
}
