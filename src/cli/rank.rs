use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::ModelArgs;

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
}

pub fn run(args: RankArgs) -> Result<()> {
    let corpus = crate::search::beir::read_corpus(&args.docs)?;
    let docs: Vec<String> = corpus
        .iter()
        .map(crate::search::beir::Doc::full_text)
        .collect();
    let ce = args.model.load()?;
    let ranked = ce.rank(&args.query, &docs, args.top_k)?;
    for (rank, (index, score)) in ranked.into_iter().enumerate() {
        let doc = &corpus[index];
        if args.json {
            let row = json!({
                "rank": rank + 1, "index": index, "line": doc.line, "id": doc.id,
                "score": score, "text": docs[index],
            });
            outln!("{row}")?;
        } else {
            outln!(
                "{:>4}  {:>5}  {score:.4}  {}",
                rank + 1,
                doc.line,
                docs[index]
            )?;
        }
    }
    Ok(())
}
