"""Writes tests/data/peft_semantics.json: PEFT's model-level FourierFT semantics, as the real `peft` package
behaves, for the C++ walker (tests/cpp/test_semantics.cpp) to be held to.

Each case is a module tree (paths of Linear / LayerNorm leaves), then a sequence of operations
(get_peft_model, add_adapter, set_adapter, delete_adapter, merge_adapter, unmerge_adapter,
disable/enable_adapter_layers, unload, merge_and_unload, train_heads); after every operation the
state PEFT leaves is recorded: which modules carry which adapter, the active adapters, the trainable
parameters, the checkpoint keys save_pretrained writes per adapter, and for unload/merge_and_unload the
parameters of the returned model, which weights differ from the base model's (merged deltas, trained heads) and
whether each modules_to_save module keeps the adapter's trained values. An operation that raises records the exception type and PEFT's state is then read as it is.
Parameter names are written as they read in a plain model (PEFT's wrapper segments `base_layer`,
`modules_to_save.<adapter>`, `original_module` dropped), so the C++ model's names compare directly.

Run with the project's .venv (peft pinned in requirements.txt):
    .venv/bin/python tests/data/make_peft_semantics.py
tests/python/test_semantics.py re-runs it and checks the checked-in file is what peft gives today.
"""
from __future__ import annotations

import copy
import json
import pathlib
import sys
import warnings

import torch

OUT = pathlib.Path(__file__).resolve().parent / "peft_semantics.json"

MLP = [["embed_norm", "layernorm", 8], ["block.q", "linear", 8, 8, True], ["block.k", "linear", 8, 8, False],
       ["block.v", "linear", 8, 8, True], ["block.fc", "linear", 8, 12, True], ["block.norm", "layernorm", 12],
       ["classifier", "linear", 12, 3, True]]
LAYERS = [[f"layers.{i}.{n}", "linear", 8, 8, True] for i in range(3) for n in ("q_proj", "v_proj")] + [
    ["layers.0.mlp.down_proj", "linear", 8, 8, True], ["lm_head", "linear", 8, 5, False]]

