"""Writes tests/fixtures/tiny-bert/pytorch_model.bin: the golden tiny-bert's weights in PyTorch's
pickle format (`torch.save` of the state dict, as older HF checkpoints ship them), which
tests/golden.rs loads in place of model.safetensors.

    python scripts/golden_pytorch_bin.py ../shared/golden/tiny-bert tests/fixtures/tiny-bert
"""
import os, sys
import torch
from safetensors.torch import load_file

src, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
torch.save(load_file(os.path.join(src, "model.safetensors")), os.path.join(dest, "pytorch_model.bin"))
