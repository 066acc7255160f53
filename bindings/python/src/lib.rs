//! `crossenc._crossenc`: the library's calls for the Python package (`python/crossenc`), which
//! shapes them as sentence-transformers' `CrossEncoder`. Every call runs on the engine
//! ([`crossenc::engine::run`]) in a thread of its own, with the GIL released, while the calling
//! thread watches for Ctrl-C; errors come back as Python exceptions, never as a panic.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossenc::data::Example;
use crossenc::eval::{self, Task};
use crossenc::hub::NoSuchFolder;
use crossenc::model::config::{generic_labels, Config};
use crossenc::progress::{Cancelled, Progress, Silent};
use crossenc::setting::{name_settings, Setting};
use crossenc::train::{self, Batching, LossKind, OutputMode, TrainConfig, TrainData};
use crossenc::{stream, Activation, CrossEncoder, LoadOptions, Output, Precision, Quantization};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::call::PyCallArgs;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// As the binary (src/main.rs): freed pages are kept for the next training step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Settings as the Python package's keyword arguments name them.
fn keyword(s: Setting) -> &'static str {
    match s {
        Setting::Model => "model_name_or_path",
        Setting::MaxLength => "max_length",
        Setting::Quantize => "quantize",
        Setting::Precision => "dtype",
        Setting::NumLabels | Setting::Labels => "num_labels",
        Setting::Output => "output_path",
        Setting::Overwrite => "overwrite=True",
        Setting::Resume => "resume=True",
        Setting::SaveSteps => "checkpoint_save_steps",
        Setting::LabelRange => "label_range",
        Setting::Loss => "loss_fct",
        Setting::Metric => "the evaluator's metric",
        Setting::Task => "the evaluator's task",
        Setting::Lr => "optimizer_params['lr']",
        other => other.library_name(),
    }
}

/// Bad input: Python's `ValueError`, or `FileNotFoundError` for a path that is not there.
fn invalid(e: anyhow::Error) -> PyErr {
    if e.is::<NoSuchFolder>() || not_found(&e) {
        PyFileNotFoundError::new_err(format!("{e:#}"))
    } else {
        PyValueError::new_err(format!("{e:#}"))
    }
}

/// A failure of work that was set up right: `RuntimeError` (or `FileNotFoundError`).
fn failed(e: anyhow::Error) -> PyErr {
    if not_found(&e) {
        PyFileNotFoundError::new_err(format!("{e:#}"))
    } else {
        PyRuntimeError::new_err(format!("{e:#}"))
    }
}

fn not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// Runs `f` on the engine in a thread of its own while this one, the GIL released between
/// looks, checks for signals: a `KeyboardInterrupt` sets the flag that `f` watches and is
/// raised once `f` has stopped. Errors of `f` go through `map`; a panic is a `RuntimeError`.
fn work<R: Send>(
    py: Python<'_>,
    map: fn(anyhow::Error) -> PyErr,
    f: impl FnOnce(&Arc<AtomicBool>) -> anyhow::Result<R> + Send,
) -> PyResult<R> {
    let stop = Arc::new(AtomicBool::new(false));
    let caller = std::thread::current();
    let mut interrupt = None;
    let joined = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let result = crossenc::engine::run(|| f(&stop));
            caller.unpark();
            result
        });
        while !worker.is_finished() {
            py.detach(|| std::thread::park_timeout(Duration::from_millis(100)));
            if interrupt.is_none() {
                if let Err(e) = py.check_signals() {
                    stop.store(true, Ordering::SeqCst);
                    interrupt = Some(e);
                }
            }
        }
        worker.join()
    });
    match (joined, interrupt) {
        (Err(panic), _) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(PyRuntimeError::new_err(format!("crossenc failed: {what}")))
        }
        (Ok(_), Some(interrupt)) => Err(interrupt),
        (Ok(result), None) => result.map_err(|e| {
            if e.is::<Cancelled>() {
                PyKeyboardInterrupt::new_err("stopped")
            } else {
                map(e)
            }
        }),
    }
}

/// Work's progress, passed on to a Python object that draws sentence-transformers' bar (the
/// package's `_progress.Bar`); asks the work to stop once Ctrl-C was pressed.
struct PyProgress {
    bar: Option<Py<PyAny>>,
    stop: Arc<AtomicBool>,
}

