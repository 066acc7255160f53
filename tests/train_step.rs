//! Training on tiny-bert against PyTorch: one step (loss, every gradient, the clipped AdamW step)
//! from the shared golden files, and ten steps of `crossenc train` (AdamW's moments after the
//! first step, warm-up and decay, clipping) from `tests/fixtures/train-steps`, which
//! `scripts/golden_train_steps.py` wrote with PyTorch.

mod common;

use candle_core::Device;
use common::*;
use crossenc::ops::Precision;
use crossenc::train::optim::AdamWConfig;
use crossenc::train::{LossKind, Trainable};
use crossenc::{CrossEncoder, LoadOptions};
use std::collections::HashMap;

/// tiny-bert after one accumulation of the golden batch, with its products in `precision`:
/// the model, its trainer, the loss, and the golden file.
fn golden_step(precision: Precision) -> (CrossEncoder, Trainable, f32, serde_json::Value) {
    let g = read_json(&fixture("tests/fixtures/golden/train-step/golden.json"));
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let opts = LoadOptions {
        max_length: Some(g["max_length"].as_u64().unwrap() as usize),
        ..Default::default()
    };
    let mut ce = CrossEncoder::load(dir.to_str().unwrap(), &opts).unwrap();
    let o = &g["optimizer"];
    let adamw = AdamWConfig {
        beta1: o["betas"][0].as_f64().unwrap(),
        beta2: o["betas"][1].as_f64().unwrap(),
        eps: o["eps"].as_f64().unwrap(),
        weight_decay: o["weight_decay"].as_f64().unwrap(),
    };
    let mut t = Trainable::new(&mut ce, adamw).unwrap();
    ce.set_precision(precision).unwrap();
    let pairs = golden_pairs(&g);
    let enc = ce.tokenizer().encode_pairs(&pairs).unwrap();
    let labels = f32s(&g["labels"]);
    let loss = t
        .accumulate(
            &mut ce,
            enc.pack(0..enc.len()),
            &labels,
            LossKind::Bce,
            None,
            1.0,
        )
        .unwrap();
    (ce, t, loss, g)
}

/// PyTorch's gradients of the golden step, by name.
fn golden_grads() -> HashMap<String, Vec<f32>> {
    let want = candle_core::safetensors::load(
        fixture("tests/fixtures/golden/train-step/grads.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    want.into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// The step in bf16 (where the CPU has AMX or AVX-512 BF16): every gradient as near PyTorch's f32 one as PyTorch's
/// own bf16 autocast gets (its farthest, the embeddings', 9.9% off by the norm of the difference:
/// `scripts/autocast_golden_deviation.py`; here at most 15%), the loss within 5e-3. Elsewhere
/// bf16 is refused, naming both.
#[test]
fn one_bf16_step_is_as_near_pytorchs_gradients_as_autocast() {
    if !crossenc::ops::bf16::available() {
        let (mut ce, ..) = golden_step(Precision::F32);
        let err = ce.set_precision(Precision::Bf16).unwrap_err();
        assert!(err.to_string().contains("AMX or AVX-512 BF16"), "{err}");
        return;
    }
    let (ce, t, loss, g) = golden_step(Precision::Bf16);
    let want_loss = g["loss"].as_f64().unwrap() as f32;
    assert!((loss - want_loss).abs() < 5e-3, "loss {loss}");
    let want = golden_grads();
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
    for (name, got) in t.named_grads(&ce) {
        if name.ends_with("attention.self.key.bias") {
            continue; // Its true gradient is 0 (see `one_step_matches_pytorch`).
        }
        let want = &want[&name];
        let off = norm(&mut got.iter().zip(want).map(|(a, b)| a - b));
        let rel = off / norm(&mut want.iter().copied());
        assert!(
            rel < 0.15,
            "{name}: bf16 gradient {rel} off PyTorch's f32 one"
        );
        assert!(off > 0.0, "{name}: bf16 gave f32's gradient exactly");
    }
}

#[test]
fn one_step_matches_pytorch() {
    let (mut ce, mut t, loss, g) = golden_step(Precision::F32);
    let o = &g["optimizer"];
    let pairs = golden_pairs(&g);
    assert!(
        (loss - g["loss"].as_f64().unwrap() as f32).abs() < 1e-5,
        "loss {loss}"
    );

    let want_grads = golden_grads();
    let grads = t.named_grads(&ce);
    assert_eq!(want_grads.len(), grads.len(), "parameter count");
    for (name, got) in grads {
        let want = &want_grads[&name];
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&got, want);
        if name.ends_with("attention.self.key.bias") {
            // Adding the same key bias to every key shifts each score row by a constant, which
            // softmax ignores: its true gradient is 0, and both sides hold rounding noise.
            let noise = got.iter().chain(want).fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                noise < 1e-6,
                "{name}: gradient should vanish, largest element {noise}"
            );
            continue;
        }
        assert!(
            d <= 1e-4 * scale,
            "{name}: gradient differs by {d} (largest element {scale})"
        );
        assert!(got.iter().any(|x| *x != 0.0), "{name} received no gradient");
    }

    let lr = o["lr"].as_f64().unwrap();
    let norm = t.step(&mut ce, lr, g["clip_max_norm"].as_f64().unwrap());
    t.flush(&mut ce);
    assert!(
        (norm - g["grad_norm_before_clip"].as_f64().unwrap()).abs() < 1e-4,
        "grad norm {norm}"
    );
    let got = ce
        .model()
        .weights
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.hf_values(&ce.model().weights.data)))
        .collect();
    let want = load(&fixture(
        "tests/fixtures/golden/train-step/params_after_step.safetensors",
    ));
    assert_params_match(&got, &want, o["lr"].as_f64().unwrap() as f32, "the step");
    // The model that predicts shares the updated weights.
    let after = ce.logits(&pairs).unwrap().values;
    assert!(
        max_abs_diff(&after, &f32s(&g["logits"])) > 1e-4,
        "prediction did not see the update"
    );
}

