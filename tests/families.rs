//! Every family trains (each parameter gets a gradient, a step lowers the loss) and saves back
//! in HF format with the right architecture, reloading to the same logits.

mod common;

use common::*;
use crossenc::train::optim::AdamWConfig;
use crossenc::train::{LossKind, Trainable};
use crossenc::{CrossEncoder, LoadOptions};

fn check_family(name: &str, arch: &str) {
    let dir = shared(&format!("golden/{name}"));
    let g = read_json(&dir.join("golden.json"));
    let pairs = golden_pairs(&g);
    let labels = [1.0f32, 0.0, 0.9, 0.2, 0.5, 0.1, 0.3, 0.52];
    let mut ce = CrossEncoder::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut t = Trainable::new(&ce, AdamWConfig::default()).unwrap();
    let enc = ce.tokenizer().encode_pairs(&pairs).unwrap();
    let batch: Vec<_> = enc.iter().collect();
    let before = t
        .accumulate(&mut ce, &batch, &labels, LossKind::Bce, None, 1.0)
        .unwrap();
    let on_disk =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(t.named_grads(&ce).len(), on_disk.len());
    for (pname, gr) in t.named_grads(&ce) {
        let largest = gr.iter().fold(0f32, |m, x| m.max(x.abs()));
        if pname.ends_with("attention.self.key.bias") || pname.ends_with("attention.k_lin.bias") {
            // Softmax ignores a shift shared by every key: the true gradient is 0.
            assert!(
                largest < 1e-5,
                "{name}: {pname} should get no gradient, got {largest}"
            );
        } else {
            assert!(largest > 0.0, "{name}: {pname} received no gradient");
        }
    }
    t.step(&mut ce, 1e-3, 1.0);
    let after = t
        .accumulate(&mut ce, &batch, &labels, LossKind::Bce, None, 1.0)
        .unwrap();
    assert!(after < before, "{name}: loss {before} -> {after}");

    t.flush(&mut ce);
    let out = tempfile::tempdir().unwrap();
    ce.save(out.path()).unwrap();
    let cfg = read_json(&out.path().join("config.json"));
    assert_eq!(cfg["architectures"][0], arch);
    let reloaded =
        CrossEncoder::load(out.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(
        reloaded.new_head_params().is_empty(),
        "{name}: head lost on save"
    );
    assert_eq!(reloaded.activation(), ce.activation());
    let d = max_abs_diff(
        &ce.logits(&pairs).unwrap().values,
        &reloaded.logits(&pairs).unwrap().values,
    );
    assert!(d < 1e-6, "{name}: logits after reload differ by {d}");
}

#[test]
fn bert_trains_and_round_trips() {
    check_family("tiny-bert", "BertForSequenceClassification");
}

#[test]
fn roberta_trains_and_round_trips() {
    check_family("tiny-roberta", "RobertaForSequenceClassification");
}

#[test]
fn xlm_roberta_trains_and_round_trips() {
    check_family("tiny-xlm-roberta", "XLMRobertaForSequenceClassification");
}

#[test]
fn distilbert_trains_and_round_trips() {
    check_family("tiny-distilbert", "DistilBertForSequenceClassification");
}

#[test]
fn electra_trains_and_round_trips() {
    check_family("tiny-electra", "ElectraForSequenceClassification");
}
