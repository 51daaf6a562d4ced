"""fourierft-merge (C++, no Python at run time) against PEFT's merge_and_unload + save_pretrained, on
transformers checkpoints: LLaMA (sharded and not, float32 and bfloat16) and GPT-2 (Conv1D:
fan_in_fan_out), with a modules_to_save head; and every kind of bad input: non-zero exit, a message
naming the tensor and the numbers, and no output directory left behind (a bitsandbytes-quantized base among them)."""
import json
import os
import pathlib
import subprocess
import sys

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import fourierft

# The tool installed by pip with the package; FOURIERFT_MERGE names another build of it (scripts/mutation_check.py
# points it at build/fourierft-merge to test a mutated tool).
MERGE = pathlib.Path(os.environ.get("FOURIERFT_MERGE") or pathlib.Path(sys.prefix) / "bin" / "fourierft-merge")


def llama(dtype=torch.float32):
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, num_labels=3, pad_token_id=0))
    return model.to(dtype)


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                                                n_positions=32))


def run_merge(*args):
    return subprocess.run([str(MERGE), *map(str, args)], capture_output=True, text=True, timeout=300)


def make_case(tmp_path, build, config, shard=None):
    """(base dir, adapter dir, PEFT's merged dir) for one model: PEFT's own layers do the reference merge."""
    base = build()
    kwargs = {"max_shard_size": shard} if shard else {}
    base.save_pretrained(tmp_path / "base", **kwargs)
    with fourierft.registered(False):
        model = peft.get_peft_model(build(), config)
    with torch.no_grad():  # a trained head, so that modules_to_save shows in the merged checkpoint
        for name, p in model.named_parameters():
            if ".modules_to_save." in name:
                p.add_(0.5)
    model.save_pretrained(tmp_path / "adapter")
    model.merge_and_unload().save_pretrained(tmp_path / "peft_merged", **kwargs)
    return tmp_path / "base", tmp_path / "adapter", tmp_path / "peft_merged"


def assert_same_checkpoint(ours: pathlib.Path, theirs: pathlib.Path):
    files = sorted(p.name for p in ours.iterdir())
    assert files == sorted(p.name for p in theirs.iterdir())
    shards = [f for f in files if f.endswith(".safetensors")]
    for shard in shards:
        a, b = load_file(ours / shard), load_file(theirs / shard)
        assert a.keys() == b.keys(), shard
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            scale = max(1.0, b[key].float().abs().max().item())
            tolerance = 1e-5 if b[key].dtype == torch.float32 else 1e-2
            assert (a[key].float() - b[key].float()).abs().max().item() <= tolerance * scale, key
    if "model.safetensors.index.json" in files:
        a = json.loads((ours / "model.safetensors.index.json").read_text())
        b = json.loads((theirs / "model.safetensors.index.json").read_text())
        assert a["weight_map"] == b["weight_map"]
        assert a["metadata"]["total_size"] == b["metadata"]["total_size"]
    return shards


def test_merge_is_installed_into_the_environment():
    assert MERGE.is_file() and os.access(MERGE, os.X_OK)
    assert (pathlib.Path(sys.prefix) / "bin" / "fourierft-inspect").is_file()
    assert "--base" in run_merge("--help").stdout


