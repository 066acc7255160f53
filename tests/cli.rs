//! The `crossenc` binary end to end: predict, rank, demo, and its errors on bad input.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

fn golden() -> (PathBuf, serde_json::Value) {
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let g = read_json(&dir.join("golden.json"));
    (dir, g)
}

#[test]
fn predict_prints_golden_scores_in_input_order_at_any_batch_size() {
    let (dir, g) = golden();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&input, &g);
    let want = f32s(&g["predict_scores"]);
    for bs in ["1", "3", "32"] {
        let out = crossenc(&[
            "predict",
            "--model",
            dir.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--batch-size",
            bs,
        ]);
        let got = score_lines(&stdout(&out));
        assert!(max_abs_diff(&got, &want) < 1e-4, "batch size {bs}: {got:?}");
    }
    // --raw prints the logits.
    let out = crossenc(&[
        "predict",
        "-m",
        dir.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--raw",
    ]);
    assert!(max_abs_diff(&score_lines(&stdout(&out)), &f32s(&g["logits"])) < 1e-4);
}

#[test]
fn predict_reads_headerless_csv_tsv_with_header_and_picks_columns() {
    let (dir, g) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pairs = g["pairs"].as_array().unwrap();
    let want = f32s(&g["predict_scores"]);
    // STS-B's layout: no header, sentence1, sentence2, score.
    let mut w = csv::Writer::from_path(tmp.path().join("p.csv")).unwrap();
    for p in pairs {
        w.write_record([p[0].as_str().unwrap(), p[1].as_str().unwrap(), "2.5"])
            .unwrap();
    }
    w.flush().unwrap();
    let out = crossenc(&[
        "predict",
        "-m",
        d,
        "-i",
        tmp.path().join("p.csv").to_str().unwrap(),
    ]);
    assert!(max_abs_diff(&score_lines(&stdout(&out)), &want) < 1e-4);
    // TSV with a header and the texts in other columns, chosen by name (first two pairs; the
    // others hold tabs).
    let tsv = format!(
        "label\tq\tdoc\n1\t{}\t{}\n0\t{}\t{}\n",
        pairs[0][0].as_str().unwrap(),
        pairs[0][1].as_str().unwrap(),
        pairs[1][0].as_str().unwrap(),
        pairs[1][1].as_str().unwrap()
    );
    std::fs::write(tmp.path().join("p.tsv"), tsv).unwrap();
    let out = crossenc(&[
        "predict",
        "-m",
        d,
        "-i",
        tmp.path().join("p.tsv").to_str().unwrap(),
        "--text-cols",
        "q,doc",
    ]);
    assert!(max_abs_diff(&score_lines(&stdout(&out)), &want[..2]) < 1e-4);
    // An empty text is valid input (golden pair 5 has one).
    let input = tmp.path().join("empty.jsonl");
    std::fs::write(
        &input,
        serde_json::json!({"a": "", "b": "An empty first text."}).to_string(),
    )
    .unwrap();
    let out = crossenc(&["predict", "-m", d, "-i", input.to_str().unwrap()]);
    assert!(max_abs_diff(&score_lines(&stdout(&out)), &want[5..6]) < 1e-4);
}

#[test]
fn multi_label_predict_prints_score_vectors() {
    let dir = fixture("tests/fixtures/golden/tiny-bert-3labels");
    let g = read_json(&dir.join("golden.json"));
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&input, &g);
    let out = stdout(&crossenc(&[
        "predict",
        "-m",
        dir.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
    ]));
    let got: Vec<f32> = out
        .lines()
        .flat_map(|l| f32s(&serde_json::from_str::<serde_json::Value>(l).unwrap()["scores"]))
        .collect();
    assert!(max_abs_diff(&got, &f32s(&g["predict_scores"])) < 1e-4);
}

#[test]
fn rank_sorts_by_score() {
    let (dir, g) = golden();
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs.txt");
    // Golden pairs 2 and 3 share the query "What is the capital of France?".
    std::fs::write(
        &docs,
        format!(
            "{}\n{}\n",
            g["pairs"][3][1].as_str().unwrap(),
            g["pairs"][2][1].as_str().unwrap()
        ),
    )
    .unwrap();
    let out = stdout(&crossenc(&[
        "rank",
        "-m",
        dir.to_str().unwrap(),
        "--query",
        g["pairs"][2][0].as_str().unwrap(),
        "--docs",
        docs.to_str().unwrap(),
        "--json",
    ]));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let s = f32s(&g["predict_scores"]);
    // Golden scores: pair 3 (London, 0.407) above pair 2 (Paris, 0.369) for this random model.
    let (hi, lo) = if s[3] > s[2] { (0, 1) } else { (1, 0) };
    assert_eq!(rows[0]["index"], hi);
    assert_eq!(rows[1]["index"], lo);
    assert_eq!(rows[0]["rank"], 1);
    assert!(rows[0]["score"].as_f64().unwrap() >= rows[1]["score"].as_f64().unwrap());
    let top1 = stdout(&crossenc(&[
        "rank",
        "-m",
        dir.to_str().unwrap(),
        "-q",
        "x",
        "-d",
        docs.to_str().unwrap(),
        "--top-k",
        "1",
    ]));
    assert_eq!(top1.lines().count(), 1);
}

