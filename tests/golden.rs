//! Parity with PyTorch: token ids, logits and predict scores of tests/fixtures/golden (computed by PyTorch: its README).

mod common;

use common::*;
use crossenc::model::tokenize::Tokens;
use crossenc::{CrossEncoder, LoadOptions, Quantization};

fn load(dir: &std::path::Path, max_length: usize) -> CrossEncoder {
    let opts = LoadOptions {
        max_length: Some(max_length),
        ..Default::default()
    };
    CrossEncoder::load(dir.to_str().unwrap(), &opts).unwrap()
}

fn batch_of(ce: &CrossEncoder, pairs: &[(String, String)]) -> Tokens {
    let enc = ce.tokenizer().encode_pairs(pairs).unwrap();
    enc.pack(0..enc.len())
}

/// Asserts that the packed `got` holds the unpadded rows of the reference's padded `[rows,
/// width]` `want`, whose attention mask marks the real tokens (padded on the right, or on the
/// left for a causal LM).
fn assert_packed(got: &[u32], tokens: &Tokens, want: &[u32], mask: &[u32], what: &str) {
    let width = want.len() / tokens.sequences();
    for s in 0..tokens.sequences() {
        let row = &mask[s * width..(s + 1) * width];
        let len = row.iter().filter(|&&m| m == 1).count();
        let start = row.iter().position(|&m| m == 1).unwrap_or(0);
        assert!(
            row[start..start + len].iter().all(|&m| m == 1),
            "{what}: padding inside pair {s}"
        );
        assert_eq!(tokens.sequence(s).len(), len, "{what}: length of pair {s}");
        assert_eq!(
            &got[tokens.sequence(s)],
            &want[s * width + start..][..len],
            "{what}: pair {s}"
        );
    }
}

/// The golden pairs packed by `ce`, with their token ids and token types checked against the
/// reference's padded ones.
fn packed_golden_pairs(ce: &CrossEncoder, g: &serde_json::Value, what: &str) -> Tokens {
    let batch = batch_of(ce, &golden_pairs(g));
    let mask = u32s(&g["attention_mask"]);
    let ids = u32s(&g["input_ids"]);
    assert_packed(&batch.input_ids, &batch, &ids, &mask, what);
    match (&g["token_type_ids"], &batch.token_type_ids) {
        (serde_json::Value::Null, None) => {}
        (serde_json::Value::Null, Some(_)) => panic!("{what}: no token types expected"),
        (want, got) => {
            let got = got.as_ref().expect("token types expected");
            assert_packed(got, &batch, &u32s(want), &mask, what);
        }
    }
    batch
}

fn check_tiny(name: &str) {
    check_tiny_at(&fixture(&format!("tests/fixtures/golden/{name}")), name);
}

/// The model folder `dir` scores the golden pairs of its `golden.json` as PyTorch did.
fn check_tiny_at(dir: &std::path::Path, name: &str) {
    let g = read_json(&require(dir.join("golden.json")));
    let ce = load(dir, g["max_length"].as_u64().unwrap() as usize);
    assert!(
        ce.new_head_params().is_empty(),
        "{name}: head should come from the checkpoint"
    );
    let pairs = golden_pairs(&g);
    let batch = packed_golden_pairs(&ce, &g, name);
    let logits = ce.model().forward(&batch).unwrap();
    let d = max_abs_diff(&logits, &f32s(&g["logits"]));
    assert!(d < 1e-4, "{name}: logits differ by {d}");

    let expected_act = g["predict_activation"].as_str().unwrap();
    assert!(
        ce.activation().torch_name().ends_with(expected_act),
        "{name}: activation {:?}, golden {expected_act}",
        ce.activation()
    );
    let want = f32s(&g["predict_scores"]);
    for bs in [1, 3, 8] {
        let mut ce = load(dir, g["max_length"].as_u64().unwrap() as usize);
        ce.set_batch_size(bs);
        let got = ce.predict(&pairs).unwrap().values;
        let d = max_abs_diff(&got, &want);
        assert!(
            d < 1e-4,
            "{name}: predict scores at batch size {bs} differ by {d}"
        );
    }
}

