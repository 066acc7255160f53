"""Writes tests/fixtures/train-steps/: ten training steps on tiny-bert computed by PyTorch, for
tests/train_step.rs. The shared golden files hold one step; this adds what only several steps
exercise: AdamW's moments and bias correction after the first step, the linear warm-up and decay,
and clipping at every step.

    python scripts/golden_train_steps.py ../shared/golden tests/fixtures/train-steps

The 8 pairs and labels of ../shared/golden/train-step form one batch that every step reuses;
dropout is off; the token ids are the golden ones (max_length 48). Needs torch and transformers;
the project's tests only read what it writes.
"""
import json, os, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification
from reference_train import train_steps

golden, out = sys.argv[1:3]
step_golden = json.load(open(os.path.join(golden, "train-step", "golden.json")))
ids = json.load(open(os.path.join(golden, "tiny-bert", "golden.json")))
settings = {"steps": 10, "warmup_steps": 3, "lr": 1e-3, "weight_decay": 0.01, "max_grad_norm": 0.5,
            "batch_size": 8, "max_length": step_golden["max_length"]}

model = AutoModelForSequenceClassification.from_pretrained(os.path.join(golden, "tiny-bert")).eval()
# token_type_ids is null for tiny-bert: its tokenizer gives none, and the model uses zeros.
batch = {k: torch.tensor(ids[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if ids[k] is not None}
labels = torch.tensor(step_golden["labels"])
losses, lrs = train_steps(model, batch, labels, settings["steps"], settings["warmup_steps"], settings["lr"],
                         settings["weight_decay"], settings["max_grad_norm"])

os.makedirs(out, exist_ok=True)
save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, os.path.join(out, "params_after.safetensors"))
json.dump({**settings, "model": "tiny-bert", "dropout": "off (model.eval())", "losses": losses, "lrs": lrs,
           "torch": torch.__version__, "generated_by": "scripts/golden_train_steps.py"},
          open(os.path.join(out, "golden.json"), "w"), indent=1)
print(json.dumps({"losses": losses}))
