//! A training run as `crossenc train` makes it, whole: the task's defaults, the data read and
//! checked (or hard negatives mined for re-ranking), training, the test evaluation and the
//! model card. Front ends (the CLI, Python) set a [`Job`] up and show what it returns.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

use super::card::Card;
use super::{OutputMode, Summary, TrainConfig, TrainData};
use crate::data::{self, bundled, Example, ReadOptions};
use crate::eval::{self, Metrics, Task};
use crate::model::config::generic_labels;
use crate::progress::Progress;
use crate::search::{self, beir, Retriever};
use crate::{CrossEncoder, LoadOptions};

/// A job that cannot run as set up, in the library's terms (a front end names its own flags).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "multiclass training needs two or more class names, e.g. contradiction,entailment,neutral"
    )]
    /// Multiclass training got fewer than two class names.
    ClassNamesNeeded,
    /// Class names were given for a task other than multiclass.
    #[error("class names are for multiclass training only")]
    ClassNamesUnexpected,
    /// Re-ranking training got test pairs.
    #[error("re-ranking training has no test pairs: evaluate its output on BEIR data")]
    HeldOutForRerank,
    /// Re-ranking training was asked for no negatives.
    #[error("re-ranking training needs at least one negative per positive")]
    NoNegatives,
}

/// Labelled pairs: a data spec (a CSV/TSV/JSONL/Parquet file, `hf://datasets/...` or
/// `bundled:stsb`) read with the job's [`ReadOptions`], or pairs already in memory.
#[derive(Debug, Clone)]
pub enum Pairs {
    /// A file, `hf://datasets/...` or `bundled:stsb`.
    Spec(String),
    /// Pairs already in memory.
    Examples(Vec<Example>),
}

impl Pairs {
    /// What messages and the model card call these pairs.
    pub fn name(&self) -> &str {
        match self {
            Pairs::Spec(spec) => spec,
            Pairs::Examples(_) => "pairs in memory",
        }
    }

    fn is_bundled_stsb(&self) -> bool {
        matches!(self, Pairs::Spec(s) if s == bundled::STSB)
    }

    /// The examples of `split`, with notes for the reader. Pairs in memory are moved out, not
    /// copied: what is left keeps their name.
    fn take(&mut self, opts: &ReadOptions, split: &str) -> Result<(Vec<Example>, Vec<String>)> {
        match self {
            Pairs::Spec(spec) => opts.read(spec, split),
            Pairs::Examples(examples) => Ok((std::mem::take(examples), Vec::new())),
        }
    }
}

/// How re-ranking training makes its lists from BEIR data: each positive of a query followed
/// by hard negatives that a first stage ranks high.
#[derive(Debug, Clone)]
pub struct Mining {
    /// The qrels split that gives queries and positives.
    pub split: String,
    /// The first stage: `bm25` or a bi-encoder model.
    pub retriever: String,
    /// Hard negatives per positive.
    pub negatives: usize,
    /// First-stage ranks to take negatives from, skipping the top ones (likely unjudged
    /// positives); known positives are never taken.
    pub ranks: (usize, usize),
    /// The qrels split of [`Job::dev`]'s BEIR folder whose queries evaluate the model.
    pub dev_split: String,
    /// Candidates per dev query: the first stage's top ones, then the positives it missed.
    pub dev_depth: usize,
}

impl Default for Mining {
    fn default() -> Self {
        Mining {
            split: "train".into(),
            retriever: "bm25".into(),
            negatives: 3,
            ranks: (10, 100),
            dev_split: "dev".into(),
            dev_depth: 20,
        }
    }
}

/// What mining found, for the reader.
#[derive(Debug, Clone)]
pub struct Mined {
    /// Queries that have lists.
    pub queries: usize,
    /// Queries left out: too few candidates in the ranks.
    pub left_out: usize,
}

/// A whole training run. `config.task`, `config.loss` and `config.metric` say what is trained
/// ([`TrainConfig::for_task`] gives each task's defaults); the job sets `config.list_size`.
#[derive(Debug, Clone)]
pub struct Job {
    /// The model to start from: a folder or hub id (a bare encoder gets a new head).
    pub model: String,
    /// Where the model, its log, plot, card and checkpoints go.
    pub output: PathBuf,
    /// What to do with an output folder that holds files.
    pub mode: OutputMode,
    /// Training pairs; for [`Task::Rerank`], a spec naming a folder in BEIR's layout.
    pub train: Pairs,
    /// Dev pairs for evaluation and model selection. Training on `bundled:stsb` evaluates on
    /// its dev split unless told otherwise.
    pub dev: Option<Pairs>,
    /// Pairs evaluated once with the final model (`bundled:stsb`: its test split).
    pub test: Option<Pairs>,
    /// How the specs are read; `columns.label_names` are the classes of
    /// [`Task::Multiclass`]. `bundled:stsb`'s 0-5 scores map into [0, 1] unless told otherwise.
    pub read: ReadOptions,
    /// Maximum tokens per pair (default: the model's).
    pub max_length: Option<usize>,
    /// How re-ranking lists are mined (re-ranking only).
    pub mining: Mining,
    /// The hyper-parameters, task, loss and metric.
    pub config: TrainConfig,
}

