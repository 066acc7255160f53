"""The Python package against sentence-transformers' contract and crossenc's CLI: shapes and
dtypes as ST returns them, the same numbers as the CLI, errors as exceptions, Ctrl-C in fit."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import crossenc
from crossenc import CrossEncoder, InputExample
from crossenc.evaluation import (
    CEBinaryClassificationEvaluator,
    CECorrelationEvaluator,
    CERerankingEvaluator,
    CESoftmaxAccuracyEvaluator,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TINY = os.path.join(REPO, "tests", "fixtures", "golden", "tiny-bert")
TINY3 = os.path.join(REPO, "tests", "fixtures", "golden", "tiny-bert-3labels")
MINILM = os.path.join(REPO, "target", "fixtures", "all-MiniLM-L6-v2")
STSB = os.path.join(REPO, "data", "stsb")
CLI = os.environ.get("CROSSENC_BIN", os.path.join(REPO, "target", "debug", "crossenc"))
TUTORIAL = os.path.join(REPO, "bindings", "python", "examples", "tutorial.py")

# Several scripts, emoji, combining marks, and a long text in a non-Latin script.
TEXTS = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("一个男人在吃东西。", "男人正在吃一块面包。"),
    ("رجل يأكل الطعام", "Человек ест хлеб."),
    ("Café crème 😀👍🏽", "e\u0301te\u0301 a\u0300 Zu\u0308rich"),
    ("ऑस्ट्रेलिया " * 400, "東京は日本の首都です。" * 200),
]


def needs(path):
    """A fixture the suite needs: missing, it fails (CI runs scripts/fetch-fixtures.sh)."""
    assert os.path.exists(path), f"{path} is missing: run scripts/fetch-fixtures.sh (and cargo build)"
    return path


def stsb(split, n=None):
    with open(os.path.join(STSB, f"stsb-en-{split}.csv"), encoding="utf-8") as f:
        rows = list(csv.reader(f))[:n]
    return [InputExample(texts=[a, b], label=float(s) / 5) for a, b, s in rows]


def test_predict_returns_numpy_as_sentence_transformers_does():
    model = CrossEncoder(needs(TINY))
    scores = model.predict(TEXTS)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (5,)
    assert np.all((scores > 0) & (scores < 1)), "sigmoid scores"
    one = model.predict(list(TEXTS[0]))
    assert isinstance(one, np.float32) and one == pytest.approx(scores[0], abs=1e-6)
    logits = model.predict(TEXTS, activation_fn="identity")
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), scores, rtol=1e-5)
    assert model.predict([]).shape == (0,)
    multi = CrossEncoder(needs(TINY3))
    rows = multi.predict(TEXTS, apply_softmax=True)
    assert rows.shape == (5, 3) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(axis=1), 1, rtol=1e-5)


def test_predict_equals_the_cli(tmp_path):
    np.testing.assert_allclose(CrossEncoder(needs(TINY)).predict(TEXTS), cli_scores(tmp_path, TINY), rtol=1e-5)


def cli_scores(tmp_path, model, *flags):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text_a": a, "text_b": b}) + "\n" for a, b in TEXTS), encoding="utf-8")
    out = subprocess.run([needs(CLI), "predict", "--model", model, "--input", str(pairs), *flags],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line)["score"] for line in out.splitlines()]


def test_quantize_scores_as_the_cli_and_bf16_trains_where_the_cpu_has_it(tmp_path):
    int8 = CrossEncoder(needs(TINY), quantize="int8").predict(TEXTS)
    np.testing.assert_allclose(int8, cli_scores(tmp_path, TINY, "--quantize", "int8"), rtol=1e-5)
    if crossenc._crossenc.bf16_available():
        bf16 = CrossEncoder(TINY, quantize="bf16").predict(TEXTS)
        np.testing.assert_allclose(bf16, cli_scores(tmp_path, TINY, "--quantize", "bf16"), rtol=1e-5)
        CrossEncoder(TINY, dtype="bf16").fit(stsb("train", 32), max_steps=2, show_progress_bar=False)
    else:
        with pytest.raises(ValueError, match="bf16 training needs a CPU with AMX or AVX-512 BF16"):
            CrossEncoder(TINY, dtype="bf16")


def test_rank_orders_by_score_as_sentence_transformers_does():
    model = CrossEncoder(needs(TINY))
    docs = [b for _, b in TEXTS]
    scores = model.predict([(TEXTS[0][0], d) for d in docs])
    hits = model.rank(TEXTS[0][0], docs, return_documents=True)
    assert [h["corpus_id"] for h in hits] == sorted(range(5), key=lambda i: -scores[i])
    assert all(h["text"] == docs[h["corpus_id"]] for h in hits)
    assert [h["score"] for h in hits] == sorted(scores, reverse=True)
    top = model.rank(TEXTS[0][0], docs, top_k=2)
    assert len(top) == 2 and "text" not in top[0]


def test_a_saved_model_reloads_here_and_in_the_cli(tmp_path):
    model = CrossEncoder(needs(TINY))
    model.save(tmp_path / "saved")
    again = CrossEncoder(tmp_path / "saved")
    np.testing.assert_array_equal(again.predict(TEXTS), model.predict(TEXTS))
    (tmp_path / "docs.txt").write_text("bread\nhorse\n")
    out = subprocess.run([needs(CLI), "rank", "--model", str(tmp_path / "saved"), "--query", "food",
                          "--docs", str(tmp_path / "docs.txt"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    hits = model.rank("food", ["bread", "horse"])
    assert [json.loads(line)["index"] for line in out.stdout.splitlines()] == [h["corpus_id"] for h in hits]


def test_fit_on_a_list_trains_and_keeps_the_best_model(tmp_path):
    model = CrossEncoder(needs(TINY))
    train, dev = stsb("train", 256), stsb("dev", 64)
    evaluator = CECorrelationEvaluator.from_input_examples(dev, name="dev")
    before = evaluator(model)
    result = model.fit(train, evaluator=evaluator, epochs=2, warmup_steps=4,
                       output_path=tmp_path / "out", show_progress_bar=False, batch_size=16)
    assert result["steps"] == 32 and result["best"]["spearman"] == pytest.approx(
        evaluator(model)["dev_spearman"], abs=1e-6)
    assert set(before) == {"dev_pearson", "dev_spearman"}
    assert (tmp_path / "out" / "model.safetensors").exists()
    # Without an output path nothing is left behind, and the model still trains.
    model.fit(train[:32], epochs=1, show_progress_bar=False)


def test_fit_takes_a_torch_dataloader_where_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed: crossenc reads a "
                                "DataLoader only where it is (checked by hand, docs/python.md)")
    from torch.utils.data import DataLoader

    train = stsb("train", 64)
    a, b = CrossEncoder(needs(TINY)), CrossEncoder(TINY)
    a.fit(DataLoader(train, shuffle=False, batch_size=8), epochs=1, warmup_steps=2,
          show_progress_bar=False)
    b.fit(train, epochs=1, warmup_steps=2, batch_size=8, shuffle=False, show_progress_bar=False)
    np.testing.assert_array_equal(a.predict(TEXTS), b.predict(TEXTS))
    assert isinstance(a.predict(TEXTS, convert_to_tensor=True), torch.Tensor)


def test_evaluators_compute_the_metrics_sentence_transformers_names():
    model = CrossEncoder(needs(TINY))
    dev = stsb("dev", 100)
    m = CECorrelationEvaluator.from_input_examples(dev, name="sts-dev")(model)
    scores = model.predict([e.texts for e in dev]).astype(np.float64)
    labels = np.array([e.label for e in dev])
    assert m["sts-dev_pearson"] == pytest.approx(np.corrcoef(scores, labels)[0, 1], abs=1e-6)
    assert m["sts-dev_spearman"] == pytest.approx(np.corrcoef(ranks(scores), ranks(labels))[0, 1], abs=1e-6)
    binary = [InputExample(texts=e.texts, label=float(e.label >= 0.5)) for e in dev]
    b = CEBinaryClassificationEvaluator.from_input_examples(binary)(model)
    assert {"accuracy", "f1", "precision", "recall", "average_precision"} <= set(b)
    three = CrossEncoder(needs(TINY3))
    classes = [InputExample(texts=e.texts, label=i % 3) for i, e in enumerate(dev)]
    s = CESoftmaxAccuracyEvaluator.from_input_examples(classes, name="nli")(three)
    predicted = three.predict([e.texts for e in classes]).argmax(axis=1)
    assert s["nli_accuracy"] == pytest.approx(np.mean(predicted == [e.label for e in classes]))
    samples = [{"query": "food", "positive": ["bread", "pasta"], "negative": ["horse", "drums", "carts"]}]
    r = CERerankingEvaluator(samples, name="r")(model)
    order = np.argsort(-model.predict([("food", d) for d in samples[0]["positive"] + samples[0]["negative"]]),
                       kind="stable")
    first = next(i for i, d in enumerate(order) if d < 2)
    assert r["r_mrr@10"] == pytest.approx(1 / (first + 1))


def ranks(x):
    """Ranks from 0, ties sharing their mean rank (as Spearman's correlation takes them)."""
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def test_errors_are_python_exceptions_with_crossenc_s_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CrossEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="unknown quantization"):
        CrossEncoder(needs(TINY), quantize="int4")
    with pytest.raises(ValueError, match="crossenc runs on the CPU"):
        CrossEncoder(TINY, device="cuda")
    with pytest.raises(ValueError, match="revision='v2': crossenc does not take it"):
        CrossEncoder(TINY, revision="v2")
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_label'"):
        CrossEncoder(TINY, num_label=1)
    model = CrossEncoder(TINY)
    with pytest.raises(ValueError, match="pair 1: a pair is two texts"):
        model.predict([("a", "b"), ("only one",)])
    with pytest.raises(ValueError, match="ranking orders documents by one score"):
        CrossEncoder(needs(TINY3)).rank("q", ["a", "b"])
    # The tutorial's mistake: 0-5 labels into BCE, refused before any step, with the way out.
    raw = [InputExample(texts=e.texts, label=e.label * 5) for e in stsb("train", 32)]
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*pass label_range 0:5 .*or loss_fct mse"):
        model.fit(raw, output_path=tmp_path / "out", show_progress_bar=False)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="is not empty: pass overwrite=True"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "notes.txt").write_text("mine")
        model.fit(stsb("train", 32), output_path=tmp_path / "full", show_progress_bar=False)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="label 'high' is not a number"):
        model.fit([InputExample(texts=["a", "b"], label="high")], show_progress_bar=False)


