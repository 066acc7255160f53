//! Training losses over a batch's logits, each the mean over the batch as PyTorch's defaults.

use candle_core::{DType, Result, Tensor, D};

/// `BCEWithLogitsLoss` (mean): `max(x, 0) - x*y + log(1 + exp(-|x|))`, stable for any x.
/// `logits` and `labels`: `[batch]`, labels in [0, 1].
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (logits.relu()? - logits.mul(labels)?)?
        .add(&softplus)?
        .mean_all()
}

/// `MSELoss` (mean).
pub fn mse(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    logits.sub(labels)?.sqr()?.mean_all()
}

/// `CrossEntropyLoss` (mean) over `[batch, classes]` logits and `[batch]` class ids (u32).
pub fn cross_entropy(logits: &Tensor, classes: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_z)?;
    let picked = log_probs.gather(&classes.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn bce_value_and_gradient_by_hand() -> Result<()> {
        let x = Var::new(&[0.0f32, 2.0, -30.0], &Device::Cpu)?;
        let y = Tensor::new(&[1.0f32, 0.0, 0.25], &Device::Cpu)?;
        let loss = bce_with_logits(&x, &y)?;
        // -log(sigmoid(0)) = ln 2; -log(1 - sigmoid(2)) = 2 + ln(1 + e^-2); x = -30: 0.25 * 30.
        let want =
            (2f32.ln() + 2.0 + (1.0 + (-2f32).exp()).ln() + 7.5 + (1.0 + (-30f32).exp()).ln())
                / 3.0;
        assert!(
            (scalar(&loss) - want).abs() < 1e-5,
            "{} vs {want}",
            scalar(&loss)
        );
        // d/dx = (sigmoid(x) - y) / n.
        let g = loss.backward()?.get(&x).unwrap().to_vec1::<f32>()?;
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        for (gi, (xi, yi)) in g.iter().zip([(0.0, 1.0), (2.0, 0.0), (-30.0, 0.25)]) {
            assert!((gi - (sig(xi) - yi) / 3.0).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn mse_and_cross_entropy_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[1.0f32, 3.0], &dev)?;
        let loss = mse(&x, &Tensor::new(&[0.0f32, 1.0], &dev)?)?;
        assert!((scalar(&loss) - 2.5).abs() < 1e-6);
        let g = loss.backward()?.get(&x).unwrap().to_vec1::<f32>()?;
        assert_eq!(g, vec![1.0, 2.0]);

        let logits = Var::new(&[[1.0f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &dev)?;
        let loss = cross_entropy(&logits, &Tensor::new(&[2u32, 0], &dev)?)?;
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let want = ((lse - 3.0) + 3f32.ln()) / 2.0;
        assert!((scalar(&loss) - want).abs() < 1e-6);
        // d/dlogits = (softmax - onehot) / batch.
        let g = loss.backward()?.get(&logits).unwrap().to_vec2::<f32>()?;
        let p2 = 3f32.exp() / lse.exp();
        assert!((g[0][2] - (p2 - 1.0) / 2.0).abs() < 1e-6);
        assert!((g[1][1] - (1.0 / 3.0) / 2.0).abs() < 1e-6);
        Ok(())
    }
}
