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

/// How [`lambda`] weighs a pair of documents (sentence-transformers' weighting schemes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// NDCG-Loss2++ (mu 10), `LambdaLoss`'s default: the strongest in the LambdaLoss paper.
    NdcgLoss2PlusPlus,
    /// Every pair alike: `RankNetLoss`.
    Uniform,
}

/// `log(sigmoid(x))`, stable for any x.
fn log_sigmoid(x: f64) -> f64 {
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

/// sentence-transformers' `LambdaLoss` (k: every document, sigma 1, binary logarithm) over
/// `scores` of lists of `docs` documents with graded `labels`: its value and its gradient. Each
/// pair of a list whose labels differ, the better-labelled document first in the scores' order,
/// adds `-weight · log2(sigmoid(s_better - s_worse))`; the loss is their mean over the batch.
/// The weights depend on labels and ranks only, so the gradient is exact by hand.
pub fn lambda(
    scores: &[f32],
    labels: &[f32],
    docs: usize,
    weighting: Weighting,
) -> (f32, Vec<f32>) {
    const MU: f64 = 10.0;
    // `discount[r] = log2(r + 2)`: rank r from 0.
    let discount: Vec<f64> = (0..docs).map(|r| (r as f64 + 2.0).log2()).collect();
    let gain_of = |label: f32| 2f64.powf(label.max(0.0) as f64) - 1.0;
    let (mut total, mut pairs) = (0.0, 0usize);
    let mut grad = vec![0f64; scores.len()];
    for (list, (s, y)) in scores.chunks(docs).zip(labels.chunks(docs)).enumerate() {
        // Ranks by score, best first (ties in input order).
        let mut order: Vec<usize> = (0..docs).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
        let mut ideal = y.to_vec();
        ideal.sort_by(|a, b| b.total_cmp(a));
        let max_dcg: f64 = ideal
            .iter()
            .zip(&discount)
            .map(|(&l, d)| gain_of(l) / d)
            .sum();
        let gain: Vec<f64> = order
            .iter()
            .map(|&i| gain_of(y[i]) / max_dcg.max(1e-10))
            .collect();
        for (i, &a) in order.iter().enumerate() {
            for (j, &b) in order.iter().enumerate() {
                if y[a] <= y[b] {
                    continue;
                }
                let w = match weighting {
                    Weighting::Uniform => 1.0,
                    Weighting::NdcgLoss2PlusPlus => {
                        let delta = i.abs_diff(j);
                        let loss2 = (1.0 / discount[delta - 1] - 1.0 / discount[delta]).abs();
                        let lambda_rank = (1.0 / discount[i] - 1.0 / discount[j]).abs();
                        (MU * loss2 + lambda_rank) * (gain[i] - gain[j]).abs()
                    }
                };
                let d = (s[a] - s[b]) as f64;
                total += w * log_sigmoid(d);
                // d/dd log(sigmoid(d)) = sigmoid(-d).
                let g = w / (1.0 + d.exp());
                grad[list * docs + a] += g;
                grad[list * docs + b] -= g;
                pairs += 1;
            }
        }
    }
    let scale = -1.0 / (pairs.max(1) as f64 * std::f64::consts::LN_2);
    let grad = grad.iter().map(|g| (g * scale) as f32).collect();
    ((total * scale) as f32, grad)
}

/// sentence-transformers' `PListMLELoss` (its default rank weights, the input order taken as
/// the true order) over `scores` of lists of `docs` documents: its value and gradient. Each
/// list adds `-Σ_r w_r · log(softmax of s_r among s_r..s_end)`, weights `2^(docs - r) - 1`
/// (rank r from 1) normalised to sum 1; the loss is their mean over lists.
pub fn plist_mle(scores: &[f32], docs: usize) -> (f32, Vec<f32>) {
    let scale = docs.saturating_sub(127) as i32;
    let raw: Vec<f64> = (1..=docs as i32)
        .map(|r| 2f64.powi(docs as i32 - r - scale) - 2f64.powi(-scale))
        .collect();
    let sum: f64 = raw.iter().sum::<f64>() + 1e-10;
    let w: Vec<f64> = raw.iter().map(|x| x / sum).collect();
    let lists = scores.len() / docs.max(1);
    let (mut total, mut grad) = (0.0, vec![0f32; scores.len()]);
    for (list, s) in scores.chunks(docs).enumerate() {
        let s: Vec<f64> = s.iter().map(|&x| x as f64).collect();
        // log Σ_{k ≥ r} exp(s_k), from the last rank back.
        let mut lse = vec![f64::NEG_INFINITY; docs + 1];
        for r in (0..docs).rev() {
            let (hi, lo) = (lse[r + 1].max(s[r]), lse[r + 1].min(s[r]));
            lse[r] = hi + (lo - hi).exp().ln_1p();
        }
        total -= (0..docs).map(|r| w[r] * (s[r] - lse[r])).sum::<f64>();
        for j in 0..docs {
            let through: f64 = (0..=j).map(|r| w[r] * (s[j] - lse[r]).exp()).sum();
            grad[list * docs + j] = ((through - w[j]) / lists as f64) as f32;
        }
    }
    ((total / lists.max(1) as f64) as f32, grad)
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

    /// LambdaLoss, RankNetLoss and PListMLELoss against sentence-transformers' own code on the
    /// same scores (`scripts/st_rank_losses.py`): value and gradient within 1e-5.
    #[test]
    fn ranking_losses_match_sentence_transformers() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/rank-losses.json")).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .flat_map(|x| match x.as_array() {
                    Some(row) => row.iter().map(|y| y.as_f64().unwrap() as f32).collect(),
                    None => vec![x.as_f64().unwrap() as f32],
                })
                .collect()
        };
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 15);
        for c in cases {
            let (scores, labels) = (floats(&c["scores"]), floats(&c["labels"]));
            let docs = c["docs"].as_u64().unwrap() as usize;
            let (value, grad) = match c["loss"].as_str().unwrap() {
                "LambdaLoss" => lambda(&scores, &labels, docs, Weighting::NdcgLoss2PlusPlus),
                "RankNetLoss" => lambda(&scores, &labels, docs, Weighting::Uniform),
                "PListMLELoss" => plist_mle(&scores, docs),
                other => panic!("unknown loss {other}"),
            };
            let want = c["value"].as_f64().unwrap() as f32;
            assert!(
                (value - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{c}: {value}"
            );
            for (g, w) in grad.iter().zip(floats(&c["grad"])) {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{c}: {grad:?}");
            }
        }
    }
}
