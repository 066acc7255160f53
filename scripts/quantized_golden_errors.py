"""Where int8's error on the golden models comes from, and how far finer scales take it: each tiny
cross-encoder of ../shared/golden scored in PyTorch with its encoder's linear layers rounded as
crossenc's int8 rounds them (weights symmetric per output channel, inputs asymmetric u8 per token),
or only their weights, or only their inputs, or with a scale per `group` consecutive inputs of each
(finer than any int8 kernel runs), or both rounded to bf16 instead. Prints the largest
|rounded - fp32| of the predict scores per model, as tests/golden.rs measures it (the first row
is crossenc's int8, the last its bf16).

    python scripts/quantized_golden_errors.py ../shared/golden

Needs torch and transformers (the reference venv of ../shared/reference).
"""
import json, os, sys
import torch
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging

logging.disable_progress_bar()

NAMES = ["tiny-bert", "tiny-bert-3labels", "tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert",
         "tiny-electra"]


def groups(x, group):
    """`x` with its last axis cut into `group`-wide pieces (whole rows where it does not divide)."""
    n = x.shape[-1]
    g = group if group and n % group == 0 else n
    return x.reshape(*x.shape[:-1], n // g, g)


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float32)


def round_weight(w, group=None):
    """Symmetric int8, one scale per output channel (per `group` inputs of it)."""
    if group == "bf16":
        return bf16(w)
    v = groups(w, group)
    s = (v.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
    return ((v / s).round().clamp(-127, 127) * s).reshape(w.shape)


def round_input(x, group=None):
    """Asymmetric u8 with a zero point, one scale per token (per `group` features of it)."""
    if group == "bf16":
        return bf16(x)
    v = groups(x, group)
    lo, hi = v.amin(-1, keepdim=True).clamp(max=0), v.amax(-1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=1e-12)
    z = (-lo / s).round()
    return (((v / s + z).round().clamp(0, 255) - z) * s).reshape(x.shape)


SCHEMES = [  # (what, weights rounded, inputs rounded, group or "bf16")
    ("weights and inputs (crossenc int8)", True, True, None),
    ("weights only", True, False, None),
    ("inputs only", False, True, None),
    ("weights and inputs, a scale per 8", True, True, 8),
    ("weights and inputs, a scale per 4", True, True, 4),
    ("weights and inputs in bf16", True, True, "bf16"),
]

golden = sys.argv[1]
print("| scheme | " + " | ".join(NAMES) + " |")
print("| --- " * (len(NAMES) + 1) + "|")
for what, weights, inputs, group in SCHEMES:
    errors = []
    for name in NAMES:
        d = os.path.join(golden, name)
        g = json.load(open(os.path.join(d, "golden.json")))
        model = AutoModelForSequenceClassification.from_pretrained(d).eval()
        enc = {n: torch.tensor(g[n]) for n in ["input_ids", "attention_mask", "token_type_ids"]
               if g.get(n) is not None}
        with torch.no_grad():
            f32 = model(**enc).logits
            for path, layer in model.named_modules():
                # The encoder's linear layers: the ones crossenc quantizes (not pooler, head).
                if not isinstance(layer, torch.nn.Linear) or "layer." not in path:
                    continue
                if weights:
                    layer.weight.copy_(round_weight(layer.weight, group))
                if inputs:
                    layer.register_forward_pre_hook(lambda _, a: (round_input(a[0], group),))
            int8 = model(**enc).logits
        score = torch.sigmoid if f32.shape[1] == 1 else (lambda t: t)
        errors.append((score(int8) - score(f32)).abs().max().item())
    print(f"| {what} | " + " | ".join(f"{e:.4f}" for e in errors) + " |", flush=True)