@pytest.mark.parametrize("shard", [None, "8KB"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama_merge_equals_peft(tmp_path, shard, dtype):
    config = peft.FourierFTConfig(task_type="SEQ_CLS", target_modules=["q_proj", "v_proj", "down_proj"],
                                  n_frequency=120, scaling=60.0)
    base, adapter, reference = make_case(tmp_path, lambda: llama(dtype), config, shard)
    done = run_merge("--base", base, "--adapter", adapter, "--out", tmp_path / "ours")
    assert done.returncode == 0, done.stderr
    shards = assert_same_checkpoint(tmp_path / "ours", reference)
    assert (len(shards) > 1) == (shard is not None)
    changed = []
    for name in shards:
        merged, original = load_file(tmp_path / "ours" / name), load_file(base / name)
        changed += [k for k in merged if not torch.equal(merged[k], original[k])]
    assert any("q_proj" in k for k in changed)
    # PEFT's own merged model loads it, output equal to the adapted model
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    with fourierft.registered(False):
        adapted = peft.PeftModel.from_pretrained(llama(dtype), adapter).eval()
    ids = torch.randint(1, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits.float(), adapted(ids).logits.float(),
                                   rtol=1e-4 if dtype == torch.float32 else 5e-2,
                                   atol=1e-4 if dtype == torch.float32 else 5e-2)


def test_gpt2_conv1d_fan_in_fan_out_merge_equals_peft(tmp_path):
    config = peft.FourierFTConfig(target_modules=["c_attn", "c_proj"], n_frequency=100, scaling=40.0,
                                  fan_in_fan_out=True)
    base, adapter, reference = make_case(tmp_path, gpt2, config)
    done = run_merge("--base", base, "--adapter", adapter, "--out", tmp_path / "ours", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert_same_checkpoint(tmp_path / "ours", reference)


def test_dtype_option_casts_and_updates_the_config(tmp_path):
    config = peft.FourierFTConfig(target_modules=["q_proj"], n_frequency=50)
    base, adapter, reference = make_case(tmp_path, llama, config)
    done = run_merge("--base", base, "--adapter", adapter, "--out", tmp_path / "half", "--dtype", "bfloat16")
    assert done.returncode == 0, done.stderr
    tensors = load_file(tmp_path / "half" / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    # The values: PEFT's float32 merge, rounded to bfloat16 once (merged in float32, then cast).
    expected = load_file(reference / "model.safetensors")
    assert tensors.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(tensors[key], value.to(torch.bfloat16)) or \
            (tensors[key].float() - value).abs().max().item() <= 2 ** -8 * max(1.0, value.abs().max().item()), key
    merged_q = [k for k in expected if "q_proj" in k and k.endswith("weight")]
    original = load_file(base / "model.safetensors")
    assert merged_q and any(not torch.equal(tensors[k], original[k].to(torch.bfloat16)) for k in merged_q)
    model_config = json.loads((tmp_path / "half" / "config.json").read_text())
    assert model_config.get("dtype", model_config.get("torch_dtype")) == "bfloat16"


def bad_input_case(tmp_path, breakage):
    config = peft.FourierFTConfig(task_type="SEQ_CLS", target_modules=["q_proj", "v_proj"], n_frequency=60)
    base, adapter, _ = make_case(tmp_path, llama, config)
    out = tmp_path / "out"
    if breakage == "adapter for another model":
        other = gpt2()
        other.save_pretrained(tmp_path / "gpt2")
        base = tmp_path / "gpt2"
        words = ["q_proj.weight", "another model"]
    elif breakage == "missing base tensor":
        tensors = load_file(base / "model.safetensors")
        del tensors["model.layers.1.self_attn.v_proj.weight"]
        save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
        words = ["model.layers.1.self_attn.v_proj.weight", "does not have"]
    elif breakage == "head shape mismatch":
        tensors = load_file(adapter / "adapter_model.safetensors")
        tensors["base_model.model.score.weight"] = torch.zeros(5, 32)
        save_file(tensors, adapter / "adapter_model.safetensors")
        words = ["score.weight", "[5, 32]", "[3, 32]"]
    elif breakage == "spectrum too long":
        tensors = load_file(adapter / "adapter_model.safetensors")
        tensors["base_model.model.model.layers.0.self_attn.q_proj.fourierft_spectrum"] = torch.zeros(32 * 32 + 1)
        save_file(tensors, adapter / "adapter_model.safetensors")
        words = ["q_proj.fourierft_spectrum", "1025", "1..1024"]
    elif breakage == "truncated base":
        data = (base / "model.safetensors").read_bytes()
        (base / "model.safetensors").write_bytes(data[:-10])
        words = ["model.safetensors", "data"]
    elif breakage == "broken adapter config":
        (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        words = ["adapter_config.json"]
    elif breakage == "a newer PEFT's field that changes the math":
        raw = json.loads((adapter / "adapter_config.json").read_text())
        raw.update(ifft2_norm="ortho", peft_version="0.99.0")
        (adapter / "adapter_config.json").write_text(json.dumps(raw))
        words = ['ifft2_norm="ortho"', "saved by PEFT 0.99.0", "PEFT >=0.21,<0.22"]
    elif breakage in ("4-bit base", "8-bit base"):  # the tensors transformers saves for a bitsandbytes model
        bnb = pytest.importorskip("bitsandbytes")
        tensors = load_file(base / "model.safetensors")
        for layer in (0, 1):
            for proj in ("q_proj", "v_proj"):
                prefix = f"model.layers.{layer}.self_attn.{proj}."
                weight = tensors.pop(prefix + "weight")
                quantized = (bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=False, quant_type="nf4")
                             if breakage == "4-bit base" else
                             bnb.nn.Linear8bitLt(weight.shape[1], weight.shape[0], bias=False, has_fp16_weights=False))
                quantized.load_state_dict({"weight": weight})
                for name, value in quantized.to("cpu").state_dict().items():
                    tensors[prefix + name] = value.contiguous()
        save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
        words = ["model.layers.0.self_attn.q_proj.weight' is quantized by bitsandbytes", "merge_and_unload()",
                 "fourierft.quantized.dequantize"]
        words.append("q_proj.weight.absmax" if breakage == "4-bit base" else "q_proj.SCB")
    elif breakage == "existing output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        words = ["exists and is not an empty directory"]
    return base, adapter, out, words


@pytest.mark.parametrize("breakage", ["adapter for another model", "missing base tensor", "head shape mismatch",
                                      "spectrum too long", "truncated base", "broken adapter config",
                                      "existing output", "4-bit base", "8-bit base",
                                      "a newer PEFT's field that changes the math"])
def test_bad_input_fails_cleanly(tmp_path, breakage):
    base, adapter, out, words = bad_input_case(tmp_path, breakage)
    before = sorted(p.name for p in tmp_path.iterdir())
    done = run_merge("--base", base, "--adapter", adapter, "--out", out)
    assert done.returncode == 1, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary directory
    if breakage == "existing output":
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()


def test_usage_errors_exit_2():
    assert run_merge("--base", "x").returncode == 2
    assert run_merge("--bogus").returncode == 2
    assert run_merge("--base", "a", "--adapter", "b", "--out", "c", "--dtype", "int8").returncode == 2