impl PyProgress {
    fn call<A: for<'py> PyCallArgs<'py>>(&self, method: &str, args: A) {
        if let Some(bar) = &self.bar {
            // A bar that fails (a closed terminal) must not stop the work.
            Python::attach(|py| {
                if let Err(e) = bar.bind(py).call_method1(method, args) {
                    e.print(py);
                }
            });
        }
    }
}

impl Progress for PyProgress {
    fn start(&self, total: u64, done: u64) {
        self.call("start", (total, done));
    }
    fn update(&self, done: u64, status: &str) {
        self.call("update", (done, status.to_string()));
    }
    fn log(&self, line: &str) {
        self.call("log", (line.to_string(),));
    }
    fn report(&self, line: &str) {
        self.call("report", (line.to_string(),));
    }
    fn finish(&self) {
        self.call("finish", ());
    }
    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn examples(rows: Vec<(String, String, f64)>) -> Vec<Example> {
    rows.into_iter()
        .enumerate()
        .map(|(i, (a, b, label))| Example {
            a,
            b,
            label,
            line: i + 1,
        })
        .collect()
}

fn parse<T>(what: &str, name: &str, value: Option<T>) -> PyResult<T> {
    value.ok_or_else(|| PyValueError::new_err(format!("unknown {what} \"{name}\"")))
}

fn task(name: &str) -> PyResult<Task> {
    let task = match name {
        "regression" => Some(Task::Regression),
        "binary" => Some(Task::Binary),
        "multiclass" => Some(Task::Multiclass),
        _ => None,
    };
    parse("task (regression, binary, multiclass)", name, task)
}

fn loss(name: &str) -> PyResult<LossKind> {
    let loss = match name {
        "bce" => Some(LossKind::Bce),
        "mse" => Some(LossKind::Mse),
        "cross_entropy" => Some(LossKind::CrossEntropy),
        _ => None,
    };
    parse("loss (bce, mse, cross_entropy)", name, loss)
}

/// A loaded cross-encoder (the package's `CrossEncoder` holds one).
#[pyclass(module = "crossenc._crossenc")]
struct Model {
    ce: CrossEncoder,
    /// Training's precision (`dtype`).
    precision: Precision,
}

#[pymethods]
impl Model {
    /// Loads a model folder or hub id as `options` say.
    #[new]
    fn new(py: Python<'_>, model: String, options: ModelOptions) -> PyResult<Self> {
        let ModelOptions {
            num_labels,
            max_length,
            quantize,
            dtype,
            activation,
            seed,
        } = options;
        let quantize = quantize
            .map(|q| q.parse::<Quantization>())
            .transpose()
            .map_err(PyValueError::new_err)?;
        let precision = dtype
            .map(|d| d.parse::<Precision>())
            .transpose()
            .map_err(PyValueError::new_err)?
            .unwrap_or_default();
        let activation = match activation {
            Some(name) => Some(parse("activation_fn", &name, Activation::parse(&name))?),
            None => None,
        };
        let ce = work(py, invalid, |_| {
            precision.check()?;
            let dir = crossenc::hub::resolve_model(&model)?;
            let own = Config::from_file(&dir.join("config.json"))?.num_labels();
            let opts = LoadOptions {
                max_length,
                labels: num_labels.filter(|&n| n != own).map(generic_labels),
                seed,
                activation,
                quantize,
                ..Default::default()
            };
            CrossEncoder::load(dir.to_str().unwrap_or(&model), &opts)
        })?;
        Ok(Model { ce, precision })
    }

    #[getter]
    fn num_labels(&self) -> usize {
        self.ce.num_labels()
    }

    #[getter]
    fn max_length(&self) -> usize {
        self.ce.tokenizer().max_length
    }

    #[getter]
    fn labels(&self) -> Vec<String> {
        self.ce.config().id2label.clone()
    }

    /// The activation `predict` applies, as a torch class path.
    #[getter]
    fn activation(&self) -> &'static str {
        self.ce.activation().torch_name()
    }

