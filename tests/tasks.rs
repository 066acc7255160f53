//! Classification, re-ranking and search end to end through the CLI, on small synthetic data
//! that a tiny model can learn in seconds: each test asserts what the training achieved.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const WORDS: &[&str] = &[
    "the", "man", "is", "playing", "a", "guitar", "woman", "dog", "runs", "in", "park", "child",
    "eats", "food", "car", "drives", "on", "road",
];

/// A tiny deterministic generator (no test depends on a crate's RNG stream).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
    fn sentence(&mut self) -> String {
        let n = 4 + self.below(6);
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// TSV with a header: `label`, `a`, `b`; the class shows as a word repeated in `b`.
fn write_classes(path: &Path, classes: &[&str], n: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let mut text = String::from("label\ta\tb\n");
    for _ in 0..n {
        let c = rng.below(classes.len());
        let word = classes[c];
        let label = if classes.len() == 2 {
            c.to_string()
        } else {
            word.to_string()
        };
        text += &format!("{label}\t{}\t{word} {word} {word} {word}\n", rng.sentence());
    }
    std::fs::write(path, text).unwrap();
}

fn tiny() -> String {
    fixture("tests/fixtures/golden/tiny-bert")
        .to_str()
        .unwrap()
        .to_string()
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_str(stdout(out).trim()).unwrap()
}

/// Trains the tiny model on synthetic `classes` data for `task` (20 epochs at lr 1e-3) and
/// evaluates it on a second sample: (temp dir, model folder, test file, test metrics).
fn train_classes(
    task: &str,
    classes: &[&str],
    cols: &[&str],
) -> (tempfile::TempDir, PathBuf, PathBuf, Value) {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.tsv"), dir.path().join("test.tsv"));
    write_classes(&train, classes, 240, 1);
    write_classes(&test, classes, 80, 2);
    let out = dir.path().join("model");
    let (model, out_s) = (tiny(), out.to_str().unwrap().to_string());
    let train_args = [
        &[
            "train", "--model", &model, "--output", &out_s, "--task", task,
        ][..],
        &[
            "--train",
            train.to_str().unwrap(),
            "--lr",
            "1e-3",
            "--epochs",
            "20",
        ],
        &["--warmup-steps", "10", "-q"],
        cols,
    ];
    stdout(&crossenc(&train_args.concat()));
    let eval_args = [
        &["eval", "--model", &out_s, "--task", task, "--json"][..],
        &["--data", test.to_str().unwrap()],
        cols,
    ];
    let m = json_of(&crossenc(&eval_args.concat()));
    (dir, out, test, m)
}

#[test]
fn binary_classification_learns_and_reports_threshold_metrics() {
    let cols = ["--text-cols", "a,b", "--label-col", "label"];
    let (_dir, _, _, m) = train_classes("binary", &["no", "yes"], &cols);
    for key in [
        "accuracy",
        "accuracy_threshold",
        "f1",
        "f1_threshold",
        "precision",
        "recall",
        "average_precision",
    ] {
        assert!(m[key].is_number(), "{key} missing: {m}");
    }
    assert!(m["accuracy"].as_f64().unwrap() >= 0.85, "{m}");
    assert!(m["average_precision"].as_f64().unwrap() >= 0.85, "{m}");
}

#[test]
fn multiclass_learns_saves_label_names_and_predicts_them() {
    let classes = ["red", "green", "blue"];
    let cols = [
        "--text-cols",
        "a,b",
        "--label-col",
        "label",
        "--labels",
        "red,green,blue",
    ];
    let (dir, out, test, m) = train_classes("multiclass", &classes, &cols);
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["id2label"]["1"], "green");
    assert_eq!(config["label2id"]["blue"], 2);
    assert!(m["accuracy"].as_f64().unwrap() >= 0.85, "{m}");
    assert!(m["macro_f1"].as_f64().unwrap() >= 0.85, "{m}");

    // predict: per-label probabilities and the argmax's name.
    let text = std::fs::read_to_string(&test).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).take(20).collect();
    let pairs = dir.path().join("pairs.tsv");
    let body: Vec<String> = rows
        .iter()
        .map(|r| r.split('\t').skip(1).collect::<Vec<_>>().join("\t"))
        .collect();
    std::fs::write(&pairs, body.join("\n") + "\n").unwrap();
    let printed = stdout(&crossenc(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--input",
        pairs.to_str().unwrap(),
        "--header",
        "no",
    ]));
    assert_eq!(printed.lines().count(), rows.len());
    let mut right = 0;
    for (line, row) in printed.lines().zip(&rows) {
        let v: Value = serde_json::from_str(line).unwrap();
        let scores: Vec<f64> = v["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 3);
        assert!(
            (scores.iter().sum::<f64>() - 1.0).abs() < 1e-5,
            "not probabilities: {line}"
        );
        let best = (0..3)
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        assert_eq!(v["label"], classes[best]);
        right += (v["label"] == row.split('\t').next().unwrap()) as usize;
    }
    assert!(right >= 17, "{right}/20 predicted labels right");
}