#[test]
fn ten_steps_of_crossenc_train_match_pytorch() {
    let ten_steps = |f: &str| require(repo().join("tests/fixtures/train-steps").join(f));
    let g = read_json(&ten_steps("golden.json"));
    let step = read_json(&fixture("tests/fixtures/golden/train-step/golden.json"));
    let tmp = tempfile::tempdir().unwrap();
    // tiny-bert with dropout off, as PyTorch ran it (model.eval()).
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fixture("tests/fixtures/golden/tiny-bert")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg = read_json(&model.join("config.json"));
    cfg["hidden_dropout_prob"] = 0.0.into();
    cfg["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    // The golden batch: 8 pairs and their labels, one batch per epoch, so every step sees it.
    let data = tmp.path().join("pairs.jsonl");
    let rows: Vec<String> = golden_pairs(&step)
        .iter()
        .zip(f32s(&step["labels"]))
        .map(|((a, b), y)| serde_json::json!({"first": a, "second": b, "label": y}).to_string())
        .collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let out = tmp.path().join("out");
    let arg = |k: &str| g[k].to_string();
    let (steps, batch, warmup, lr, clip, wd, max_len) = (
        arg("steps"),
        arg("batch_size"),
        arg("warmup_steps"),
        arg("lr"),
        arg("max_grad_norm"),
        arg("weight_decay"),
        arg("max_length"),
    );
    stdout(&crossenc(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
        "--epochs",
        &steps,
        "--batch-size",
        &batch,
        "--warmup-steps",
        &warmup,
        "--lr",
        &lr,
        "--max-grad-norm",
        &clip,
        "--weight-decay",
        &wd,
        "--max-length",
        &max_len,
        "--log-steps",
        "1",
        "--quiet",
    ]));

    let logged: Vec<f32> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| r.get("loss").map(|v| v.as_f64().unwrap() as f32))
        .collect();
    let want = f32s(&g["losses"]);
    assert_eq!(logged.len(), want.len(), "one logged loss per step");
    let d = max_abs_diff(&logged, &want);
    assert!(d < 1e-5, "losses differ by {d}: {logged:?} vs {want:?}");
    assert!(
        want[want.len() - 1] < want[0] - 0.2,
        "the fixture must move the model"
    );

    let got = load(&out.join("model.safetensors"));
    let want = load(&ten_steps("params_after.safetensors"));
    let before = load(&fixture(
        "tests/fixtures/golden/tiny-bert/model.safetensors",
    ));
    for (name, w) in &want {
        assert!(
            max_abs_diff(w, &before[name]) > 0.0,
            "{name}: PyTorch did not move it"
        );
    }
    let sum_lr = f32s(&g["lrs"]).iter().sum::<f32>();
    assert_params_match(&got, &want, sum_lr, "ten steps");
}

