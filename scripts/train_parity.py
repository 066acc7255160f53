"""Checks that many training steps of crossenc match PyTorch, not only the golden single step:
the same start model (dropout off), the same batch every step, the reference's optimizer
(AdamW, weight decay 0.01 except biases and LayerNorm, linear warm-up and decay, clipping at 1.0).
Prints both loss curves' largest gap and the weights' largest difference; exit 1 above 1e-4.

    python scripts/train_parity.py CROSSENC_BIN BASE_MODEL STSB_CSV WORK_DIR [STEPS]

Dropout and data order are the only parts of training that depend on a random stream; with
dropout off and one batch of 16 pairs (a whole epoch), both sides compute the same function.
Needs torch, transformers and sentence-transformers; the project's tests never run it (see
README, "Measured").
"""
import csv, json, os, subprocess, sys
import torch
from safetensors.torch import load_file
from sentence_transformers import CrossEncoder
from reference_train import train_steps

crossenc, base, stsb, work = sys.argv[1:5]
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 30
lr, warmup = 2e-5, 5
os.makedirs(work, exist_ok=True)
batch = list(csv.reader(open(stsb, encoding="utf-8")))[:16]
data = os.path.join(work, "batch.csv")
with open(data, "w", encoding="utf-8", newline="") as f:
    csv.writer(f).writerows(batch)

# A complete cross-encoder with its head, dropout off, that both sides start from.
torch.manual_seed(0)
ce = CrossEncoder(base, num_labels=1, max_length=512)
ce.model.config.hidden_dropout_prob = ce.model.config.attention_probs_dropout_prob = 0.0
start = os.path.join(work, "start")
ce.save(start)
ce = CrossEncoder(start, max_length=512)
model = ce.model

enc = ce.tokenizer([r[0] for r in batch], [r[1] for r in batch], padding=True, truncation=True,
                   max_length=512, return_tensors="pt")
labels = torch.tensor([float(r[2]) / 5 for r in batch])
named = list(model.named_parameters())
model.train()
torch_losses, _ = train_steps(model, enc, labels, steps, warmup, lr, weight_decay=0.01, max_grad_norm=1.0)

out = os.path.join(work, "crossenc")
subprocess.run([crossenc, "train", "--model", start, "--output", out, "--train", data,
                "--label-range", "0:5", "--epochs", str(steps), "--batch-size", "16", "--lr", str(lr),
                "--warmup-steps", str(warmup), "--log-steps", "1", "--quiet"], check=True)
ours = [r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in r]
weights = load_file(os.path.join(out, "model.safetensors"))
initial = load_file(os.path.join(start, "model.safetensors"))
d_loss = max(abs(a - b) for a, b in zip(torch_losses, ours))
d_w = max((p.detach() - weights[n]).abs().max().item() for n, p in named)
moved = max((p.detach() - initial[n]).abs().max().item() for n, p in named)
print(json.dumps({"steps": steps, "losses": len(ours), "first_loss": torch_losses[0], "last_loss": torch_losses[-1],
                  "max_abs_diff_loss": d_loss, "max_abs_diff_weights": d_w, "largest_weight_change": moved}))
sys.exit(0 if len(ours) == steps and max(d_loss, d_w) < 1e-4 else 1)