#[test]
fn classification_label_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.tsv");
    std::fs::write(&data, "label\ta\tb\n1\tx y\tz\n2\tx\ty\n").unwrap();
    let out = dir.path().join("m");
    let base = [
        "train",
        "--model",
        &tiny(),
        "--output",
        out.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
        "--text-cols",
        "a,b",
        "--label-col",
        "label",
    ];
    fails_with(
        &crossenc(&[&base[..], &["--task", "binary"]].concat()),
        &["d.tsv line 3", "not 0 or 1", "--task multiclass"],
    );
    fails_with(
        &crossenc(&[&base[..], &["--task", "multiclass"]].concat()),
        &["--labels"],
    );
    fails_with(
        &crossenc(&[&base[..], &["--task", "multiclass", "--labels", "a,b"]].concat()),
        &["d.tsv line 3", "\"2\"", "not one of --labels a,b"],
    );
    assert!(!out.join("model.safetensors").exists());
}

/// A BEIR folder where BM25 is fooled: for each query, three decoys repeat the query's words
/// while the one relevant document says them once and carries the word "gold".
fn write_beir(dir: &Path, queries: usize) {
    let mut rng = Lcg(7);
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    let (mut corpus, mut qs) = (String::new(), String::new());
    let mut qrels = [
        String::from("query-id\tcorpus-id\tscore\n"),
        String::from("query-id\tcorpus-id\tscore\n"),
    ];
    let mut doc = 0;
    let mut add = |corpus: &mut String, text: String| {
        doc += 1;
        *corpus +=
            &serde_json::json!({"_id": format!("d{doc}"), "title": "", "text": text}).to_string();
        corpus.push('\n');
        format!("d{doc}")
    };
    for q in 0..queries {
        // Two words of its own (so BM25 finds exactly this query's documents) and a common one.
        let query = format!("zq{q}a zq{q}b {}", ["dog", "park", "guitar"][rng.below(3)]);
        qs += &serde_json::json!({"_id": format!("q{q}"), "text": query}).to_string();
        qs.push('\n');
        let positive = add(
            &mut corpus,
            format!("{query} gold gold gold gold {}", rng.sentence()),
        );
        for _ in 0..3 {
            add(&mut corpus, format!("{query} {query} {}", rng.sentence()));
        }
        qrels[q % 2] += &format!("q{q}\t{positive}\t1\n");
    }
    for _ in 0..40 {
        add(&mut corpus, rng.sentence());
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("queries.jsonl"), qs).unwrap();
    std::fs::write(dir.join("qrels/train.tsv"), &qrels[0]).unwrap();
    std::fs::write(dir.join("qrels/test.tsv"), &qrels[1]).unwrap();
}

