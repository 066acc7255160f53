use anyhow::Result;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use super::data_args::{parse_span, DataArgs};
use crossenc::eval::{self, Task};
use crossenc::ops::Precision;
use crossenc::progress::{Lines, Silent};
use crossenc::train::group::{self, Group};
use crossenc::train::optim::AdamWConfig;
use crossenc::train::{Batching, Job, JobError, LossKind, Mining, OutputMode, Pairs, TrainConfig};

/// STS-B as crossenc ships it (scores 0-5, read with --label-range 0:5 unless told otherwise):
/// the data of `crossenc train` with no --train, and its dev and test splits.
pub const DEFAULT_TRAIN: &str = crossenc::data::bundled::STSB;

#[derive(Args)]
pub struct TrainArgs {
    /// The model to start from: a folder or hub id (a bare encoder gets a new head).
    #[arg(long, short)]
    model: String,
    /// Where the trained model, metrics.jsonl, training.svg and checkpoints go (not the --model
    /// folder: the run replaces the model there).
    #[arg(long, short)]
    output: PathBuf,
    /// What to train: regression on graded labels (STS-B), binary or multiclass
    /// classification of pairs, or re-ranking from BEIR data.
    #[arg(long, value_enum, default_value = "regression")]
    task: Task,
    /// Training data: a CSV/TSV/JSONL/Parquet file, hf://datasets/OWNER/NAME[/PATH], or
    /// bundled:stsb (STS-B, shipped with crossenc: no network needed); for `--task rerank`, a
    /// folder in BEIR's layout (corpus.jsonl, queries.jsonl, qrels/).
    #[arg(long, default_value = DEFAULT_TRAIN)]
    train: String,
    /// Dev data for evaluation and model selection (default: bundled:stsb's dev split when
    /// training on it; none for other --train data); for `--task rerank`, a folder in BEIR's
    /// layout whose --dev-split queries have their candidate lists re-ranked (NDCG@10).
    #[arg(long)]
    dev: Option<String>,
    /// Test data, evaluated once with the final model (default: bundled:stsb's test split when
    /// training on it).
    #[arg(long)]
    test: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Default: bce (regression, binary), cross-entropy (multiclass), mnrl (rerank).
    #[arg(long, value_enum)]
    loss: Option<LossKind>,
    /// Re-ranking: the qrels split that gives queries and positives.
    #[arg(long, default_value = "train")]
    split: String,
    /// Re-ranking: the first stage that mines hard negatives: bm25 or a bi-encoder model.
    #[arg(long, default_value = "bm25")]
    retriever: String,
    /// Re-ranking: hard negatives per positive.
    #[arg(long, default_value_t = 3)]
    negatives: usize,
    /// Re-ranking: the qrels split of --dev whose queries evaluate the model.
    #[arg(long, default_value = "dev")]
    dev_split: String,
    /// Re-ranking: candidates per dev query, the first stage's top N and then the positives it
    /// missed (as sentence-transformers' CrossEncoderRerankingEvaluator).
    #[arg(long, default_value_t = 20, value_parser = super::at_least_one())]
    dev_depth: usize,
    /// Re-ranking: mine negatives from first-stage ranks FROM:TO, skipping the top FROM
    /// (likely unjudged positives); known positives are never taken.
    #[arg(long, default_value = "10:100", value_parser = parse_span::<usize>)]
    neg_range: (usize, usize),
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// How batches are formed: grouped by length (little padding) or random.
    #[arg(long, value_enum, default_value = "random")]
    batching: Batching,
    #[arg(long, default_value_t = 2e-5, value_parser = non_negative, allow_hyphen_values = true)]
    lr: f64,
    #[arg(long, default_value_t = 0.01, value_parser = non_negative, allow_hyphen_values = true)]
    weight_decay: f64,
    /// Linear warm-up steps (overrides --warmup-ratio).
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long, default_value_t = 0.1, value_parser = fraction, allow_hyphen_values = true)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 1.0, value_parser = positive, allow_hyphen_values = true)]
    max_grad_norm: f64,
    /// Batches whose gradients are summed into one optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Fixes the head's initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Maximum tokens per pair.
    #[arg(long)]
    max_length: Option<usize>,
    /// The linear layers' products in bf16 with f32 sums, master weights and everything else
    /// in f32 (as PyTorch's autocast): about twice as fast on CPUs with AMX (Intel Xeon
    /// Sapphire Rapids or later), 1.4-1.9 times with AVX-512 BF16 (AMD Zen 4 or later), refused
    /// elsewhere. The saved model is f32.
    #[arg(long, value_name = "f32|bf16", default_value = "f32")]
    dtype: Precision,
    /// Evaluate on --dev every N steps (and at each epoch's end).
    #[arg(long)]
    eval_steps: Option<usize>,
    /// Metric that picks the best model (default: spearman, average_precision for binary,
    /// macro_f1 for multiclass).
    #[arg(long)]
    metric: Option<String>,
    /// Write a resumable checkpoint every N steps.
    #[arg(long)]
    save_steps: Option<usize>,
    /// Continue from the newest checkpoint in --output (a run that finished stays as it is).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the run in a non-empty --output: its model, log, plot, card and checkpoints are
    /// removed first (other files stay). Without it (or --resume) a non-empty --output is
    /// refused, unless all it holds is what a failed run left (its log, partial checkpoints).
    #[arg(long)]
    overwrite: bool,
    /// Log every N steps.
    #[arg(long, default_value_t = 20)]
    log_steps: usize,
    /// Stop after N steps (the schedule still spans every epoch).
    #[arg(long, value_parser = at_least_one)]
    max_steps: Option<usize>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Under mpirun: seconds a rank waits for the others at one exchange before it ends the job
    /// (a rank that is stopped or hung would hold the rest forever). It must exceed rank 0's
    /// longest evaluation or save, which the others wait out.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    rank_timeout: u64,
}

