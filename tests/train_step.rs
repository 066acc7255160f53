//! One training step on tiny-bert against PyTorch: loss, every gradient, the clipped AdamW step.

mod common;

use candle_core::Device;
use common::*;
use crossenc::ops::Dropout;
use crossenc::train::optim::{clip_grad_norm, AdamWConfig};
use crossenc::train::{LossKind, Trainable};
use crossenc::{CrossEncoder, LoadOptions};

#[test]
fn one_step_matches_pytorch() {
    let g = read_json(&shared("golden/train-step/golden.json"));
    let dir = shared("golden/tiny-bert");
    let opts = LoadOptions {
        max_length: Some(g["max_length"].as_u64().unwrap() as usize),
        ..Default::default()
    };
    let mut ce = CrossEncoder::load(dir.to_str().unwrap(), &Device::Cpu, &opts).unwrap();
    let o = &g["optimizer"];
    let adamw = AdamWConfig {
        beta1: o["betas"][0].as_f64().unwrap(),
        beta2: o["betas"][1].as_f64().unwrap(),
        eps: o["eps"].as_f64().unwrap(),
        weight_decay: o["weight_decay"].as_f64().unwrap(),
    };
    let mut t = Trainable::new(&mut ce, adamw).unwrap();
    let pairs = golden_pairs(&g);
    let enc = ce.tokenizer.encode_pairs(&pairs).unwrap();
    let labels = f32s(&g["labels"]);
    let (loss, mut grads) = t
        .loss_and_grads(
            &ce,
            &enc.iter().collect::<Vec<_>>(),
            &labels,
            LossKind::Bce,
            &mut Dropout::off(),
        )
        .unwrap();
    assert!(
        (loss - g["loss"].as_f64().unwrap() as f32).abs() < 1e-5,
        "loss {loss}"
    );

    let want_grads =
        candle_core::safetensors::load(shared("golden/train-step/grads.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(want_grads.len(), t.opt.names.len(), "parameter count");
    for (name, got) in t.opt.names.iter().zip(&grads) {
        let want = want_grads[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(got, &want);
        if name.ends_with("attention.self.key.bias") {
            // Adding the same key bias to every key shifts each score row by a constant, which
            // softmax ignores: its true gradient is 0, and both sides hold rounding noise.
            let noise = got.iter().chain(&want).fold(0f32, |m, x| m.max(x.abs()));
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

    let norm = clip_grad_norm(&mut grads, g["clip_max_norm"].as_f64().unwrap());
    assert!(
        (norm - g["grad_norm_before_clip"].as_f64().unwrap()).abs() < 1e-4,
        "grad norm {norm}"
    );
    t.opt.step(&grads, o["lr"].as_f64().unwrap()).unwrap();
    let want_params = candle_core::safetensors::load(
        shared("golden/train-step/params_after_step.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut worst = (0f32, String::new());
    for (name, var) in t.opt.names.iter().zip(&t.opt.vars) {
        // Adam divides the key bias's rounding-noise gradient by its own magnitude: its update
        // is noise on both sides (see above), bounded by the learning rate.
        let tol_lr = name.ends_with("attention.self.key.bias");
        let got = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = max_abs_diff(
            &got,
            &want_params[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        if tol_lr {
            assert!(d <= 2.0 * o["lr"].as_f64().unwrap() as f32, "{name}: {d}");
            continue;
        }
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    eprintln!(
        "largest weight difference after the step: {} in {}",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 1e-4,
        "weights after the step differ by {} in {}",
        worst.0,
        worst.1
    );
    // The model that predicts shares the updated weights.
    let after = ce.logits(&pairs).unwrap().values;
    assert!(
        max_abs_diff(&after, &f32s(&g["logits"])) > 1e-4,
        "prediction did not see the update"
    );
}
