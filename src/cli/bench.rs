use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use crossenc::bench;
use crossenc::data::Example;
use crossenc::ops::profile::Rows;
use crossenc::ops::Precision;
use crossenc::{CrossEncoder, LoadOptions, Quantization};

#[derive(Args)]
pub struct BenchArgs {
    /// The model to measure (a bare encoder gets a one-output head).
    #[arg(long, short)]
    model: String,
    /// STS-B folder (stsb-en-{train,test}.csv): training steps on train, inference on test.
    #[arg(long, default_value = "data/stsb")]
    stsb: PathBuf,
    /// Timed training steps (the reference trains on as many pairs).
    #[arg(long, default_value_t = 100)]
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
    /// Rounds of measurements, crossenc's and the reference's alternated; each figure is the
    /// best of its rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Append a row to this Markdown file.
    #[arg(long)]
    append: Option<PathBuf>,
    /// Time the training steps with their products in bf16 (needs AMX or AVX-512 BF16).
    #[arg(long, value_name = "f32|bf16", default_value = "f32")]
    dtype: Precision,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let data = crossenc::data::ReadOptions::stsb();
    let split = |split: &str| -> Result<Vec<Example>> {
        let file = args.stsb.join(format!("stsb-en-{split}.csv"));
        Ok(data.read(file.to_str().unwrap_or_default(), split)?.0)
    };
    let (train, test) = (split("train")?, split("test")?);
    let load = || {
        CrossEncoder::load(
            &args.model,
            &LoadOptions {
                labels: Some(crossenc::model::config::generic_labels(1)),
                replace_head: true,
                ..Default::default()
            },
        )
    };
    let (best, reference_best, rounds) = best_rounds(&args, &load, &train, &test, threads)?;
    let Round {
        infer: (infer, infer_profile),
        train: (train_b, profile),
        int8: (infer_int8, int8_profile),
        bf16,
        quantize_s,
        peak,
        bf16_peak,
        bandwidth,
        params,
        rss,
    } = best;
    let floor = bench::step_floor(train_b.flops_per_step, params, peak, bandwidth);
    let mut report = json!({
        "model": args.model, "threads": threads, "cpu": cpu_name(), "commit": commit(),
        "rounds": rounds,
        "train": train_b, "train_dtype": args.dtype,
        "inference": infer, "matmul_peak_gflops": peak,
        "memory_bandwidth_gbs": bandwidth, "params": params, "step_floor_s": floor,
        "step_over_floor": train_b.s_per_step / floor,
        "train_share_of_peak": train_b.gflops / peak, "inference_share_of_peak": infer.gflops / peak,
        "peak_rss_mb": rss,
        "inference_int8": infer_int8, "int8_kernel": crossenc::ops::int8::kernel(),
        "quantize_s": quantize_s, "ratio_int8_f32": infer_int8.pairs_per_s / infer.pairs_per_s,
    });
    let big_profile = match args.bert_base {
        true => Some(bert_base(&args, &load()?, &train, &test, &mut report)?),
        false => None,
    };
    if let Some(r) = reference_best {
        let get = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        report["ratio_train"] = json!(train_b.pairs_per_s / get("train_pairs_per_s"));
        report["ratio_inference"] = json!(infer.pairs_per_s / get("pairs_per_s"));
        report["ratio_inference_ort_fp32"] = json!(infer.pairs_per_s / get("ort_fp32_pairs_per_s"));
        report["ratio_inference_ort_int8"] = json!(infer.pairs_per_s / get("ort_int8_pairs_per_s"));
        report["ratio_int8_ort_int8"] = json!(infer_int8.pairs_per_s / get("ort_int8_pairs_per_s"));
        report["reference"] = r;
    }
    let ms = |rows: &[(&str, f64, usize)], per: usize| -> Value {
        rows.iter()
            .map(|(name, secs, _)| (name.to_string(), json!(secs * 1e3 / per.max(1) as f64)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    report["profile_train_ms_per_step"] = ms(&profile, args.steps);
    report["profile_inference_ms"] = ms(&infer_profile, 1);
    report["profile_inference_int8_ms"] = ms(&int8_profile, 1);
    if let Some((rows, steps)) = &big_profile {
        report["bert_base"]["profile_train_ms_per_step"] = ms(rows, *steps);
    }
    if let Some((infer_bf16, _)) = &bf16 {
        report["inference_bf16"] = json!(infer_bf16);
        report["bf16_kernel"] = json!(crossenc::ops::bf16::kernel());
        report["bf16_matmul_peak_gflops"] = json!(bf16_peak);
        report["ratio_bf16_f32"] = json!(infer_bf16.pairs_per_s / infer.pairs_per_s);
    }
    outln!("{}", serde_json::to_string_pretty(&report)?)?;
    print_profile("training step", &profile, args.steps);
    print_profile("scoring STS-B test", &infer_profile, 1);
    print_profile("scoring STS-B test, int8", &int8_profile, 1);
    if let Some((rows, steps)) = &big_profile {
        print_profile("training step, bert-base size", rows, *steps);
    }
    if let Some((_, bf16_profile)) = &bf16 {
        print_profile("scoring STS-B test, bf16", bf16_profile, 1);
    }
    match &args.append {
        Some(path) => append_rows(path, &report),
        None => Ok(()),
    }
}

/// The rounds, each crossenc's then the reference's: the best figures of each side, and
/// every round's for the report. Rounds alternate the two sides, and each figure is the best
/// of its rounds: this VM's speed drifts by a fifth over minutes, and alternating exposes both
/// sides to the same drift.
fn best_rounds(
    args: &BenchArgs,
    load: &dyn Fn() -> Result<CrossEncoder>,
    train: &[Example],
    test: &[Example],
    threads: usize,
) -> Result<(Round, Option<Value>, Vec<Value>)> {
    let mut best: Option<Round> = None;
    let mut reference_best: Option<Value> = None;
    let mut rounds = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let round = measure(args, load, train, test)?;
        let reference = match &args.reference {
            Some(dir) => Some(reference(args, dir, threads)?),
            None => None,
        };
        rounds.push(json!({
            "train_pairs_per_s": round.train.0.pairs_per_s,
            "pairs_per_s": round.infer.0.pairs_per_s,
            "int8_pairs_per_s": round.int8.0.pairs_per_s,
            "bf16_pairs_per_s": round.bf16.as_ref().map(|b| b.0.pairs_per_s),
            "matmul_peak_gflops": round.peak,
            "bf16_matmul_peak_gflops": round.bf16_peak,
            "reference": reference,
        }));
        best = Some(match best {
            None => round,
            Some(b) => b.best_with(round),
        });
        reference_best = match (reference_best, reference) {
            (Some(b), Some(r)) => Some(best_reference(b, r)),
            (b, r) => r.or(b),
        };
    }
    Ok((best.expect("at least one round"), reference_best, rounds))
}

/// `--bert-base`: training steps and scoring of `model` resized to bert-base, into
/// `report["bert_base"]`; returns the training step's per-op table and its steps.
fn bert_base(
    args: &BenchArgs,
    model: &CrossEncoder,
    train: &[Example],
    test: &[Example],
    report: &mut Value,
) -> Result<(Rows, usize)> {
    let mut big = bench::resized(model, bench::BERT_BASE)?;
    let steps = args.steps.min(10);
    crossenc::ops::profile::enable(true);
    let train_big = bench::train_steps(&mut big, train, args.batch_size, steps, args.dtype)?;
    let profile = (crossenc::ops::profile::take(), steps);
    crossenc::ops::profile::enable(false);
    // Training unpacked it: scored as a loaded model is, in f32, its weights laid out once.
    big.set_precision(Precision::F32)?;
    big.pack_weights();
    let infer_big = bench::inference(&big, &test[..test.len().min(256)], 1)?;
    report["bert_base"] = json!({
        "train": train_big, "inference": infer_big,
        "tutorial_s_per_step": bench::TUTORIAL_BERT_BASE_S_PER_STEP,
    });
    Ok(profile)
}

/// `--append`: the report's row, and the bert-base row if measured.
fn append_rows(path: &std::path::Path, report: &Value) -> Result<()> {
    append_row(path, report)?;
    if let Some(big) = report.get("bert_base") {
        let mut row = big.clone();
        for key in ["cpu", "threads", "commit"] {
            row[key] = report[key].clone();
        }
        row["model"] = json!("bert-base size, random weights");
        append_row(path, &row)?;
    }
    Ok(())
}

/// One round's figures, each with its per-op table.
struct Round {
    infer: (bench::InferBench, Rows),
    train: (bench::TrainBench, Rows),
    int8: (bench::InferBench, Rows),
    /// Where the CPU has AVX-512 BF16.
    bf16: Option<(bench::InferBench, Rows)>,
    quantize_s: f64,
    peak: f64,
    /// Where the CPU has a bf16 kernel.
    bf16_peak: Option<f64>,
    bandwidth: f64,
    params: usize,
    /// Peak RSS after the training steps: the first round's is the one that counts (later
    /// rounds' would include the earlier rounds' probe buffers).
    rss: Option<f64>,
}

impl Round {
    /// Each figure the better of the two rounds' (the matmul peak and bandwidth too, so the
    /// floor is the lowest either round saw); `self` is the earlier round.
    fn best_with(self, o: Round) -> Round {
        /// The faster of two figures, with its per-op table.
        fn faster<T>(a: (T, Rows), b: (T, Rows), pairs_per_s: impl Fn(&T) -> f64) -> (T, Rows) {
            if pairs_per_s(&b.0) > pairs_per_s(&a.0) {
                b
            } else {
                a
            }
        }
        Round {
            infer: faster(self.infer, o.infer, |b| b.pairs_per_s),
            int8: faster(self.int8, o.int8, |b| b.pairs_per_s),
            bf16: match (self.bf16, o.bf16) {
                (Some(a), Some(b)) => Some(faster(a, b, |b| b.pairs_per_s)),
                (a, b) => a.or(b),
            },
            train: faster(self.train, o.train, |b| b.pairs_per_s),
            quantize_s: self.quantize_s.min(o.quantize_s),
            peak: self.peak.max(o.peak),
            bf16_peak: self.bf16_peak.zip(o.bf16_peak).map(|(a, b)| a.max(b)),
            bandwidth: self.bandwidth.max(o.bandwidth),
            params: self.params,
            rss: self.rss,
        }
    }
}

/// One round of crossenc's figures: scoring, training, peak RSS (read before the probes,
/// whose buffers would count in it), int8 and bf16 scoring, the matmul peak and the memory
/// bandwidth.
fn measure(
    args: &BenchArgs,
    load: &dyn Fn() -> Result<CrossEncoder>,
    train: &[Example],
    test: &[Example],
) -> Result<Round> {
    let mut ce = load()?;
    ce.set_batch_size(args.eval_batch_size);
    let infer = profiled_inference(&ce, test)?;
    crossenc::ops::profile::enable(true);
    let train_b = bench::train_steps(&mut ce, train, args.batch_size, args.steps, args.dtype)?;
    let profile = crossenc::ops::profile::take();
    crossenc::ops::profile::enable(false);
    let rss = bench::peak_rss_mb();
    let (h, i) = (ce.config().hidden_size, ce.config().intermediate_size);
    let params = ce.model().weights.len();
    drop(ce);
    // int8 scoring on a fresh copy, after the training figures (and their peak RSS).
    let mut int8 = load()?;
    int8.set_batch_size(args.eval_batch_size);
    let started = std::time::Instant::now();
    int8.quantize(Quantization::Int8)?;
    let quantize_s = started.elapsed().as_secs_f64();
    let int8_b = profiled_inference(&int8, test)?;
    drop(int8);
    let bf16 = match crossenc::ops::bf16::available() {
        true => {
            let mut bf16 = load()?;
            bf16.set_batch_size(args.eval_batch_size);
            bf16.quantize(Quantization::Bf16)?;
            Some(profiled_inference(&bf16, test)?)
        }
        false => None,
    };
    Ok(Round {
        infer,
        train: (train_b, profile),
        int8: int8_b,
        bf16,
        quantize_s,
        peak: bench::matmul_peak(512, h, i, Precision::F32).unwrap_or(f64::NAN),
        bf16_peak: bench::matmul_peak(512, h, i, Precision::Bf16),
        bandwidth: bench::memory_bandwidth(),
        params,
        rss,
    })
}

/// The reference's figures of two rounds, each throughput the better of the two, with the
/// figures that came with it.
fn best_reference(mut a: Value, b: Value) -> Value {
    for (key, with) in [
        ("train_pairs_per_s", &["train_s", "s_per_step"][..]),
        ("pairs_per_s", &["predict"]),
        ("ort_fp32_pairs_per_s", &[]),
        ("ort_int8_pairs_per_s", &[]),
    ] {
        if b[key].as_f64().unwrap_or(0.0) > a[key].as_f64().unwrap_or(0.0) {
            for k in std::iter::once(&key).chain(with) {
                a[*k] = b[*k].clone();
            }
        }
    }
    a
}

/// Scoring throughput over `test` (the best of three passes after a warm-up) and its per-op
/// table for one pass.
fn profiled_inference(ce: &CrossEncoder, test: &[Example]) -> Result<(bench::InferBench, Rows)> {
    crossenc::ops::profile::enable(true);
    let infer = bench::inference(ce, test, 3);
    // Warm-up and three passes over the test set: a third of the table is one pass.
    let profile = crossenc::ops::profile::take()
        .into_iter()
        .map(|(name, secs, calls)| (name, secs / 3.0, calls))
        .collect();
    crossenc::ops::profile::enable(false);
    Ok((infer?, profile))
}

/// Per-op time, ms per step (per pass), largest first, as a Markdown table on stderr.
fn print_profile(what: &str, rows: &[(&'static str, f64, usize)], steps: usize) {
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("\n| op ({what}) | ms | share |\n| --- | --- | --- |");
    for (name, secs, _) in rows {
        let ms = secs * 1e3 / steps.max(1) as f64;
        eprintln!("| {name} | {ms:.2} | {:.1}% |", 100.0 * secs / total);
    }
    eprintln!("| total | {:.2} | |", total * 1e3 / steps.max(1) as f64);
}

fn reference(args: &BenchArgs, dir: &std::path::Path, threads: usize) -> Result<Value> {
    let run = |script: &str, extra: &[String]| -> Result<Vec<Value>> {
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
        // A report starts a line with `{` and may span several lines.
        let text = String::from_utf8_lossy(&out.stdout);
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1));
        let values: Vec<Value> = starts
            .filter(|&i| text[i..].starts_with('{'))
            .filter_map(|i| {
                let mut de = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
                de.next().and_then(|v| v.ok())
            })
            .collect();
        if values.is_empty() {
            bail!("no JSON report in the output of {script}");
        }
        Ok(values)
    };
    let tmp = std::env::temp_dir().join(format!("crossenc-bench-ref-{}", std::process::id()));
    let pairs = (args.steps * args.batch_size).to_string();
    let train = run(
        "st_stsb.py",
        &[tmp.to_string_lossy().into_owned(), "1".into(), pairs],
    );
    let _ = std::fs::remove_dir_all(&tmp);
    let mut train = train?.pop().unwrap_or_default();
    let predict = run("st_predict_bench.py", &[args.eval_batch_size.to_string()])?;
    let predict = predict.last().cloned().unwrap_or_default();
    train["pairs_per_s"] = predict["pairs_per_s"].clone();
    train["predict"] = predict;
    std::fs::create_dir_all(&tmp)?;
    let ort = run("ort_bench.py", &[tmp.to_string_lossy().into_owned()]);
    let _ = std::fs::remove_dir_all(&tmp);
    for r in ort? {
        let key = match r["runtime"].as_str() {
            Some(s) if s.contains("int8") => "ort_int8_pairs_per_s",
            _ => "ort_fp32_pairs_per_s",
        };
        train[key] = r["pairs_per_s"].clone();
    }
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

const HEADER: &str = "| date | cpu, threads | commit | model | train pairs/s | s/step | step floor s | tokens/s | padding | s/epoch | train GFLOP/s | infer pairs/s | infer GFLOP/s | matmul peak | GB/s | peak RSS MB | ref train pairs/s | ref infer pairs/s | ORT fp32 | ORT int8 | train x | infer x | int8 pairs/s | int8 x ORT int8 | bf16 pairs/s |";

/// Appends a row to the Markdown table in `path`, starting a new table when the file has none
/// with today's columns.
fn append_row(path: &std::path::Path, r: &Value) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if old.is_empty() {
        writeln!(f, "# Benchmarks\n\nRows appended by `crossenc bench`. Train: pairs/s over timed steps of batch 16 (length-grouped, dropout on); inference: STS-B test, batch 32, sorted by length.")?;
    }
    // A new table (header and separator) unless the file ends in a row of this one.
    let bars = HEADER.matches('|').count();
    let last = old.lines().rev().find(|l| !l.trim().is_empty());
    if !last.is_some_and(|l| l.starts_with('|') && l.matches('|').count() == bars) {
        let columns = bars - 1;
        writeln!(f, "\n{HEADER}\n{}|", "| --- ".repeat(columns))?;
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
        "| {date} | {}, {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r["cpu"].as_str().unwrap_or(""),
        r["threads"],
        r["commit"].as_str().unwrap_or(""),
        r["model"].as_str().unwrap_or(""),
        g("/train/pairs_per_s"),
        g("/train/s_per_step"),
        g("/step_floor_s"),
        g("/train/tokens_per_s"),
        g("/train/padding_ratio"),
        g("/train/s_per_epoch"),
        g("/train/gflops"),
        g("/inference/pairs_per_s"),
        g("/inference/gflops"),
        g("/matmul_peak_gflops"),
        g("/memory_bandwidth_gbs"),
        g("/peak_rss_mb"),
        g("/reference/train_pairs_per_s"),
        g("/reference/pairs_per_s"),
        g("/reference/ort_fp32_pairs_per_s"),
        g("/reference/ort_int8_pairs_per_s"),
        g("/ratio_train"),
        g("/ratio_inference"),
        g("/inference_int8/pairs_per_s"),
        g("/ratio_int8_ort_int8"),
        g("/inference_bf16/pairs_per_s"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reference_figure_is_its_best_round_with_what_came_with_it() {
        let a = json!({"train_pairs_per_s": 40.0, "s_per_step": 0.4, "train_s": 40.0,
            "pairs_per_s": 200.0, "predict": {"best_s": 6.9}, "ort_fp32_pairs_per_s": 230.0,
            "ort_int8_pairs_per_s": 400.0});
        let b = json!({"train_pairs_per_s": 45.0, "s_per_step": 0.36, "train_s": 36.0,
            "pairs_per_s": 180.0, "predict": {"best_s": 7.7}, "ort_fp32_pairs_per_s": 200.0,
            "ort_int8_pairs_per_s": 500.0});
        let best = best_reference(a, b);
        assert_eq!(best["train_pairs_per_s"], 45.0);
        assert_eq!(best["s_per_step"], 0.36);
        assert_eq!(best["train_s"], 36.0);
        assert_eq!(best["pairs_per_s"], 200.0);
        assert_eq!(best["predict"]["best_s"], 6.9);
        assert_eq!(best["ort_fp32_pairs_per_s"], 230.0);
        assert_eq!(best["ort_int8_pairs_per_s"], 500.0);
    }

    #[test]
    fn rows_go_under_a_header_of_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        let report = json!({"cpu": "test cpu", "threads": 2, "train": {"pairs_per_s": 1.5}});
        let headers = |text: &str| text.lines().filter(|l| *l == HEADER).count();
        // A file ending in prose: a new table starts, and the next row joins it.
        std::fs::write(
            &path,
            format!("# B\n\n{HEADER}\n| old row |\n\nSome prose.\n"),
        )
        .unwrap();
        append_row(&path, &report).unwrap();
        append_row(&path, &report).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(headers(&text), 2, "{text}");
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        assert!(tail[0].contains("test cpu, 2") && tail[1].contains("test cpu, 2"));
        assert!(tail[2].starts_with("| --- ") && tail[3] == HEADER, "{text}");
    }
}