impl Job {
    /// A job with `config`'s hyper-parameters and nothing else set: no dev or test data, a new
    /// output folder.
    pub fn new(model: &str, train: Pairs, output: &Path, config: TrainConfig) -> Job {
        Job {
            model: model.to_string(),
            output: output.to_path_buf(),
            mode: OutputMode::New,
            train,
            dev: None,
            test: None,
            read: ReadOptions::default(),
            max_length: None,
            mining: Mining::default(),
            config,
        }
    }

    /// Loads the model and reads the data, checking every label against the task and the loss
    /// before any training. `progress` shows a first stage's indexing when mining.
    pub fn prepare(mut self, progress: &dyn Progress) -> Result<Prepared> {
        let task = self.config.task;
        if self.train.is_bundled_stsb() && task != Task::Rerank {
            // The bundled STS-B: its scores are 0-5, its dev and test splits come along.
            self.read.label_range.get_or_insert((0.0, 5.0));
            self.dev.get_or_insert_with(|| self.train.clone());
            self.test.get_or_insert_with(|| self.train.clone());
        }
        let labels = match (task, &self.read.columns.label_names) {
            (Task::Multiclass, Some(names)) if names.len() >= 2 => names.clone(),
            (Task::Multiclass, _) => return Err(JobError::ClassNamesNeeded.into()),
            (_, Some(_)) => return Err(JobError::ClassNamesUnexpected.into()),
            _ => generic_labels(1),
        };
        let opts = LoadOptions {
            max_length: self.max_length,
            labels: Some(labels.clone()),
            replace_head: true,
            seed: self.config.seed,
            activation: None,
            quantize: None,
        };
        let ce = CrossEncoder::load(&self.model, &opts)?;
        let mut notes = Vec::new();
        let (train, dev, test, mined) = if task == Task::Rerank {
            if self.test.is_some() {
                return Err(JobError::HeldOutForRerank.into());
            }
            let (lists, mined, retriever) = self.mine(progress)?;
            self.config.list_size = 1 + self.mining.negatives;
            let dev = match &self.dev {
                Some(dev) => Some(self.dev_lists(dev, retriever, progress)?),
                None => None,
            };
            (
                TrainData::new(&ce.tokenizer, &lists)?,
                dev,
                None,
                Some(mined),
            )
        } else {
            self.config.list_size = 1;
            let train = match &mut self.train {
                // The tokenizer reads the training data as it comes: its texts are never all
                // in memory.
                Pairs::Spec(spec) => {
                    let mut examples = self.read.examples(spec, "train")?;
                    let data = TrainData::read(&ce.tokenizer, examples.by_ref())?;
                    notes.extend(examples.notes(spec, data.len())?);
                    data
                }
                // Only their token ids are kept.
                Pairs::Examples(examples) => {
                    TrainData::new(&ce.tokenizer, &std::mem::take(examples))?
                }
            };
            let mut held_out = |pairs: &mut Option<Pairs>, split| -> Result<Option<Vec<Example>>> {
                let Some(pairs) = pairs else { return Ok(None) };
                let (examples, more) = pairs.take(&self.read, split)?;
                notes.extend(more);
                Ok(Some(examples))
            };
            let dev = held_out(&mut self.dev, "validation")?;
            let test = held_out(&mut self.test, "test")?;
            (train, dev, test, None)
        };
        // The task's label rules, on every set this run reads (constant labels are refused only
        // where they are evaluated).
        if task != Task::Regression {
            eval::check_task(task, labels.len(), train.labelled(), self.train.name())?;
        }
        for (pairs, set) in [(&self.dev, &dev), (&self.test, &test)] {
            if let (Some(pairs), Some(set)) = (pairs, set) {
                eval::check_task(task, labels.len(), data::labelled(set), pairs.name())?;
            }
        }
        // Checked again by train::train; here naming the data.
        super::check_labels(self.config.loss, train.labelled())
            .map_err(|e| anyhow::anyhow!("{} {e}", self.train.name()))?;
        Ok(Prepared {
            job: self,
            ce,
            train,
            dev,
            test,
            mined,
            notes,
        })
    }

