//! Fine-tuning: the trainer loop, losses, AdamW, the learning-rate schedule and checkpoints.

mod card;
mod data;
mod fingerprint;
pub mod group;
mod job;
mod loss;
pub mod optim;
mod plot;
mod schedule;
mod state;

use crate::setting::Setting;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::data::Example;
use crate::eval::{self, Metrics, Task};
use crate::model::tokenize::Tokens;
use crate::model::Tape;
use crate::ops::profile::timed;
use crate::ops::{Pass, Precision};
use crate::progress::{Cancelled, Lines, Progress, Silent};
use crate::CrossEncoder;
use loss::Weighting;
use optim::{AdamW, AdamWConfig};
use schedule::LinearSchedule;
use state::TrainerState;

pub use data::TrainData;
pub use job::{Job, JobError, Mined, Mining, Outcome, Pairs, Prepared};

/// The loss a run trains with (sentence-transformers' names in the docs of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LossKind {
    /// Binary cross-entropy on logits; labels must lie in [0, 1].
    Bce,
    /// Mean squared error on the raw logit; any labels.
    Mse,
    /// Softmax cross-entropy over N logits; labels are class indices.
    CrossEntropy,
    /// Listwise: softmax cross-entropy of each query's positive against its negatives
    /// (sentence-transformers' cross-encoder MultipleNegativesRankingLoss, scale 10, sigmoid).
    Mnrl,
    /// Listwise: ListNet's cross-entropy between the softmax of labels and of scores.
    Listnet,
    /// Listwise: sentence-transformers' `LambdaLoss` (NDCG-Loss2++ weights): pairs of a list
    /// ordered by their labels, each weighted by what swapping them costs NDCG.
    Lambda,
    /// Listwise: `RankNetLoss`, LambdaLoss with every pair weighted alike.
    #[cfg_attr(feature = "cli", value(name = "ranknet"))]
    RankNet,
    /// Listwise: `PListMLELoss`, the likelihood of the list's order (positive first).
    #[cfg_attr(feature = "cli", value(name = "plistmle"))]
    PListMle,
}

impl LossKind {
    /// Whether the loss compares the documents of one query rather than single pairs.
    pub fn is_listwise(self) -> bool {
        matches!(
            self,
            LossKind::Mnrl
                | LossKind::Listnet
                | LossKind::Lambda
                | LossKind::RankNet
                | LossKind::PListMle
        )
    }

    /// The loss a task trains with unless told otherwise (sentence-transformers' defaults).
    pub fn default_for(task: Task) -> Self {
        match task {
            Task::Regression | Task::Binary => LossKind::Bce,
            Task::Multiclass => LossKind::CrossEntropy,
            Task::Rerank => LossKind::Mnrl,
        }
    }

    /// What `predict` (ours and sentence-transformers') applies to a head trained with this
    /// loss: raw values for MSE, class probabilities for cross-entropy, a probability otherwise.
    pub fn activation(self) -> crate::Activation {
        match self {
            LossKind::Mse => crate::Activation::Identity,
            LossKind::CrossEntropy => crate::Activation::Softmax,
            LossKind::Bce
            | LossKind::Mnrl
            | LossKind::Listnet
            | LossKind::Lambda
            | LossKind::RankNet
            | LossKind::PListMle => crate::Activation::Sigmoid,
        }
    }
}

/// sentence-transformers' default scale of MultipleNegativesRankingLoss.
pub const MNRL_SCALE: f64 = 10.0;

/// A loss and how many consecutive pairs form one list (1 for pairwise losses; for listwise
/// losses a query's positive followed by its negatives).
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    /// The loss.
    pub loss: LossKind,
    /// Pairs per list: 1 for pairwise losses.
    pub list_size: usize,
}

impl From<LossKind> for Objective {
    fn from(loss: LossKind) -> Self {
        Objective { loss, list_size: 1 }
    }
}

