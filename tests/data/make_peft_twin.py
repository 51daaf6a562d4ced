"""Regenerates tests/data/peft_twin/: a small PyTorch model, its base weights, an adapter saved by
PEFT itself (FourierFT on q/v + classifier in modules_to_save), a fixed input and PEFT's output.
tests/cpp/test_checkpoint.cpp builds the C++ twin (same module names), loads the base weights and
the PEFT adapter with fourierft::FourierFTModel::from_pretrained and must reproduce the output.

    .venv/bin/python tests/data/make_peft_twin.py
"""
import pathlib

import peft
import torch
from safetensors.torch import save_file
from torch import nn

from twin_models import Twin

OUT = pathlib.Path(__file__).resolve().parent / "peft_twin"


torch.manual_seed(0)
model = Twin()
OUT.mkdir(exist_ok=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "base.safetensors")
config = peft.FourierFTConfig(target_modules=["q", "v"], n_frequency=50, scaling=30.0, modules_to_save=["classifier"])
peft_model = peft.get_peft_model(model, config)
with torch.no_grad():
    for name, p in peft_model.named_parameters():
        if "classifier" in name and "modules_to_save" in name:
            p.add_(0.1)  # the head differs from the base, as after training
x = torch.randn(5, 16)
peft_model.save_pretrained(OUT / "adapter")
(OUT / "adapter" / "README.md").unlink(missing_ok=True)
with torch.no_grad():
    save_file({"x": x, "y": peft_model(x)}, OUT / "io.safetensors")