    /// Training lists from BEIR data: each query's positives, each followed by mined negatives;
    /// and the first stage over its corpus, with its folder.
    fn mine(&self, progress: &dyn Progress) -> Result<(Vec<Example>, Mined, (PathBuf, Retriever))> {
        let m = &self.mining;
        let dir = beir_folder(&self.train, &m.split)?;
        if m.negatives == 0 {
            return Err(JobError::NoNegatives.into());
        }
        let data = beir::read_beir(dir, &m.split)?;
        let docs: Vec<String> = data.docs.iter().map(beir::Doc::full_text).collect();
        let retriever = Retriever::build(&m.retriever, &docs, progress)?;
        let (lists, left_out) =
            search::mine_training_lists(&data, &retriever, m.ranks, m.negatives)?;
        if lists.is_empty() {
            bail!(
                "no query of {} has {} negatives in ranks {}:{}",
                dir.display(),
                m.negatives,
                m.ranks.0,
                m.ranks.1
            );
        }
        let queries = data.queries.len() - left_out;
        let first_stage = (dir.to_path_buf(), retriever);
        Ok((lists, Mined { queries, left_out }, first_stage))
    }

    /// The dev queries' candidate lists ([`search::candidate_lists`]), from the training's
    /// first stage where `dev` is the training's folder.
    fn dev_lists(
        &self,
        dev: &Pairs,
        (train_dir, retriever): (PathBuf, Retriever),
        progress: &dyn Progress,
    ) -> Result<Vec<Example>> {
        let m = &self.mining;
        let dir = beir_folder(dev, &m.dev_split)?;
        let data = beir::read_beir(dir, &m.dev_split)?;
        let retriever = match dir == train_dir {
            true => retriever,
            false => {
                let docs: Vec<String> = data.docs.iter().map(beir::Doc::full_text).collect();
                Retriever::build(&m.retriever, &docs, progress)?
            }
        };
        search::candidate_lists(&data, &retriever, m.dev_depth)
    }
}

/// The folder in BEIR's layout that `pairs` names (re-ranking's data).
fn beir_folder<'a>(pairs: &'a Pairs, split: &str) -> Result<&'a Path> {
    match pairs {
        Pairs::Spec(spec) if Path::new(spec).is_dir() => Ok(Path::new(spec)),
        other => bail!(
            "re-ranking reads a folder in BEIR's layout (corpus.jsonl, queries.jsonl, qrels/{split}.tsv); {} is not a folder",
            other.name()
        ),
    }
}

/// A job with its model loaded and its data read and checked, ready to train.
pub struct Prepared {
    /// The job; pairs it held in memory are here now (`train` as token ids), not in it.
    pub job: Job,
    /// The model to train, loaded (a new head where it had none).
    pub ce: CrossEncoder,
    /// The training pairs (or lists), tokenized.
    pub train: TrainData,
    /// Dev pairs, for evaluation and model selection.
    pub dev: Option<Vec<Example>>,
    /// Test pairs, evaluated once with the final model.
    pub test: Option<Vec<Example>>,
    /// Re-ranking: what mining found.
    pub mined: Option<Mined>,
    /// For the reader: headers guessed, bad rows skipped.
    pub notes: Vec<String>,
}

/// What a job did.
pub struct Outcome {
    /// The trained model (as saved in the output folder).
    pub ce: CrossEncoder,
    /// Steps, time and the best dev metrics.
    pub summary: Summary,
    /// Metrics of the final model on the test pairs (on rank 0 of a data-parallel run only).
    pub test: Option<Metrics>,
}

impl Prepared {
    /// Trains, evaluates the final model on the test pairs and writes the model card (on rank
    /// 0; a run found already finished is left as it is).
    pub fn run(self) -> Result<Outcome> {
        let Prepared {
            job,
            mut ce,
            train,
            dev,
            test,
            ..
        } = self;
        let cfg = &job.config;
        let summary = super::train(&mut ce, &train, dev.as_deref(), cfg, &job.output, job.mode)?;
        if cfg.group.rank() > 0 || summary.already_finished {
            return Ok(Outcome {
                ce,
                summary,
                test: None,
            });
        }
        let mut results = Vec::new();
        if let Some((step, m)) = &summary.best {
            results.push((format!("dev (best, step {step})"), m.clone()));
        }
        let test = test
            .map(|test| eval::pair_metrics(&ce, cfg.task, &test))
            .transpose()?;
        if let Some(m) = &test {
            results.push(("test".to_string(), m.clone()));
        }
        Card {
            base_model: &job.model,
            train_data: job.train.name(),
            train_examples: train.len(),
            dev_data: job.dev.as_ref().map(Pairs::name),
            label_range: job.read.label_range,
            config: cfg,
            results,
            seconds: summary.seconds,
        }
        .write(&job.output)?;
        Ok(Outcome { ce, summary, test })
    }
}
