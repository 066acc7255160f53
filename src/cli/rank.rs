use anyhow::Result;
use clap::Args;
use crossenc::Output;
use serde_json::json;

use std::collections::HashMap;

use super::ModelArgs;
use crossenc::eval::ranking::best_first;
use crossenc::progress::Progress;
use crossenc::search::beir::{self, Doc};
use crossenc::stream;

#[derive(Args)]
pub struct RankArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The query.
    #[arg(long, short)]
    query: String,
    /// Documents: one per line, or JSONL objects with a "text" field (and optional "title");
    /// - for standard input.
    #[arg(long, short)]
    docs: String,
    /// Print only the best N (at least 1).
    #[arg(long, value_parser = super::at_least_one())]
    top_k: Option<usize>,
    /// One JSON object per line: rank, index (0-based among the documents), line (1-based in
    /// the file; blank lines are skipped), id, score, text. Without it: rank, line, score, text.
    #[arg(long)]
    json: bool,
    /// No progress bar (it is shown only on a terminal anyway).
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: RankArgs) -> Result<()> {
    let ce = args.model.load()?;
    ce.check_ranks()?;
    let k = args.top_k.unwrap_or(usize::MAX);
    let bytes = (args.docs != "-")
        .then(|| std::fs::metadata(&args.docs).ok().map(|m| m.len()))
        .flatten();
    let bar = super::Bar::pairs(args.quiet, bytes);
    // The best k so far (all without --top-k), pruned to k whenever twice that many wait.
    let (mut best, mut docs) = (Vec::new(), HashMap::new());
    let read = |send: &mut stream::Send<(Vec<Doc>, usize, u64)>| -> Result<()> {
        let mut corpus = beir::corpus(&args.docs)?;
        let (mut first, mut read) = (0, 0u64);
        loop {
            let chunk = (corpus.by_ref().take(stream::CHUNK)).collect::<Result<Vec<Doc>>>()?;
            if chunk.is_empty() {
                return Ok(());
            }
            read += chunk.iter().map(|d| d.text.len() as u64 + 1).sum::<u64>();
            let pairs = chunk
                .iter()
                .map(|d| (args.query.clone(), d.full_text()))
                .collect();
            let n = chunk.len();
            if !send(pairs, (chunk, first, read)) {
                return Ok(());
            }
            first += n;
        }
    };
    stream::score(
        &ce,
        read,
        Output::Activated,
        |(chunk, first, read), scores| {
            bar.scored(first + chunk.len(), read);
            for (i, (doc, score)) in chunk.into_iter().zip(scores.rows()).enumerate() {
                best.push((first + i, score[0]));
                docs.insert(first + i, doc);
            }
            if best.len() >= k.saturating_mul(2) {
                best = best_first(std::mem::take(&mut best), k);
                docs.retain(|i, _| best.iter().any(|b| b.0 == *i));
            }
            Ok(())
        },
    )?;
    bar.finish();
    for (rank, (index, score)) in best_first(best, k).into_iter().enumerate() {
        let doc = &docs[&index];
        let text = doc.full_text();
        if args.json {
            let row = json!({
                "rank": rank + 1, "index": index, "line": doc.line, "id": doc.id,
                "score": score, "text": text,
            });
            outln!("{row}")?;
        } else {
            outln!("{:>4}  {:>5}  {score:.4}  {text}", rank + 1, doc.line)?;
        }
    }
    Ok(())
}
