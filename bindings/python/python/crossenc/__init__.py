"""crossenc: sentence-transformers' `CrossEncoder` on crossenc's CPU engine, without PyTorch.

    from crossenc import CrossEncoder, InputExample
    from crossenc.evaluation import CECorrelationEvaluator

The names, arguments and return values are sentence-transformers'; a script written for it runs
with its imports changed. Training, scoring and evaluation run in Rust with the GIL released;
Ctrl-C stops them with `KeyboardInterrupt`.
"""

import os
import tempfile

import numpy as np

from . import _crossenc
from ._progress import Bar

__all__ = ["CrossEncoder", "InputExample"]
__version__ = "0.1.0"


class InputExample:
    """A training or evaluation pair, as sentence-transformers' `InputExample`."""

    def __init__(self, guid="", texts=None, label=0):
        self.guid = guid
        self.texts = texts
        self.label = label

    def __repr__(self):
        return f"<InputExample> label: {self.label}, texts: {'; '.join(map(str, self.texts or []))}"


def _pair(texts, where):
    if isinstance(texts, (str, bytes)) or len(texts) != 2:
        raise ValueError(f"{where}: a pair is two texts, got {texts!r}")
    a, b = texts
    if not isinstance(a, str) or not isinstance(b, str):
        raise ValueError(f"{where}: texts must be strings, got {type(a).__name__} and {type(b).__name__}")
    return a, b


def _rows(examples, what):
    """(text, text, label) of InputExamples (or of (text, text, label) tuples)."""
    rows = []
    for i, e in enumerate(examples):
        where = f"{what} example {i}"
        if isinstance(e, InputExample):
            texts, label = e.texts, e.label
        else:
            *texts, label = e
        a, b = _pair(texts or [], where)
        try:
            label = float(label)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {label!r} is not a number") from None
        rows.append((a, b, label))
    return rows


