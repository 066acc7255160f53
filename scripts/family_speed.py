"""Speed of a model folder, sentence-transformers (PyTorch) beside crossenc, on STS-B, for
BENCHMARKS.md's rows of each family.

    python scripts/family_speed.py MODEL_DIR CROSSENC_BIN [N] [--train]

Scoring, the first N test pairs (default 256): PyTorch's `CrossEncoder.predict` (batch 32) after
a warm-up, best of two; crossenc's `crossenc predict` over the N pairs and over one pair, each
best of two, the difference being the scoring time without loading. With --train, also the time
of a training step of 16 pairs (BCE on labels / 5, shuffled batches): for both, a run of 7 steps
less a run of 2 (loading, set-up and saving cancel), over 5. Prints one JSON object. Threads: as
the machine has (2 here).
"""
import csv, json, os, subprocess, sys, tempfile, time
import torch
from torch.utils.data import DataLoader
from sentence_transformers import CrossEncoder, InputExample

args = [a for a in sys.argv[1:] if not a.startswith("--")]
model_dir, binary = args[0], args[1]
n = int(args[2]) if len(args) > 2 else 256
data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "stsb")
rows = lambda split: list(csv.reader(open(os.path.join(data, f"stsb-en-{split}.csv"), encoding="utf-8")))
pairs = [(a, b) for a, b, _ in rows("test")][:n]
train = rows("train")


def best_of(runs, f):
    return min(f() for _ in range(runs))


def timed(f):
    t0 = time.time()
    f()
    return time.time() - t0


model = CrossEncoder(model_dir, device="cpu")
model.predict(pairs[:32], batch_size=32)
torch_s = best_of(2, lambda: timed(lambda: model.predict(pairs, batch_size=32)))


def crossenc(cmd):
    return timed(lambda: subprocess.run([binary, *cmd], check=True, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))


def crossenc_predict(rows):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for a, b in rows:
            f.write(json.dumps({"a": a, "b": b}) + "\n")
    s = best_of(2, lambda: crossenc(["predict", "-m", model_dir, "-i", f.name, "--batch-size", "32"]))
    os.unlink(f.name)
    return s


ours = crossenc_predict(pairs) - crossenc_predict(pairs[:1])
out = {"model": model_dir, "pairs": n, "torch": torch.__version__, "threads": torch.get_num_threads(),
       "pytorch_pairs_per_s": n / torch_s, "crossenc_pairs_per_s": (n - 1) / ours,
       "x": (n - 1) / ours / (n / torch_s)}

if "--train" in sys.argv:
    def torch_fit(steps):
        torch.manual_seed(0)
        ce = CrossEncoder(model_dir, num_labels=1, device="cpu")
        examples = [InputExample(texts=[a, b], label=float(s) / 5) for a, b, s in train[:16 * steps]]
        loader = DataLoader(examples, shuffle=True, batch_size=16)
        return timed(lambda: ce.fit(train_dataloader=loader, epochs=1, warmup_steps=0, show_progress_bar=False))

    def crossenc_fit(steps):
        with tempfile.TemporaryDirectory() as tmp:
            return crossenc(["train", "--model", model_dir, "--train", os.path.join(data, "stsb-en-train.csv"),
                             "--label-range", "0:5", "--batch-size", "16", "--max-steps", str(steps),
                             "--output", os.path.join(tmp, "out"), "--quiet"])

    out["pytorch_s_per_step"] = (torch_fit(7) - torch_fit(2)) / 5
    out["crossenc_s_per_step"] = (crossenc_fit(7) - crossenc_fit(2)) / 5
    out["train_x"] = out["pytorch_s_per_step"] / out["crossenc_s_per_step"]
print(json.dumps(out))
