"""Checkpoints across languages: an adapter saved by the C++ library loads in peft
(PeftModel.from_pretrained) into the Python twin model and gives the same outputs. The other
direction (peft -> C++) is tests/cpp/test_checkpoint.cpp with tests/data/peft_twin."""
import importlib.util
import json
import pathlib
import subprocess

import peft
import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data" / "peft_twin"
TOOL = ROOT / "build" / "tests" / "fourierft_save_twin_adapter"


def python_twin():
    spec = importlib.util.spec_from_file_location("make_peft_twin_models", ROOT / "tests" / "data" / "twin_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Twin()
    model.load_state_dict(load_file(DATA / "base.safetensors"))
    return model


def test_adapter_saved_in_cpp_loads_in_peft_with_equal_outputs(tmp_path):
    out = tmp_path / "adapter"
    subprocess.run([str(TOOL), str(out), str(DATA / "base.safetensors")], check=True)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "FOURIERFT" and config["inference_mode"] is True
    loaded = peft.PeftModel.from_pretrained(python_twin(), str(out))
    io = load_file(out / "io.safetensors")
    with torch.no_grad():
        y = loaded(io["x"])
    assert torch.allclose(y, io["y"], atol=1e-6, rtol=0), (y - io["y"]).abs().max()
    # The spectra are where PEFT expects them, and the head is the adapter's copy, not the base one.
    names = {n for n, _ in loaded.named_parameters()}
    assert "base_model.model.block.q.fourierft_spectrum.default" in names
    assert "base_model.model.block.fc.fourierft_spectrum.default" in names
    base_bias = load_file(DATA / "base.safetensors")["classifier.bias"]
    head = dict(loaded.named_parameters())["base_model.model.classifier.modules_to_save.default.bias"]
    assert torch.allclose(head, base_bias + 0.3)
