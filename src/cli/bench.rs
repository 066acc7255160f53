use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use super::data_args::DataArgs;
use crate::bench;
use crate::{CrossEncoder, LoadOptions};

#[derive(Args)]
pub struct BenchArgs {
    /// The model to measure (a bare encoder gets a one-output head).
    #[arg(long, short)]
    model: String,
    /// STS-B folder (stsb-en-{train,test}.csv): training steps on train, inference on test.
    #[arg(long, default_value = "../shared/data/stsb")]
    stsb: PathBuf,
    /// Timed training steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 32)]
    eval_batch_size: usize,
    /// Run the Python reference (st_stsb.py, st_predict_bench.py in this folder) side by side.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The Python with torch and sentence-transformers for --reference.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Also time a bert-base-sized encoder (12 layers, hidden 768) with random weights and
    /// --model's tokenizer, for the tutorial's figure (5.52 s per step of 16 on its CPU).
    #[arg(long)]
    bert_base: bool,
    /// Append a row to this Markdown file.
    #[arg(long)]
    append: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let data = DataArgs::stsb();
    let train = data.read(
        args.stsb
            .join("stsb-en-train.csv")
            .to_str()
            .unwrap_or_default(),
        "train",
    )?;
    let test = data.read(
        args.stsb
            .join("stsb-en-test.csv")
            .to_str()
            .unwrap_or_default(),
        "test",
    )?;
    let load = || {
        CrossEncoder::load(
            &args.model,
            &LoadOptions {
                labels: Some(crate::model::config::generic_labels(1)),
                ..Default::default()
            },
        )
    };
    let mut ce = load()?;
    ce.batch_size = args.eval_batch_size;
    let infer = bench::inference(&ce, &test, 3)?;
    let train_b = bench::train_steps(&mut ce, &train, args.batch_size, args.steps)?;
    let (h, i) = (ce.config.hidden_size, ce.config.intermediate_size);
    let peak = bench::matmul_peak(1024, h, i)?;
    let rss = bench::peak_rss_mb();
    let mut report = json!({
        "model": args.model, "threads": threads, "cpu": cpu_name(), "commit": commit(),
        "train": train_b, "inference": infer, "matmul_peak_gflops": peak,
        "train_share_of_peak": train_b.gflops / peak, "inference_share_of_peak": infer.gflops / peak,
        "peak_rss_mb": rss,
    });
    if args.bert_base {
        let mut big = bench::resized(&ce, bench::BERT_BASE)?;
        let steps = args.steps.min(10);
        let train_big = bench::train_steps(&mut big, &train, args.batch_size, steps)?;
        let infer_big = bench::inference(&big, &test[..test.len().min(256)], 1)?;
        report["bert_base"] = json!({ "train": train_big, "inference": infer_big });
    }
    if let Some(dir) = &args.reference {
        let r = reference(&args, dir, threads)?;
        report["ratio_train"] =
            json!(train_b.pairs_per_s / r["train_pairs_per_s"].as_f64().unwrap_or(f64::NAN));
        report["ratio_inference"] =
            json!(infer.pairs_per_s / r["pairs_per_s"].as_f64().unwrap_or(f64::NAN));
        report["reference"] = r;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.append {
        append_row(path, &report)?;
        if let Some(big) = report.get("bert_base") {
            let mut row = big.clone();
            for key in ["cpu", "threads", "commit"] {
                row[key] = report[key].clone();
            }
            row["model"] = json!("bert-base size, random weights");
            append_row(path, &row)?;
        }
    }
    Ok(())
}

fn reference(args: &BenchArgs, dir: &std::path::Path, threads: usize) -> Result<Value> {
    let run = |script: &str, extra: &[String]| -> Result<Value> {
        let out = Command::new(&args.python)
            .arg(dir.join(script))
            .arg(&args.model)
            .args(extra)
            .env("OMP_NUM_THREADS", threads.to_string())
            .env("STSB_DIR", &args.stsb)
            .output()
            .with_context(|| format!("cannot run {} {}", args.python, script))?;
        if !out.status.success() {
            bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // The report is the last JSON object; the trainer prints a dict line before it.
        let start = text
            .rfind("\n{")
            .map(|i| i + 1)
            .or_else(|| text.find('{'))
            .context("no JSON in the reference's output")?;
        serde_json::from_str(&text[start..])
            .with_context(|| format!("cannot parse the reference's report: {}", &text[start..]))
    };
    let tmp = std::env::temp_dir().join(format!("crossenc-bench-ref-{}", std::process::id()));
    let pairs = (args.steps * args.batch_size).to_string();
    let mut train = run(
        "st_stsb.py",
        &[tmp.to_string_lossy().into_owned(), "1".into(), pairs],
    )?;
    let _ = std::fs::remove_dir_all(&tmp);
    let predict = run("st_predict_bench.py", &[args.eval_batch_size.to_string()])?;
    train["pairs_per_s"] = predict["pairs_per_s"].clone();
    train["predict"] = predict;
    Ok(train)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

fn append_row(path: &std::path::Path, r: &Value) -> Result<()> {
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if new {
        writeln!(f, "# Benchmarks\n\nRows appended by `crossenc bench`. Train: pairs/s over timed steps of batch 16 (length-grouped, dropout on); inference: STS-B test, batch 32, sorted by length.\n")?;
        writeln!(f, "| date | cpu, threads | commit | model | train pairs/s | s/step | tokens/s | padding | s/epoch | train GFLOP/s | infer pairs/s | infer GFLOP/s | matmul peak | peak RSS MB | ref train pairs/s | ref infer pairs/s | train x | infer x |")?;
        writeln!(f, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")?;
    }
    let g = |p: &str| {
        r.pointer(p)
            .and_then(Value::as_f64)
            .map_or("-".to_string(), |v| format!("{v:.2}"))
    };
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(
        f,
        "| {date} | {}, {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r["cpu"].as_str().unwrap_or(""),
        r["threads"],
        r["commit"].as_str().unwrap_or(""),
        r["model"].as_str().unwrap_or(""),
        g("/train/pairs_per_s"),
        g("/train/s_per_step"),
        g("/train/tokens_per_s"),
        g("/train/padding_ratio"),
        g("/train/s_per_epoch"),
        g("/train/gflops"),
        g("/inference/pairs_per_s"),
        g("/inference/gflops"),
        g("/matmul_peak_gflops"),
        g("/peak_rss_mb"),
        g("/reference/train_pairs_per_s"),
        g("/reference/pairs_per_s"),
        g("/ratio_train"),
        g("/ratio_inference"),
    )?;
    Ok(())
}