def _name(fn, kind):
    """A torch module (or its class, or a name) as the engine names it: `Sigmoid` -> `sigmoid`.
    torch itself is never imported."""
    if fn is None or isinstance(fn, str):
        return fn
    cls = fn if isinstance(fn, type) else type(fn)
    return {
        "activation_fn": {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh", "Softmax": "softmax"},
        "loss_fct": {"BCEWithLogitsLoss": "bce", "MSELoss": "mse", "CrossEntropyLoss": "cross_entropy"},
    }[kind].get(cls.__name__) or _unsupported(kind, cls.__name__)


def _unsupported(kind, name):
    raise ValueError(f"{kind}={name} is not one crossenc runs")


def _training_data(loader):
    """Examples, batch size and shuffle of a torch DataLoader (read, not iterated: torch is
    imported only when the loader is torch's) or of a plain list or iterable."""
    if type(loader).__module__.startswith("torch."):
        from torch.utils.data import RandomSampler

        return list(loader.dataset), loader.batch_size, isinstance(loader.sampler, RandomSampler)
    return list(loader), None, True


# sentence-transformers' loading options that crossenc takes only at their defaults.
_LOAD_DEFAULTS = {
    "cache_folder": None, "trust_remote_code": False, "revision": None, "local_files_only": False,
    "token": None, "model_kwargs": None, "tokenizer_kwargs": None, "config_kwargs": None,
    "automodel_args": None, "tokenizer_args": None, "config_args": None, "model_card_data": None,
    "backend": "torch",
}


class CrossEncoder:
    """A cross-encoder: reads two texts together and scores the pair.

    `CrossEncoder(model_name_or_path, num_labels=None, max_length=None, activation_fn=None)` as
    in sentence-transformers; crossenc's own: `dtype="bf16"` trains in bf16 (AMX or AVX-512 BF16),
    `quantize="int8"` or `"bf16"` scores with reduced weights (such a model does not train),
    `seed` seeds a new head.
    """

    def __init__(self, model_name_or_path, num_labels=None, max_length=None, activation_fn=None,
                 device=None, *, dtype=None, quantize=None, seed=42, **kwargs):
        if device not in (None, "cpu"):
            raise ValueError(f"device={device!r}: crossenc runs on the CPU")
        activation_fn = activation_fn or kwargs.pop("default_activation_function", None)
        for key, value in kwargs.items():
            if key not in _LOAD_DEFAULTS:
                raise TypeError(f"CrossEncoder() got an unexpected keyword argument {key!r}")
            if value not in (_LOAD_DEFAULTS[key], None, {}):
                raise ValueError(f"{key}={value!r}: crossenc does not take it (a model folder or "
                                 "hub id, with HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE, is read as is)")
        self.model_name_or_path = os.fspath(model_name_or_path)
        self._model = _crossenc.Model(self.model_name_or_path, dict(
            num_labels=num_labels, max_length=max_length, quantize=quantize, dtype=dtype,
            activation=_name(activation_fn, "activation_fn"), seed=seed))

    @property
    def num_labels(self):
        return self._model.num_labels

    @property
    def max_length(self):
        return self._model.max_length

    @property
    def activation_fn(self):
        """The activation `predict` applies, as torch's class path."""
        return self._model.activation

    @property
    def labels(self):
        return self._model.labels

    def predict(self, sentences, batch_size=32, show_progress_bar=None, activation_fn=None,
                apply_softmax=False, convert_to_numpy=True, convert_to_tensor=False):
        """Scores of pairs: a NumPy array, 1-D for a one-output model, else one row per pair; a
        single pair gives a single score (row)."""
        single = len(sentences) > 0 and isinstance(sentences[0], str)
        pairs = [_pair(p, f"pair {i}") for i, p in enumerate([sentences] if single else sentences)]
        activation = _name(activation_fn, "activation_fn")
        if apply_softmax and self.num_labels > 1:
            activation = "softmax"
        bar = Bar("Batches", len(pairs), bool(show_progress_bar))
        try:
            scores = self._model.predict(pairs, batch_size, activation, bar)
        finally:
            bar.finish()
        if self.num_labels == 1:
            scores = scores[:, 0]
        if convert_to_tensor:
            import torch

            scores = torch.from_numpy(scores)
        elif not convert_to_numpy:
            scores = list(scores)
        return scores[0] if single else scores

    def rank(self, query, documents, top_k=None, return_documents=False, batch_size=32,
             show_progress_bar=None, activation_fn=None, apply_softmax=False, convert_to_numpy=True,
             convert_to_tensor=False):
        """The documents by score for `query`, best first: `[{"corpus_id", "score"[, "text"]}]`."""
        self._model.check_ranks()
        scores = self.predict([(query, d) for d in documents], batch_size, show_progress_bar,
                              activation_fn, apply_softmax)
        order = np.argsort(-scores, kind="stable")[:top_k]
        hits = []
        for i in order:
            hit = {"corpus_id": int(i), "score": scores[i]}
            if return_documents:
                hit["text"] = documents[i]
            hits.append(hit)
        return hits

    def save(self, path, **kwargs):
        """Writes the model folder (HF and sentence-transformers files), which loads here, in
        crossenc's CLI and in sentence-transformers."""
        os.makedirs(path, exist_ok=True)
        self._model.save(os.fspath(path))

    save_pretrained = save

    def fit(self, train_dataloader, evaluator=None, epochs=1, loss_fct=None, activation_fct=None,
            scheduler="WarmupLinear", warmup_steps=10000, optimizer_class=None,
            optimizer_params=None, weight_decay=0.01, evaluation_steps=0, output_path=None,
            save_best_model=True, max_grad_norm=1, use_amp=False, callback=None,
            show_progress_bar=True, *, batch_size=16, shuffle=True, seed=42, label_range=None,
            max_steps=None, checkpoint_save_steps=None, overwrite=False, resume=False):
        """Fine-tunes the model as sentence-transformers' `fit` does, on crossenc's engine.

        `train_dataloader`: a torch DataLoader of InputExamples (its batch size and shuffle are
        used) or a list of them (then `batch_size`, `shuffle`). `evaluator`: one of
        `crossenc.evaluation`'s; the best model by its primary metric is kept (saved to
        `output_path` if given). crossenc's own: `seed`, `label_range=(lo, hi)` maps labels
        linearly into [0, 1], `max_steps`, `checkpoint_save_steps` (with `resume=True` to go on
        after a stop), `overwrite=True` to replace an earlier run in `output_path`.
        """
        from .evaluation import _Evaluator

        if str(scheduler).lower() != "warmuplinear":
            raise ValueError(f"scheduler={scheduler!r}: crossenc trains with WarmupLinear")
        if optimizer_class is not None and getattr(optimizer_class, "__name__", "") != "AdamW":
            raise ValueError("optimizer_class: crossenc trains with AdamW")
        if use_amp:
            raise ValueError("use_amp: pass dtype='bf16' to CrossEncoder for mixed precision")
        if callback is not None:
            raise ValueError("callback: crossenc's fit takes none; read fit's return value")
        if evaluator is not None and not isinstance(evaluator, _Evaluator):
            raise ValueError("evaluator: crossenc's fit evaluates with crossenc.evaluation's "
                             "evaluators; call yours on the model after fit")
        if activation_fct is not None:
            raise ValueError("activation_fct: the activation follows the loss (sigmoid for BCE, "
                             "identity for MSE, softmax for cross-entropy)")
        examples, loader_batch, loader_shuffle = _training_data(train_dataloader)
        train = _rows(examples, "train_dataloader")
        if label_range is not None:
            lo, hi = (float(x) for x in (label_range.split(":") if isinstance(label_range, str) else label_range))
            train = [(a, b, (y - lo) / (hi - lo)) for a, b, y in train]
        loss = _name(loss_fct, "loss_fct") or ("bce" if self.num_labels == 1 else "cross_entropy")
        task = evaluator.task_for(self.num_labels) if evaluator else (
            "regression" if self.num_labels == 1 else "multiclass")
        dev = evaluator._rows if evaluator else None
        params = dict(optimizer_params or {})
        lr = float(params.pop("lr", 2e-5))
        if params:
            raise ValueError(f"optimizer_params: crossenc's AdamW takes lr only, got {sorted(params)}")
        mode = "resume" if resume else "overwrite" if overwrite else "new"
        with tempfile.TemporaryDirectory(prefix="crossenc-fit-") as scratch:
            bar = Bar("Iteration", None, show_progress_bar)
            try:
                settings = dict(
                    mode=mode, task=task, loss=loss, metric=evaluator.metric_for(task) if evaluator else None,
                    epochs=epochs, batch_size=loader_batch or batch_size,
                    shuffle=loader_shuffle and shuffle, warmup_steps=warmup_steps, lr=lr,
                    weight_decay=float(weight_decay), max_grad_norm=float(max_grad_norm),
                    eval_steps=evaluation_steps or None, seed=seed, max_steps=max_steps,
                    save_steps=checkpoint_save_steps)
                return self._model.fit(train, dev, os.fspath(output_path or scratch), settings, bar)
            finally:
                bar.finish()