/// int8 scoring against ONNX Runtime's int8 (`quantize_dynamic`) on the same golden models:
/// as close to PyTorch's f32 scores on average (measured here: 0.047 against 0.089, and 0.079
/// with 7-bit weights), and never far off. These random-weight models
/// (weights of std 0.4, 20 times BERT's initialisation) amplify rounding as trained models do
/// not; `tests/fixtures/ort-int8-golden.json` holds ONNX Runtime's errors, written by
/// `scripts/ort_int8_golden.py`.
#[test]
fn int8_scores_are_as_close_to_f32_as_onnx_runtime_int8() {
    let ort = read_json(&require(repo().join("tests/fixtures/ort-int8-golden.json")));
    // 7-bit weights (kernels without VNNI) double the error of these models (see `weight_bits`).
    let bound = if crossenc::ops::int8::weight_bits() == 8 {
        0.15
    } else {
        0.35
    };
    let (mut ours, mut theirs) = (0.0, 0.0);
    for name in TINY {
        let dir = fixture(&format!("tests/fixtures/golden/{name}"));
        let d = reduced_error(&dir, name, Quantization::Int8);
        let mut ce =
            CrossEncoder::load(dir.to_str().unwrap(), &reduced(&dir, Quantization::Int8)).unwrap();
        let refused = crossenc::train::Trainable::new(&mut ce, Default::default());
        assert!(refused.is_err(), "{name}: a quantized model must not train");
        let ort_d = ort[name].as_f64().unwrap() as f32;
        eprintln!("{name}: ONNX Runtime int8 differs from f32 by {ort_d:.4}");
        assert!(d < bound, "{name}: int8 scores differ from f32 by {d}");
        ours += d;
        theirs += ort_d;
    }
    assert!(
        ours <= theirs,
        "mean error {ours} vs ONNX Runtime's {theirs} (x6)"
    );
}

/// int8 on a real pretrained encoder: every pair's [CLS] state keeps its direction.
#[test]
fn int8_minilm_hidden_state_keeps_its_direction() {
    let Some(dir) = minilm() else { return };
    let g = read_json(&fixture("tests/fixtures/golden/minilm-l6-base.json"));
    let opts = LoadOptions {
        max_length: Some(g["max_length"].as_u64().unwrap() as usize),
        quantize: Some(Quantization::Int8),
        ..Default::default()
    };
    let ce = CrossEncoder::load(dir.to_str().unwrap(), &opts).unwrap();
    let batch = packed_golden_pairs(&ce, &g, "minilm");
    let hidden = ce.model().encode(&batch).unwrap();
    let cls = crossenc::model::first_tokens(&hidden, &batch, ce.config().hidden_size);
    let h = ce.config().hidden_size;
    for (i, (got, want)) in cls
        .chunks(h)
        .zip(f32s(&g["cls_hidden"]).chunks(h))
        .enumerate()
    {
        let dot: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(got) * norm(want));
        eprintln!("pair {i}: cosine {cos:.5}");
        assert!(
            cos > 0.99,
            "pair {i}: int8 [CLS] state at cosine {cos} from f32's"
        );
    }
}

/// bf16 scoring on every family's tiny models: scores near f32's (measured 0.0008-0.028; on
/// the six shared models equal to four decimals to PyTorch's with the same layers rounded to
/// bf16, `scripts/quantized_golden_errors.py`), and independent of the batch (each output sums its
/// products in one order). Where the CPU lacks AVX-512 BF16 the loader refuses, and says so.
#[test]
fn bf16_scores_every_family_close_to_f32() {
    let dirs = TINY
        .iter()
        .map(|n| (*n, fixture(&format!("tests/fixtures/golden/{n}"))))
        .chain(
            NEWER
                .iter()
                .map(|n| (*n, repo().join("tests/fixtures").join(n))),
        );
    for (name, dir) in dirs {
        if !crossenc::ops::bf16::available() {
            let opts = reduced(&dir, Quantization::Bf16);
            let err = CrossEncoder::load(dir.to_str().unwrap(), &opts)
                .err()
                .unwrap();
            assert!(err.to_string().contains("AVX-512 BF16"), "{err}");
            continue;
        }
        let d = reduced_error(&dir, name, Quantization::Bf16);
        assert!(d < 0.04, "{name}: bf16 differs from f32 by {d}");
    }
}

