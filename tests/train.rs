//! Training end to end: loss goes down, kill-and-resume reproduces the weights, bad data is
//! reported, the saved folder reloads, hub datasets load through the cache.

mod common;

use candle_core::Device;
use common::hub_server;
use common::*;
use crossenc::data::{self, Columns, HeaderMode, Table};
use crossenc::progress::Silent;
use crossenc::train::{self, LossKind, TrainConfig};
use crossenc::{CrossEncoder, LoadOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

fn stsb(split: &str) -> String {
    fixture(&format!("data/stsb/stsb-en-{split}.csv"))
        .to_str()
        .unwrap()
        .to_string()
}

/// The first `n` STS-B training pairs, labels scaled to [0, 1].
fn stsb_examples(n: usize) -> Vec<data::Example> {
    let table = Table::read(&stsb("train"), HeaderMode::Auto, &[]).unwrap();
    let (mut ex, _) = data::read_examples(&table, &Columns::default(), false).unwrap();
    ex.truncate(n);
    ex.iter_mut().for_each(|e| e.label /= 5.0);
    ex
}

fn tiny_bert() -> CrossEncoder {
    CrossEncoder::load(
        fixture("tests/fixtures/golden/tiny-bert").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn a_few_steps_on_stsb_lower_the_loss_and_the_saved_model_reloads() {
    let examples = stsb_examples(256);
    let mut ce = tiny_bert();
    let before = train::mean_loss(&ce, &examples, LossKind::Bce).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        lr: 1e-3,
        warmup_ratio: 0.0,
        progress: Arc::new(Silent),
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let data = train::TrainData::new(ce.tokenizer(), &examples).unwrap();
    let summary = train::train(
        &mut ce,
        &data,
        Some(&examples[..64]),
        &cfg,
        out.path(),
        train::OutputMode::New,
    )
    .unwrap();
    assert_eq!(summary.steps, 48);
    let after = train::mean_loss(&ce, &examples, LossKind::Bce).unwrap();
    assert!(after < before - 0.01, "loss {before} -> {after}");

    // What landed in the output folder is the model in memory (the best on dev).
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_str()))
        .collect();
    let in_memory = ce.predict(&pairs).unwrap();
    let reloaded =
        CrossEncoder::load(out.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(reloaded.new_head_params().is_empty());
    assert!(max_abs_diff(&in_memory.values, &reloaded.predict(&pairs).unwrap().values) < 1e-6);
    for f in [
        "config.json",
        "config_sentence_transformers.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "metrics.jsonl",
        "training.svg",
    ] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }
    let cfg_json = read_json(&out.path().join("config.json"));
    assert_eq!(
        cfg_json["architectures"][0],
        "BertForSequenceClassification"
    );
    assert_eq!(cfg_json["id2label"]["0"], "LABEL_0");
    let log = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let evals = log.lines().filter(|l| l.contains("\"eval\"")).count();
    assert_eq!(evals, 3, "one evaluation per epoch: {log}");
    assert!(std::fs::read_to_string(out.path().join("training.svg"))
        .unwrap()
        .contains("<polyline"));
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--model",
        "",
        "--output",
        out,
        "--train",
        "",
        "--label-range",
        "0:5",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--save-steps",
        "40",
        "--quiet",
    ];
    v.extend_from_slice(extra);
    v
}

/// In f32, and in bf16 where the CPU has a bf16 kernel (its copies of the weights are made anew from the
/// restored ones).
#[test]
fn killed_and_resumed_run_ends_with_the_same_weights() {
    killed_and_resumed("f32");
    if crossenc::ops::bf16::available() {
        killed_and_resumed("bf16");
    }
}

fn killed_and_resumed(dtype: &str) {
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    // 800 pairs at batch 4: 200 steps, checkpoints every 40.
    let lines: Vec<String> = std::fs::read_to_string(stsb("train"))
        .unwrap()
        .lines()
        .take(800)
        .map(String::from)
        .collect();
    let train_file = tmp.path().join("train.csv").to_str().unwrap().to_string();
    std::fs::write(&train_file, lines.join("\n")).unwrap();
    let full = tmp.path().join("full");
    let resumed = tmp.path().join("resumed");
    let fill = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = train_args(out.to_str().unwrap(), &["--dtype", dtype])
            .into_iter()
            .map(String::from)
            .collect();
        a[2] = model.to_str().unwrap().to_string();
        a[6] = train_file.clone();
        a
    };
    let status = Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args(fill(&full))
        .status()
        .unwrap();
    assert!(status.success());

    // The same command, SIGKILLed once a mid-epoch checkpoint exists, then resumed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args(fill(&resumed))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = resumed.join("checkpoints/checkpoint-80");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ckpt.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "run finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !resumed.join("model.safetensors").exists(),
        "the run should not have finished"
    );
    let mut args = fill(&resumed);
    args.push("--resume".into());
    let status = Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args(&args)
        .status()
        .unwrap();
    assert!(status.success());

    let a = candle_core::safetensors::load(full.join("model.safetensors"), &Device::Cpu).unwrap();
    let b =
        candle_core::safetensors::load(resumed.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let d = max_abs_diff(
            &t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(d <= 1e-6, "{dtype}: {name} differs by {d}");
    }
    // Without --resume, an output folder with checkpoints is refused rather than overwritten.
    let out = Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args(fill(&resumed))
        .output()
        .unwrap();
    fails_with(&out, &["--resume"]);
}