CASES = [
    {"name": "names select q and v", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "v"], "n_frequency": 10}}]},
    {"name": "regex", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": r".*\.(q|fc)", "n_frequency": 10}}]},
    {"name": "all-linear on a plain module adapts every linear (PEFT excludes heads only of transformers models)",
     "tree": MLP, "steps": [{"op": "get_peft_model", "config": {"target_modules": "all-linear", "n_frequency": 10}}]},
    {"name": "all-linear with the head in modules_to_save", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": "all-linear", "n_frequency": 10,
                                            "modules_to_save": ["classifier"]}}]},
    {"name": "exclude_modules", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": "all-linear", "n_frequency": 10,
                                            "exclude_modules": ["k", "classifier"]}}]},
    {"name": "layers_to_transform with layers_pattern", "tree": LAYERS, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q_proj", "v_proj"], "n_frequency": 10,
                                            "layers_to_transform": [0, 2], "layers_pattern": "layers"}}]},
    {"name": "n_frequency_pattern", "tree": LAYERS, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q_proj", "v_proj"], "n_frequency": 10,
                                            "n_frequency_pattern": {"layers.1.q_proj": 7}}}]},
    {"name": "bias=all trains and saves every bias", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10, "bias": "all"}}]},
    {"name": "bias=fourier_only trains and saves the adapted layers' biases", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "k", "fc"], "n_frequency": 10,
                                            "bias": "fourier_only"}}]},
    {"name": "bias=<method>_only: any such suffix opens the adapted layers' biases", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "k", "fc"], "n_frequency": 10,
                                            "bias": "fourierft_only"}}]},
    {"name": "bias of another kind is refused", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10, "bias": "sometimes"}}]},
    {"name": "modules_to_save by suffix name", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10,
                                            "modules_to_save": ["classifier", "norm"]}}]},
    {"name": "modules_to_save never get adapters", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "fc"], "n_frequency": 10,
                                            "modules_to_save": ["fc"]}}]},
    {"name": "no target matches", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["nothing"], "n_frequency": 10}}]},
    {"name": "n_frequency larger than a layer", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "classifier"], "n_frequency": 40}}]},
    {"name": "second adapter: add, set, delete the active one", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "v"], "n_frequency": 10}},
        {"op": "add_adapter", "adapter": "other", "config": {"target_modules": ["q", "fc"], "n_frequency": 6}},
        {"op": "set_adapter", "adapter": "other"},
        {"op": "delete_adapter", "adapter": "other"},
        {"op": "delete_adapter", "adapter": "default"}]},
    {"name": "set_adapter to an unknown adapter", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10}},
        {"op": "set_adapter", "adapter": "nope"},
        {"op": "delete_adapter", "adapter": "nope"}]},
    {"name": "deleting a merged adapter is refused", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "v"], "n_frequency": 10}},
        {"op": "merge_adapter"},
        {"op": "delete_adapter", "adapter": "default"},
        {"op": "unmerge_adapter"},
        {"op": "delete_adapter", "adapter": "default"}]},
    {"name": "unmerge with nothing merged warns", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10}},
        {"op": "unmerge_adapter"}]},
    {"name": "an adapter name with a dot is refused and leaves no trace", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10}},
        {"op": "add_adapter", "adapter": "a.b", "config": {"target_modules": ["v"], "n_frequency": 10}},
        {"op": "set_adapter", "adapter": "a.b"}]},
    {"name": "disable and enable keep trainability", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10,
                                            "modules_to_save": ["classifier"]}},
        {"op": "disable_adapter_layers"},
        {"op": "enable_adapter_layers"}]},
    {"name": "unload keeps the trained modules_to_save", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10,
                                            "modules_to_save": ["classifier"]}},
        {"op": "train_heads"},
        {"op": "unload"}]},
    {"name": "merge_and_unload keeps the trained modules_to_save", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "v"], "n_frequency": 10,
                                            "modules_to_save": ["classifier"], "bias": "all"}},
        {"op": "train_heads"},
        {"op": "merge_and_unload"}]},
    {"name": "unload after merge_adapter keeps the merged weights", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q", "fc"], "n_frequency": 10}},
        {"op": "merge_adapter"},
        {"op": "unload"}]},
    {"name": "two adapters with heads: set_adapter switches the head", "tree": MLP, "steps": [
        {"op": "get_peft_model", "config": {"target_modules": ["q"], "n_frequency": 10,
                                            "modules_to_save": ["classifier"]}},
        {"op": "add_adapter", "adapter": "other", "config": {"target_modules": ["v"], "n_frequency": 10,
                                                             "modules_to_save": ["classifier"]}},
        {"op": "set_adapter", "adapter": "other"},
        {"op": "train_heads"},
        {"op": "unload"}]},
]


# ---- the model side (PEFT) --------------------------------------------------------------------------
def build(tree) -> torch.nn.Module:
    root = torch.nn.Module()
    for path, kind, *args in tree:
        parent = root
        *parents, leaf = path.split(".")
        for name in parents:
            if not hasattr(parent, name):
                parent.add_module(name, torch.nn.Module())
            parent = getattr(parent, name)
        if kind == "linear":
            module = torch.nn.Linear(args[0], args[1], bias=args[2])
        else:
            module = torch.nn.LayerNorm(args[0])
        parent.add_module(leaf, module)
    return root


def plain_name(name: str) -> str:
    """A parameter name as it reads in the plain model: PEFT's wrapper segments dropped."""
    name = name.removeprefix("base_model.model.")
    parts, out, i = name.split("."), [], 0
    while i < len(parts):
        if parts[i] in ("base_layer", "original_module"):
            i += 1
        elif parts[i] == "modules_to_save":
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def state(model) -> dict:
    import peft
    from peft.tuners.fourierft.layer import FourierFTLayer

    adapted: dict[str, list[str]] = {}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, FourierFTLayer):
            for adapter in module.fourierft_spectrum.keys():
                adapted.setdefault(adapter, []).append(name)
    trainable = sorted({plain_name(n) for n, p in model.named_parameters() if p.requires_grad})
    saved = {a: sorted(peft.get_peft_model_state_dict(model, adapter_name=a)) for a in model.peft_config}
    return {"adapted": {a: sorted(v) for a, v in sorted(adapted.items())}, "active": list(model.active_adapters),
            "trainable": trainable, "saved_keys": saved}