#[test]
fn demo_runs_on_minilm() {
    let Some(dir) = minilm() else { return };
    let out = stdout(&crossenc(&["demo", "--model", dir.to_str().unwrap()]));
    assert!(
        out.contains("A man is playing a guitar.")
            && out.contains("A cat is sleeping on the couch."),
        "{out}"
    );
    assert!(
        out.contains("Paris is the capital city of France.") && out.contains("3. "),
        "{out}"
    );
}

/// A copy of tiny-bert to break in one way.
fn broken_model(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let (dir, _) = golden();
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
    }
    edit(tmp.path());
    tmp
}

fn predict_one(model: &Path) -> Output {
    let input = model.join("in.jsonl");
    std::fs::write(&input, "{\"a\": \"x\", \"b\": \"y\"}\n").unwrap();
    crossenc(&[
        "predict",
        "-m",
        model.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
    ])
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

/// A safetensors file's header and where its data begins.
fn safetensors_header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// The name and first byte of the first (by name) F32 tensor.
fn first_f32(bytes: &[u8]) -> (String, usize) {
    let (header, data) = safetensors_header(bytes);
    let mut names: Vec<_> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, t)| t["dtype"] == "F32")
        .collect();
    names.sort_by_key(|(n, _)| n.to_string());
    let (name, t) = names[0];
    (
        name.clone(),
        data + t["data_offsets"][0].as_u64().unwrap() as usize,
    )
}

/// The name of the weight that [`poison_first_f32_weight`] edits.
fn first_f32_weight(path: &Path) -> String {
    first_f32(&std::fs::read(path).unwrap()).0
}

/// Writes `value` over the first element of the first F32 tensor.
fn poison_first_f32_weight(path: &Path, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let (_, at) = first_f32(&bytes);
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_models_give_clear_errors() {
    let m = broken_model(|d| {
        std::fs::write(d.join("model.safetensors"), b"not a safetensors file").unwrap()
    });
    fails_with(&predict_one(m.path()), &["model.safetensors", "corrupt"]);

    // A NaN or an infinity in a weight: refused at load (f32, int8 and bf16 alike), by name.
    for value in [f32::NAN, f32::INFINITY] {
        let m = broken_model(|d| poison_first_f32_weight(&d.join("model.safetensors"), value));
        let name = first_f32_weight(&m.path().join("model.safetensors"));
        for extra in [&[][..], &["--quantize", "int8"]] {
            let input = m.path().join("in.jsonl");
            std::fs::write(&input, "{\"a\": \"x\", \"b\": \"y\"}\n").unwrap();
            let (model, input) = (m.path().to_str().unwrap(), input.to_str().unwrap());
            let mut args = vec!["predict", "-m", model, "-i", input];
            args.extend(extra);
            fails_with(
                &crossenc(&args),
                &[&format!("weight \"{name}\""), "element 0"],
            );
        }
    }

    let m = broken_model(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    fails_with(&predict_one(m.path()), &["no weights", "model.safetensors"]);

    let m = broken_model(|d| {
        edit_json(&d.join("config.json"), |c| {
            c.insert("model_type".into(), "gpt2".into());
        })
    });
    fails_with(&predict_one(m.path()), &["config.json", "gpt2"]);

    let m = broken_model(|d| {
        edit_json(&d.join("config.json"), |c| {
            c.remove("hidden_size");
        })
    });
    fails_with(&predict_one(m.path()), &["config.json", "hidden_size"]);

    let m = broken_model(|d| {
        edit_json(&d.join("config_sentence_transformers.json"), |c| {
            c.insert(
                "activation_fn".into(),
                "torch.nn.modules.activation.Mish".into(),
            );
        })
    });
    fails_with(
        &predict_one(m.path()),
        &["config_sentence_transformers.json", "Mish"],
    );

    // A missing encoder weight: drop layer 1's query weight.
    let m = broken_model(|d| {
        let p = d.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        t.remove("bert.encoder.layer.1.attention.self.query.weight")
            .unwrap();
        candle_core::safetensors::save(&t, &p).unwrap();
    });
    fails_with(
        &predict_one(m.path()),
        &[
            "bert.encoder.layer.1.attention.self.query.weight",
            "model.safetensors",
        ],
    );

    let m = broken_model(|d| std::fs::write(d.join("tokenizer.json"), b"{").unwrap());
    fails_with(&predict_one(m.path()), &["tokenizer.json"]);
}

/// A head that does not fit the labels is refused by tensor name and shape rather than scored
/// with a new random head; a fresh head is made only where the checkpoint has none.
#[test]
fn a_head_that_does_not_fit_is_refused_by_name_and_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"a\": \"x\", \"b\": \"y\"}\n").unwrap();
    let predict = |model: &Path, extra: &[&str]| {
        let mut args = vec!["predict", "-m", model.to_str().unwrap()];
        args.extend_from_slice(&["-i", input.to_str().unwrap()]);
        args.extend_from_slice(extra);
        crossenc(&args)
    };
    let three = fixture("tests/fixtures/golden/tiny-bert-3labels");
    fails_with(
        &predict(&three, &["--num-labels", "1"]),
        &[
            "weight \"classifier.weight\"",
            "has shape [3, 32]",
            "num_labels 1 needs [1, 32]",
            "--num-labels",
        ],
    );
    // config.json's labels and the checkpoint's head disagree.
    let m = broken_model(|d| {
        edit_json(&d.join("config.json"), |c| {
            c.insert(
                "id2label".into(),
                serde_json::json!({"0": "no", "1": "yes"}),
            );
        })
    });
    fails_with(
        &predict(m.path(), &[]),
        &["\"classifier.weight\"", "[1, 32]", "needs [2, 32]"],
    );
    // A head in integers is no head.
    let m = broken_model(|d| {
        let p = d.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        let bias = candle_core::Tensor::new(&[0i64], &candle_core::Device::Cpu).unwrap();
        t.insert("classifier.bias".into(), bias);
        candle_core::safetensors::save(&t, &p).unwrap();
    });
    fails_with(
        &predict(m.path(), &[]),
        &["\"classifier.bias\"", "I64", "floating point"],
    );
    // Without a classifier (a bare encoder with its pooler), --num-labels sizes a new one.
    let m = broken_model(|d| {
        let p = d.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        t.retain(|name, _| !name.starts_with("classifier."));
        candle_core::safetensors::save(&t, &p).unwrap();
    });
    let out = predict(m.path(), &["--num-labels", "2"]);
    let scores = stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("created classifier.weight, classifier.bias"),
        "{err}"
    );
    let row: serde_json::Value = serde_json::from_str(scores.trim()).unwrap();
    assert_eq!(row["scores"].as_array().unwrap().len(), 2, "{scores}");
}