#[test]
fn bad_rows_and_out_of_range_labels_are_reported() {
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let m = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let write = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    // STS-B's raw 0-5 scores with the default BCE loss: the tutorial's mistake, caught.
    let raw = stsb("dev");
    fails_with(
        &crossenc(&["train", "-m", m, "-o", o, "--train", &raw, "-q"]),
        &[
            "stsb-en-dev.csv line",
            "outside [0, 1]",
            "--label-range 0:5",
        ],
    );
    // --loss mse trains on the raw labels, and the saved model predicts raw values.
    let mse_out = tmp.path().join("mse");
    let head: Vec<String> = std::fs::read_to_string(&raw)
        .unwrap()
        .lines()
        .take(32)
        .map(String::from)
        .collect();
    let raw32 = write("raw32.csv", &head.join("\n"));
    let res = crossenc(&[
        "train",
        "-m",
        m,
        "-o",
        mse_out.to_str().unwrap(),
        "--train",
        &raw32,
        "--loss",
        "mse",
        "-q",
    ]);
    stdout(&res);
    let st = read_json(&mse_out.join("config_sentence_transformers.json"));
    assert_eq!(st["activation_fn"], "torch.nn.modules.linear.Identity");
    // A label that is not a number, and a row with too few fields.
    let bad = write("bad.csv", "A plane is taking off.,An air plane is taking off.,5.0\nA man is here.,A man is there.,high\nA cat.,A dog.,1.0\n");
    fails_with(
        &crossenc(&[
            "train",
            "-m",
            m,
            "-o",
            o,
            "--train",
            &bad,
            "--label-range",
            "0:5",
            "-q",
        ]),
        &["bad.csv line 2", "not a number", "--skip-bad-rows"],
    );
    let ragged = write("ragged.csv", "A plane is taking off.,An air plane is taking off.,5.0\nonly one field\nA cat.,A dog.,1.0\n");
    fails_with(
        &crossenc(&[
            "train",
            "-m",
            m,
            "-o",
            o,
            "--train",
            &ragged,
            "--label-range",
            "0:5",
            "-q",
        ]),
        &["ragged.csv line 2", "expected 3 fields"],
    );
    // A label outside the declared range.
    let high = write(
        "high.csv",
        "A plane is taking off.,An air plane is taking off.,7.0\n",
    );
    fails_with(
        &crossenc(&[
            "train",
            "-m",
            m,
            "-o",
            o,
            "--train",
            &high,
            "--label-range",
            "0:5",
            "-q",
        ]),
        &["high.csv line 1", "outside --label-range 0:5"],
    );
    assert!(
        !out.join("model.safetensors").exists(),
        "nothing is written on bad input"
    );
    // --skip-bad-rows trains on the good rows and says how many it skipped.
    let res = crossenc(&[
        "train",
        "-m",
        m,
        "-o",
        o,
        "--train",
        &bad,
        "--label-range",
        "0:5",
        "--skip-bad-rows",
        "-q",
    ]);
    stdout(&res);
    assert!(String::from_utf8_lossy(&res.stderr).contains("skipped 1 bad rows"));
    assert!(out.join("model.safetensors").exists());
}

#[test]
fn eval_prints_correlations_as_json() {
    let m = fixture("tests/fixtures/golden/tiny-bert");
    let res = crossenc(&[
        "eval",
        "-m",
        m.to_str().unwrap(),
        "--data",
        &stsb("test"),
        "--json",
    ]);
    stdout(&res);
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    for k in ["pearson", "spearman"] {
        let x = v[k].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&x), "{k} = {x}");
    }
}