    /// Scores of `pairs`, one row of `num_labels` per pair: logits through `activation` (a
    /// name; default the model's, `identity` for the logits). `bar.update(n)` after each chunk.
    #[pyo3(signature = (pairs, batch_size=32, activation=None, bar=None))]
    fn predict<'py>(
        &mut self,
        py: Python<'py>,
        pairs: Vec<(String, String)>,
        batch_size: usize,
        activation: Option<String>,
        bar: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let activation = match activation {
            Some(name) => parse("activation_fn", &name, Activation::parse(&name))?,
            None => self.ce.activation(),
        };
        self.ce.set_batch_size(batch_size);
        let ce = &self.ce;
        let k = ce.num_labels();
        let n = pairs.len();
        // The CLI's pipeline: the next chunk is tokenized while this one is scored.
        let values = work(py, invalid, |stop| {
            let progress = PyProgress {
                bar,
                stop: stop.clone(),
            };
            let read = move |send: &mut stream::Send<usize>| {
                let mut pairs = pairs.into_iter();
                loop {
                    let chunk: Vec<_> = pairs.by_ref().take(stream::CHUNK).collect();
                    if chunk.is_empty() || !send(chunk, 0) {
                        return Ok(());
                    }
                }
            };
            let mut values = Vec::with_capacity(n * k);
            stream::score(ce, read, Output::Logits, |_, scores| {
                if progress.cancelled() {
                    return Err(Cancelled.into());
                }
                progress.call("advance", (scores.len(),));
                values.extend(scores.values);
                Ok(())
            })?;
            activation.apply(&mut values, k);
            Ok(values)
        })?;
        let scores = Array2::from_shape_vec((n, k), values)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(scores.into_pyarray(py))
    }

    /// An error unless the model has one output (ranking orders by it).
    fn check_ranks(&self) -> PyResult<()> {
        self.ce.check_ranks().map_err(invalid)
    }

    /// Writes the model folder (HF and sentence-transformers files).
    fn save(&self, py: Python<'_>, path: String) -> PyResult<()> {
        let ce = &self.ce;
        work(py, failed, |_| ce.save(Path::new(&path)))
    }

    /// `task`'s metrics of the model on labelled pairs, as `crossenc eval` computes them.
    fn evaluate(
        &mut self,
        py: Python<'_>,
        task: &str,
        rows: Vec<(String, String, f64)>,
        batch_size: usize,
    ) -> PyResult<Py<PyDict>> {
        let task = self::task(task)?;
        self.ce.set_batch_size(batch_size);
        let ce = &self.ce;
        let metrics = work(py, invalid, |_| {
            eval::pair_metrics(ce, task, &examples(rows))
        })?;
        let dict = PyDict::new(py);
        for (k, v) in metrics {
            dict.set_item(k, v)?;
        }
        Ok(dict.unbind())
    }

    /// Fine-tunes the model as `crossenc train` does: the best model by the metric on `dev`
    /// (or the last) is saved in `output` and comes back in this model. Returns the run's
    /// steps, seconds and best dev metrics.
    #[pyo3(signature = (train, dev, output, settings, bar))]
    fn fit(
        &mut self,
        py: Python<'_>,
        train: Vec<(String, String, f64)>,
        dev: Option<Vec<(String, String, f64)>>,
        output: String,
        settings: FitSettings,
        bar: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyDict>> {
        let mode = match settings.mode.as_str() {
            "new" => OutputMode::New,
            "overwrite" => OutputMode::Overwrite,
            "resume" => OutputMode::Resume,
            other => return Err(PyValueError::new_err(format!("unknown mode \"{other}\""))),
        };
        let (task, loss) = (self::task(&settings.task)?, self::loss(&settings.loss)?);
        let precision = self.precision;
        // Built where it is used: a run's process group is neither Send nor Sync.
        let config = |progress: Arc<dyn Progress>| settings.config(task, loss, precision, progress);
        let (train, dev) = (examples(train), dev.map(examples));
        let output = std::path::PathBuf::from(output);
        let ce = &mut self.ce;
        let data = work(py, invalid, |_| {
            let data = TrainData::new(ce.tokenizer(), &train).context("train_dataloader")?;
            train::check_run(ce, &data, &config(Arc::new(Silent)), &output, mode)?;
            if let Some(dev) = &dev {
                let labelled = crossenc::data::labelled(dev);
                eval::check_task(task, ce.num_labels(), labelled, "the evaluator's pairs")?;
            }
            Ok(data)
        })?;
        let summary = work(py, failed, |stop| {
            // The run asks its progress whether to stop after every step; Ctrl-C says yes.
            let stop = stop.clone();
            let cfg = config(Arc::new(PyProgress { bar, stop }));
            train::train(ce, &data, dev.as_deref(), &cfg, &output, mode)
        })?;
        let out = PyDict::new(py);
        out.set_item("steps", summary.steps)?;
        out.set_item("seconds", summary.seconds)?;
        if let Some((step, metrics)) = summary.best {
            out.set_item("best_step", step)?;
            let best = PyDict::new(py);
            for (k, v) in metrics {
                best.set_item(k, v)?;
            }
            out.set_item("best", best)?;
        }
        Ok(out.unbind())
    }
}