FIT_UNTIL_STOPPED = """
import sys
from crossenc import CrossEncoder, InputExample
model = CrossEncoder(sys.argv[1])
train = [InputExample(texts=["a man eats", "a man is eating food " * 20], label=0.5)] * 20000
print("started", flush=True)
try:
    model.fit(train, epochs=5, output_path=sys.argv[2], show_progress_bar=False)
except KeyboardInterrupt:
    print("interrupted", model.predict(["a", "b"]) > 0, flush=True)
    raise
"""


def test_ctrl_c_stops_fit_with_keyboard_interrupt(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", FIT_UNTIL_STOPPED, needs(TINY), str(tmp_path / "out")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    time.sleep(3)  # into training
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert time.monotonic() - sent < 10, "fit did not stop promptly"
    assert "interrupted True" in out, (out, err)
    assert "KeyboardInterrupt" in err and "panic" not in err.lower(), err
    assert child.returncode != 0
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_the_tutorial_with_its_imports_changed_trains_as_the_cli_does(tmp_path):
    # The tutorial's script on the first 1,600 STS-B training pairs (100 steps) and 300 dev
    # pairs, then `crossenc train` on the same files: the same weights, the same test Spearman.
    data = tmp_path / "stsb"
    data.mkdir()
    for split, n in [("train", 1600), ("dev", 300), ("test", None)]:
        with open(os.path.join(STSB, f"stsb-en-{split}.csv"), encoding="utf-8") as f:
            rows = list(csv.reader(f))[:n]
        with open(data / f"stsb-en-{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    py_out, cli_out = tmp_path / "py", tmp_path / "cli"
    env = dict(os.environ, STSB_DIR=str(data), OUTPUT_DIR=str(py_out))
    run = subprocess.run([sys.executable, TUTORIAL, needs(MINILM), "1"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert "scores:" in run.stdout and "A man is eating a piece of bread." in run.stdout
    subprocess.run([needs(CLI), "train", "--model", MINILM, "--train", str(data / "stsb-en-train.csv"),
                    "--dev", str(data / "stsb-en-dev.csv"), "--label-range", "0:5", "--output",
                    str(cli_out), "--quiet"], check=True, timeout=900)
    assert (py_out / "model.safetensors").read_bytes() == (cli_out / "model.safetensors").read_bytes()
    test = CECorrelationEvaluator.from_input_examples(stsb("test"), name="t")
    py, cli = test(CrossEncoder(py_out)), test(CrossEncoder(cli_out))
    assert abs(py["t_spearman"] - cli["t_spearman"]) < 1e-4
    assert "sts-test_spearman" in run.stdout
