"""Checks that a model folder written by crossenc loads in sentence-transformers and transformers
and scores the same pairs as crossenc (max abs difference printed; exit 1 above 1e-4).

    python scripts/st_compat.py MODEL_DIR PAIRS_JSONL CROSSENC_SCORES_JSONL

PAIRS_JSONL: objects with "a" and "b"; CROSSENC_SCORES_JSONL: `crossenc predict` output
(activated scores) for the same file. Needs torch, transformers and sentence-transformers; the
project's tests never run it (see README, "Compatibility").
"""
import json, sys
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir, pairs_path, ours_path = sys.argv[1:4]
pairs = [(o["a"], o["b"]) for o in map(json.loads, open(pairs_path, encoding="utf-8"))]
ours = [json.loads(l) for l in open(ours_path)]
ours = [o["score"] if "score" in o else o["scores"] for o in ours]

st = CrossEncoder(model_dir)
st_scores = st.predict(pairs, convert_to_numpy=True).tolist()

tok = AutoTokenizer.from_pretrained(model_dir)
hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="longest_first",
          max_length=st.max_length, return_tensors="pt")
with torch.no_grad():
    logits = hf(**enc).logits
if logits.shape[1] == 1:
    hf_scores = torch.sigmoid(logits[:, 0])
elif isinstance(st.activation_fn, torch.nn.Softmax):  # crossenc's multiclass models
    hf_scores = torch.softmax(logits, dim=-1)
else:
    hf_scores = logits
hf_scores = hf_scores.tolist()

def flat(x):
    return [v for row in x for v in (row if isinstance(row, list) else [row])]

d_st = max(abs(a - b) for a, b in zip(flat(ours), flat(st_scores)))
d_hf = max(abs(a - b) for a, b in zip(flat(ours), flat(hf_scores)))
print(json.dumps({"model": model_dir, "architecture": hf.config.architectures, "max_abs_diff_sentence_transformers": d_st,
                  "max_abs_diff_transformers": d_hf, "pairs": len(pairs)}))
sys.exit(0 if max(d_st, d_hf) < 1e-4 else 1)
