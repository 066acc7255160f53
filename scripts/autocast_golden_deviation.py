"""How far PyTorch's own bf16 autocast moves the golden training step's gradients from its f32 ones
(tests/fixtures/golden/train-step): the yardstick of tests/train_step.rs's bf16 test. Prints, for f32
and bf16 autocast, the loss and the worst gradient's relative distance (norm of the difference
over the norm of the f32 gradient), and the embeddings' (the deepest, so the farthest).

    python scripts/autocast_golden_deviation.py      # torch and transformers installed

Seen (torch 2.15, transformers 5): f32 5e-6; bf16 autocast 0.099 (token_type_embeddings), loss
0.69271 against 0.69152.
"""
import json, torch
from transformers import AutoTokenizer, AutoModelForSequenceClassification
from safetensors.torch import load_file
d = __import__("os").path.join(__import__("os").path.dirname(__file__), "../tests/fixtures/golden/")
g = json.load(open(d + "train-step/golden.json"))
tok = AutoTokenizer.from_pretrained(d + "tiny-bert")
m = AutoModelForSequenceClassification.from_pretrained(d + "tiny-bert").train()
for mod in m.modules():
    if isinstance(mod, torch.nn.Dropout): mod.p = 0.0
a, b = zip(*g["pairs"])
enc = tok(list(a), list(b), padding=True, truncation=True, max_length=g["max_length"], return_tensors="pt")
y = torch.tensor(g["labels"])
want = load_file(d + "train-step/grads.safetensors")
for dtype in [None, torch.bfloat16]:
    m.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        logits = m(**enc).logits.squeeze(-1).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    loss.backward()
    worst = []
    for n, p in m.named_parameters():
        if n not in want or p.grad is None or n.endswith("key.bias"): continue
        w = want[n].float(); gr = p.grad.float()
        worst.append(((gr - w).norm() / w.norm()).item())
        if dtype is not None and n.startswith("bert.embeddings"): print(n, round(worst[-1], 4), round(((gr-w).abs().max()/w.abs().max()).item(), 4))
    print(dtype, "loss", loss.item(), "worst norm rel", max(worst))
