"""The reference's optimisation, shared by the scripts that compare crossenc with PyTorch:
sentence-transformers' `CrossEncoder.fit` defaults (AdamW, no weight decay on biases and
LayerNorm, linear warm-up then decay, global gradient-norm clipping), BCE-with-logits on one batch
that every step reuses."""
import torch
from transformers import get_linear_schedule_with_warmup

NO_DECAY = ["bias", "LayerNorm.bias", "LayerNorm.weight"]


def train_steps(model, batch, labels, steps, warmup_steps, lr, weight_decay, max_grad_norm):
    """Trains `model` in place for `steps` steps on `batch`; returns the losses and the rate of
    each step."""
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([
        {"params": [p for n, p in named if not any(nd in n for nd in NO_DECAY)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
    ], lr=lr)
    schedule = get_linear_schedule_with_warmup(opt, warmup_steps, steps)
    losses, lrs = [], []
    for _ in range(steps):
        lrs.append(schedule.get_last_lr()[0])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits.view(-1), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        schedule.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, lrs
