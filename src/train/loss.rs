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

/// `log_softmax` over the last dimension, stable (the max shift carries no gradient).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_z)
}

/// `CrossEntropyLoss` (mean) over `[batch, classes]` logits and `[batch]` class ids (u32).
pub fn cross_entropy(logits: &Tensor, classes: &Tensor) -> Result<Tensor> {
    let picked = log_softmax(logits)?.gather(&classes.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// sentence-transformers' cross-encoder `MultipleNegativesRankingLoss` over `[queries, 1 + k]`
/// logits, the positive first: softmax cross-entropy of `scale * sigmoid(logit)` (the sigmoid
/// bounds the scores, the scale sets the softmax temperature; its defaults are 10 and sigmoid).
pub fn multiple_negatives_ranking(logits: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (candle_nn::ops::sigmoid(logits)? * scale)?;
    let positives = Tensor::zeros(logits.dim(0)?, DType::U32, logits.device())?;
    cross_entropy(&scores, &positives)
}

/// ListNet (top-one probabilities, as sentence-transformers' `ListNetLoss`): the cross-entropy
/// between `softmax(labels)` and `softmax(logits)` per query, averaged; both `[queries, docs]`.
pub fn listnet(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let target = log_softmax(labels)?.exp()?;
    (target * log_softmax(logits)?)?
        .sum(D::Minus1)?
        .mean_all()?
        .neg()
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

    #[test]
    fn multiple_negatives_ranking_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        // One query: positive logit 0, negatives ln 3 and -ln 3 (sigmoids 1/2, 3/4, 1/4).
        let logits = Var::new(&[[0.0f32, 3f32.ln(), -(3f32.ln())]], &dev)?;
        let loss = multiple_negatives_ranking(&logits, 10.0)?;
        let s = [5.0f32, 7.5, 2.5];
        let z: f32 = s.iter().map(|v| v.exp()).sum();
        assert!((scalar(&loss) - (z.ln() - 5.0)).abs() < 1e-5);
        // d/dlogit_j = scale * sigmoid'(x_j) * (p_j - [j = 0]), sigmoid' = s (1 - s).
        let g = loss.backward()?.get(&logits).unwrap().to_vec2::<f32>()?;
        for (j, sig) in [0.5f32, 0.75, 0.25].into_iter().enumerate() {
            let p = s[j].exp() / z;
            let want = 10.0 * sig * (1.0 - sig) * (p - (j == 0) as u8 as f32);
            assert!((g[0][j] - want).abs() < 1e-5, "{j}: {} vs {want}", g[0][j]);
        }
        Ok(())
    }

    #[test]
    fn listnet_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        // Two queries; labels 1 for the positive, 0 for two negatives.
        let logits = Var::new(&[[2.0f32, 0.0, 0.0], [0.0, 1.0, 0.0]], &dev)?;
        let labels = Tensor::new(&[[1.0f32, 0.0, 0.0], [1.0, 0.0, 0.0]], &dev)?;
        let loss = listnet(&logits, &labels)?;
        let e = 1f32.exp();
        let t = [e / (e + 2.0), 1.0 / (e + 2.0), 1.0 / (e + 2.0)];
        let q = |x: [f32; 3]| {
            let lz = x.iter().map(|v| v.exp()).sum::<f32>().ln();
            let ce: f32 = -(0..3).map(|j| t[j] * (x[j] - lz)).sum::<f32>();
            let p: Vec<f32> = x.iter().map(|v| (v - lz).exp()).collect();
            (ce, p)
        };
        let (l0, p0) = q([2.0, 0.0, 0.0]);
        let (l1, p1) = q([0.0, 1.0, 0.0]);
        assert!((scalar(&loss) - (l0 + l1) / 2.0).abs() < 1e-6);
        // d/dlogits = (softmax(logits) - softmax(labels)) / queries.
        let g = loss.backward()?.get(&logits).unwrap().to_vec2::<f32>()?;
        for j in 0..3 {
            assert!((g[0][j] - (p0[j] - t[j]) / 2.0).abs() < 1e-6);
            assert!((g[1][j] - (p1[j] - t[j]) / 2.0).abs() < 1e-6);
        }
        Ok(())
    }
}