/// Settings that make no sense are refused by flag before anything is read or written.
#[test]
fn train_refuses_nonsense_settings_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.csv");
    std::fs::write(&data, "a,b,label\nx y,z w,0\nu v,s t,1\n").unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "-m", model.to_str().unwrap()];
        args.extend_from_slice(&["-o", out.to_str().unwrap()]);
        args.extend_from_slice(&["--train", data.to_str().unwrap()]);
        args.push("--quiet");
        args.extend_from_slice(extra);
        crossenc(&args)
    };
    let cases: [(&[&str], &[&str]); 11] = [
        (&["--max-steps", "0"], &["--max-steps", ">= 1"]),
        (&["--lr", "-1e-5"], &["--lr", ">= 0"]),
        (&["--lr", "NaN"], &["--lr", ">= 0"]),
        (&["--max-grad-norm", "0"], &["--max-grad-norm", "> 0"]),
        (&["--max-grad-norm", "-1"], &["--max-grad-norm", "> 0"]),
        (&["--weight-decay", "-0.01"], &["--weight-decay", ">= 0"]),
        (&["--warmup-ratio", "1.5"], &["--warmup-ratio", "[0, 1]"]),
        (&["--warmup-ratio", "-0.1"], &["--warmup-ratio", "[0, 1]"]),
        (
            &["--label-range", "0:inf"],
            &["--label-range", "infinite end"],
        ),
        (
            &["--metric", "spearmann"],
            &["--metric \"spearmann\"", "known: pearson, spearman"],
        ),
        (
            &["--text-cols", "a,b", "--label-col", "b"],
            &["pairs.csv", "\"b\" is also a text column", "--label-col"],
        ),
    ];
    for (extra, needles) in cases {
        fails_with(&train(extra), needles);
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (dir, _) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str, body: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    };
    fails_with(
        &crossenc(&["predict", "-m", d, "-i", "/no/such/file.csv"]),
        &["/no/such/file.csv"],
    );
    fails_with(
        &crossenc(&["predict", "-m", d, "-i", &p("empty.csv", "")]),
        &["empty.csv", "no data rows"],
    );
    let two = p("two.jsonl", "{\"a\": \"x\", \"b\": \"y\"}\n");
    fails_with(
        &crossenc(&["predict", "-m", d, "-i", &two, "--text-cols", "a,zzz"]),
        &["two.jsonl", "unknown column \"zzz\""],
    );
    fails_with(
        &crossenc(&[
            "predict",
            "-m",
            d,
            "-i",
            &p("bad.jsonl", "{\"a\": \"x\", \"b\": \"y\"}\n{oops\n"),
        ]),
        &["bad.jsonl line 2"],
    );
    fails_with(
        &crossenc(&[
            "predict",
            "-m",
            d,
            "-i",
            &p("ragged.csv", "a b c.,d e f.\ng h i.,j k l.,m\n"),
        ]),
        &["ragged.csv line 2"],
    );
    fails_with(
        &crossenc(&["predict", "-m", "/no/such/model", "-i", &two]),
        &["/no/such/model", "does not exist"],
    );
    fails_with(
        &crossenc(&["rank", "-m", d, "-q", "x", "-d", &p("nodocs.txt", "\n\n")]),
        &["nodocs.txt", "no documents"],
    );
    // --top-k 0 is refused alike by rank and search.
    let docs = p("docs.txt", "a doc\n");
    for cmd in [
        vec!["rank", "-m", d, "-q", "x", "-d", &docs, "--top-k", "0"],
        vec![
            "search", "-m", d, "-q", "x", "--corpus", &docs, "--top-k", "0",
        ],
    ] {
        fails_with(&crossenc(&cmd), &["--top-k", "0 is not in 1.."]);
    }
    // A file that is not UTF-8: the line of the first bad byte.
    let latin1 = tmp.path().join("latin1.csv");
    std::fs::write(&latin1, b"a,b\nc,\xe9t\xe9\n").unwrap();
    fails_with(
        &crossenc(&["predict", "-m", d, "-i", latin1.to_str().unwrap()]),
        &["latin1.csv line 2: not UTF-8 text"],
    );
    // An output path that cannot be written: the error names it, and no temporary file stays.
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let o = out_dir.to_str().unwrap();
    fails_with(
        &crossenc(&["predict", "-m", d, "-i", &two, "--output", o]),
        &[o, "Is a directory"],
    );
    let mut left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("out"))
        .collect();
    left.sort();
    assert_eq!(left, ["out"], "a failed write left its temporary file");
    // The input as the output, by another path: refused, the input kept.
    let before = std::fs::read_to_string(&two).unwrap();
    let same = format!("{}/./two.jsonl", tmp.path().display());
    fails_with(
        &crossenc(&["predict", "-m", d, "-i", &two, "--output", &same]),
        &["is the input file"],
    );
    assert_eq!(std::fs::read_to_string(&two).unwrap(), before);
}

