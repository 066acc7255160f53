//! Data at any size: `predict` reads, scores and writes in chunks, in input order, in memory that
//! does not grow with the input, and a bad row anywhere leaves no output behind.

mod common;

use common::*;
use crossenc::{CrossEncoder, LoadOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn tiny_bert() -> PathBuf {
    fixture("tests/fixtures/golden/tiny-bert")
}

/// Texts in several scripts, with emoji and combining marks.
const TEXTS: [&str; 8] = [
    "A man is playing a flute.",
    "Un homme joue de la flûte traversière.",
    "男人在吹长笛。",
    "ชายคนหนึ่งกำลังเป่าขลุ่ย",
    "Мужчина играет на флейте 🎶",
    "رجل يعزف على النَّاي",
    "पुरुष बाँसुरी बजा रहा है",
    "Zalgo̸̢ t̷e̵x̶t 👨‍👩‍👧 🇯🇵",
];

/// `n` pairs, each distinct (the row number is in the second text).
fn pairs(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let a = TEXTS[i % TEXTS.len()].to_string();
            let b = format!("{} {i}", TEXTS[(i * 5 + 3) % TEXTS.len()]);
            (a, b)
        })
        .collect()
}

fn write_jsonl(path: &Path, pairs: &[(String, String)]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for (a, b) in pairs {
        writeln!(f, "{}", serde_json::json!({ "query": a, "text": b })).unwrap();
    }
}

/// Writes pairs as headerless CSV, each with its label where given.
fn write_csv(path: &Path, pairs: &[(String, String)], labels: Option<&[f64]>) {
    let mut w = csv::Writer::from_path(path).unwrap();
    for (i, (a, b)) in pairs.iter().enumerate() {
        let label = labels.map(|l| l[i].to_string());
        w.write_record([a, b].into_iter().chain(&label)).unwrap();
    }
    w.flush().unwrap();
}

/// The peak RSS (MB) of a crossenc run that must succeed.
fn peak_mb(args: &[&str]) -> f64 {
    let (out, peak) = peak_rss_of(args);
    stdout(&out);
    eprintln!("{}: peak RSS {peak:.0} MB", args.join(" "));
    peak
}

/// Scores as the library gives them for all the pairs at once.
fn scores_in_one_pass(pairs: &[(String, String)]) -> Vec<f32> {
    let ce = CrossEncoder::load(tiny_bert().to_str().unwrap(), &LoadOptions::default()).unwrap();
    ce.predict(pairs).unwrap().rows().map(|r| r[0]).collect()
}

#[test]
fn predict_streams_many_chunks_to_the_scores_of_one_pass() {
    // Over two chunks of crossenc::stream::CHUNK pairs, in CSV and JSONL.
    let pairs = pairs(2 * crossenc::stream::CHUNK + 1000);
    let want = scores_in_one_pass(&pairs);
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("pairs.jsonl");
    write_jsonl(&jsonl, &pairs);
    let csv = tmp.path().join("pairs.csv");
    write_csv(&csv, &pairs, None);
    let model = tiny_bert();
    for input in [&jsonl, &csv] {
        let out = crossenc(&[
            "predict",
            "-m",
            model.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
        ]);
        let got = score_lines(&stdout(&out));
        assert_eq!(got.len(), want.len(), "{}", input.display());
        assert!(
            max_abs_diff(&got, &want) < 1e-6,
            "{}: streamed scores differ from one pass's",
            input.display()
        );
    }
}