/// A training run's settings; [`TrainConfig::for_task`] gives a task's defaults.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Passes over the training data.
    pub epochs: usize,
    /// Pairs (or lists) per batch.
    pub batch_size: usize,
    /// How batches are drawn.
    pub batching: Batching,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW's betas, epsilon and weight decay.
    pub adamw: AdamWConfig,
    /// Warm-up steps; when `None`, `warmup_ratio` of the total.
    pub warmup_steps: Option<usize>,
    /// Warm-up as a share of all steps, when `warmup_steps` is not set.
    pub warmup_ratio: f64,
    /// Gradient clipping by global norm.
    pub max_grad_norm: f64,
    /// Batches whose gradients are summed into one step.
    pub grad_accum: usize,
    /// Seeds the head's initialisation, the shuffling and dropout.
    pub seed: u64,
    /// The loss.
    pub loss: LossKind,
    /// Pairs per training item: 1, or for listwise losses a positive and its negatives.
    pub list_size: usize,
    /// Which metrics the dev set reports.
    pub task: Task,
    /// Evaluate every N optimizer steps (and always at each epoch's end).
    pub eval_steps: Option<usize>,
    /// Write a resumable checkpoint every N optimizer steps.
    pub save_steps: Option<usize>,
    /// Checkpoints kept (the newest).
    pub keep_checkpoints: usize,
    /// Log the mean loss every N steps.
    pub log_steps: usize,
    /// Metric that picks the best model (one the task's evaluation reports).
    pub metric: String,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    pub max_steps: Option<usize>,
    /// Where steps, log lines and evaluations go (default: [`crate::progress::Lines`]).
    pub progress: Arc<dyn Progress>,
    /// Dropout as config.json sets it; off only for exact-gradient tests.
    pub dropout: bool,
    /// The linear layers' products: f32, or bf16 with f32 sums (mixed precision, on AMX or
    /// AVX-512 BF16).
    pub precision: Precision,
    /// The processes the run is split over (default: this one, [`group::Single`]).
    pub group: Arc<dyn group::Group>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 16,
            batching: Batching::Random,
            lr: 2e-5,
            adamw: AdamWConfig::default(),
            warmup_steps: None,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            grad_accum: 1,
            seed: 42,
            loss: LossKind::Bce,
            list_size: 1,
            task: Task::Regression,
            eval_steps: None,
            save_steps: None,
            keep_checkpoints: 2,
            log_steps: 20,
            metric: "spearman".into(),
            max_steps: None,
            progress: Arc::new(Lines),
            group: Arc::new(group::Single),
            dropout: true,
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// The defaults for `task`: its loss ([`LossKind::default_for`]) and the metric that picks
    /// the best model ([`Task::default_metric`]).
    pub fn for_task(task: Task) -> Self {
        TrainConfig {
            task,
            loss: LossKind::default_for(task),
            metric: task.default_metric().to_string(),
            ..Default::default()
        }
    }
}

/// What a run reached: the best dev metrics (if there was a dev set) and at which step.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Optimizer steps taken.
    pub steps: usize,
    /// The best dev metrics and their step.
    pub best: Option<(usize, Metrics)>,
    /// The last evaluation's metrics.
    pub last: Option<Metrics>,
    /// Wall time of the run.
    pub seconds: f64,
    /// `--resume` found the run finished: nothing was trained or written.
    pub already_finished: bool,
}

/// What training adds to a model: the flat gradient buffer, AdamW's state, and the tape of
/// saved activations, all allocated once and reused every step.
pub struct Trainable {
    /// AdamW's state.
    pub opt: AdamW,
    /// The gradient accumulated since the last step, laid out as the model's weights.
    pub grads: Vec<f32>,
    tape: Tape,
}

impl Trainable {
    /// AdamW updates the word-embedding table lazily (see [`optim`]): call
    /// [`Trainable::flush`] before reading the weights as a whole.
    /// Fails on a quantized model (its int8 forward is for scoring only) and on a causal-LM
    /// re-ranker (scoring only). Weights laid out for scoring are dropped: they would go stale.
    pub fn new(ce: &mut CrossEncoder, adamw: AdamWConfig) -> Result<Self> {
        anyhow::ensure!(
            ce.model.quantization().is_none(),
            "a model quantized for scoring cannot be trained; load it without {}",
            Setting::Quantize
        );
        anyhow::ensure!(
            !ce.config.family.causal(),
            "{} is a causal-LM re-ranker: crossenc scores it, but cannot train it yet",
            ce.source_dir.display()
        );
        ce.model.unpack_weights();
        let w = &ce.model.weights;
        let mut opt = AdamW::new(w.entries(), adamw);
        let (table, width) = ce.model.word_table();
        opt.lazy_rows(table, width);
        Ok(Trainable {
            opt,
            grads: vec![0f32; w.len()],
            tape: Tape::default(),
        })
    }

    /// Brings every weight up to date with the steps taken (the lazily updated rows).
    pub fn flush(&mut self, ce: &mut CrossEncoder) {
        timed("optimizer (lazy rows)", || {
            self.opt.flush(&mut ce.model.weights.data)
        });
    }

    /// Marks the word-embedding rows of `ids` as read by this step and brings them up to date
    /// (as [`Trainable::accumulate`] does for its own batch): under data parallelism every rank
    /// marks the whole global batch's rows, since the summed gradient reaches them all.
    pub fn touch(&mut self, ce: &mut CrossEncoder, ids: &[u32]) {
        timed("optimizer (lazy rows)", || {
            self.opt.touch(&mut ce.model.weights.data, ids)
        });
    }

    /// Runs one batch forward and backward and adds `weight` times the gradient of its loss
    /// into `grads`; returns the loss. `dropout`: the pass's dropout (`None`: off).
    pub fn accumulate(
        &mut self,
        ce: &mut CrossEncoder,
        tokens: Tokens,
        labels: &[f32],
        objective: impl Into<Objective>,
        dropout: Option<Pass>,
        weight: f32,
    ) -> Result<f32> {
        timed("optimizer (lazy rows)", || {
            self.opt
                .touch(&mut ce.model.weights.data, &tokens.input_ids)
        });
        let logits = ce.model.forward_train(tokens, &mut self.tape, dropout)?;
        let (loss, mut dlogits) =
            timed("loss", || loss_and_grad(&logits, labels, objective.into()))?;
        dlogits.iter_mut().for_each(|g| *g *= weight);
        ce.model.backward(&mut self.tape, &dlogits, &mut self.grads);
        Ok(loss)
    }

