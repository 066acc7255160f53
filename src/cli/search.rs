use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::ModelArgs;
use crossenc::search::{beir, Retriever};

#[derive(Args)]
pub struct SearchArgs {
    /// The cross-encoder that re-ranks.
    #[command(flatten)]
    model: ModelArgs,
    /// The first stage: `bm25` or a bi-encoder model folder or hub id.
    #[arg(long, default_value = "bm25")]
    retriever: String,
    /// Documents: JSONL (BEIR's corpus.jsonl: `_id`, `title`, `text`) or plain text, one per line.
    #[arg(long)]
    corpus: String,
    /// The query (repeat for several).
    #[arg(long, short, required = true)]
    query: Vec<String>,
    /// Candidates the first stage passes to the cross-encoder (at least 1).
    #[arg(long, default_value_t = 100, value_parser = super::at_least_one())]
    top_k: usize,
    /// Results printed per query.
    #[arg(long, default_value_t = 10)]
    show: usize,
    /// One JSON object per result: query, rank, id, score, first-stage rank and score, text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SearchArgs) -> Result<()> {
    let docs = beir::read_corpus(&args.corpus)?;
    let texts: Vec<String> = docs.iter().map(beir::Doc::full_text).collect();
    let ce = args.model.load()?;
    let retriever = Retriever::build(&args.retriever, &texts, &super::Bar::items(args.json))?;
    let candidates = retriever.search(&args.query, args.top_k)?;
    for (query, hits) in args.query.iter().zip(candidates) {
        let pairs: Vec<(&str, &str)> = hits
            .iter()
            .map(|h| (query.as_str(), texts[h.0].as_str()))
            .collect();
        let scores = ce.predict(&pairs)?;
        let first: Vec<f32> = scores.rows().map(|r| r[0]).collect();
        let order = crossenc::eval::ranking::rank_by_score(&first);
        if !args.json {
            outln!(
                "query: {query}  ({} candidates from {})",
                hits.len(),
                args.retriever
            )?;
            outln!(
                "{:>4}  {:>8}  {:>10}  {:<12}  text",
                "rank",
                "score",
                "first",
                "id"
            )?;
        }
        for (rank, &i) in order.iter().take(args.show).enumerate() {
            let (doc, first_score) = hits[i];
            let score = scores.row(i)[0];
            if args.json {
                outln!(
                    "{}",
                    json!({"query": query, "rank": rank + 1, "id": docs[doc].id, "score": score,
                           "first_stage_rank": i + 1, "first_stage_score": first_score,
                           "text": texts[doc]})
                )?;
            } else {
                let text: String = texts[doc].chars().take(90).collect();
                outln!(
                    "{:>4}  {score:>8.4}  {:>10}  {:<12}  {text}",
                    rank + 1,
                    format!("{first_score:.3} #{}", i + 1),
                    docs[doc].id
                )?;
            }
        }
    }
    Ok(())
}