#[test]
fn predict_keeps_input_order_under_a_slow_reader() {
    let n = 3 * crossenc::stream::CHUNK;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_jsonl(&input, &pairs(n));
    // `--shard 0/1`: every pair, each output line with its input line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args(["predict", "-m", tiny_bert().to_str().unwrap()])
        .args(["-i", input.to_str().unwrap(), "--shard", "0/1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for (k, line) in reader.lines().enumerate() {
        if k % 1000 == 0 {
            // The pipe fills and the scorer waits for this reader.
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        lines.push(v["line"].as_u64().unwrap() as usize);
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(lines, (1..=n).collect::<Vec<_>>());
}

#[test]
fn a_bad_row_deep_in_a_large_file_stops_predict_naming_its_line_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_jsonl(&input, &pairs(3 * crossenc::stream::CHUNK));
    // Line 10001 loses its closing brace, then its second text.
    let text = std::fs::read_to_string(&input).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[10_000].pop();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let model = tiny_bert();
    let output = tmp.path().join("scores.jsonl");
    std::fs::write(&output, "scores of an earlier run\n").unwrap();
    let run = || {
        crossenc(&[
            "predict",
            "-m",
            model.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ])
    };
    fails_with(&run(), &["pairs.jsonl line 10001", "invalid JSON"]);
    lines[10_000] = serde_json::json!({ "query": "q" }).to_string();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    fails_with(
        &run(),
        &["pairs.jsonl line 10001", "missing column \"text\""],
    );
    // The earlier output stands, and no temporary file is left beside it.
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "scores of an earlier run\n"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn predict_memory_does_not_grow_with_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert();
    let mut peaks = Vec::new();
    for n in [20_000, 60_000] {
        let input = tmp.path().join(format!("{n}.jsonl"));
        write_jsonl(&input, &pairs(n));
        let output = tmp.path().join(format!("{n}.out"));
        let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
        let model = model.to_str().unwrap();
        peaks.push(peak_mb(&[
            "predict", "-m", model, "-i", input, "-o", output,
        ]));
        assert_eq!(std::fs::read_to_string(output).unwrap().lines().count(), n);
    }
    // Held whole, 60,000 pairs took 730 MB (12 KB a pair) before the scores were written.
    assert!(
        peaks[1] < peaks[0] * 1.25 + 10.0,
        "peak RSS {:.0} MB for 20,000 pairs, {:.0} MB for 60,000",
        peaks[0],
        peaks[1]
    );
}

#[test]
fn training_data_costs_its_token_ids_not_its_texts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert();
    let mut peaks = Vec::new();
    for n in [10_000, 100_000] {
        let input = tmp.path().join(format!("{n}.csv"));
        let labels: Vec<f64> = (0..n).map(|i| (i % 11) as f64 / 10.0).collect();
        write_csv(&input, &pairs(n), Some(&labels));
        let output = tmp.path().join(format!("out-{n}"));
        let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
        let model = model.to_str().unwrap();
        let train = ["train", "-m", model, "--train", input, "-o", output];
        peaks.push(peak_mb(
            &[&train[..], &["--max-steps", "1", "--quiet"]].concat(),
        ));
    }
    // Pairs held as texts and tokenizers' encodings took 13.5 KB each; their token ids, label
    // and line take about 110 bytes here, and the vectors' growth up to twice that.
    let per_pair = (peaks[1] - peaks[0]) * f64::from(1 << 20) / 90_000.0;
    assert!(per_pair < 400.0, "{per_pair:.0} bytes a pair");
}

#[test]
fn eval_streams_to_the_metrics_of_one_pass_and_names_a_bad_label_s_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("labelled.csv");
    let pairs = pairs(2 * crossenc::stream::CHUNK + 500);
    let labels: Vec<f64> = (0..pairs.len()).map(|i| (i % 2) as f64).collect();
    write_csv(&input, &pairs, Some(&labels));
    let model = tiny_bert();
    let examples: Vec<crossenc::data::Example> = pairs
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, ((a, b), &label))| crossenc::data::Example {
            a: a.clone(),
            b: b.clone(),
            label,
            line: i + 1,
        })
        .collect();
    let ce = CrossEncoder::load(model.to_str().unwrap(), &LoadOptions::default()).unwrap();
    for task in ["regression", "binary"] {
        let t = match task {
            "regression" => crossenc::eval::Task::Regression,
            _ => crossenc::eval::Task::Binary,
        };
        let want = crossenc::eval::pair_metrics(&ce, t, &examples).unwrap();
        let out = crossenc(&[
            "eval",
            "-m",
            model.to_str().unwrap(),
            "-d",
            input.to_str().unwrap(),
            "--task",
            task,
            "--json",
        ]);
        let got: crossenc::eval::Metrics = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, v) in &want {
            assert!((got[k] - v).abs() < 1e-9, "{task} {k}: {} vs {v}", got[k]);
        }
    }
    let mut bad = labels.clone();
    bad[8_000] = 2.0;
    write_csv(&input, &pairs, Some(&bad));
    let out = crossenc(&[
        "eval",
        "-m",
        model.to_str().unwrap(),
        "-d",
        input.to_str().unwrap(),
        "--task",
        "binary",
    ]);
    fails_with(&out, &["labelled.csv line 8001: label 2 is not 0 or 1"]);
}

#[test]
fn rank_streams_documents_keeping_the_best_k_as_one_pass_ranks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let docs: Vec<String> = pairs(2 * crossenc::stream::CHUNK + 100)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let path = tmp.path().join("docs.txt");
    std::fs::write(&path, docs.join("\n") + "\n").unwrap();
    let model = tiny_bert();
    let ce = CrossEncoder::load(model.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let query = "Мужчина играет на флейте 🎶";
    for k in [Some(7), None] {
        let want = ce.rank(query, &docs, k).unwrap();
        let mut args = vec!["rank", "-m", model.to_str().unwrap(), "-q", query];
        args.extend(["-d", path.to_str().unwrap(), "--json"]);
        let k_text = k.map(|k| k.to_string());
        if let Some(k) = &k_text {
            args.extend(["--top-k", k]);
        }
        let got: Vec<(usize, f32, String)> = stdout(&crossenc(&args))
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let text = v["text"].as_str().unwrap().to_string();
                (
                    v["index"].as_u64().unwrap() as usize,
                    v["score"].as_f64().unwrap() as f32,
                    text,
                )
            })
            .collect();
        assert_eq!(got.len(), want.len());
        for ((index, score, text), (want_index, want_score)) in got.iter().zip(&want) {
            assert_eq!(index, want_index);
            assert!((score - want_score).abs() < 1e-6, "{score} vs {want_score}");
            assert_eq!(text, &docs[*index]);
        }
    }
}