#[test]
fn a_header_like_first_row_of_text_is_kept_as_data_unless_the_data_says_otherwise() {
    let (dir, _) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.csv");
    let p = p.to_str().unwrap();
    // Every column is text and the first row looks like names: it is read as data, and stderr
    // says what was assumed.
    std::fs::write(
        p,
        "hello there,general kenobi\nthe cat sat,on the mat\nfoo,bar\n",
    )
    .unwrap();
    let out = crossenc(&["predict", "-m", d, "-i", p]);
    assert_eq!(score_lines(&stdout(&out)).len(), 3, "one score per row");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("first row was read as data") && err.contains("--header yes"),
        "{err}"
    );
    let out = crossenc(&["predict", "-m", d, "-i", p, "--header", "yes"]);
    assert_eq!(score_lines(&stdout(&out)).len(), 2);
    // Columns asked for by name mark the first row as their header.
    std::fs::write(p, "query,passage\nthe cat sat,on the mat\nfoo,bar\n").unwrap();
    let out = crossenc(&["predict", "-m", d, "-i", p, "--text-cols", "query,passage"]);
    assert_eq!(score_lines(&stdout(&out)).len(), 2);
    // Text above a numeric column is that column's name.
    std::fs::write(p, "a,b,score\nthe cat sat,on the mat,1\nfoo,bar,0.5\n").unwrap();
    let out = crossenc(&["predict", "-m", d, "-i", p]);
    assert_eq!(score_lines(&stdout(&out)).len(), 2);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("read as data"));
}

#[test]
fn line_numbers_are_the_file_lines_with_crlf_blank_lines_and_quoted_line_breaks() {
    let (dir, _) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The short row starts on line 4 of either file.
    for (name, end) in [("crlf.csv", "\r\n"), ("lf.csv", "\n")] {
        let text = ["a,b,1", "", "c,d,2", "\"x", "y\",f", "g,h,3", ""].join(end);
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = crossenc(&["eval", "-m", d, "--data", path.to_str().unwrap()]);
        fails_with(
            &out,
            &[&format!("{name} line 4: expected 3 fields, found 2")],
        );
    }
}