#[test]
fn a_hub_dataset_trains_through_the_cache() {
    // A stand-in for sentence-transformers/stsb: Parquet-free JSONL shards named by split.
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("stsb");
    std::fs::create_dir_all(repo.join("data")).unwrap();
    let rows = |ex: &[data::Example]| {
        ex.iter()
            .map(|e| {
                serde_json::json!({"sentence1": e.a, "sentence2": e.b, "score": e.label})
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ex = stsb_examples(48);
    std::fs::write(repo.join("data/train.jsonl"), rows(&ex[..32])).unwrap();
    std::fs::write(repo.join("data/validation.jsonl"), rows(&ex[32..])).unwrap();
    std::fs::write(repo.join("README.md"), "stand-in").unwrap();
    let server = hub_server::serve(vec![(
        "datasets/sentence-transformers/stsb".into(),
        repo.clone(),
    )]);
    let out = tmp.path().join("out");
    let res = Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args([
            "train",
            "-m",
            fixture("tests/fixtures/golden/tiny-bert").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--batch-size",
            "8",
            "--train",
            "hf://datasets/sentence-transformers/stsb",
            "--dev",
            "hf://datasets/sentence-transformers/stsb",
        ])
        .env("HF_HOME", tmp.path().join("hf"))
        .env("HF_ENDPOINT", &server.endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    let stdout = stdout(&res);
    assert!(stdout.contains("32 pairs, dev 16"), "{stdout}");
    assert!(stdout.contains("eval at step 4"), "{stdout}");
    assert!(tmp
        .path()
        .join("hf/hub/datasets--sentence-transformers--stsb")
        .exists());
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("hf://datasets/sentence-transformers/stsb") && card.contains("spearman"),
        "{card}"
    );
}

/// Writes (sentence1, sentence2, score) rows as a Snappy-compressed Parquet file.
fn write_parquet(path: &Path, rows: &[data::Example]) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message stsb { REQUIRED BINARY sentence1 (UTF8); REQUIRED BINARY sentence2 (UTF8); REQUIRED DOUBLE score; }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let texts = |f: fn(&data::Example) -> &String| {
        rows.iter()
            .map(|e| ByteArray::from(f(e).as_str()))
            .collect::<Vec<_>>()
    };
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&texts(|e| &e.a), None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&texts(|e| &e.b), None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<DoubleType>()
        .write_batch(
            &rows.iter().map(|e| e.label).collect::<Vec<_>>(),
            None,
            None,
        )
        .unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_reads_like_the_same_rows_in_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let ex = stsb_examples(40);
    let parquet = tmp.path().join("stsb.parquet");
    write_parquet(&parquet, &ex);
    let table = Table::read(parquet.to_str().unwrap(), HeaderMode::Auto, &[]).unwrap();
    assert_eq!(table.columns, vec!["sentence1", "sentence2", "score"]);
    let (read, skipped) = data::read_examples(&table, &Columns::default(), false).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(read.len(), 40);
    for (a, b) in read.iter().zip(&ex) {
        assert_eq!((a.a.as_str(), a.b.as_str()), (b.a.as_str(), b.b.as_str()));
        assert!((a.label - b.label).abs() < 1e-12);
    }
    let m = fixture("tests/fixtures/golden/tiny-bert");
    let res = crossenc(&[
        "eval",
        "-m",
        m.to_str().unwrap(),
        "--data",
        parquet.to_str().unwrap(),
        "--json",
    ]);
    stdout(&res);
}

#[test]
fn bench_reports_and_appends_a_row() {
    let tmp = tempfile::tempdir().unwrap();
    let md = tmp.path().join("BENCH.md");
    let stsb_dir = fixture("data/stsb");
    let res = crossenc(&[
        "bench",
        "-m",
        fixture("tests/fixtures/golden/tiny-bert").to_str().unwrap(),
        "--stsb",
        stsb_dir.to_str().unwrap(),
        "--steps",
        "2",
        "--append",
        md.to_str().unwrap(),
    ]);
    stdout(&res);
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    for p in [
        "/train/pairs_per_s",
        "/train/padding_ratio",
        "/inference/pairs_per_s",
        "/matmul_peak_gflops",
        "/memory_bandwidth_gbs",
        "/step_floor_s",
        "/peak_rss_mb",
        "/profile_train_ms_per_step/fwd qkv",
        "/profile_inference_ms/fwd attention",
    ] {
        assert!(
            report
                .pointer(p)
                .and_then(|v| v.as_f64())
                .is_some_and(|v| v > 0.0),
            "{p} in {report}"
        );
    }
    assert_eq!(report["inference"]["pairs"], 1379);
    let text = std::fs::read_to_string(&md).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("| 20")).count(),
        1,
        "{text}"
    );
}

#[test]
fn bench_resizes_a_template_to_another_model_size() -> anyhow::Result<()> {
    let tiny = CrossEncoder::load(
        fixture("tests/fixtures/golden/tiny-bert").to_str().unwrap(),
        &LoadOptions::default(),
    )?;
    let (layers, hidden, heads, inter) = (3, 48, 4, 96);
    let big = crossenc::bench::resized(&tiny, (layers, hidden, heads, inter))?;
    assert_eq!(big.config().num_hidden_layers, layers);
    let w = &big.model().weights;
    let q = "bert.encoder.layer.2.attention.self.query.weight";
    assert_eq!(w.get(q).map(|v| v.len()), Some(hidden * hidden));
    let ffn = "bert.encoder.layer.2.intermediate.dense.weight";
    assert_eq!(w.get(ffn).map(|v| v.len()), Some(inter * hidden));
    assert!(w.get("bert.encoder.layer.3.output.dense.weight").is_none());
    // Every parameter of the bigger model exists and it scores pairs.
    let scores = big.predict(&[("a cat sits", "a cat is sitting"), ("x", "y")])?;
    assert_eq!(scores.values.len(), 2);
    assert!(scores.values.iter().all(|v| v.is_finite()));
    Ok(())
}

