"""sentence-transformers' cross-encoder evaluators, by its names, computed by crossenc's engine as
`crossenc eval` computes them. `evaluator(model)` returns `{name_metric: value}`; in `fit`, the
evaluator's pairs are the dev set and its primary metric picks the best model."""

import csv
import os

from . import InputExample, _crossenc, _rows

__all__ = [
    "CEBinaryClassificationEvaluator",
    "CEClassificationEvaluator",
    "CECorrelationEvaluator",
    "CERerankingEvaluator",
    "CESoftmaxAccuracyEvaluator",
]


class _Evaluator:
    """Labelled pairs scored with `task`'s metrics (regression, binary, multiclass)."""

    task = None
    primary = None

    def __init__(self, sentence_pairs, labels, name="", batch_size=32, show_progress_bar=False,
                 write_csv=True):
        examples = [InputExample(texts=p, label=y) for p, y in zip(sentence_pairs, labels)]
        self._rows = _rows(examples, type(self).__name__)
        self.name, self.batch_size, self.write_csv = name, batch_size, write_csv
        self.show_progress_bar = show_progress_bar

    @classmethod
    def from_input_examples(cls, examples, **kwargs):
        return cls([e.texts for e in examples], [e.label for e in examples], **kwargs)

    def task_for(self, num_labels):
        return self.task

    def metric_for(self, task):
        return self.primary

    @property
    def primary_metric(self):
        return self._prefixed(self.primary)

    def _prefixed(self, metric):
        return f"{self.name}_{metric}" if self.name else metric

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        metrics = model._model.evaluate(self.task_for(model.num_labels), self._rows, self.batch_size)
        if output_path is not None and self.write_csv:
            self._append_csv(output_path, epoch, steps, metrics)
        return {self._prefixed(k): v for k, v in metrics.items()}

    def _append_csv(self, output_path, epoch, steps, metrics):
        path = os.path.join(output_path, f"{type(self).__name__}_{self.name or 'results'}_results.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", "steps", *metrics])
            w.writerow([epoch, steps, *metrics.values()])


class CECorrelationEvaluator(_Evaluator):
    """Pearson and Spearman of the scores against graded labels (STS-B)."""

    task, primary = "regression", "spearman"

    def __init__(self, sentence_pairs, scores, **kwargs):
        super().__init__(sentence_pairs, scores, **kwargs)


class CEBinaryClassificationEvaluator(_Evaluator):
    """Accuracy, F1, precision, recall and average precision against 0/1 labels."""

    task, primary = "binary", "average_precision"


class CESoftmaxAccuracyEvaluator(_Evaluator):
    """Accuracy and macro-F1 of the best class against class indices."""

    task, primary = "multiclass", "accuracy"


class CEClassificationEvaluator(_Evaluator):
    """Binary metrics for a one-output model, else multiclass ones; in `fit`, average precision
    or macro-F1 keeps the best model."""

    primary = "average_precision"

    def task_for(self, num_labels):
        return "binary" if num_labels == 1 else "multiclass"

    def metric_for(self, task):
        return "average_precision" if task == "binary" else "macro_f1"


class CERerankingEvaluator:
    """MRR@k, NDCG@k and MAP of each query's candidates: `samples` are dicts with `query`,
    `positive` (a list) and `negative` (a list), as sentence-transformers takes them."""

    def __init__(self, samples, at_k=10, name="", write_csv=True, batch_size=32,
                 show_progress_bar=False, **kwargs):
        self.samples, self.at_k, self.name = list(samples), at_k, name
        self.write_csv, self.batch_size = write_csv, batch_size

    @property
    def primary_metric(self):
        return f"{self.name}_ndcg@{self.at_k}" if self.name else f"ndcg@{self.at_k}"

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        lists = []
        for s in self.samples:
            docs = list(s["positive"]) + list(s["negative"])
            scores = model.predict([(s["query"], d) for d in docs], batch_size=self.batch_size)
            lists.append(([float(x) for x in scores], [True] * len(s["positive"]) + [False] * len(s["negative"])))
        metrics = _crossenc.ranking(lists, self.at_k)
        return {f"{self.name}_{k}" if self.name else k: v for k, v in metrics.items()}
