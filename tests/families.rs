//! Every family trains (each parameter gets a gradient, a step lowers the loss) and saves back
//! in HF format with the right architecture, reloading to the same logits.

mod common;

use common::*;
use crossenc::train::optim::AdamWConfig;
use crossenc::train::{LossKind, Trainable};
use crossenc::{CrossEncoder, LoadOptions};

fn check_family(name: &str, arch: &str) {
    check_family_at(
        &fixture(&format!("tests/fixtures/golden/{name}")),
        name,
        arch,
    );
}

fn check_family_at(dir: &std::path::Path, name: &str, arch: &str) {
    let g = read_json(&require(dir.join("golden.json")));
    let pairs = golden_pairs(&g);
    let labels = [1.0f32, 0.0, 0.9, 0.2, 0.5, 0.1, 0.3, 0.52];
    let mut ce = CrossEncoder::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    // Class indices for a three-label model.
    let (labels, loss) = match ce.config().num_labels() {
        1 => (labels.to_vec(), LossKind::Bce),
        _ => (
            vec![0.0, 2.0, 1.0, 0.0, 2.0, 1.0, 1.0, 0.0],
            LossKind::CrossEntropy,
        ),
    };
    let mut t = Trainable::new(&mut ce, AdamWConfig::default()).unwrap();
    let enc = ce.tokenizer().encode_pairs(&pairs).unwrap();
    let before = t
        .accumulate(&mut ce, enc.pack(0..enc.len()), &labels, loss, None, 1.0)
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
        .accumulate(&mut ce, enc.pack(0..enc.len()), &labels, loss, None, 1.0)
        .unwrap();
    assert!(after < before, "{name}: loss {before} -> {after}");

    t.flush(&mut ce);
    let out = tempfile::tempdir().unwrap();
    ce.save(out.path()).unwrap();
    let cfg = read_json(&out.path().join("config.json"));
    assert_eq!(cfg["architectures"][0], arch);
    // The tensors transformers wrote, by name and shape: the folder loads back in it.
    let shapes = |p: std::path::PathBuf| -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = candle_core::safetensors::load(p, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.dims().to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        shapes(out.path().join("model.safetensors")),
        shapes(dir.join("model.safetensors")),
        "{name}: saved tensors"
    );
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

#[test]
fn modernbert_trains_and_round_trips() {
    for name in ["tiny-modernbert", "tiny-modernbert-mean"] {
        let dir = repo().join("tests/fixtures").join(name);
        check_family_at(&dir, name, "ModernBertForSequenceClassification");
    }
}

#[test]
fn gte_trains_and_round_trips() {
    let dir = repo().join("tests/fixtures/tiny-gte");
    check_family_at(&dir, "tiny-gte", "GteForSequenceClassification");
}

/// The hub's GTE checkpoints (`Alibaba-NLP/gte-multilingual-reranker-base`) are Alibaba's
/// remote code, `model_type: "new"`, with `new.` names and a top-level `rope_theta`: tiny-gte
/// rewritten that way scores the same, and saves as transformers' own `gte` (no remote code).
#[test]
fn gte_remote_code_layout_loads_and_saves_as_transformers_gte() {
    let fixture = repo().join("tests/fixtures/tiny-gte");
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    std::fs::create_dir(&hub).unwrap();
    for f in std::fs::read_dir(&fixture).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, hub.join(f.file_name().unwrap())).unwrap();
    }
    let weights = candle_core::safetensors::load(
        fixture.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> = weights
        .iter()
        .map(|(k, t)| (k.replacen("gte.", "new.", 1), t.clone()))
        .collect();
    candle_core::safetensors::save(&renamed, hub.join("model.safetensors")).unwrap();
    let mut cfg = read_json(&fixture.join("config.json"));
    let obj = cfg.as_object_mut().unwrap();
    let theta = obj.remove("rope_parameters").unwrap()["rope_theta"].clone();
    obj.insert("rope_theta".into(), theta);
    obj.insert("model_type".into(), "new".into());
    obj.insert(
        "architectures".into(),
        serde_json::json!(["NewForSequenceClassification"]),
    );
    obj.insert(
        "auto_map".into(),
        serde_json::json!({"AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig"}),
    );
    obj.insert("position_embedding_type".into(), "rope".into());
    obj.insert("pack_qkv".into(), true.into());
    std::fs::write(hub.join("config.json"), cfg.to_string()).unwrap();

    let g = read_json(&fixture.join("golden.json"));
    let pairs = golden_pairs(&g);
    let load = |dir: &std::path::Path| {
        CrossEncoder::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
    };
    let (ours, want) = (load(&hub), load(&fixture));
    assert!(
        ours.new_head_params().is_empty(),
        "head lost in the renaming"
    );
    assert_eq!(
        ours.logits(&pairs).unwrap().values,
        want.logits(&pairs).unwrap().values
    );
    let out = tmp.path().join("saved");
    ours.save(&out).unwrap();
    let saved = read_json(&out.join("config.json"));
    assert_eq!(saved["model_type"], "gte");
    assert_eq!(saved["architectures"][0], "GteForSequenceClassification");
    assert!(saved.get("auto_map").is_none(), "remote code kept");
    let names = |p: std::path::PathBuf| -> std::collections::BTreeSet<String> {
        candle_core::safetensors::load(p, &candle_core::Device::Cpu)
            .unwrap()
            .into_keys()
            .collect()
    };
    assert_eq!(
        names(out.join("model.safetensors")),
        names(fixture.join("model.safetensors"))
    );

    // A variant transformers' gte does not implement is refused by name.
    obj_insert(
        &hub,
        "rope_scaling",
        serde_json::json!({"type": "ntk", "factor": 2.0}),
    );
    let err = CrossEncoder::load(hub.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("NTK rope scaling must be refused");
    assert!(format!("{err:#}").contains("rope_scaling"), "{err:#}");
}

fn obj_insert(dir: &std::path::Path, key: &str, value: serde_json::Value) {
    let mut cfg = read_json(&dir.join("config.json"));
    cfg.as_object_mut().unwrap().insert(key.into(), value);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn deberta_trains_and_round_trips() {
    for name in ["tiny-deberta-v3", "tiny-deberta-v2"] {
        let dir = repo().join("tests/fixtures").join(name);
        check_family_at(&dir, name, "DebertaV2ForSequenceClassification");
    }
}
