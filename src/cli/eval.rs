use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::path::Path;

use super::data_args::DataArgs;
use super::ModelArgs;
use crate::eval::{self, Task};
use crate::search::{self, beir, Retriever};

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
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.task == Task::Rerank {
        return rerank(args);
    }
    let examples = args.columns.read(&args.data, &args.split)?;
    let ce = args.model.load()?;
    eval::check_task(args.task, ce.num_labels(), &examples, &args.data)?;
    let m = eval::pair_metrics(&ce, args.task, &examples)?;
    if args.json {
        outln!("{}", serde_json::to_string(&m)?)?;
    } else {
        outln!("{} pairs: {}", examples.len(), eval::format(&m))?;
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