/// How `Model` loads, as the package passes it (a dict): `num_labels` other than the
/// folder's gives a bare encoder a new head of that many outputs (seeded by `seed`);
/// `quantize` scores in int8 or bf16; `dtype` is training's precision.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct ModelOptions {
    num_labels: Option<usize>,
    max_length: Option<usize>,
    quantize: Option<String>,
    dtype: Option<String>,
    activation: Option<String>,
    seed: u64,
}

/// `fit`'s hyper-parameters and output mode (new, overwrite, resume), as the package passes
/// them (a dict).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct FitSettings {
    mode: String,
    task: String,
    loss: String,
    metric: Option<String>,
    epochs: usize,
    batch_size: usize,
    shuffle: bool,
    warmup_steps: Option<usize>,
    lr: f64,
    weight_decay: f64,
    max_grad_norm: f64,
    eval_steps: Option<usize>,
    seed: u64,
    max_steps: Option<usize>,
    save_steps: Option<usize>,
}

impl FitSettings {
    fn config(
        &self,
        task: Task,
        loss: LossKind,
        precision: Precision,
        progress: Arc<dyn Progress>,
    ) -> TrainConfig {
        let mut cfg = TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            batching: match self.shuffle {
                true => Batching::Random,
                false => Batching::InOrder,
            },
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            loss,
            eval_steps: self.eval_steps,
            save_steps: self.save_steps,
            max_steps: self.max_steps,
            precision,
            progress,
            ..TrainConfig::for_task(task)
        };
        cfg.adamw.weight_decay = self.weight_decay;
        if let Some(metric) = &self.metric {
            cfg.metric = metric.clone();
        }
        cfg
    }
}

/// Pearson's and Spearman's correlations, as every crossenc evaluation computes them.
#[pyfunction]
fn correlations(scores: Vec<f64>, labels: Vec<f64>) -> (f64, f64) {
    use crossenc::eval::correlation::{pearson, spearman};
    (pearson(&scores, &labels), spearman(&scores, &labels))
}

/// MRR@`at_k`, NDCG@`at_k` and MAP over queries, each given as its candidates' scores and
/// which candidates are relevant, as `crossenc eval --task rerank` computes them.
#[pyfunction]
fn ranking(
    lists: Vec<(Vec<f32>, Vec<bool>)>,
    at_k: usize,
) -> std::collections::BTreeMap<String, f64> {
    use crossenc::eval::ranking::{
        average_precision, ndcg, rank_by_score, reciprocal_rank, RankedQuery,
    };
    let n = lists.len().max(1) as f64;
    let (mut mrr, mut ndcg_k, mut map) = (0.0, 0.0, 0.0);
    for (scores, relevant) in &lists {
        let ranked = rank_by_score(scores);
        let relevant = relevant
            .iter()
            .enumerate()
            .filter(|(_, r)| **r)
            .map(|(i, _)| (i, 1))
            .collect();
        let q = RankedQuery {
            ranked: &ranked,
            relevant: &relevant,
        };
        mrr += reciprocal_rank(&q, at_k) / n;
        ndcg_k += ndcg(&q, at_k) / n;
        map += average_precision(&q) / n;
    }
    [
        (format!("mrr@{at_k}"), mrr),
        (format!("ndcg@{at_k}"), ndcg_k),
        ("map".into(), map),
    ]
    .into()
}

/// Whether this CPU trains in bf16 (`dtype="bf16"`).
#[pyfunction]
fn bf16_available() -> bool {
    Precision::Bf16.check().is_ok()
}

#[pymodule]
fn _crossenc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: an option that mimalloc reads whenever it purges; setting it while other
    // threads allocate is a benign race on one integer.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    name_settings(keyword);
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(correlations, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_available, m)?)?;
    m.add_function(wrap_pyfunction!(ranking, m)?)?;
    Ok(())
}