HEAD_SHIFT = 1.0


def heads_report(unloaded: torch.nn.Module, original: torch.nn.Module, heads: list[str]) -> dict:
    """For every modules_to_save module: 'trained' if the returned model holds the values train_heads set
    (original + HEAD_SHIFT), 'original' if it holds the base model's values."""
    out = {}
    for head in heads:
        now, before = unloaded.get_submodule(head), original.get_submodule(head)
        if torch.allclose(now.weight, before.weight + HEAD_SHIFT):
            out[head] = "trained"
        elif torch.equal(now.weight, before.weight):
            out[head] = "original"
        else:
            out[head] = "other"
    return out


def run(case: dict) -> dict:
    import peft

    torch.manual_seed(0)
    base = build(case["tree"])
    original = copy.deepcopy(base)
    model = None
    results = []
    heads: list[str] = []
    for step in case["steps"]:
        op = step["op"]
        result: dict = {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if op == "get_peft_model":
                    model = peft.get_peft_model(base, peft.FourierFTConfig(**step["config"]))
                elif op == "add_adapter":
                    model.add_adapter(step["adapter"], peft.FourierFTConfig(**step["config"]))
                elif op == "set_adapter":
                    model.set_adapter(step["adapter"])
                elif op == "delete_adapter":
                    model.delete_adapter(step["adapter"])
                elif op in ("merge_adapter", "unmerge_adapter", "disable_adapter_layers", "enable_adapter_layers"):
                    getattr(model.base_model, op)()
                elif op == "train_heads":  # what training the active adapter's modules_to_save would do
                    shifted = []
                    with torch.no_grad():
                        for name, p in model.named_parameters():
                            if ".modules_to_save." in name and p.requires_grad:
                                p.add_(HEAD_SHIFT)
                                shifted.append(plain_name(name))
                    result["shifted"] = sorted(shifted)
                elif op in ("unload", "merge_and_unload"):
                    heads = sorted({plain_name(n).rsplit(".", 1)[0] for n, _ in model.named_parameters()
                                    if ".modules_to_save." in n})
                    unloaded = getattr(model, op)()
                    result["model_params"] = sorted(n for n, _ in unloaded.named_parameters())
                    result["heads"] = heads_report(unloaded, original, heads)
                    before = dict(original.named_parameters())
                    result["weights_changed"] = sorted(n for n, p in unloaded.named_parameters()
                                                       if n.endswith(".weight") and not torch.equal(p, before[n]))
                    model = None
                else:
                    raise AssertionError(op)
            result["warnings"] = sorted({str(w.message).split(".")[0] for w in caught
                                         if issubclass(w.category, UserWarning) and "fan_in_fan_out" not in str(w.message)})
        except Exception as error:  # the outcome PEFT defines
            result["error"] = type(error).__name__ if type(error).__name__ in ("ValueError", "TypeError", "KeyError") \
                else ("ValueError" if isinstance(error, ValueError) else type(error).__name__)
        if model is not None and "model_params" not in result:
            result.update(state(model))
        results.append(dict(step, expect=result))
        if model is None and op == "get_peft_model":
            break  # nothing to operate on
    return {"name": case["name"], "tree": case["tree"], "steps": results}


def main() -> int:
    import peft

    table = {"description": __doc__.split("\n\n")[0].replace("\n", " "),
             "peft_version": peft.__version__,
             "cases": [run(case) for case in CASES]}
    text = json.dumps(table, indent=1) + "\n"
    if len(sys.argv) > 1 and sys.argv[1] == "--print":
        sys.stdout.write(text)
    else:
        OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
