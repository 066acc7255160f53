use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use super::ModelArgs;

#[derive(Args)]
pub struct RankArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The query.
    #[arg(long, short)]
    query: String,
    /// Documents: one per line, or JSONL objects with a "text" field; - for standard input.
    #[arg(long, short)]
    docs: String,
    /// Print only the best N.
    #[arg(long)]
    top_k: Option<usize>,
    /// One JSON object per line: rank, index, score, text.
    #[arg(long)]
    json: bool,
}

/// Documents from a plain-text file (one per line) or JSONL with a `text` field.
pub fn read_docs(path: &str) -> Result<Vec<String>> {
    let text = crate::data::read_text(path)?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    if lines.is_empty() {
        bail!("{path}: no documents");
    }
    if !lines[0].1.trim_start().starts_with('{') {
        return Ok(lines.into_iter().map(|(_, l)| l.to_string()).collect());
    }
    lines
        .into_iter()
        .map(|(n, l)| {
            let v: Value = serde_json::from_str(l)
                .with_context(|| format!("{path} line {n}: invalid JSON"))?;
            v.get("text")
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("{path} line {n}: no \"text\" field"))
        })
        .collect()
}

pub fn run(args: RankArgs) -> Result<()> {
    let docs = read_docs(&args.docs)?;
    let ce = args.model.load()?;
    let ranked = ce.rank(&args.query, &docs, args.top_k)?;
    for (rank, (index, score)) in ranked.into_iter().enumerate() {
        if args.json {
            println!(
                "{}",
                json!({ "rank": rank + 1, "index": index, "score": score, "text": docs[index] })
            );
        } else {
            println!("{:>4}  {:>5}  {score:.4}  {}", rank + 1, index, docs[index]);
        }
    }
    Ok(())
}
