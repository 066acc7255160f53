//! The `crossenc` command line: one file per subcommand, each a thin layer over the library.

/// `println!` that returns an error where `println!` panics: on a closed standard output
/// (`| head`), which `main` ends quietly, and on a full or failing one, which it reports.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

mod bench;
mod data_args;
mod demo;
mod eval;
mod predict;
mod rank;
mod search;
mod serve;
mod train;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

use crossenc::setting::Setting;
use crossenc::{CrossEncoder, LoadOptions, Quantization};

#[derive(Parser)]
#[command(
    name = "crossenc",
    version,
    about = "Fine-tune, evaluate and serve cross-encoders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score text pairs from a CSV, TSV or JSONL file; one JSON object per line.
    Predict(predict::PredictArgs),
    /// Rank documents for a query.
    Rank(rank::RankArgs),
    /// Run the tutorial's similarity and ranking demos.
    Demo(demo::DemoArgs),
    /// Fine-tune a cross-encoder (default data: STS-B from the hub).
    Train(Box<train::TrainArgs>),
    /// Metrics of a model: correlation, classification, or re-ranking on BEIR data.
    Eval(eval::EvalArgs),
    /// Retrieve with BM25 or a bi-encoder, then re-rank with a cross-encoder.
    Search(search::SearchArgs),
    /// HTTP re-ranking and scoring server (text-embeddings-inference routes).
    Serve(serve::ServeArgs),
    /// Training and inference throughput on STS-B, optionally beside the Python reference.
    Bench(bench::BenchArgs),
}

/// How to load the model; shared by every subcommand that reads one.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A model folder (config.json, tokenizer.json, weights) or a hub id such as
    /// cross-encoder/ms-marco-MiniLM-L6-v2.
    #[arg(long, short)]
    pub model: String,
    /// Maximum tokens per pair (default: the model's own, capped by its position table).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Outputs of a new head, when the model has none (a bare encoder); a head of another size
    /// is refused.
    #[arg(long)]
    pub num_labels: Option<usize>,
    /// Seed of a newly created head.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Score with int8 linear layers (about three times as fast as f32 on CPUs with AVX-512
    /// VNNI, at a small cost in accuracy) or bf16 ones (CPUs with AVX-512 BF16: faster than
    /// f32, closer to it than int8); see the README.
    #[arg(long, visible_alias = "dtype", value_name = "int8|bf16")]
    pub quantize: Option<Quantization>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<CrossEncoder> {
        let opts = LoadOptions {
            max_length: self.max_length,
            labels: self.num_labels.map(crossenc::model::config::generic_labels),
            replace_head: false,
            seed: self.seed,
            activation: None,
            quantize: self.quantize,
        };
        let mut ce = CrossEncoder::load(&self.model, &opts)?;
        anyhow::ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ce.set_batch_size(self.batch_size);
        if !ce.new_head_params().is_empty() {
            eprintln!(
                "note: {} has no trained classification head; created {} with seed {} \
                 (scores are meaningless until the model is fine-tuned)",
                self.model,
                ce.new_head_params().join(", "),
                self.seed
            );
        }
        Ok(ce)
    }
}

/// The library's progress drawn as a bar on stderr: position and status per update, kept
/// lines printed above it, periodic log lines left out.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    /// A bar with `template` on a terminal; hidden when quiet or redirected.
    fn new(quiet: bool, template: &str) -> Bar {
        use std::io::IsTerminal;
        if quiet || !std::io::stderr().is_terminal() {
            return Bar(indicatif::ProgressBar::hidden());
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(template).expect("valid template");
        bar.set_style(style);
        Bar(bar)
    }

    /// Counts items (documents to embed, pairs to score).
    pub fn items(quiet: bool) -> Bar {
        Bar::new(
            quiet,
            "{bar:30} {pos}/{len}  [{elapsed_precise} < {eta_precise}]",
        )
    }

    /// Pairs scored from an input of `bytes` (the bar follows the bytes read), with their
    /// count and rate; standard input (`None`) shows the count and rate alone.
    pub fn pairs(quiet: bool, bytes: Option<u64>) -> Bar {
        let bar = match bytes {
            Some(_) => Bar::new(
                quiet,
                "{bar:30} {percent:>3}%  {msg}  [{elapsed_precise} < {eta_precise}]",
            ),
            None => Bar::new(quiet, "{spinner} {msg}  [{elapsed_precise}]"),
        };
        bar.0.set_length(bytes.unwrap_or(0));
        bar
    }

    /// `pairs` scored, the input read up to `bytes`.
    pub fn scored(&self, pairs: usize, bytes: u64) {
        let rate = pairs as f64 / self.0.elapsed().as_secs_f64().max(1e-9);
        self.0
            .set_message(format!("{pairs} pairs, {rate:.0} pairs/s"));
        self.0.set_position(bytes);
    }

    /// A line on stderr, above the bar where one is drawn.
    pub fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    /// Counts training steps, with the loss beside them.
    pub fn steps() -> Bar {
        let template = "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]";
        Bar::new(false, template)
    }
}

impl crossenc::progress::Progress for Bar {
    fn start(&self, total: u64, done: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
    fn update(&self, done: u64, status: &str) {
        self.0.set_position(done);
        if !status.is_empty() {
            self.0.set_message(status.to_string());
        }
    }
    fn report(&self, line: &str) {
        self.0.println(line);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A count flag that must be at least 1 (`--top-k`).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// The flag that sets each setting the library's messages point to.
fn flag(s: Setting) -> &'static str {
    match s {
        Setting::Model => "--model",
        Setting::MaxLength => "--max-length",
        Setting::Quantize => "--quantize",
        Setting::Precision => "--dtype",
        Setting::NumLabels => "--num-labels",
        Setting::Output => "--output",
        Setting::Overwrite => "--overwrite",
        Setting::Resume => "--resume",
        Setting::SaveSteps => "--save-steps",
        Setting::RankTimeout => "--rank-timeout",
        Setting::LabelRange => "--label-range",
        Setting::Loss => "--loss",
        Setting::Metric => "--metric",
        Setting::Task => "--task",
        Setting::Labels => "--labels",
        Setting::Lr => "--lr",
        Setting::SkipBadRows => "--skip-bad-rows",
        Setting::Header => "--header",
        Setting::TextColumns => "--text-cols",
        Setting::LabelColumn => "--label-col",
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crossenc::setting::name_settings(flag);
    let result = crossenc::engine::run(|| match cli.command {
        Command::Predict(a) => predict::run(a),
        Command::Rank(a) => rank::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Search(a) => search::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader has all it wanted (`crossenc rank ... | head -1`).
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one line of a command's output to standard output (see `outln!`).
pub fn write_line(line: std::fmt::Arguments) -> Result<()> {
    use anyhow::Context;
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").context("cannot write to standard output")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