/// Loading options for the golden model in `dir`, its linear layers in `q`.
fn reduced(dir: &std::path::Path, q: Quantization) -> LoadOptions {
    let g = read_json(&require(dir.join("golden.json")));
    LoadOptions {
        max_length: Some(g["max_length"].as_u64().unwrap() as usize),
        quantize: Some(q),
        ..Default::default()
    }
}

/// The largest change of the golden model's scores (in `dir`) when its linear layers run in
/// `q`: not zero, and the same at batch sizes 1 and 8 (each pair is rounded on its own, and
/// each output sums its products in one order).
fn reduced_error(dir: &std::path::Path, name: &str, q: Quantization) -> f32 {
    let g = read_json(&require(dir.join("golden.json")));
    let pairs = golden_pairs(&g);
    let errors = [1, 8].map(|bs| {
        let mut ce = CrossEncoder::load(dir.to_str().unwrap(), &reduced(dir, q)).unwrap();
        assert_eq!(ce.quantization(), Some(q));
        ce.set_batch_size(bs);
        let got = ce.predict(&pairs).unwrap().values;
        max_abs_diff(&got, &f32s(&g["predict_scores"]))
    });
    eprintln!("{name}: {q} differs from f32 by {:.4}", errors[0]);
    assert_eq!(
        errors[0], errors[1],
        "{name}: {q} scores depend on the batch"
    );
    assert!(
        errors[0] > 0.0,
        "{name}: {q} scores equal f32's: not rounded?"
    );
    errors[0]
}

/// The newer families' tiny models, in `tests/fixtures` (`scripts/golden_families.py`).
const NEWER: [&str; 7] = [
    "tiny-modernbert",
    "tiny-modernbert-mean",
    "tiny-gte",
    "tiny-deberta-v3",
    "tiny-deberta-v2",
    "tiny-qwen3-reranker",
    "tiny-qwen2-reranker",
];

const TINY: [&str; 6] = [
    "tiny-bert",
    "tiny-bert-3labels",
    "tiny-roberta",
    "tiny-xlm-roberta",
    "tiny-distilbert",
    "tiny-electra",
];

#[test]
fn tiny_bert() {
    check_tiny("tiny-bert");
}

#[test]
fn tiny_bert_3labels() {
    check_tiny("tiny-bert-3labels");
}

#[test]
fn tiny_roberta() {
    check_tiny("tiny-roberta");
}

#[test]
fn tiny_xlm_roberta() {
    check_tiny("tiny-xlm-roberta");
}

#[test]
fn tiny_distilbert() {
    check_tiny("tiny-distilbert");
}

#[test]
fn tiny_electra() {
    check_tiny("tiny-electra");
}

#[test]
fn minilm_hidden_state_and_pooler() {
    let Some(dir) = minilm() else { return };
    let g = read_json(&fixture("tests/fixtures/golden/minilm-l6-base.json"));
    let ce = load(&dir, g["max_length"].as_u64().unwrap() as usize);
    // A bare BertModel: the encoder and pooler come from the checkpoint, the classifier is new.
    assert_eq!(
        ce.new_head_params(),
        vec![
            "classifier.weight".to_string(),
            "classifier.bias".to_string()
        ]
    );
    let batch = packed_golden_pairs(&ce, &g, "minilm");
    assert!(
        batch.token_type_ids.is_some(),
        "BERT's tokenizer returns token types"
    );
    let hidden = ce.model().encode(&batch).unwrap();
    let cls = crossenc::model::first_tokens(&hidden, &batch, ce.config().hidden_size);
    let d = max_abs_diff(&cls, &f32s(&g["cls_hidden"]));
    assert!(d < 1e-4, "[CLS] hidden state differs by {d}");
    let pooled = ce.model().pooler(&cls).unwrap();
    let d = max_abs_diff(&pooled, &f32s(&g["pooled"]));
    assert!(d < 1e-4, "pooler output differs by {d}");
}

