"""Scoring speed of a model folder, sentence-transformers (PyTorch) beside crossenc, on the first
N STS-B test pairs, for BENCHMARKS.md's rows of each family.

    python scripts/family_speed.py MODEL_DIR CROSSENC_BIN [N]

PyTorch: `CrossEncoder.predict` (batch 32) after a warm-up, best of two. crossenc: `crossenc
predict` over the N pairs and over one pair, each best of two; the difference is the scoring
time without loading. Prints one JSON object. Threads: as the machine has (2 here).
"""
import csv, json, os, subprocess, sys, tempfile, time
import torch
from sentence_transformers import CrossEncoder

model_dir, binary = sys.argv[1:3]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 256
data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "stsb")
pairs = [(a, b) for a, b, _ in csv.reader(open(os.path.join(data, "stsb-en-test.csv"), encoding="utf-8"))][:n]

model = CrossEncoder(model_dir, device="cpu")
model.predict(pairs[:32], batch_size=32)
torch_s = min(
    (lambda t0: (model.predict(pairs, batch_size=32), time.time() - t0)[1])(time.time()) for _ in range(2))

def crossenc_s(rows):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for a, b in rows:
            f.write(json.dumps({"a": a, "b": b}) + "\n")
    best = None
    for _ in range(2):
        t0 = time.time()
        subprocess.run([binary, "predict", "-m", model_dir, "-i", f.name, "--batch-size", "32"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dt = time.time() - t0
        best = dt if best is None else min(best, dt)
    os.unlink(f.name)
    return best

ours = crossenc_s(pairs) - crossenc_s(pairs[:1])
print(json.dumps({"model": model_dir, "pairs": n, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "pytorch_pairs_per_s": n / torch_s, "crossenc_pairs_per_s": (n - 1) / ours,
                  "x": (n - 1) / ours / (n / torch_s)}))