/// The first `n` pairs of STS-B's train split, as a CSV file in `dir`.
fn stsb_head(dir: &Path, n: usize) -> PathBuf {
    let lines: Vec<String> = std::fs::read_to_string(stsb("train"))
        .unwrap()
        .lines()
        .take(n)
        .map(String::from)
        .collect();
    let path = dir.join("train.csv");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// `crossenc train` of tiny-bert on `data` into `out` (0-5 labels, batch 8, quiet), then `extra`.
fn tiny_train(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--label-range",
        "0:5",
        "--batch-size",
        "8",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    crossenc(&args)
}

#[test]
fn an_output_folder_holds_one_run_and_is_never_mixed_or_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb_head(tmp.path(), 40);
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["--log-steps", "1"];
        args.extend_from_slice(extra);
        tiny_train(&data, &out, &args)
    };
    let log_lines = || {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert!(run(&["--lr", "1e-3"]).status.success());
    let first = log_lines();
    // Every file of the finished run is readable by others, the weights too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o644, 0o644, "mode {mode:o}");
    }
    // Training again into it is refused, and nothing of the first run is touched.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    fails_with(
        &run(&["--lr", "1e-3"]),
        &["is not empty", "--overwrite", "--resume"],
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    assert_eq!(log_lines(), first);
    // --resume without a checkpoint says so instead of starting fresh.
    fails_with(&run(&["--resume"]), &["no checkpoint to resume from"]);
    // --overwrite replaces the run: a file of the user's stays, the old log does not.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\": 999}\n").unwrap();
    assert!(run(&["--lr", "1e-3", "--overwrite"]).status.success());
    assert_eq!(log_lines(), first, "only the new run's lines");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn resuming_with_another_learning_rate_or_dtype_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb_head(tmp.path(), 80);
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["--save-steps", "4", "--max-steps", "6"];
        args.extend_from_slice(extra);
        tiny_train(&data, &out, &args)
    };
    assert!(run(&["--lr", "1e-3"]).status.success());
    assert!(out.join("checkpoints/checkpoint-4").exists());
    fails_with(
        &run(&["--lr", "2e-3", "--resume"]),
        &["other settings", "resume with the same settings"],
    );
    // Another --dtype too (where bf16 cannot run at all, it is refused for that).
    let why = match crossenc::ops::bf16::available() {
        true => "other settings",
        false => "needs a CPU with AMX or AVX-512 BF16",
    };
    fails_with(
        &run(&["--lr", "1e-3", "--dtype", "bf16", "--resume"]),
        &[why],
    );
    assert!(run(&["--lr", "1e-3", "--resume"]).status.success());
}

#[test]
fn skip_bad_rows_skips_every_kind_of_bad_row_and_each_is_named_without_it() {
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let m = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows = [
        r#"{"a": "a cat sits", "b": "a cat is sitting", "label": 4.5}"#,
        r#"{"a": "a dog runs", "b": "a man sings", "label": 0.5}"#,
        r#"{"a": "broken", "b": "#,
        r#"["not", "an", "object"]"#,
        r#"{"a": "too high", "b": "a score of 9", "label": 9}"#,
        r#"{"a": "a bird flies", "b": "a plane flies", "label": 2.0}"#,
    ];
    let data = tmp.path().join("pairs.jsonl");
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let d = data.to_str().unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "-m",
            m,
            "--data",
            d,
            "--label-range",
            "0:5",
            "--json",
        ];
        args.extend_from_slice(extra);
        crossenc(&args)
    };
    fails_with(
        &eval(&[]),
        &["pairs.jsonl line 3: invalid JSON", "--skip-bad-rows"],
    );
    let out = eval(&["--skip-bad-rows"]);
    stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipped 3 bad rows"), "{err}");
    // Without the invalid lines, the out-of-range label is named.
    let fine: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|r| r.contains("label"))
        .collect();
    std::fs::write(&data, fine.join("\n") + "\n").unwrap();
    fails_with(
        &eval(&[]),
        &["pairs.jsonl line 3: label 9 is outside --label-range 0:5"],
    );
}

#[test]
fn a_parquet_nan_label_is_reported_as_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = stsb_examples(4);
    rows[2].label = f64::NAN;
    let path = tmp.path().join("nan.parquet");
    write_parquet(&path, &rows);
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let out = crossenc(&[
        "eval",
        "-m",
        model.to_str().unwrap(),
        "--data",
        path.to_str().unwrap(),
    ]);
    fails_with(&out, &["nan.parquet line 3", "\"NaN\""]);
}