    /// Clips the accumulated gradient to global norm `max_norm`, applies one AdamW step with
    /// learning rate `lr` to `ce`'s weights and clears the gradient (in the same pass). Returns the norm before
    /// clipping.
    pub fn step(&mut self, ce: &mut CrossEncoder, lr: f64, max_norm: f64) -> f64 {
        timed("optimizer (clip + AdamW)", || {
            let norm = self.opt.grad_norm(&self.grads);
            let coef = optim::clip_coefficient(norm, max_norm);
            let (weights, copies) = ce.model.weights_and_copies();
            self.opt.step(weights, &mut self.grads, lr, coef, copies);
            norm
        })
    }

    /// The accumulated gradient of each parameter, by HF name, in HF's layout.
    pub fn named_grads(&self, ce: &CrossEncoder) -> Vec<(String, Vec<f32>)> {
        ce.model
            .weights
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.hf_values(&self.grads)))
            .collect()
    }
}

/// The loss of a batch's logits (`[batch, num_labels]`) and its gradient with respect to them.
/// Listwise losses see the batch as `[lists, list_size]`. The losses are tiny next to the
/// encoder, so they stay composed from candle's differentiable ops.
pub fn loss_and_grad(
    logits: &[f32],
    labels: &[f32],
    objective: Objective,
) -> Result<(f32, Vec<f32>)> {
    if let Some(by_hand) = by_hand(logits, labels, objective) {
        return Ok(by_hand);
    }
    let n = labels.len();
    let x = Var::from_tensor(&Tensor::from_slice(
        logits,
        (n, logits.len() / n.max(1)),
        &Device::Cpu,
    )?)?;
    let loss = objective_loss(x.as_tensor(), labels, objective)?;
    let grads = loss.backward()?;
    let g = grads
        .get(x.as_tensor())
        .map(|g| g.flatten_all()?.to_vec1::<f32>())
        .transpose()?
        .unwrap_or_else(|| vec![0f32; logits.len()]);
    Ok((loss.to_scalar::<f32>()?, g))
}

/// The learning-to-rank losses, computed by hand (value and exact gradient); `None` for the
/// losses that candle's autograd differentiates ([`objective_loss`]).
fn by_hand(logits: &[f32], labels: &[f32], objective: Objective) -> Option<(f32, Vec<f32>)> {
    let docs = objective.list_size;
    Some(match objective.loss {
        LossKind::Lambda => loss::lambda(logits, labels, docs, Weighting::NdcgLoss2PlusPlus),
        LossKind::RankNet => loss::lambda(logits, labels, docs, Weighting::Uniform),
        LossKind::PListMle => loss::plist_mle(logits, docs),
        LossKind::Bce
        | LossKind::Mse
        | LossKind::CrossEntropy
        | LossKind::Mnrl
        | LossKind::Listnet => return None,
    })
}

/// The loss of `logits` (`[batch, num_labels]`) as a scalar tensor.
fn objective_loss(logits: &Tensor, labels: &[f32], objective: Objective) -> Result<Tensor> {
    let labels = Tensor::from_slice(labels, labels.len(), &Device::Cpu)?;
    let lists = (
        labels.elem_count() / objective.list_size,
        objective.list_size,
    );
    Ok(match objective.loss {
        LossKind::Bce => loss::bce_with_logits(&logits.squeeze(1)?, &labels)?,
        LossKind::Mse => loss::mse(&logits.squeeze(1)?, &labels)?,
        LossKind::CrossEntropy => loss::cross_entropy(logits, &labels)?,
        LossKind::Mnrl => loss::multiple_negatives_ranking(&logits.reshape(lists)?, MNRL_SCALE)?,
        LossKind::Listnet => loss::listnet(&logits.reshape(lists)?, &labels.reshape(lists)?)?,
        LossKind::Lambda | LossKind::RankNet | LossKind::PListMle => {
            unreachable!("computed by hand (by_hand)")
        }
    })
}

/// The mean loss of `ce` over `examples`, dropout off (batches of about `ce.batch_size` pairs,
/// whole lists for listwise losses).
pub fn mean_loss(
    ce: &CrossEncoder,
    examples: &[Example],
    objective: impl Into<Objective>,
) -> Result<f64> {
    let objective = objective.into();
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_str()))
        .collect();
    let sequences = ce.tokenizer.encode_pairs(&pairs)?;
    let chunk = ce
        .batch_size
        .max(objective.list_size)
        .div_ceil(objective.list_size)
        * objective.list_size;
    let mut total = 0.0;
    for (k, ex) in examples.chunks(chunk).enumerate() {
        let labels: Vec<f32> = ex.iter().map(|e| e.label as f32).collect();
        let logits = ce
            .model
            .forward(&sequences.pack(k * chunk..k * chunk + ex.len()))?;
        // The value alone: no backward for autograd's losses.
        let l = match by_hand(&logits, &labels, objective) {
            Some((l, _)) => l,
            None => {
                let logits =
                    Tensor::from_vec(logits, (labels.len(), ce.num_labels()), &Device::Cpu)?;
                objective_loss(&logits, &labels, objective)?.to_scalar::<f32>()?
            }
        };
        total += l as f64 * ex.len() as f64;
    }
    Ok(total / examples.len().max(1) as f64)
}

