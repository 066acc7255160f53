use anyhow::{bail, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

use super::data_args::{check_unit_labels, DataArgs};
use crate::eval;
use crate::model::config::generic_labels;
use crate::train::card::Card;
use crate::train::optim::AdamWConfig;
use crate::train::{self, Batching, LossKind, Progress, TrainConfig};
use crate::{CrossEncoder, LoadOptions};

/// STS-B on the hub, scores already in [0, 1]: the data of `crossenc train` with no --train.
pub const DEFAULT_TRAIN: &str = "hf://datasets/sentence-transformers/stsb";

#[derive(Args)]
pub struct TrainArgs {
    /// The model to start from: a folder or hub id (a bare encoder gets a new head).
    #[arg(long, short)]
    model: String,
    /// Where the trained model, metrics.jsonl, training.svg and checkpoints go.
    #[arg(long, short)]
    output: PathBuf,
    /// Training data: a CSV/TSV/JSONL/Parquet file or hf://datasets/OWNER/NAME[/PATH].
    #[arg(long, default_value = DEFAULT_TRAIN)]
    train: String,
    /// Dev data for evaluation and model selection (default: the validation split of the
    /// default hub dataset; none for other --train data).
    #[arg(long)]
    dev: Option<String>,
    /// Test data, evaluated once with the final model.
    #[arg(long)]
    test: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, value_enum, default_value = "bce")]
    loss: LossKind,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// How batches are formed: grouped by length (little padding) or random.
    #[arg(long, value_enum, default_value = "grouped")]
    batching: Batching,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Linear warm-up steps (overrides --warmup-ratio).
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
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
    /// Evaluate on --dev every N steps (and at each epoch's end).
    #[arg(long)]
    eval_steps: Option<usize>,
    /// Metric that picks the best model.
    #[arg(long, default_value = "spearman")]
    metric: String,
    /// Write a resumable checkpoint every N steps.
    #[arg(long)]
    save_steps: Option<usize>,
    /// Continue from the newest checkpoint in --output.
    #[arg(long)]
    resume: bool,
    /// Log every N steps.
    #[arg(long, default_value_t = 20)]
    log_steps: usize,
    /// Stop after N steps (the schedule still spans every epoch).
    #[arg(long)]
    max_steps: Option<usize>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    if !["spearman", "pearson"].contains(&args.metric.as_str()) {
        bail!(
            "unknown --metric \"{}\" (known: spearman, pearson)",
            args.metric
        );
    }
    let train_set = args.data.read(&args.train, "train")?;
    let dev_spec = args
        .dev
        .clone()
        .or_else(|| (args.train == DEFAULT_TRAIN).then(|| DEFAULT_TRAIN.to_string()));
    let dev_set = dev_spec
        .as_deref()
        .map(|d| args.data.read(d, "validation"))
        .transpose()?;
    let test_set = args
        .test
        .as_deref()
        .map(|t| args.data.read(t, "test"))
        .transpose()?;
    if args.loss == LossKind::Bce {
        check_unit_labels(&args.train, &train_set)?;
    }

    let opts = LoadOptions {
        max_length: args.max_length,
        labels: Some(generic_labels(1)),
        seed: args.seed,
        activation: None,
    };
    let mut ce = CrossEncoder::load(&args.model, &candle_core::Device::Cpu, &opts)?;
    if args.loss == LossKind::Mse {
        // A regression head outputs raw values: no sigmoid at prediction time.
        ce.activation = crate::Activation::Identity;
    }
    let cfg = TrainConfig {
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
        seed: args.seed,
        loss: args.loss,
        eval_steps: args.eval_steps,
        save_steps: args.save_steps,
        keep_checkpoints: 2,
        log_steps: args.log_steps,
        metric: args.metric.clone(),
        max_steps: args.max_steps,
        progress: if args.quiet {
            Progress::Quiet
        } else if std::io::stdout().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        },
        dropout: true,
    };
    if !args.quiet {
        println!(
            "training {} on {} ({} pairs{}), {} epochs, batch {}, into {}",
            args.model,
            args.train,
            train_set.len(),
            dev_set
                .as_ref()
                .map_or(String::new(), |d| format!(", dev {}", d.len())),
            cfg.epochs,
            cfg.batch_size,
            args.output.display()
        );
    }
    let summary = train::train(
        &mut ce,
        &train_set,
        dev_set.as_deref(),
        &cfg,
        &args.output,
        args.resume,
    )?;
    let mut results = Vec::new();
    if let Some((step, m)) = &summary.best {
        results.push((format!("dev (best, step {step})"), m.clone()));
    }
    if let Some(test) = &test_set {
        let m = eval::correlation_metrics(&ce, test)?;
        if !args.quiet {
            println!("test: {}", eval::format(&m));
        }
        results.push(("test".to_string(), m));
    }
    Card {
        base_model: &args.model,
        train_data: &args.train,
        train_examples: train_set.len(),
        dev_data: dev_spec.as_deref(),
        label_range: args.data.label_range,
        config: &cfg,
        results,
        seconds: summary.seconds,
    }
    .write(&args.output)?;
    if !args.quiet {
        println!(
            "saved to {} ({} steps, {:.0} s)",
            args.output.display(),
            summary.steps,
            summary.seconds
        );
    }
    Ok(())
}
