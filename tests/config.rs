//! Config values that the engine relies on are checked at load, with an error that names the
//! key; no value, however odd, makes loading or scoring panic.

mod common;

use common::*;
use crossenc::{CrossEncoder, LoadOptions};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// tiny-bert (hidden 32, 2 layers, 4 heads) in a temporary folder with `edit` applied to its
/// config.json.
fn tiny_bert_with(edit: impl Fn(&mut Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("tests/fixtures/golden/tiny-bert")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let path = tmp.path().join("config.json");
    let mut cfg = read_json(&path);
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    tmp
}

fn load_error(dir: &std::path::Path, opts: &LoadOptions) -> String {
    match CrossEncoder::load(dir.to_str().unwrap(), opts) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let cases = [
        (
            "num_attention_heads",
            json!(0),
            "\"num_attention_heads\" is 0",
        ),
        (
            "num_attention_heads",
            json!(3),
            "must divide \"hidden_size\" (32)",
        ),
        (
            "num_attention_heads",
            json!(64),
            "must divide \"hidden_size\" (32)",
        ),
        (
            "hidden_dropout_prob",
            json!(1.5),
            "\"hidden_dropout_prob\" is 1.5",
        ),
        (
            "attention_probs_dropout_prob",
            json!(-0.1),
            "\"attention_probs_dropout_prob\"",
        ),
        ("layer_norm_eps", json!(0.0), "\"layer_norm_eps\" is 0"),
        (
            "max_position_embeddings",
            json!(0),
            "\"max_position_embeddings\" (0)",
        ),
        ("intermediate_size", json!(0), "\"intermediate_size\" is 0"),
        (
            "vocab_size",
            json!(-5),
            "\"vocab_size\" must be a non-negative integer",
        ),
        (
            "num_hidden_layers",
            json!(1),
            "holds 2 layers but config.json says num_hidden_layers = 1",
        ),
        (
            "num_hidden_layers",
            json!(3),
            "holds 2 layers but config.json says num_hidden_layers = 3",
        ),
        ("hidden_size", json!(64), "says hidden_size = 64"),
    ];
    for (key, value, want) in cases {
        let dir = tiny_bert_with(|c| c[key] = value.clone());
        let err = load_error(dir.path(), &LoadOptions::default());
        assert!(err.contains(want), "{key} = {value}: {err}");
        assert!(
            err.contains("config.json") || err.contains("model.safetensors"),
            "{err}"
        );
    }
}

#[test]
fn a_max_length_without_room_for_text_is_refused() {
    let dir = tiny_bert_with(|_| {});
    for max_length in [0, 3] {
        let opts = LoadOptions {
            max_length: Some(max_length),
            ..Default::default()
        };
        let err = load_error(dir.path(), &opts);
        assert!(err.contains("`max_length` must be at least 4"), "{err}");
    }
}

#[test]
fn random_config_values_load_or_fail_cleanly() {
    let keys = [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
        "pad_token_id",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "layer_norm_eps",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let key = keys[rng.random_range(0..keys.len())];
        let value = match rng.random_range(0..5) {
            0 => json!(rng.random_range(0..100u32)),
            1 => json!(rng.random_range(-2.0..2.0f64)),
            2 => json!(-(rng.random_range(1..1000i64))),
            3 => json!("text"),
            _ => json!(u32::MAX),
        };
        let dir = tiny_bert_with(|c| c[key] = value.clone());
        // Loading and scoring return a result or an error; a panic fails the test.
        if let Ok(ce) = CrossEncoder::load(dir.path().to_str().unwrap(), &LoadOptions::default()) {
            let scores = ce.predict(&[("a cat", "a dog"), ("", "x")]);
            if let Ok(s) = scores {
                assert_eq!(s.values.len(), 2, "{key} = {value}");
            }
        }
    }
}
