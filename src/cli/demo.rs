use anyhow::Result;
use clap::Args;

use super::ModelArgs;

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    model: ModelArgs,
}

/// The tutorial's two demos: pair similarity, then ranking candidates for a query.
pub fn run(args: DemoArgs) -> Result<()> {
    let ce = args.model.load()?;
    let pairs = [
        (
            "A man is playing a guitar.",
            "A person is playing a guitar.",
        ),
        (
            "A dog is running in the park.",
            "A cat is sleeping on the couch.",
        ),
    ];
    outln!("Similarity:")?;
    let scores = ce.predict(&pairs)?;
    for ((a, b), row) in pairs.iter().zip(scores.rows()) {
        outln!("  {:.4}  \"{a}\" / \"{b}\"", row[0])?;
    }
    let query = "What is the capital of France?";
    let docs = [
        "Paris is the capital city of France.",
        "London is the capital of the UK.",
        "France is known for its wine and cheese.",
    ];
    outln!("\nRanking for \"{query}\":")?;
    for (rank, (i, score)) in ce.rank(query, &docs, None)?.into_iter().enumerate() {
        outln!("  {}. {score:.4}  {}", rank + 1, docs[i])?;
    }
    Ok(())
}