#[test]
fn rank_reports_each_document_s_line_despite_blank_lines() {
    let (dir, _) = golden();
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs.txt");
    std::fs::write(&docs, "\nParis is the capital.\n\n\nLondon is big.\n").unwrap();
    let d = dir.to_str().unwrap();
    let out = stdout(&crossenc(&[
        "rank",
        "-m",
        d,
        "-q",
        "capital of France",
        "-d",
        docs.to_str().unwrap(),
        "--json",
    ]));
    let mut lines: Vec<(u64, String)> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            (2, "Paris is the capital.".into()),
            (5, "London is big.".into())
        ]
    );
}

#[test]
fn every_command_applies_the_same_task_and_label_rules() {
    let (dir, _) = golden();
    let d = dir.to_str().unwrap();
    let three = fixture("tests/fixtures/golden/tiny-bert-3labels");
    let three = three.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str, body: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    };
    let eval = |model: &str, data: &str, extra: &[&str]| {
        let mut args = vec!["eval", "-m", model, "--data", data];
        args.extend_from_slice(extra);
        crossenc(&args)
    };
    // Binary labels must be 0 or 1.
    let two = p("two.csv", "a b,c d,1\ne f,g h,2\ni j,k l,0\n");
    fails_with(
        &eval(d, &two, &["--task", "binary"]),
        &["two.csv line 2: label 2 is not 0 or 1"],
    );
    let half = p("half.csv", "a b,c d,1\ne f,g h,0.5\n");
    fails_with(
        &eval(d, &half, &["--task", "binary"]),
        &["half.csv line 2: label 0.5"],
    );
    // Multiclass needs a model with an output per class.
    let classes = p("classes.csv", "a b,c d,x\ne f,g h,y\ni j,k l,z\n");
    fails_with(
        &eval(
            d,
            &classes,
            &[
                "--task",
                "multiclass",
                "--labels",
                "x,y,z",
                "--label-col",
                "2",
            ],
        ),
        &[
            "--task multiclass needs a model with an output per class",
            "has 1",
        ],
    );
    // Constant labels have no correlation.
    let constant = p("constant.csv", "a b,c d,3\ne f,g h,3\n");
    fails_with(
        &eval(d, &constant, &[]),
        &["constant.csv: every label is 3", "undefined"],
    );
    // A multi-label model cannot rank: rank and demo say so instead of using label 0.
    let docs = p("docs.txt", "one\ntwo\n");
    fails_with(
        &crossenc(&["rank", "-m", three, "-q", "x", "-d", &docs]),
        &["ranking orders documents by one score", "3 outputs"],
    );
    fails_with(
        &crossenc(&["demo", "-m", three]),
        &["ranking orders documents by one score"],
    );
}

#[test]
fn quantize_int8_scores_near_f32_in_predict_and_rank() {
    let (dir, g) = golden();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&input, &g);
    let model = dir.to_str().unwrap();
    let out = crossenc(&[
        "predict",
        "-m",
        model,
        "-i",
        input.to_str().unwrap(),
        "--quantize",
        "int8",
    ]);
    let d = max_abs_diff(&score_lines(&stdout(&out)), &f32s(&g["predict_scores"]));
    assert!(d > 0.0 && d < 0.15, "int8 predict differs from f32 by {d}");
    let docs = tmp.path().join("docs.txt");
    std::fs::write(&docs, "Paris is the capital.\nLondon is a city.\n").unwrap();
    let ranked = stdout(&crossenc(&[
        "rank",
        "-m",
        model,
        "-q",
        "capital of France?",
        "-d",
        docs.to_str().unwrap(),
        "--quantize",
        "int8",
    ]));
    assert_eq!(ranked.lines().count(), 2);
    let bad = crossenc(&["predict", "-m", model, "-i", "x", "--quantize", "int4"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("supported: int8, bf16"), "{err}");
}

/// `--quantize bf16` (alias `--dtype`) scores closer to f32 than int8 where the CPU has AVX-512
/// BF16, and elsewhere is refused with a message that says why and what to use instead.
#[test]
fn bf16_scores_near_f32_or_is_refused_with_a_reason() {
    let (dir, g) = golden();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&input, &g);
    let model = dir.to_str().unwrap();
    let args = [
        "predict",
        "-m",
        model,
        "-i",
        input.to_str().unwrap(),
        "--dtype",
        "bf16",
    ];
    let out = crossenc(&args);
    if crossenc::ops::bf16::available() {
        let got = score_lines(&stdout(&out));
        let d = max_abs_diff(&got, &f32s(&g["predict_scores"]));
        assert!(d > 0.0 && d < 0.01, "bf16 predict differs from f32 by {d}");
    } else {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("AVX-512 BF16") && err.contains("int8"),
            "{err}"
        );
    }
}