#[test]
fn a_write_that_fails_mid_run_names_the_file_and_leaves_no_half_written_checkpoint() {
    // A real write failure without a full disk: a file-size limit (EFBIG once a file passes
    // 200 KiB) with SIGXFSZ ignored, so the failing write returns an error as ENOSPC would.
    // tiny-bert's weights (150 KB) fit, its checkpoint's optimizer moments (300 KB) do not.
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb_head(tmp.path(), 48);
    let out = tmp.path().join("out");
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 200; exec {} train --model {} --train {} --output {} \
         --label-range 0:5 --batch-size 8 --save-steps 2 --log-steps 1 --quiet",
        env!("CARGO_BIN_EXE_crossenc"),
        fixture("tests/fixtures/golden/tiny-bert").display(),
        data.display(),
        out.display()
    );
    let res = std::process::Command::new("bash")
        .args(["-c", &cmd])
        .output()
        .unwrap();
    fails_with(&res, &["optimizer.safetensors"]);
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines().count(),
        2,
        "the steps before the failure stay logged: {log}"
    );
    // What the failed run left (its log, an empty checkpoints folder) does not block a rerun
    // without --overwrite; a file of the user's beside it still does.
    let rerun = || tiny_train(&data, &out, &["--save-steps", "2", "--log-steps", "1"]);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    fails_with(&rerun(), &["is not empty", "--overwrite"]);
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    stdout(&rerun());
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6, "only the rerun's steps: {log}");
    assert!(out.join("model.safetensors").exists());
}

/// A copy of tiny-bert in `dir`.
fn tiny_bert_copy(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in std::fs::read_dir(fixture("tests/fixtures/golden/tiny-bert")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    dir.to_path_buf()
}

/// With --overwrite, training into the model's own folder would remove the model before the
/// run could replace it: refused however the path is spelled, and the model stays whole.
#[test]
fn training_into_the_model_folder_is_refused_and_leaves_the_model_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb_head(tmp.path(), 16);
    let model = tiny_bert_copy(&tmp.path().join("model"));
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&model);
    let spelled = tmp.path().join("model/../model/.");
    let out = crossenc(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--output",
        spelled.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
        "--label-range",
        "0:5",
        "--overwrite",
        "--quiet",
    ]);
    fails_with(&out, &["--output", "is the --model folder"]);
    assert!(files(&model) == before, "the model folder changed");
}

/// Each tensor of a model folder's weights, by name.
fn weights_of(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let map = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut v: Vec<_> = map
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A run's evaluations as metrics.jsonl holds them, without their timings.
fn evaluations(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("eval").is_some())
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// With an evaluation and a checkpoint every step, a run stopped after step 4 and resumed
/// evaluates as the uninterrupted run does and keeps the same best model. The dev pairs' Spearman
/// stays -2/21 at every step: the resumed run used to read it back one ulp off from the
/// checkpoint, so that step 4's tie became a new best. The partial checkpoint a kill -9 leaves
/// is cleaned up, and resuming the finished run changes nothing.
#[test]
fn a_resumed_run_keeps_the_uninterrupted_run_s_best_model_and_a_finished_one_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb_head(tmp.path(), 80);
    let dev_pairs: Vec<String> = std::fs::read_to_string(stsb("dev"))
        .unwrap()
        .lines()
        .skip(16)
        .take(8)
        .map(String::from)
        .collect();
    let dev = tmp.path().join("dev.csv");
    std::fs::write(&dev, dev_pairs.join("\n")).unwrap();
    let every = [
        "--dev",
        dev.to_str().unwrap(),
        "--eval-steps",
        "1",
        "--save-steps",
        "1",
        "--lr",
        "1e-5",
    ];
    let run =
        |out: &Path, extra: &[&str]| stdout(&tiny_train(&data, out, &[&every, extra].concat()));
    let full = tmp.path().join("full");
    run(&full, &[]);
    let resumed = tmp.path().join("resumed");
    run(&resumed, &["--max-steps", "4"]);
    let partial = resumed.join("checkpoints/.checkpoint-5.tmp-999999");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), "half").unwrap();
    run(&resumed, &["--resume"]);
    let spearman: Vec<f64> = evaluations(&full)
        .iter()
        .map(|v| v["eval"]["spearman"].as_f64().unwrap())
        .collect();
    assert!(
        spearman.iter().all(|&s| (s + 2.0 / 21.0).abs() < 1e-12),
        "{spearman:?}"
    );
    assert_eq!(evaluations(&resumed), evaluations(&full));
    let best_step = |dir: &Path| read_json(&dir.join("trainer_state.json"))["best_step"].clone();
    assert_eq!(best_step(&full), 1);
    assert_eq!(best_step(&resumed), 1);
    assert!(
        weights_of(&resumed) == weights_of(&full),
        "another model was kept"
    );
    assert!(!partial.exists(), "the partial checkpoint stayed");

    // Resuming the finished run trains nothing and rewrites nothing.
    let snapshot = || {
        [
            "model.safetensors",
            "metrics.jsonl",
            "README.md",
            "trainer_state.json",
        ]
        .map(|f| {
            let p = resumed.join(f);
            (
                std::fs::read(&p).unwrap(),
                std::fs::metadata(&p).unwrap().modified().unwrap(),
            )
        })
    };
    let before = snapshot();
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let mut again = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
        "--output",
        resumed.to_str().unwrap(),
        "--label-range",
        "0:5",
        "--batch-size",
        "8",
        "--resume",
    ];
    again.extend(every);
    let said = stdout(&crossenc(&again));
    assert!(
        said.contains("already finished (10 steps): nothing to resume"),
        "{said}"
    );
    assert!(
        snapshot() == before,
        "the finished run's files were rewritten"
    );
}