/// A finite number that `ok` accepts: the flags below make no sense for other values (NaN
/// included), and would otherwise be found out, if at all, mid-run.
fn number_where(s: &str, ok: fn(f64) -> bool, what: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(format!("expected {what}")),
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    number_where(s, |v| v >= 0.0, "a number >= 0")
}

fn positive(s: &str) -> Result<f64, String> {
    number_where(s, |v| v > 0.0, "a number > 0")
}

fn fraction(s: &str) -> Result<f64, String> {
    number_where(s, |v| (0.0..=1.0).contains(&v), "a number in [0, 1]")
}

/// `--max-steps 0` would train nothing and save no model.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number >= 1".into()),
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let timeout = std::time::Duration::from_secs(args.rank_timeout);
    let group: Arc<dyn Group> = Arc::from(group::from_env(timeout)?);
    match train_in(args, &group) {
        // Under MPI the other ranks would wait for this one forever: end the job.
        Err(e) if group.size() > 1 => {
            eprintln!("error on rank {} of {}: {e:#}", group.rank(), group.size());
            group.abort(1)
        }
        done => done,
    }
}

/// A job's error in the flags' terms.
fn flag_hint(e: anyhow::Error) -> anyhow::Error {
    let Some(e) = e.downcast_ref::<JobError>() else {
        return e;
    };
    anyhow::anyhow!(match e {
        JobError::ClassNamesNeeded => "--task multiclass needs --labels with two or more class names, e.g. --labels contradiction,entailment,neutral",
        JobError::ClassNamesUnexpected => "--labels names the classes of --task multiclass",
        JobError::HeldOutForRerank => "--task rerank has no --test: evaluate the output with crossenc eval --task rerank",
        JobError::NoNegatives => "--negatives must be at least 1",
    })
}

/// The job these flags ask for.
fn job(args: &TrainArgs, group: &Arc<dyn Group>) -> Result<Job> {
    let defaults = TrainConfig::for_task(args.task);
    let cfg = TrainConfig {
        loss: args.loss.unwrap_or(defaults.loss),
        metric: args
            .metric
            .clone()
            .unwrap_or_else(|| defaults.metric.clone()),
        epochs: args.epochs,
        batch_size: args.batch_size,
        batching: args.batching,
        lr: args.lr,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..Default::default()
        },
        warmup_steps: args.warmup_steps,
        warmup_ratio: args.warmup_ratio,
        max_grad_norm: args.max_grad_norm,
        grad_accum: args.grad_accum,
        precision: args.dtype,
        seed: args.seed,
        eval_steps: args.eval_steps,
        save_steps: args.save_steps,
        log_steps: args.log_steps,
        max_steps: args.max_steps,
        progress: if args.quiet {
            Arc::new(Silent)
        } else if std::io::stdout().is_terminal() {
            Arc::new(super::Bar::steps())
        } else {
            Arc::new(Lines)
        },
        group: group.clone(),
        ..defaults
    };
    let mut job = Job::new(
        &args.model,
        Pairs::Spec(args.train.clone()),
        &args.output,
        cfg,
    );
    job.mode = match (args.resume, args.overwrite) {
        (true, _) => OutputMode::Resume,
        (false, true) => OutputMode::Overwrite,
        (false, false) => OutputMode::New,
    };
    job.dev = args.dev.clone().map(Pairs::Spec);
    job.test = args.test.clone().map(Pairs::Spec);
    job.read = args.data.options()?;
    job.max_length = args.max_length;
    job.mining = Mining {
        split: args.split.clone(),
        retriever: args.retriever.clone(),
        negatives: args.negatives,
        ranks: args.neg_range,
        dev_split: args.dev_split.clone(),
        dev_depth: args.dev_depth,
    };
    Ok(job)
}

fn train_in(mut args: TrainArgs, group: &Arc<dyn Group>) -> Result<()> {
    // Rank 0 of a data-parallel run speaks for all.
    args.quiet |= group.rank() > 0;
    let quiet = args.quiet;
    let job = job(&args, group)?;
    let ready = job.prepare(&super::Bar::items(quiet)).map_err(flag_hint)?;
    for note in &ready.notes {
        eprintln!("{note}");
    }
    if !quiet {
        let job = &ready.job;
        if let Some(mined) = &ready.mined {
            outln!(
                "mined {} negatives per positive from {} ranks {}:{} for {} queries ({} left out: too few candidates)",
                job.mining.negatives,
                job.mining.retriever,
                job.mining.ranks.0,
                job.mining.ranks.1,
                mined.queries,
                mined.left_out
            )?;
        }
        outln!(
            "training {} on {} ({} pairs{}), {} epochs, batch {}, into {}",
            job.model,
            job.train.name(),
            ready.train.len(),
            ready
                .dev
                .as_ref()
                .map_or(String::new(), |d| format!(", dev {}", d.len())),
            job.config.epochs,
            job.config.batch_size,
            job.output.display()
        )?;
    }
    let done = ready.run()?;
    if quiet {
        return Ok(());
    }
    if done.summary.already_finished {
        // Its model, card and log stay as the finished run left them.
        return outln!(
            "{} already finished ({} steps): nothing to resume",
            args.output.display(),
            done.summary.steps
        );
    }
    if let Some(m) = &done.test {
        outln!("test: {}", eval::format(m))?;
    }
    outln!(
        "saved to {} ({} steps, {:.0} s)",
        args.output.display(),
        done.summary.steps,
        done.summary.seconds
    )
}