/// `--shard I/N` scores a contiguous block of the rows; three shards' outputs, concatenated in
/// shard order, are one run's, each line carrying its input line.
#[test]
fn three_shards_concatenated_score_as_one_run() {
    let (dir, g) = golden();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&input, &g);
    let (model, input) = (dir.to_str().unwrap(), input.to_str().unwrap());
    let whole = score_lines(&stdout(&crossenc(&["predict", "-m", model, "-i", input])));
    let (mut scores, mut lines) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let out = tmp.path().join(format!("scores-{i}.jsonl"));
        let shard = format!("{i}/3");
        let run = crossenc(&[
            "predict",
            "-m",
            model,
            "-i",
            input,
            "--shard",
            &shard,
            "-o",
            out.to_str().unwrap(),
        ]);
        stdout(&run);
        let text = std::fs::read_to_string(&out).unwrap();
        scores.extend(score_lines(&text));
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            lines.push(v["line"].as_u64().unwrap());
        }
    }
    assert_eq!(scores, whole);
    assert_eq!(lines, (1..=whole.len() as u64).collect::<Vec<_>>());
    // More shards than rows: the empty ones write empty files.
    let one = tmp.path().join("one.jsonl");
    std::fs::write(&one, "{\"a\": \"x\", \"b\": \"y\"}\n").unwrap();
    let one = one.to_str().unwrap();
    for (shard, lines) in [("0/3", 0), ("2/3", 1)] {
        let out = tmp.path().join("one-scores.jsonl");
        let o = out.to_str().unwrap();
        let run = crossenc(&["predict", "-m", model, "-i", one, "--shard", shard, "-o", o]);
        stdout(&run);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().lines().count(),
            lines
        );
    }
    let bad = crossenc(&["predict", "-m", model, "-i", input, "--shard", "3/3"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a shard I/N"));
}

/// A shard of a large file is read in the shard's memory, not the file's: the file is streamed
/// twice (rows counted, then read up to the shard's end), in CSV, TSV and JSONL alike.
#[test]
fn a_shard_of_a_large_file_is_read_in_bounded_memory() {
    let (dir, _) = golden();
    let model = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows = 150_000;
    let text = |i: usize| format!("row {i} says the cat sat on the mat");
    let files = [
        (
            "big.tsv",
            (0..rows)
                .map(|i| format!("{}\t{}\n", text(i), text(i + 1)))
                .collect::<String>(),
        ),
        (
            "big.csv",
            (0..rows)
                .map(|i| format!("\"{}\",{}\n", text(i), text(i + 1)))
                .collect(),
        ),
        (
            "big.jsonl",
            (0..rows)
                .map(|i| format!("{}\n", serde_json::json!({"a": text(i), "b": text(i + 1)})))
                .collect(),
        ),
    ];
    for (name, body) in files {
        let path = tmp.path().join(name);
        std::fs::write(&path, body).unwrap();
        let input = path.to_str().unwrap();
        let (out, peak_mb) =
            peak_rss_of(&["predict", "-m", model, "-i", input, "--shard", "1500/1501"]);
        let printed = stdout(&out);
        // The last shard: rows 149901..=150000 of the file, each line naming its row.
        let lines: Vec<u64> = printed
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(lines.len(), 100, "{name}");
        assert_eq!(lines.last(), Some(&(rows as u64)), "{name}");
        // Read whole, this 11-14 MB file took 100-145 MB (36 MB streamed).
        assert!(peak_mb < 60.0, "{name}: peak RSS {peak_mb} MB");
    }
}

/// A Qwen3 re-ranker (causal LM, chat-template prompt, "yes"/"no" logits) scores through
/// `predict` and `rank` as sentence-transformers scored it.
#[test]
fn qwen3_reranker_predicts_and_ranks_as_sentence_transformers() {
    let dir = repo().join("tests/fixtures/tiny-qwen3-reranker");
    let g = read_json(&require(dir.join("golden.json")));
    let want = f32s(&g["predict_scores"]);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&input, &g);
    let m = dir.to_str().unwrap();
    let out = stdout(&crossenc(&[
        "predict",
        "-m",
        m,
        "-i",
        input.to_str().unwrap(),
    ]));
    let d = max_abs_diff(&score_lines(&out), &want);
    assert!(d < 1e-4, "predict differs by {d}");
    // Golden pairs 2 and 3 share their query.
    let docs = tmp.path().join("docs.txt");
    let doc = |i: usize| g["pairs"][i][1].as_str().unwrap().to_string();
    std::fs::write(&docs, format!("{}\n{}\n", doc(2), doc(3))).unwrap();
    let query = g["pairs"][2][0].as_str().unwrap();
    let out = stdout(&crossenc(&[
        "rank",
        "-m",
        m,
        "-q",
        query,
        "-d",
        docs.to_str().unwrap(),
        "--json",
    ]));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let best = if want[2] >= want[3] { 0 } else { 1 };
    assert_eq!(rows[0]["index"], best);
    for r in &rows {
        let i = 2 + r["index"].as_u64().unwrap() as usize;
        let d = (r["score"].as_f64().unwrap() as f32 - want[i]).abs();
        assert!(d < 1e-4, "rank score of pair {i} differs by {d}");
    }
}