#[test]
fn the_library_saves_the_activation_its_loss_implies() {
    // A program that calls train::train with MSE gets a model that predicts raw values (it
    // used to save Sigmoid: the CLI alone set the activation).
    let examples = stsb_examples(32);
    let mut ce = tiny_bert();
    assert_eq!(ce.activation(), crossenc::Activation::Sigmoid);
    let cfg = TrainConfig {
        loss: LossKind::Mse,
        max_steps: Some(2),
        progress: Arc::new(Silent),
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let data = train::TrainData::new(ce.tokenizer(), &examples).unwrap();
    train::train(
        &mut ce,
        &data,
        None,
        &cfg,
        out.path(),
        train::OutputMode::New,
    )
    .unwrap();
    let saved = read_json(&out.path().join("config_sentence_transformers.json"));
    assert_eq!(saved["activation_fn"], "torch.nn.modules.linear.Identity");
    let reloaded =
        CrossEncoder::load(out.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(reloaded.activation(), crossenc::Activation::Identity);
    // A listwise loss belongs to re-ranking, through the library too.
    let cfg = TrainConfig {
        loss: LossKind::Listnet,
        progress: Arc::new(Silent),
        ..Default::default()
    };
    let other = tempfile::tempdir().unwrap();
    let err = train::train(
        &mut ce,
        &data,
        None,
        &cfg,
        other.path(),
        train::OutputMode::New,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("does not fit task regression"),
        "{err:#}"
    );
}

#[test]
fn the_default_run_trains_on_the_bundled_stsb_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let res = Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args([
            "train",
            "-m",
            fixture("tests/fixtures/golden/tiny-bert").to_str().unwrap(),
        ])
        .args([
            "-o",
            out.to_str().unwrap(),
            "--max-steps",
            "3",
            "--batch-size",
            "8",
        ])
        // No hub: an endpoint nothing listens on, and offline mode.
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", tmp.path().join("hf"))
        .output()
        .unwrap();
    let stdout = stdout(&res);
    // STS-B's splits as shipped, 0-5 scores mapped into [0, 1], the test split evaluated.
    assert!(stdout.contains("5749 pairs, dev 1500"), "{stdout}");
    assert!(stdout.contains("test: pearson"), "{stdout}");
    assert!(out.join("model.safetensors").exists());
    assert!(!tmp.path().join("hf").exists(), "nothing fetched");
}

/// Gradient accumulation is exact: one batch of 16 and two accumulated batches of 8 (each
/// weighted 1/2) give the same gradient and take the same AdamW steps.
#[test]
fn one_batch_of_16_equals_two_accumulated_batches_of_8() {
    use crossenc::train::optim::AdamWConfig;
    use crossenc::train::Trainable;
    let examples = stsb_examples(16);
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_str()))
        .collect();
    let labels: Vec<f32> = examples.iter().map(|e| e.label as f32).collect();
    // (first step's gradients, weights after three steps), by name.
    let run = |parts: &[(usize, usize)]| {
        let mut ce = tiny_bert();
        let enc = ce.tokenizer().encode_pairs(&pairs).unwrap();
        let mut t = Trainable::new(&mut ce, AdamWConfig::default()).unwrap();
        let mut first = Vec::new();
        for step in 0..3 {
            for &(from, to) in parts {
                let w = (to - from) as f32 / 16.0;
                let batch = enc.pack(from..to);
                t.accumulate(&mut ce, batch, &labels[from..to], LossKind::Bce, None, w)
                    .unwrap();
            }
            if step == 0 {
                first = t.named_grads(&ce);
            }
            // lr 1e-4: each weight moves up to 3e-4, 30 times the tolerance below.
            t.step(&mut ce, 1e-4, 1.0);
        }
        t.flush(&mut ce);
        let w = &ce.model().weights;
        let weights: Vec<(String, Vec<f32>)> = w
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.hf_values(&w.data)))
            .collect();
        (first, weights)
    };
    let (g16, w16) = run(&[(0, 16)]);
    let (g8, w8) = run(&[(0, 8), (8, 16)]);
    // A key bias's true gradient is zero (softmax ignores a shift common to a query's
    // scores): what is computed is rounding noise, which AdamW's normalisation then scales up.
    let noise = |name: &str| name.ends_with("key.bias");
    for ((name, a), (_, b)) in g16.iter().zip(&g8).filter(|(g, _)| !noise(&g.0)) {
        let d = rel_diff(a, b);
        assert!(d < 1e-5, "{name}: gradients differ by {d} of the largest");
    }
    for ((name, a), (_, b)) in w16.iter().zip(&w8).filter(|(w, _)| !noise(&w.0)) {
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d < 1e-5, "{name}: weights differ by {d}");
    }
    assert_ne!(
        w16,
        run(&[(0, 8)]).1,
        "a different batch must give other weights"
    );
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// `--max-steps` stops early; `--eval-steps` evaluates at its multiples and at the end.
#[test]
fn max_steps_and_eval_steps_set_when_training_stops_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb_head(tmp.path(), 80);
    let out = tmp.path().join("out");
    let dev = data.to_str().unwrap();
    let run = tiny_train(
        &data,
        &out,
        &[
            "--max-steps",
            "5",
            "--eval-steps",
            "2",
            "--dev",
            dev,
            "--log-steps",
            "1",
        ],
    );
    stdout(&run);
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = |eval: bool| -> Vec<u64> {
        rows.iter()
            .filter(|r| r.get("eval").is_some() == eval)
            .map(|r| r["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        steps(false),
        vec![1, 2, 3, 4, 5],
        "80 pairs of batch 8 would run 10 steps"
    );
    assert_eq!(steps(true), vec![2, 4, 5]);
}

/// The label rule lives in the library: `train::train` itself refuses 0-5 labels for BCE, and
/// says what to set in the library's own names (the CLI names its flags: tests/cli.rs).
#[test]
fn the_library_refuses_labels_outside_0_1_for_bce() {
    let mut examples = stsb_examples(16);
    examples.iter_mut().for_each(|e| e.label *= 5.0);
    let out = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        progress: Arc::new(Silent),
        ..Default::default()
    };
    let mut ce = tiny_bert();
    let data = train::TrainData::new(ce.tokenizer(), &examples).unwrap();
    let err = train::train(
        &mut ce,
        &data,
        None,
        &cfg,
        out.path(),
        train::OutputMode::Overwrite,
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("outside [0, 1]"), "{err}");
    assert!(
        err.contains("pass `ReadOptions::label_range` 0:5")
            && err.contains("or `TrainConfig::loss` mse")
            && !err.contains("--"),
        "{err}"
    );
}