fn flat(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Every tensor of a safetensors file, flattened, by name.
fn load(path: &std::path::Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .iter()
        .map(|(n, t)| (n.clone(), flat(t)))
        .collect()
}

/// Asserts that our parameters are PyTorch's within 1e-4. The attention key biases are the
/// exception: their true gradient is 0 (see above) and Adam divides both sides' rounding noise
/// by its own magnitude, so each step moves them by up to the learning rate: `key_bias_bound`
/// is the sum of the rates.
fn assert_params_match(
    got: &HashMap<String, Vec<f32>>,
    want: &HashMap<String, Vec<f32>>,
    key_bias_bound: f32,
    after: &str,
) {
    assert_eq!(got.len(), want.len(), "parameter count");
    let mut worst = (0f32, String::new());
    for (name, w) in want {
        let d = max_abs_diff(&got[name], w);
        if name.ends_with("attention.self.key.bias") {
            assert!(d <= 2.0 * key_bias_bound, "{name}: {d}");
        } else if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    eprintln!(
        "largest weight difference after {after}: {} in {}",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 1e-4,
        "weights after {after} differ by {} in {}",
        worst.0,
        worst.1
    );
}

/// One training batch of ModernBERT, GTE and DeBERTa against PyTorch
/// (`scripts/golden_families.py`): the loss and every parameter's gradient, through rotary
/// embeddings, sliding-window attention, the gated MLPs, pre-norm layers, biasless and biased
/// layers, CLS and mean pooling, and disentangled attention (the relative table and its
/// projections included).
#[test]
fn newer_families_gradients_match_pytorch() {
    for (name, loss_kind) in [
        ("tiny-modernbert", LossKind::Bce),
        ("tiny-modernbert-mean", LossKind::CrossEntropy),
        ("tiny-gte", LossKind::Bce),
        ("tiny-deberta-v3", LossKind::Bce),
        ("tiny-deberta-v2", LossKind::CrossEntropy),
    ] {
        let dir = repo().join("tests/fixtures").join(name);
        let g = read_json(&require(dir.join("golden.json")));
        let opts = LoadOptions {
            max_length: Some(g["max_length"].as_u64().unwrap() as usize),
            ..Default::default()
        };
        let mut ce = CrossEncoder::load(dir.to_str().unwrap(), &opts).unwrap();
        let mut t = Trainable::new(&mut ce, AdamWConfig::default()).unwrap();
        let enc = ce.tokenizer().encode_pairs(&golden_pairs(&g)).unwrap();
        let labels = f32s(&g["labels"]);
        let loss = t
            .accumulate(
                &mut ce,
                enc.pack(0..enc.len()),
                &labels,
                loss_kind,
                None,
                1.0,
            )
            .unwrap();
        let want_loss = g["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - want_loss).abs() < 1e-5,
            "{name}: loss {loss} vs {want_loss}"
        );
        let want = load(&dir.join("grads.safetensors"));
        let grads = t.named_grads(&ce);
        assert_eq!(grads.len(), want.len(), "{name}: parameter count");
        for (pname, got) in grads {
            let want = &want[&pname];
            if pname.ends_with("pos_key_proj.bias") {
                // It shifts every content-to-position score of a query alike, which softmax
                // ignores: its true gradient is 0, and both sides hold rounding noise.
                let noise = got.iter().chain(want).fold(0f32, |m, x| m.max(x.abs()));
                assert!(noise < 1e-6, "{name}: {pname} should vanish, got {noise}");
                continue;
            }
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_abs_diff(&got, want);
            assert!(
                d <= 1e-4 * scale,
                "{name}: {pname}: gradient differs by {d} (largest element {scale})"
            );
            assert!(
                scale > 0.0,
                "{name}: {pname} received no gradient in PyTorch"
            );
        }
    }
}
