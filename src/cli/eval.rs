use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::path::Path;

use super::data_args::DataArgs;
use super::ModelArgs;
use crossenc::eval::{self, Task};
use crossenc::progress::Progress;
use crossenc::search::{self, beir, Retriever};
use crossenc::stream;
use crossenc::Scores;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Which metrics: regression (Pearson, Spearman), binary, multiclass, or rerank.
    #[arg(long, value_enum, default_value = "regression")]
    task: Task,
    /// Labelled pairs: CSV/TSV/JSONL/Parquet or hf://datasets/OWNER/NAME[/PATH]; for
    /// `--task rerank`, a folder in BEIR's layout.
    #[arg(long, short)]
    data: String,
    /// The split to read from a hub dataset, or the qrels split of BEIR data.
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    columns: DataArgs,
    /// Re-ranking: first stages, `bm25` or a bi-encoder model (repeat for several).
    #[arg(long, default_value = "bm25")]
    retriever: Vec<String>,
    /// Re-ranking: candidates per query from each first stage.
    #[arg(long, default_value_t = 100)]
    top_k: usize,
    /// One JSON object keyed by metric name (for rerank: by stage, then metric).
    #[arg(long)]
    json: bool,
    /// No progress bar (it is shown only on a terminal anyway).
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.task == Task::Rerank {
        return rerank(args);
    }
    let ce = args.model.load()?;
    // The model's side of the task's rules, before any scoring; the labels' after it.
    eval::check_task(args.task, ce.num_labels(), std::iter::empty(), &args.data)?;
    let local = std::path::Path::new(&args.data).is_file();
    let bytes = local.then(|| std::fs::metadata(&args.data).ok().map(|m| m.len()));
    let bar = super::Bar::pairs(args.quiet || args.json, bytes.flatten());
    let mut labelled = Vec::new();
    let mut scores = Scores {
        num_labels: ce.num_labels(),
        values: Vec::new(),
    };
    let read = |send: &mut stream::Send<(Vec<(usize, f64)>, u64)>| -> Result<()> {
        let mut examples = args.columns.options()?.examples(&args.data, &args.split)?;
        let mut read = 0;
        loop {
            let chunk = (examples.by_ref().take(stream::CHUNK)).collect::<Result<Vec<_>>>()?;
            if chunk.is_empty() {
                for note in examples.notes(&args.data, read)? {
                    eprintln!("{note}");
                }
                return Ok(());
            }
            read += chunk.len();
            let labels = chunk.iter().map(|e| (e.line, e.label)).collect();
            let pairs = chunk.into_iter().map(|e| (e.a, e.b)).collect();
            if !send(pairs, (labels, examples.bytes_read())) {
                return Ok(());
            }
        }
    };
    stream::score(
        &ce,
        read,
        eval::scored_on(args.task),
        |(labels, bytes), chunk| {
            labelled.extend(labels);
            scores.values.extend(chunk.values);
            bar.scored(labelled.len(), bytes);
            Ok(())
        },
    )?;
    bar.finish();
    eval::check_task(
        args.task,
        ce.num_labels(),
        labelled.iter().copied(),
        &args.data,
    )?;
    let labels: Vec<f64> = labelled.iter().map(|l| l.1).collect();
    let m = eval::scored_metrics(args.task, &scores, &labels)?;
    if args.json {
        outln!("{}", serde_json::to_string(&m)?)?;
    } else {
        outln!("{} pairs: {}", labels.len(), eval::format(&m))?;
    }
    Ok(())
}

/// Each first stage alone and re-ranked by the model, on one BEIR split.
fn rerank(args: EvalArgs) -> Result<()> {
    let dir = Path::new(&args.data);
    if !dir.is_dir() {
        bail!("--task rerank reads a folder in BEIR's layout (corpus.jsonl, queries.jsonl, qrels/{}.tsv); {} is not a folder", args.split, dir.display());
    }
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let data = beir::read_beir(dir, &args.split)?;
    let ce = args.model.load()?;
    let docs: Vec<String> = data.docs.iter().map(beir::Doc::full_text).collect();
    let retrievers: Vec<Retriever> = args
        .retriever
        .iter()
        .map(|r| Retriever::build(r, &docs, &super::Bar::items(args.json)))
        .collect::<Result<_>>()?;
    let stages = search::evaluate_rerank(
        &data,
        &retrievers.iter().collect::<Vec<_>>(),
        Some(&ce),
        args.top_k,
        &super::Bar::items(args.json),
    )?;
    let mut out = serde_json::Map::new();
    for (name, stage) in args.retriever.iter().zip(stages) {
        out.insert(name.clone(), json!(stage.first_stage));
        if let Some(r) = stage.reranked {
            out.insert(format!("{name}+rerank"), json!(r));
        }
    }
    if args.json {
        outln!("{}", serde_json::Value::Object(out))?;
    } else {
        outln!(
            "{} queries, {} documents, top {} re-ranked by {}",
            data.queries.len(),
            data.docs.len(),
            args.top_k,
            args.model.model
        )?;
        for (name, m) in &out {
            let m: eval::Metrics = serde_json::from_value(m.clone())?;
            outln!("{name:<40} {}", eval::format(&m))?;
        }
    }
    Ok(())
}