/// `--dtype bf16` trains with the linear layers' products in bf16 where the CPU has AMX or
/// AVX-512 BF16: the
/// weights move as the f32 run's do, off them by much less than they moved (the products are
/// rounded, so not equal), and the saved f32 model scores; elsewhere it is refused, saying why,
/// before anything is written.
#[test]
fn bf16_training_follows_f32_or_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb_head(tmp.path(), 40);
    let (f32_out, bf16_out) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    let bf16 = tiny_train(&data, &bf16_out, &["--lr", "1e-3", "--dtype", "bf16"]);
    if !crossenc::ops::bf16::available() {
        fails_with(
            &bf16,
            &["bf16 training needs a CPU with AMX or AVX-512 BF16", "f32"],
        );
        assert!(!bf16_out.exists(), "the refused run wrote {bf16_out:?}");
        return;
    }
    assert!(
        bf16.status.success(),
        "{}",
        String::from_utf8_lossy(&bf16.stderr)
    );
    assert!(tiny_train(&data, &f32_out, &["--lr", "1e-3"])
        .status
        .success());
    let read = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    let (start, a, b) = (
        read(&fixture("tests/fixtures/golden/tiny-bert")),
        read(&f32_out),
        read(&bf16_out),
    );
    let tensors = |bytes: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        st.names()
            .into_iter()
            .map(|n| {
                let values = st.tensor(n).unwrap().data().chunks_exact(4);
                let values = values.map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64);
                (n.to_string(), values.collect::<Vec<f64>>())
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (w0, wf, wb) = (tensors(&start), tensors(&a), tensors(&b));
    // The weights the run started from (a new head is not among them).
    let (mut moved, mut apart) = (0.0, 0.0);
    for (name, w0) in &w0 {
        let (wf, wb) = (&wf[name], &wb[name]);
        moved += w0.iter().zip(wf).map(|(x, y)| (x - y).abs()).sum::<f64>();
        apart += wf.iter().zip(wb).map(|(x, y)| (x - y).abs()).sum::<f64>();
    }
    assert!(
        apart > 0.0 && apart < 0.25 * moved,
        "moved {moved}, bf16 apart {apart}"
    );
    // A dev evaluation at every step (scored on the bf16 copies) leaves the training as it
    // was: the same loss at every step as without one.
    let losses = |extra: &[&str], dir: &str| -> Vec<String> {
        let out = tmp.path().join(dir);
        let mut args = vec!["--lr", "1e-3", "--dtype", "bf16", "--log-steps", "1"];
        args.extend_from_slice(extra);
        let run = tiny_train(&data, &out, &args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v.get("loss").map(|x| x.to_string()))
            .collect()
    };
    let plain = losses(&[], "plain");
    assert!(plain.len() >= 4, "{plain:?}");
    let dev = data.to_str().unwrap();
    assert_eq!(
        losses(&["--dev", dev, "--eval-steps", "1"], "evaluated"),
        plain
    );
    let pairs = tmp.path().join("pairs.tsv");
    std::fs::write(&pairs, "A man plays a guitar.\tSomeone plays music.\n").unwrap();
    let scored = stdout(&crossenc(&[
        "predict",
        "-m",
        bf16_out.to_str().unwrap(),
        "-i",
        pairs.to_str().unwrap(),
    ]));
    assert_eq!(scored.lines().count(), 1);
}