#[test]
fn minilm_bi_encoder_embeddings() {
    let Some(dir) = minilm() else { return };
    let g = read_json(&fixture("tests/fixtures/golden/minilm-l6-embeddings.json"));
    let bi = crossenc::model::bi_encoder::BiEncoder::load(dir.to_str().unwrap(), None).unwrap();
    // max_seq_length comes from the folder's sentence_bert_config.json.
    assert_eq!(
        bi.tokenizer.max_length,
        g["max_seq_length"].as_u64().unwrap() as usize
    );
    let texts = strings(&g["texts"]);
    let emb = bi.embed(&texts).unwrap();
    let got = emb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_abs_diff(&got, &f32s(&g["embeddings"]));
    assert!(d < 1e-4, "embeddings differ by {d}");
    let rows = emb.to_vec2::<f32>().unwrap();
    let cos = |a: usize, b: usize| {
        rows[a]
            .iter()
            .zip(&rows[b])
            .map(|(x, y)| x * y)
            .sum::<f32>()
    };
    assert!((cos(0, 1) as f64 - g["cosine_0_1"].as_f64().unwrap()).abs() < 1e-4);
    assert!((cos(2, 3) as f64 - g["cosine_2_3"].as_f64().unwrap()).abs() < 1e-4);
}

/// An older checkpoint's `pytorch_model.bin` (PyTorch's pickle format, written from the same
/// weights by `scripts/golden_pytorch_bin.py`) scores as the safetensors file does.
#[test]
fn pytorch_model_bin_loads_with_the_same_logits() {
    let golden = fixture("tests/fixtures/golden/tiny-bert");
    let g = read_json(&golden.join("golden.json"));
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&golden).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let bin = require(repo().join("tests/fixtures/tiny-bert/pytorch_model.bin"));
    std::fs::copy(bin, tmp.path().join("pytorch_model.bin")).unwrap();
    let ce = load(tmp.path(), g["max_length"].as_u64().unwrap() as usize);
    assert!(ce.new_head_params().is_empty());
    let batch = packed_golden_pairs(&ce, &g, "tiny-bert (.bin)");
    let d = max_abs_diff(&ce.model().forward(&batch).unwrap(), &f32s(&g["logits"]));
    assert!(d < 1e-4, "logits from pytorch_model.bin differ by {d}");
}

/// A bi-encoder whose `1_Pooling/config.json` asks for the [CLS] token embeds as
/// sentence-transformers does (`tests/fixtures/cls-pooling.json`, written by
/// `scripts/golden_cls_pooling.py`).
#[test]
fn cls_pooling_embeds_as_sentence_transformers() {
    let Some(minilm) = minilm() else { return };
    let g = read_json(&require(repo().join("tests/fixtures/cls-pooling.json")));
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&minilm).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::os::unix::fs::symlink(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(tmp.path().join("1_Pooling")).unwrap();
    std::fs::write(
        tmp.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let max_length = g["max_seq_length"].as_u64().map(|v| v as usize);
    let bi = crossenc::model::bi_encoder::BiEncoder::load(tmp.path().to_str().unwrap(), max_length)
        .unwrap();
    assert_eq!(bi.pooling, crossenc::model::bi_encoder::Pooling::Cls);
    let texts = strings(&g["texts"]);
    let got: Vec<f32> = bi
        .embed(&texts)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = f32s(&g["embeddings"]);
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "CLS-pooled embeddings differ by {d}");
}

/// ModernBERT as transformers and sentence-transformers score it (`tests/fixtures`, written by
/// `scripts/golden_families.py`): rotary embeddings, global and sliding-window layers, the
/// gated MLP, no biases, CLS pooling.
#[test]
fn tiny_modernbert() {
    check_tiny_at(
        &repo().join("tests/fixtures/tiny-modernbert"),
        "tiny-modernbert",
    );
}

/// The same with every bias on, mean pooling and three labels.
#[test]
fn tiny_modernbert_mean() {
    let dir = repo().join("tests/fixtures/tiny-modernbert-mean");
    check_tiny_at(&dir, "tiny-modernbert-mean");
}

/// transformers' GTE: rotary embeddings, the gated MLP, no position table, BERT's pooler.
#[test]
fn tiny_gte() {
    check_tiny_at(&repo().join("tests/fixtures/tiny-gte"), "tiny-gte");
}

/// A Qwen3 re-ranker as sentence-transformers saves one (`Qwen3ForCausalLM`, a chat template
/// over the query/document roles, a `LogitScore` module on "yes" and "no"): the same prompt
/// tokens (two pairs cut at the max length, the template's tail restored) and scores.
#[test]
fn tiny_qwen3_reranker() {
    check_causal_reranker("tiny-qwen3-reranker");
}

