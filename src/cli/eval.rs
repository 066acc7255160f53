use anyhow::Result;
use clap::Args;

use super::data_args::DataArgs;
use super::ModelArgs;
use crate::eval;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled pairs: CSV/TSV/JSONL/Parquet or hf://datasets/OWNER/NAME[/PATH].
    #[arg(long, short)]
    data: String,
    /// The split to read from a hub dataset.
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    columns: DataArgs,
    /// One JSON object keyed by metric name.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let examples = args.columns.read(&args.data, &args.split)?;
    let ce = args.model.load()?;
    let m = eval::correlation_metrics(&ce, &examples)?;
    if args.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        println!("{} pairs: {}", examples.len(), eval::format(&m));
    }
    Ok(())
}