/// The library's whole run (`train::Job`, what `crossenc train` and the Python module call):
/// pairs in memory train the same weights as the file they came from, and the run ends with
/// test metrics and a model card.
#[test]
fn a_job_trains_pairs_in_memory_as_it_trains_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.csv");
    let lines: Vec<String> = std::fs::read_to_string(stsb("train"))
        .unwrap()
        .lines()
        .take(96)
        .map(str::to_string)
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let run = |train: train::Pairs, read: data::ReadOptions, out: &Path| {
        let cfg = TrainConfig {
            progress: Arc::new(Silent),
            lr: 1e-3,
            ..TrainConfig::for_task(crossenc::eval::Task::Regression)
        };
        let mut job = train::Job::new(model.to_str().unwrap(), train.clone(), out, cfg);
        job.test = Some(train);
        job.read = read;
        let prepared = job.prepare(&Silent).unwrap();
        // Pairs in memory are moved into the prepared data, not held twice.
        let held = |p: &Option<train::Pairs>| match p {
            Some(train::Pairs::Examples(e)) => e.len(),
            _ => 0,
        };
        assert_eq!(
            held(&Some(prepared.job.train.clone())) + held(&prepared.job.test),
            0
        );
        prepared.run().unwrap()
    };
    let spec = file.to_str().unwrap().to_string();
    let from_file = run(
        train::Pairs::Spec(spec),
        data::ReadOptions::stsb(),
        &dir.path().join("file"),
    );
    let mut examples = stsb_examples(96);
    examples
        .iter_mut()
        .enumerate()
        .for_each(|(i, e)| e.line = i + 1);
    let in_memory = run(
        train::Pairs::Examples(examples),
        data::ReadOptions::default(),
        &dir.path().join("memory"),
    );
    assert_eq!(from_file.summary.steps, 6);
    let weights =
        |run: &str| std::fs::read(dir.path().join(run).join("model.safetensors")).unwrap();
    assert_eq!(weights("file"), weights("memory"));
    let test = |o: &train::Outcome| o.test.clone().expect("test metrics")["spearman"];
    assert_eq!(test(&from_file), test(&in_memory));
    let card = std::fs::read_to_string(dir.path().join("memory/README.md")).unwrap();
    assert!(card.contains("pairs in memory"), "{card}");
}

/// Asks the run to stop once `after` steps are done.
struct StopAfter {
    after: u64,
    done: std::sync::atomic::AtomicU64,
}

impl crossenc::progress::Progress for StopAfter {
    fn update(&self, done: u64, _status: &str) {
        self.done.store(done, std::sync::atomic::Ordering::SeqCst);
    }
    fn cancelled(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst) >= self.after
    }
}

#[test]
fn a_progress_that_asks_to_stop_ends_training_with_cancelled_and_a_model_that_scores() {
    let examples = stsb_examples(64);
    let mut ce = tiny_bert();
    let stop = Arc::new(StopAfter {
        after: 3,
        done: Default::default(),
    });
    let cfg = TrainConfig {
        batch_size: 4,
        progress: stop.clone(),
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let data = train::TrainData::new(ce.tokenizer(), &examples).unwrap();
    let err = train::train(
        &mut ce,
        &data,
        None,
        &cfg,
        out.path(),
        train::OutputMode::New,
    )
    .unwrap_err();
    assert!(err.is::<crossenc::progress::Cancelled>(), "{err:#}");
    assert_eq!(stop.done.load(std::sync::atomic::Ordering::SeqCst), 3);
    // No model was saved (no evaluation came), and the folder takes a new run.
    assert!(!out.path().join("model.safetensors").exists());
    let scores = ce.predict(&[("a cat", "a dog")]).unwrap();
    assert!(scores.row(0)[0].is_finite());
    let cfg = TrainConfig {
        max_steps: Some(1),
        progress: Arc::new(Silent),
        ..Default::default()
    };
    train::train(
        &mut ce,
        &data,
        None,
        &cfg,
        out.path(),
        train::OutputMode::New,
    )
    .unwrap();
}

#[test]
fn in_order_batching_keeps_the_data_s_order() {
    let lengths = [5, 9, 2, 7, 3];
    let batches = train::epoch_batches(&lengths, 2, train::Batching::InOrder, 42, 3);
    assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
    let shuffled = train::epoch_batches(&lengths, 2, train::Batching::Random, 42, 3);
    assert_ne!(shuffled, batches);
}