#[test]
fn reranker_trained_on_mined_negatives_beats_bm25() {
    let dir = tempfile::tempdir().unwrap();
    let beir = dir.path().join("beir");
    write_beir(&beir, 80);
    let out = dir.path().join("model");
    let dev = ["--dev", beir.to_str().unwrap(), "--dev-split", "test"];
    // MNRL trained to near-perfect; ListNet and LambdaLoss, shorter, only have to beat BM25
    // clearly.
    for (loss, epochs, min_mrr) in [
        ("mnrl", "30", 0.8),
        ("listnet", "15", 0.45),
        ("lambda", "15", 0.45),
    ] {
        let o = out.join(loss);
        let printed = stdout(&crossenc(
            &[
                &["train", "--model", &tiny(), "--output", o.to_str().unwrap()][..],
                &[
                    "--task",
                    "rerank",
                    "--train",
                    beir.to_str().unwrap(),
                    "--loss",
                    loss,
                ],
                &[
                    "--neg-range",
                    "0:10",
                    "--negatives",
                    "3",
                    "--batch-size",
                    "8",
                ],
                &["--lr", "1e-3", "--epochs", epochs, "--warmup-steps", "10"],
                // LambdaLoss's run keeps its best model by NDCG@10 on held-out lists.
                match loss {
                    "lambda" => &dev[..],
                    _ => &[],
                },
            ]
            .concat(),
        ));
        assert!(printed.contains("for 40 queries (0 left out"), "{printed}");
        if loss == "lambda" {
            let log = std::fs::read_to_string(o.join("metrics.jsonl")).unwrap();
            let evals: Vec<Value> = log
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|v| v.get("eval").is_some())
                .collect();
            assert_eq!(evals.len(), 15, "one evaluation per epoch: {log}");
            let ndcg = |v: &Value| v["eval"]["ndcg@10"].as_f64().unwrap();
            assert!(evals
                .iter()
                .all(|v| v["eval"]["mrr@10"].is_number() && v["eval"]["map"].is_number()));
            assert!(ndcg(&evals[14]) > ndcg(&evals[0]), "{log}");
            let card = std::fs::read_to_string(o.join("README.md")).unwrap();
            assert!(card.contains("ndcg@10"), "{card}");
        }
        let m = json_of(&crossenc(&[
            "eval",
            "--task",
            "rerank",
            "--model",
            o.to_str().unwrap(),
            "--data",
            beir.to_str().unwrap(),
            "--top-k",
            "10",
            "--json",
        ]));
        let (first, reranked) = (&m["bm25"], &m["bm25+rerank"]);
        // The decoys outrank the relevant document in BM25; the re-ranker puts it first.
        assert!(first["mrr@10"].as_f64().unwrap() < 0.6, "{m}");
        assert!(
            reranked["mrr@10"].as_f64().unwrap() > min_mrr,
            "{loss}: {m}"
        );
        assert!(
            reranked["ndcg@10"].as_f64().unwrap() > first["ndcg@10"].as_f64().unwrap() + 0.2,
            "{m}"
        );
        // Re-ranking reorders the same candidates: recall is unchanged.
        assert_eq!(first["recall@10"], reranked["recall@10"]);
    }

    // search: the pipeline on the corpus file, with both scores.
    let printed = stdout(&crossenc(&[
        "search",
        "--model",
        out.join("mnrl").to_str().unwrap(),
        "--corpus",
        beir.join("corpus.jsonl").to_str().unwrap(),
        "--query",
        "zq1a zq1b",
        "--top-k",
        "10",
        "--show",
        "3",
        "--json",
    ]));
    let top: Value = serde_json::from_str(printed.lines().next().unwrap()).unwrap();
    assert_eq!(top["rank"], 1);
    assert!(top["text"].as_str().unwrap().contains("gold"), "{printed}");
    assert!(top["first_stage_rank"].as_u64().unwrap() >= 1 && top["first_stage_score"].is_number());
}

#[test]
fn rerank_data_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let beir = dir.path().join("beir");
    write_beir(&beir, 4);
    std::fs::write(
        beir.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\tnope\t1\n",
    )
    .unwrap();
    let eval_beir = |dir: &Path| {
        crossenc(&[
            "eval",
            "--task",
            "rerank",
            "--model",
            &tiny(),
            "--data",
            dir.to_str().unwrap(),
        ])
    };
    fails_with(&eval_beir(&beir), &["test.tsv line 2", "document \"nope\""]);
    // Duplicate ids split a document's or a query's judgments (MAP and MRR halved): refused.
    let dup = dir.path().join("dup");
    for (file, line) in [("corpus.jsonl", 57), ("queries.jsonl", 5)] {
        write_beir(&dup, 4);
        let path = dup.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap().to_string();
        std::fs::write(&path, text + &first + "\n").unwrap();
        let id = if file == "corpus.jsonl" {
            "\"d1\""
        } else {
            "\"q0\""
        };
        fails_with(
            &eval_beir(&dup),
            &[
                &format!("{file} line {line}"),
                id,
                "already the id of line 1",
            ],
        );
    }
    let out = dir.path().join("m");
    let (model, out) = (tiny(), out.to_str().unwrap().to_string());
    let train_rerank = |data: &Path| {
        crossenc(&[
            "train",
            "--task",
            "rerank",
            "--model",
            &model,
            "--output",
            &out,
            "--train",
            data.to_str().unwrap(),
        ])
    };
    fails_with(
        &train_rerank(&beir.join("corpus.jsonl")),
        &["BEIR", "is not a folder"],
    );
    std::fs::write(beir.join("queries.jsonl"), "{\"_id\": \"q0\"}\n").unwrap();
    fails_with(&train_rerank(&beir), &["queries.jsonl line 1", "\"text\""]);
}

#[test]
fn bi_encoder_first_stage_finds_the_paraphrase() {
    let Some(minilm) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("docs.txt");
    std::fs::write(
        &corpus,
        "The stock market fell sharply today.\nA person plays the guitar on stage.\nParis is the capital of France.\nThe dog runs in the park.\n",
    )
    .unwrap();
    let printed = stdout(&crossenc(&[
        "search",
        "--model",
        &tiny(),
        "--retriever",
        minilm.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--query",
        "A man is playing a guitar.",
        "--json",
    ]));
    let first: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(first.len(), 4);
    let by_first_stage = first.iter().find(|v| v["first_stage_rank"] == 1).unwrap();
    // Plain-text corpora number documents by line.
    assert_eq!(by_first_stage["id"], "2");
    assert!(by_first_stage["first_stage_score"].as_f64().unwrap() > 0.5);
}