/// A generator for a (seed, stream) pair: streams are epochs (shuffling).
fn rng_for(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(stream_seed(seed, stream))
}

/// splitmix64 of a (seed, stream) pair, so neighbouring streams are unrelated: the shuffling
/// seed of an epoch, the dropout seed of a step.
fn stream_seed(seed: u64, stream: u64) -> u64 {
    use crate::ops::dropout::{finalize, GOLDEN};
    finalize(seed ^ stream.wrapping_mul(GOLDEN))
}

/// How an epoch is cut into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Batching {
    /// A seeded shuffle cut into batches (the reference's DataLoader).
    Random,
    /// The data's own order cut into batches (a DataLoader without shuffle).
    InOrder,
    /// Shuffle, sort by length within mega-batches of 50 batches, then shuffle the batches:
    /// batches of similar lengths pad little.
    Grouped,
}

/// Batches per mega-batch when grouping by length.
const MEGA_BATCH: usize = 50;

/// The batches of one epoch (indices into the training set), reproducible from seed and epoch.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    batching: Batching,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = rng_for(seed, 1 << 32 | epoch as u64);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if batching == Batching::InOrder {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    order.shuffle(&mut rng);
    if batching == Batching::Random {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for mega in order.chunks_mut(batch_size * MEGA_BATCH) {
        mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(mega.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// What [`train`] does with an output folder that already holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// A new run: a folder that holds anything is refused, so no earlier run is mixed in, unless
    /// all it holds is what a failed run left (a log, partial checkpoints: nothing to resume).
    New,
    /// Remove the files an earlier run wrote there (model, log, plot, card, checkpoints; nothing
    /// else), then train from scratch.
    Overwrite,
    /// Continue from the newest checkpoint there; refused when there is none. A run that
    /// finished is left as it is.
    Resume,
}

/// The files and folders a training run writes into its output folder.
fn run_files() -> impl Iterator<Item = &'static str> {
    crate::model::cross_encoder::saved_files().chain([
        "metrics.jsonl",
        "training.svg",
        "README.md",
        "checkpoints",
        "trainer_state.json",
    ])
}

/// A new run's refusal of an output folder that holds another run.
fn check_output(output: &Path, mode: OutputMode) -> Result<()> {
    let has_files = std::fs::read_dir(output).is_ok_and(|mut d| d.next().is_some());
    if mode == OutputMode::New && has_files && !failed_run_only(output)? {
        bail!(
            "{} is not empty: pass {} to replace the run in it, {} to continue it, or choose a new {}",
            output.display(),
            Setting::Overwrite,
            Setting::Resume,
            Setting::Output
        );
    }
    Ok(())
}

/// Applies `mode` to `output` before a run, once [`check_output`] passed.
fn prepare_output(output: &Path, mode: OutputMode) -> Result<()> {
    match mode {
        OutputMode::Resume if state::list(output)?.is_empty() => bail!(
            "{} holds no checkpoint to resume from (a run writes them with {}): drop {} to start over",
            state::checkpoints_dir(output).display(),
            Setting::SaveSteps,
            Setting::Resume
        ),
        // A killed run's partial checkpoints go (a failed run's log is rewritten when opened).
        OutputMode::New | OutputMode::Resume => state::remove_partial(output)?,
        OutputMode::Overwrite => {
            for name in run_files() {
                remove_if_present(&output.join(name))?;
            }
        }
    }
    std::fs::create_dir_all(output).with_context(|| format!("cannot create {}", output.display()))
}

/// Removes a file or folder, if there is one.
fn remove_if_present(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Whether all that `output` holds is what a failed run leaves: our log (every line a JSON
/// object with a step) and a checkpoints folder with no complete checkpoint. No model, nothing
/// to resume, no file of anyone else's: a new run may start there.
fn failed_run_only(output: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(output)? {
        let path = entry?.path();
        let ours = match path.file_name().and_then(|n| n.to_str()) {
            Some("metrics.jsonl") => std::fs::read_to_string(&path).is_ok_and(|log| {
                log.lines().all(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .is_ok_and(|v| v.get("step").is_some())
                })
            }),
            Some("checkpoints") => path.is_dir() && state::only_partial(output)?,
            _ => false,
        };
        if !ours {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Appends JSON lines to `OUTPUT/metrics.jsonl`.
struct MetricsLog(std::fs::File, PathBuf);

impl MetricsLog {
    /// Opens the log; on resume, drops the entries past the checkpoint's step so that the file
    /// reads as one uninterrupted run.
    fn open(output: &Path, resume_step: Option<usize>) -> Result<Self> {
        let path = output.join("metrics.jsonl");
        let kept: Vec<String> = match resume_step {
            Some(step) if path.exists() => std::fs::read_to_string(&path)?
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        // The kept lines go to a new file renamed into place: a failed write (a full disk)
        // leaves the old log whole.
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        crate::model::cross_encoder::write_atomic(&path, text.as_bytes())?;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(MetricsLog(f, path))
    }

    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.0, "{v}")
            .and_then(|_| self.0.flush())
            .with_context(|| format!("cannot write {}", self.1.display()))
    }
}

/// Fine-tunes `ce` on `train`, evaluating on `dev`; the best model by `cfg.metric` (or the
/// last one, without a dev set) is saved to `output`.
/// BCE needs labels in [0, 1]: names the first label outside and the way out. Other losses
/// take any label.
pub fn check_labels(
    loss: LossKind,
    labelled: impl Iterator<Item = (usize, f64)> + Clone,
) -> Result<()> {
    if loss != LossKind::Bce {
        return Ok(());
    }
    if let Some((line, label)) = labelled.clone().find(|e| !(0.0..=1.0).contains(&e.1)) {
        let labels = labelled.map(|e| e.1);
        let max = labels.clone().fold(f64::NEG_INFINITY, f64::max);
        let min = labels.fold(f64::INFINITY, f64::min);
        bail!(
            "line {line}: label {label} is outside [0, 1], which the BCE loss needs (labels span {min}..{max}): \
             pass {} {}:{} to map them linearly into [0, 1], or {} mse to train on raw labels",
            Setting::LabelRange,
            min.min(0.0),
            max.ceil(),
            Setting::Loss
        );
    }
    Ok(())
}

/// Trains `ce` on `train` as `cfg` says, evaluating on `dev`, into the model folder `output`:
/// a loop of named steps (`Run::step`, `log`, `evaluate_and_save`, `finish`). On rank 0, `ce`
/// comes back ready to score, as [`CrossEncoder::load`] leaves a model.
pub fn train(
    ce: &mut CrossEncoder,
    train: &TrainData,
    dev: Option<&[Example]>,
    cfg: &TrainConfig,
    output: &Path,
    mode: OutputMode,
) -> Result<Summary> {
    let started = Instant::now();
    check_run(ce, train, cfg, output, mode)?;
    // The saved model predicts as the loss trained it to.
    ce.activation = cfg.loss.activation();
    let plan = Plan::new(cfg, train.len() / cfg.list_size.max(1));
    if mode == OutputMode::Resume {
        // (With other settings it is resumed, and refused, as any other run.)
        if let Some(done) = state::read_final(output)? {
            if done.step >= plan.last_step && done.same_settings(&plan.state) {
                return finished_before(ce, cfg, output, &done);
            }
        }
    }
    if cfg.group.size() > 1 {
        group::agree(cfg.group.as_ref(), &fingerprint::start(ce, train, cfg)?)?;
    }
    if cfg.group.rank() == 0 {
        prepare_output(output, mode)?;
    }
    // The other ranks read a checkpoint to resume from only once rank 0 has checked the folder.
    cfg.group.barrier();
    let summary = (|| {
        let mut run = Run::start(ce, train, started, cfg, output, mode, plan)?;
        while run.st.step < run.last_step {
            if run.progress.cancelled() {
                return Err(Cancelled.into());
            }
            let lr = run.step(ce)?;
            run.log(lr)?;
            run.evaluate_and_save(ce, dev)?;
        }
        run.finish(ce, dev)
    })();
    // Scored afterwards in f32, laid out once, as a loaded model is (a run that stopped early
    // too).
    if cfg.precision != Precision::F32 || summary.is_err() {
        ce.model.set_precision(Precision::F32)?;
        ce.model.pack_weights();
    }
    summary
}

/// What `--resume` of a run that had finished returns, training and writing nothing: the
/// summary its state records; `ce` is the model it saved, ready to score.
fn finished_before(
    ce: &mut CrossEncoder,
    cfg: &TrainConfig,
    output: &Path,
    done: &TrainerState,
) -> Result<Summary> {
    if cfg.group.rank() == 0 {
        ce.reload_weights(output)?;
    }
    Ok(Summary {
        steps: done.step,
        best: recorded_best(done, &cfg.metric),
        last: None,
        seconds: 0.0,
        already_finished: true,
    })
}

/// The best dev metric and its step as a trainer state records them.
fn recorded_best(st: &TrainerState, metric: &str) -> Option<(usize, Metrics)> {
    st.best_step
        .zip(st.best_metric)
        .map(|(s, v)| (s, Metrics::from([(metric.to_string(), v)])))
}

/// Whether a dev metric beats the best so far: strictly, so that a tie keeps the earlier
/// model, and any number beats NaN (a correlation of constant scores).
fn better(value: f64, best: Option<f64>) -> bool {
    let rank = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
    best.is_none_or(|b| rank(value) > rank(b))
}

/// The steps a run takes: its state at step 0 and where it stops.
struct Plan {
    steps_per_epoch: usize,
    warmup_steps: usize,
    /// `max_steps`, or the schedule's end.
    last_step: usize,
    state: TrainerState,
}

impl Plan {
    /// The plan of `cfg` over `items` training items (pairs, or a query's lists).
    fn new(cfg: &TrainConfig, items: usize) -> Plan {
        let micro_per_epoch = items.div_ceil(cfg.batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
        let total_steps = steps_per_epoch * cfg.epochs;
        let warmup_steps = cfg
            .warmup_steps
            .unwrap_or((cfg.warmup_ratio * total_steps as f64).ceil() as usize);
        Plan {
            steps_per_epoch,
            warmup_steps,
            last_step: cfg.max_steps.unwrap_or(total_steps).min(total_steps),
            state: TrainerState {
                step: 0,
                total_steps,
                seed: cfg.seed,
                train_examples: items,
                best_metric: None,
                best_step: None,
                schedule: Some(state::Schedule {
                    lr: cfg.lr,
                    warmup_steps,
                    batch_size: cfg.batch_size,
                    grad_accum: cfg.grad_accum,
                    precision: cfg.precision,
                }),
            },
        }
    }
}

/// The rules a training run must meet before anything is written, which [`train`] checks first;
/// a front end may call it to tell bad settings (Python's `ValueError`) from a failed run.
pub fn check_run(
    ce: &CrossEncoder,
    train: &TrainData,
    cfg: &TrainConfig,
    output: &Path,
    mode: OutputMode,
) -> Result<()> {
    cfg.precision.check()?;
    if cfg.group.rank() == 0 {
        check_output(output, mode)?;
    }
    // The run replaces the files of its output: --overwrite would remove the model it starts
    // from, and a run that then failed would leave none.
    if let (Ok(model), Ok(out)) = (ce.source_dir.canonicalize(), output.canonicalize()) {
        if model == out {
            bail!(
                "{output_setting} {} is the {} folder: training replaces the model there; choose another {output_setting}",
                output.display(),
                Setting::Model,
                output_setting = Setting::Output
            );
        }
    }
    let known = cfg.task.metric_names();
    if !known.contains(&cfg.metric.as_str()) {
        bail!(
            "unknown {} \"{}\" for {} {} (known: {})",
            Setting::Metric,
            cfg.metric,
            Setting::Task,
            cfg.task.name(),
            known.join(", ")
        );
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 || cfg.epochs == 0 {
        bail!("batch size, gradient accumulation and epochs must be at least 1");
    }
    if (cfg.task == Task::Rerank) != cfg.loss.is_listwise() {
        bail!(
            "{loss} {:?} does not fit {task} {} (the listwise losses mnrl, listnet, lambda, ranknet and plistmle are for {task} rerank)",
            cfg.loss,
            cfg.task.name(),
            loss = Setting::Loss,
            task = Setting::Task
        );
    }
    let multiclass = cfg.loss == LossKind::CrossEntropy;
    if multiclass != (ce.num_labels() > 1) {
        bail!(
            "{} has {} labels; the {:?} loss needs {}",
            ce.source_dir.display(),
            ce.num_labels(),
            cfg.loss,
            if multiclass {
                format!("two or more ({} a,b,c)", Setting::Labels)
            } else {
                "a one-output head".into()
            }
        );
    }
    check_labels(cfg.loss, train.labelled())?;
    let g = cfg.list_size.max(1);
    if cfg.loss.is_listwise() != (g > 1) || !train.len().is_multiple_of(g) {
        bail!(
            "{} training pairs do not form lists of {g} (a positive and {} negatives per query)",
            train.len(),
            g - 1
        );
    }
    Ok(())
}

/// A training run in progress: the tokenized data, the schedule, the optimizer and the
/// trainer state, and what has been logged and kept.
struct Run<'a> {
    cfg: &'a TrainConfig,
    output: &'a Path,
    started: Instant,
    data: &'a TrainData,
    /// Pairs per training item: 1, or a query's list.
    list_size: usize,
    /// Each item's length (a list's: its longest pair), for length-grouped batches.
    lengths: Vec<usize>,
    steps_per_epoch: usize,
    last_step: usize,
    schedule: LinearSchedule,
    t: Trainable,
    st: TrainerState,
    /// Rank 0's log (the other ranks of a data-parallel run write nothing).
    log: Option<MetricsLog>,
    /// The progress of rank 0 (the others report nothing).
    progress: Arc<dyn Progress>,
    /// The current epoch's micro-batches (item indices).
    epoch: Option<(usize, Vec<Vec<usize>>)>,
    /// Step losses since the last log line.
    losses: Vec<f64>,
    best: Option<(usize, Metrics)>,
    last_metrics: Option<Metrics>,
}

impl<'a> Run<'a> {
    /// Tokenizes the data, sets up the schedule and optimizer, and restores the latest
    /// checkpoint when resuming.
    fn start(
        ce: &mut CrossEncoder,
        data: &'a TrainData,
        started: Instant,
        cfg: &'a TrainConfig,
        output: &'a Path,
        mode: OutputMode,
        plan: Plan,
    ) -> Result<Self> {
        let g = cfg.list_size.max(1);
        // A training item is one pair, or one query's list of pairs (its length: the longest).
        let lengths: Vec<usize> = (0..data.len() / g)
            .map(|i| {
                (i * g..(i + 1) * g)
                    .map(|s| data.sequences.seq_len(s))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let Plan {
            steps_per_epoch,
            warmup_steps,
            last_step,
            state: mut st,
        } = plan;
        let total_steps = st.total_steps;
        let schedule = LinearSchedule {
            peak: cfg.lr,
            warmup_steps,
            total_steps,
        };
        let mut t = Trainable::new(ce, cfg.adamw)?;
        let mut resumed_from = None;
        if mode == OutputMode::Resume {
            if let Some(saved) = state::restore_latest(output, &mut ce.model.weights, &mut t.opt)? {
                saved.check_resumable(&st, output)?;
                resumed_from = Some(saved.step);
                st = saved;
            }
            if cfg.group.size() > 1 {
                let here = fingerprint::resumed(st.step, &ce.model.weights.data);
                group::agree(cfg.group.as_ref(), &[here])?;
            }
        }
        // On the weights as restored: bf16's copies are made from them.
        ce.model.set_precision(cfg.precision)?;
        let root = cfg.group.rank() == 0;
        if root && resumed_from.is_some() {
            // Past the step a finished run stopped at: it is no longer finished.
            remove_if_present(&state::final_state_path(output))?;
        }
        let log = root
            .then(|| MetricsLog::open(output, resumed_from))
            .transpose()?;
        let progress: Arc<dyn Progress> = match root {
            true => cfg.progress.clone(),
            false => Arc::new(Silent),
        };
        progress.start(last_step as u64, st.step as u64);
        if let Some(step) = resumed_from {
            progress.report(&format!("resumed from step {step} of {total_steps}"));
        }
        Ok(Run {
            cfg,
            output,
            started,
            data,
            list_size: g,
            lengths,
            steps_per_epoch,
            last_step,
            schedule,
            t,
            st,
            log,
            progress,
            epoch: None,
            losses: Vec::new(),
            best: None,
            last_metrics: None,
        })
    }

    /// Where the next step's micro-batches lie in the current epoch's batches (`self.epoch`,
    /// made here at an epoch's start): `grad_accum` of them.
    fn micro_batches(&mut self) -> std::ops::Range<usize> {
        let cfg = self.cfg;
        let epoch = self.st.step / self.steps_per_epoch;
        let in_epoch = self.st.step % self.steps_per_epoch;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let batches =
                epoch_batches(&self.lengths, cfg.batch_size, cfg.batching, cfg.seed, epoch);
            self.epoch = Some((epoch, batches));
        }
        let count = self.epoch.as_ref().expect("set above").1.len();
        let from = in_epoch * cfg.grad_accum;
        from..(from + cfg.grad_accum).min(count)
    }

    /// One optimizer step over its micro-batches; returns its learning rate.
    fn step(&mut self, ce: &mut CrossEncoder) -> Result<f64> {
        let (cfg, g) = (self.cfg, self.list_size);
        let range = self.micro_batches();
        let micro = &self.epoch.as_ref().expect("made by micro_batches").1[range];
        let step_seed = cfg
            .dropout
            .then(|| stream_seed(cfg.seed, self.st.step as u64));
        let objective = Objective {
            loss: cfg.loss,
            list_size: g,
        };
        let group = cfg.group.as_ref();
        let (rank, ranks) = (group.rank(), group.size());
        // The tests of the job's failure handling: a crashed or killed node, a frozen one.
        if rank == 1 && self.st.step == 1 {
            if crate::fault::injected("kill-rank-1") {
                std::process::abort();
            }
            while crate::fault::injected("hang-rank-1") {
                std::thread::park();
            }
        }
        let pairs_of = |items: &[usize]| -> Vec<usize> {
            items.iter().flat_map(|&i| i * g..(i + 1) * g).collect()
        };
        if ranks > 1 {
            // The summed gradient reaches every row the global batch read.
            let ids: Vec<u32> = pairs_of(&micro.concat())
                .iter()
                .flat_map(|&i| self.data.sequences.ids(i))
                .collect();
            self.t.touch(ce, &ids);
        }
        let mut step_loss = 0.0;
        for (k, idx) in micro.iter().enumerate() {
            // This rank's share of the global micro-batch: a contiguous block of its items,
            // weighted by its size so that the ranks' gradients sum to the batch mean's.
            let share = &idx[idx.len() * rank / ranks..idx.len() * (rank + 1) / ranks];
            if share.is_empty() {
                continue;
            }
            let pairs = pairs_of(share);
            let lab: Vec<f32> = pairs.iter().map(|&i| self.data.labels[i] as f32).collect();
            let w = share.len() as f32 / idx.len() as f32 / micro.len() as f32;
            // The share's rows keep their places in the global batch, and so their masks.
            let before = pairs_of(&idx[..idx.len() * rank / ranks]);
            let pass = step_seed.map(|s| Pass {
                seed: stream_seed(s, k as u64),
                first_token: before
                    .iter()
                    .map(|&i| self.data.sequences.seq_len(i) as u64)
                    .sum(),
                first_sequence: before.len() as u64,
            });
            let tokens = self.data.sequences.pack(pairs.iter().copied());
            let l = self.t.accumulate(ce, tokens, &lab, objective, pass, w)?;
            if !l.is_finite() {
                bail!(
                    "the loss became {l} at step {}: lower {} or check the labels",
                    self.st.step,
                    Setting::Lr
                );
            }
            step_loss += (l * w) as f64;
        }
        if ranks > 1 {
            timed("all-reduce", || group.all_reduce_sum(&mut self.t.grads));
            step_loss = group.sum(step_loss);
        }
        let lr = self.schedule.lr(self.st.step);
        self.t.step(ce, lr, cfg.max_grad_norm);
        self.st.step += 1;
        self.losses.push(step_loss);
        let epoch = self.st.step as f64 / self.steps_per_epoch as f64;
        self.progress.update(
            self.st.step as u64,
            &format!("epoch {epoch:.2}  loss {step_loss:.4}  lr {lr:.2e}"),
        );
        Ok(lr)
    }

    /// Every `log_steps` steps and at the end: the mean loss since the last line, to
    /// metrics.jsonl and the progress.
    fn log(&mut self, lr: f64) -> Result<()> {
        let step = self.st.step;
        if !(step.is_multiple_of(self.cfg.log_steps.max(1)) || step == self.last_step) {
            return Ok(());
        }
        let avg = self.losses.iter().sum::<f64>() / self.losses.len().max(1) as f64;
        self.losses.clear();
        let epoch = step as f64 / self.steps_per_epoch as f64;
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(log) = &mut self.log {
            log.write(
                json!({"step": step, "epoch": epoch, "loss": avg, "lr": lr, "seconds": secs}),
            )?;
        }
        self.progress.log(&format!(
            "step {step}/{}  epoch {epoch:.2}  loss {avg:.4}  lr {lr:.2e}  {secs:.0}s",
            self.last_step
        ));
        Ok(())
    }

    /// At an epoch's end, every `eval_steps` and at the end: evaluates on `dev` and saves the
    /// model when it is the best so far; every `save_steps`: a checkpoint to resume from.
    fn evaluate_and_save(&mut self, ce: &mut CrossEncoder, dev: Option<&[Example]>) -> Result<()> {
        let (cfg, step) = (self.cfg, self.st.step);
        // Under data parallelism rank 0 alone evaluates and writes.
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        let eval_now = step.is_multiple_of(self.steps_per_epoch)
            || step == self.last_step
            || cfg.eval_steps.is_some_and(|n| step.is_multiple_of(n));
        let save_now = cfg.save_steps.is_some_and(|n| step.is_multiple_of(n));
        if (eval_now && dev.is_some()) || save_now || step == self.last_step {
            self.t.flush(ce);
        }
        if let (true, Some(dev)) = (eval_now, dev) {
            // Scored with the weights laid out once for the kernel, as a loaded model is, then
            // unpacked for the steps that change them (`train --max-steps 1`, then STS-B dev and
            // test scored: 12.7-13.1 s -> 10.8-11.5 s).
            ce.model.pack_weights();
            let m = eval::pair_metrics(ce, cfg.task, dev);
            ce.model.unpack_weights();
            let m = m?;
            let value = *m.get(&cfg.metric).with_context(|| {
                format!(
                    "unknown metric \"{}\" (known: {})",
                    cfg.metric,
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            let epoch = step as f64 / self.steps_per_epoch as f64;
            let secs = self.started.elapsed().as_secs_f64();
            log.write(json!({"step": step, "epoch": epoch, "eval": m, "seconds": secs}))?;
            self.progress
                .report(&format!("eval at step {step}: {}", eval::format(&m)));
            if better(value, self.st.best_metric) {
                self.st.best_metric = Some(value);
                self.st.best_step = Some(step);
                ce.save(self.output)?;
                self.best = Some((step, m.clone()));
            }
            self.last_metrics = Some(m);
        }
        if save_now && step < self.last_step {
            let keep = cfg.keep_checkpoints;
            state::save(self.output, &self.st, &ce.model.weights, &self.t.opt, keep)?;
        }
        Ok(())
    }

    /// Saves the model (without a dev set), or reloads the best one kept, and draws the
    /// training curves.
    fn finish(mut self, ce: &mut CrossEncoder, dev: Option<&[Example]>) -> Result<Summary> {
        let cfg = self.cfg;
        self.progress.finish();
        if self.log.is_none() {
            return Ok(Summary {
                steps: self.st.step,
                best: None,
                last: None,
                seconds: self.started.elapsed().as_secs_f64(),
                already_finished: false,
            });
        }
        if dev.is_none() {
            ce.save(self.output)?;
        } else if self.best.is_none() {
            // Resumed after the best model was already saved: report what the checkpoint
            // recorded.
            self.best = recorded_best(&self.st, &cfg.metric);
        }
        match self.best.as_ref().filter(|(s, _)| *s != self.st.step) {
            Some((best_step, _)) => {
                // The weights in memory are the last step's; the output folder holds the best
                // ones (reloaded ready to score).
                self.progress.report(&format!(
                    "best {} at step {best_step}; reloading it",
                    cfg.metric
                ));
                ce.reload_weights(self.output)?;
            }
            // Trained no more: laid out to score, as a loaded model is.
            None => ce.model.pack_weights(),
        }
        plot::write_training_svg(self.output)?;
        // Last: a run killed before this line is resumed, not taken for finished.
        state::save_final(self.output, &self.st)?;
        Ok(Summary {
            steps: self.st.step,
            best: self.best,
            last: self.last_metrics,
            seconds: self.started.elapsed().as_secs_f64(),
            already_finished: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::better;

    /// A tie keeps the earlier model; any number beats NaN, which beats only having none.
    #[test]
    fn only_a_strictly_better_metric_replaces_the_best() {
        assert!(better(0.5, None));
        assert!(better(f64::NAN, None));
        assert!(!better(0.5, Some(0.5)));
        assert!(!better(0.4, Some(0.5)));
        assert!(better(0.6, Some(0.5)));
        assert!(better(-1.0, Some(f64::NAN)));
        assert!(!better(f64::NAN, Some(f64::NAN)));
        assert!(!better(f64::NAN, Some(-1.0)));
    }
}