/// The same with Qwen2 (mxbai-rerank v2's family): Q/K/V biases, no per-head norms, an
/// untied output projection.
#[test]
fn tiny_qwen2_reranker() {
    check_causal_reranker("tiny-qwen2-reranker");
}

/// A causal LM whose chat template renders only the chat roles (as a base model's does) would
/// score prompts without the pair: refused with a message, as sentence-transformers refuses it.
#[test]
fn a_chat_template_without_the_pair_roles_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = repo().join("tests/fixtures/tiny-qwen3-reranker");
    copy_dir(&fixture, tmp.path());
    std::fs::write(
        tmp.path().join("chat_template.jinja"),
        "{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>{% endif %}{% endfor %}",
    )
    .unwrap();
    let err = CrossEncoder::load(tmp.path().to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("a template without the pair roles must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("does not render a pair's"), "{msg}");
}

/// A template is input like any other: nested loops (10^10 steps, unbounded text) are refused
/// at load, naming the template and the limit, within the template's bounded work.
#[test]
fn a_chat_template_that_loops_without_bound_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &repo().join("tests/fixtures/tiny-qwen3-reranker"),
        tmp.path(),
    );
    let template = tmp.path().join("chat_template.jinja");
    std::fs::write(
        &template,
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    )
    .unwrap();
    let input = tmp.path().join("pairs.tsv");
    std::fs::write(&input, "a query\ta document\n").unwrap();
    let model = tmp.path().to_str().unwrap();
    let (out, peak_mb) = peak_rss_of(&["predict", "-m", model, "-i", input.to_str().unwrap()]);
    fails_with(
        &out,
        &[template.to_str().unwrap(), "limit of 1000000 steps"],
    );
    assert!(peak_mb < 100.0, "peak RSS {peak_mb} MB");
}

/// Copies the files of `from` into `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        match path.is_dir() {
            true => {
                std::fs::create_dir_all(&dest).unwrap();
                copy_dir(&path, &dest);
            }
            false => {
                std::fs::copy(&path, &dest).unwrap();
            }
        }
    }
}

fn check_causal_reranker(name: &str) {
    let dir = repo().join("tests/fixtures").join(name);
    check_tiny_at(&dir, name);
    let g = read_json(&dir.join("golden.json"));
    let mut ce = load(&dir, g["max_length"].as_u64().unwrap() as usize);
    let batch = packed_golden_pairs(&ce, &g, name);
    let cut = (0..batch.sequences())
        .filter(|&s| batch.sequence(s).len() == ce.tokenizer().max_length)
        .count();
    assert!(cut >= 2, "the fixture must cut prompts at the max length");
    let refused = crossenc::train::Trainable::new(&mut ce, Default::default());
    assert!(refused.is_err(), "a causal-LM re-ranker does not train yet");
    let out = tempfile::tempdir().unwrap();
    assert!(
        ce.save(out.path()).is_err(),
        "saving would write a classifier"
    );
}

/// DeBERTa-v3's shape: disentangled attention with log-bucketed relative positions, shared
/// attention keys, a normed relative table, no absolute positions.
#[test]
fn tiny_deberta_v3() {
    check_tiny_at(
        &repo().join("tests/fixtures/tiny-deberta-v3"),
        "tiny-deberta-v3",
    );
}

/// DeBERTa-v2's: plain relative positions, its own position projections, absolute positions
/// and token types, three labels.
#[test]
fn tiny_deberta_v2() {
    check_tiny_at(
        &repo().join("tests/fixtures/tiny-deberta-v2"),
        "tiny-deberta-v2",
    );
}

/// int8 scoring on the newer families' tiny models: every linear layer of the encoder (or the
/// decoder) quantized, scores close to f32's and independent of the batch (measured on the VNNI
/// kernel: 0.003-0.022).
#[test]
fn int8_scores_the_newer_families() {
    // 7-bit weights (kernels without VNNI) double the error (see `weight_bits`).
    let bound = match crossenc::ops::int8::weight_bits() {
        8 => 0.05,
        _ => 0.1,
    };
    for name in NEWER {
        let dir = repo().join("tests/fixtures").join(name);
        let d = reduced_error(&dir, name, Quantization::Int8);
        assert!(d < bound, "{name}: int8 scores differ from f32 by {d}");
    }
}