/// A text past the tokenizer's head size is cut before it is tokenized, to the same tokens as
/// the whole text truncated: one long side, the other, both (the max length leaves an odd
/// budget, so the longer side's extra token is checked), with and without spaces near the cut.
#[test]
fn long_texts_encode_as_when_tokenized_whole() {
    let (dir, _) = golden();
    let (ce, whole) = with_whole_tokenizer(&dir);
    let tok = ce.tokenizer();
    let words = "the cat sat on a mat, unbelievably tired; ".repeat(4000);
    let glued = "abcdefghij".repeat(20000);
    let short = "a short query";
    let cases = [
        (short, &words[..]),
        (&words[..], short),
        (&words[..30000], &words[..]),
        (&words[..], &words[..30000]),
        (&words[..], &glued[..]),
        (&glued[..], short),
    ];
    assert!(cases
        .iter()
        .all(|(a, b)| a.len().max(b.len()) > tok.head_bytes()));
    let got = tok.encode_pairs(&cases).unwrap();
    for (s, (a, b)) in cases.iter().enumerate() {
        let want = whole.encode((*a, *b), true).unwrap();
        assert_eq!(
            got.ids(s),
            want.get_ids(),
            "{} + {} bytes",
            a.len(),
            b.len()
        );
        assert_eq!(got.type_ids(s), want.get_type_ids());
    }
}

/// A model and its HF tokenizer set to truncate whole texts at the model's max length.
fn with_whole_tokenizer(dir: &Path) -> (crossenc::CrossEncoder, tokenizers::Tokenizer) {
    let ce = crossenc::CrossEncoder::load(dir.to_str().unwrap(), &Default::default()).unwrap();
    let mut whole = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    whole
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: ce.tokenizer().max_length,
            ..Default::default()
        }))
        .unwrap();
    whole.with_padding(None);
    (ce, whole)
}

/// Long texts in many scripts, cut before tokenizing wherever a multi-byte character, a
/// combining mark, an emoji sequence or a flag falls at a cut, encode as the whole texts do, on
/// WordPiece, byte-level BPE and Unigram tokenizers.
#[test]
fn long_texts_in_any_script_encode_as_when_tokenized_whole() {
    let scripts = [
        "日本語の文章は単語の間に空白を置かずに書きます。中文文本也没有空格",
        "ภาษาไทยเขียนติดกันโดยไม่เว้นวรรคระหว่างคำ",
        "हिन्दी में संयुक्ताक्षर और मात्राएँ होती हैं ",
        "Съешь же ещё этих мягких французских булок, да выпей чаю. ",
        "النص العربي يكتب من اليمين إلى اليسار، وفيه حركات مثل بَ ",
        "👨\u{200d}👩\u{200d}👧\u{200d}👦🇫🇷🇯🇵👍🏽❤\u{fe0f}",
        "cafe\u{301} nai\u{308}ve man\u{303}ana Z\u{335}\u{30d}a\u{336}l\u{35c}g ",
        "the α–β range — “quoted” text ",
    ];
    let mut dirs = vec![
        fixture("tests/fixtures/golden/tiny-bert"),
        fixture("tests/fixtures/golden/tiny-roberta"),
        fixture("tests/fixtures/golden/tiny-xlm-roberta"),
    ];
    dirs.extend(minilm());
    for dir in &dirs {
        let (ce, whole) = with_whole_tokenizer(dir);
        let tok = ce.tokenizer();
        let head = tok.head_bytes();
        for script in scripts {
            let pool = script.repeat(head * 40 / script.len() + 1);
            let mut cases = Vec::new();
            // Every byte offset of a character at the first cut and at twice it, and a text
            // past the growth's end; each alone, with a short text, and against a long one.
            for (len, shifts) in [(head + 1, 4), (2 * head + 3, 4), (33 * head, 1)] {
                for shift in 0..shifts {
                    let text = format!(
                        "{}{}",
                        &"x y "[..shift.min(4)],
                        &pool[..pool.floor_char_boundary(len)]
                    );
                    cases.push((text.clone(), "a short query".to_string()));
                    cases.push(("a short query".to_string(), text.clone()));
                    cases.push((
                        text.clone(),
                        pool[..pool.floor_char_boundary(len / 2 + shift)].to_string(),
                    ));
                }
            }
            let got = tok.encode_pairs(&cases).unwrap();
            for (s, (a, b)) in cases.iter().enumerate() {
                let want = whole.encode((a.as_str(), b.as_str()), true).unwrap();
                assert_eq!(
                    got.ids(s),
                    want.get_ids(),
                    "{}: {script:?}, {} + {} bytes",
                    dir.display(),
                    a.len(),
                    b.len()
                );
            }
            let texts: Vec<&str> = cases.iter().map(|(a, _)| a.as_str()).collect();
            let got = tok.encode_texts(&texts).unwrap();
            for (s, text) in texts.iter().enumerate() {
                let want = whole.encode(*text, true).unwrap();
                assert_eq!(got.ids(s), want.get_ids(), "{}: {script:?}", dir.display());
            }
        }
    }
}

/// A 5 MB text is scored from its head (the work bounded by the max length, not the text),
/// as its first 300 bytes score, with a note naming its line.
#[test]
fn predict_scores_a_5_mb_text_from_its_head_and_says_so() {
    let (dir, _) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(111_112);
    let input = tmp.path().join("long.tsv");
    std::fs::write(
        &input,
        format!("a query\t{}\na query\t{}\n", &text[..300], text),
    )
    .unwrap();
    let (out, peak_mb) = peak_rss_of(&["predict", "-m", d, "-i", input.to_str().unwrap()]);
    let scores = score_lines(&stdout(&out));
    assert_eq!(scores[0], scores[1]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("long.tsv line 2: a text of 5000040 bytes"),
        "{err}"
    );
    assert!(!err.contains("line 1:"), "{err}");
    // The tiny model loads in a few MB: tokenized whole, the text took over 1 GB.
    assert!(peak_mb < 100.0, "peak RSS {peak_mb} MB");
}

/// A 5 MB text with no word break is cut like any long text: bounded work and memory.
#[test]
fn predict_scores_a_5_mb_word_from_its_head() {
    let (dir, _) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("word.tsv");
    let word = "abcdefghij".repeat(500_000);
    std::fs::write(&input, format!("a query\t{word}\n")).unwrap();
    let (out, peak_mb) = peak_rss_of(&["predict", "-m", d, "-i", input.to_str().unwrap()]);
    assert_eq!(score_lines(&stdout(&out)).len(), 1);
    // About 65 MB: the program and model 26, the line's copies and the prefix's tokenizing the
    // rest. Counted whole while the prefix's tokens were too few, the word took 484 MB and 7.9 s
    // (issue 38's figures, with all-MiniLM-L6-v2).
    assert!(peak_mb < 150.0, "peak RSS {peak_mb} MB");
}

/// A line longer than the readers' limit (a 300 MB sparse file, one line of NULs) is refused,
/// naming the file and line, before the file is read whole.
#[test]
fn a_line_over_the_limit_is_refused_in_bounded_memory() {
    let (dir, _) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs.txt");
    let file = std::fs::File::create(&docs).unwrap();
    std::io::Write::write_all(&mut &file, b"a first document\n").unwrap();
    file.set_len(300 << 20).unwrap();
    let docs = docs.to_str().unwrap();
    let (out, peak_mb) = peak_rss_of(&["rank", "-m", d, "-q", "a query", "--docs", docs]);
    fails_with(&out, &[&format!("{docs} line 2 is longer than 16 MiB")]);
    assert!(peak_mb < 100.0, "peak RSS {peak_mb} MB");
    let (out, _) = peak_rss_of(&["predict", "-m", d, "-i", docs]);
    fails_with(&out, &[&format!("{docs} line 2 is longer than 16 MiB")]);
}

/// Output to a closed pipe (`| head -1`) ends quietly; to a full device, with an error; never
/// a panic.
#[test]
fn a_closed_or_full_stdout_ends_without_a_panic() {
    use std::process::{Command, Stdio};
    let (dir, g) = golden();
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs.txt");
    std::fs::write(&docs, "one document\nanother document\n").unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&pairs, &g);
    let stsb = fixture("data/stsb/stsb-en-test.csv");
    let commands: [Vec<&str>; 4] = [
        vec![
            "rank",
            "-m",
            d,
            "-q",
            "a query",
            "--docs",
            docs.to_str().unwrap(),
        ],
        vec!["demo", "-m", d],
        vec!["eval", "-m", d, "--data", stsb.to_str().unwrap()],
        vec!["predict", "-m", d, "-i", pairs.to_str().unwrap()],
    ];
    for args in &commands {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crossenc"))
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} to a closed pipe: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("error"),
            "{args:?}: {err}"
        );

        let out = Command::new(env!("CARGO_BIN_EXE_crossenc"))
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        fails_with(&out, &["cannot write to standard output", "No space left"]);
    }
}
