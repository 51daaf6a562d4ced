"""Bad input through every documented entry point (issue "Bad input through every documented entry point"): each
case raises a ValueError that names what was wrong, and leaves the model exactly as it was — state dict (keys and
values), module tree, adapter lists, active adapter, requires_grad and outputs. The cases PEFT fails part-way
through (a layer too small for n_frequency) need the tuner's rollback; the rest need validation before anything
changes; removing either makes these tests fail."""
import dataclasses
import json
import math
import shutil
import typing

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import fourierft
import peft


def tiny_bert():
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
        num_labels=3)).eval()


def config(**overrides):
    fields = dict(task_type="SEQ_CLS", target_modules=["query", "value"], n_frequency=50, scaling=20.0)
    fields.update(overrides)
    return fourierft.FourierFTConfig(**fields)


INPUTS = {"input_ids": torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(3))}


def snapshot(model):
    """Everything a failed call must leave as it was."""
    peft_config = getattr(model, "peft_config", {})
    active = getattr(model, "active_adapter", None) if peft_config else None
    with torch.no_grad():
        output = model(**INPUTS).logits.clone()
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "adapters": list(peft_config),
        "active": active,
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "output": output,
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys(), sorted(set(after["state"]) ^ set(before["state"]))
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    for field in ("modules", "adapters", "active", "requires_grad"):
        assert after[field] == before[field], field
    assert torch.equal(after["output"], before["output"])


@pytest.fixture
def peft_model():
    return fourierft.get_peft_model(tiny_bert(), config())


# ---- add_adapter / get_peft_model --------------------------------------------------------------------------

BAD_FIELDS = [
    ("n_frequency", "50"), ("n_frequency", 0), ("n_frequency", -3), ("n_frequency", 2.5), ("n_frequency", True),
    ("scaling", "big"), ("scaling", None), ("scaling", math.nan), ("scaling", math.inf),
    ("bias", "foo"), ("random_loc_seed", "seed"), ("init_weights", "yes"), ("fan_in_fan_out", 1),
    ("target_modules", 5), ("layers_to_transform", [-1]),
    ("n_frequency_pattern", {"query": "many"}),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_add_adapter_with_a_bad_config_field_changes_nothing(peft_model, field, value):
    before = snapshot(peft_model)
    bad = config()
    setattr(bad, field, value)
    with pytest.raises(ValueError, match=rf"adapter 'other'.*FourierFTConfig\.{field}={value!r}".replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")
                       .replace("}", r"\}").replace("+", r"\+")):
        peft_model.add_adapter("other", bad)
    assert_unchanged(peft_model, before)


# modules_to_save as a str: PEFT's own PeftModelForSequenceClassification.add_adapter raises AttributeError
# ("'str' object has no attribute 'extend'") before anything changes; fourierft.get_peft_model raises first.
@pytest.mark.parametrize("field,value", [("n_frequency", "50"), ("bias", "foo"), ("scaling", "big"),
                                         ("modules_to_save", "classifier")])
def test_get_peft_model_with_a_bad_config_field_leaves_the_base_as_it_was(field, value):
    base = tiny_bert()
    before = snapshot(base)
    with pytest.raises(ValueError, match=f"FourierFTConfig.{field}={value!r}"):
        fourierft.get_peft_model(base, config(**{field: value}))
    assert_unchanged(base, before)


@pytest.mark.parametrize("name", ["a.b", "", "x.y.z"])
def test_add_adapter_with_a_bad_name_changes_nothing(peft_model, name):
    before = snapshot(peft_model)
    with pytest.raises(ValueError, match=f"adapter name {name!r} is invalid"):
        peft_model.add_adapter(name, config())
    assert_unchanged(peft_model, before)


def test_add_adapter_too_large_for_a_later_layer_is_rolled_back(peft_model):
    """n_frequency fits every layer but the last query (a pattern gives it more than its 32 x 32 entries): PEFT
    fails after adapting the earlier query layers (existing FourierFT layers get entries) and replacing the earlier
    key layers (new modules). Validation cannot see this (it depends on the layers' sizes): the rollback must."""
    before = snapshot(peft_model)
    big = config(target_modules=["query", "key"], n_frequency_pattern={"layer.2.attention.self.query": 32 * 32 + 1})
    with pytest.raises(ValueError, match=r"1025.*module 'bert\.encoder\.layer\.2\.attention\.self\.query'.*'big'"):
        peft_model.add_adapter("big", big)
    assert_unchanged(peft_model, before)
    for module in peft_model.modules():  # nothing of 'big' left in any layer's tables
        for table in ("fourierft_spectrum", "fourierft_n_frequency", "fourierft_scaling", "indices"):
            assert "big" not in getattr(module, table, {}), (type(module).__name__, table)
    peft_model.add_adapter("big", config(target_modules=["query", "key"]))  # the name is free again
    assert "big" in peft_model.peft_config


# ---- merging with unknown names ----------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["merge_and_unload", "merge_adapter"])
def test_merging_unknown_adapters_raises_and_merges_nothing(peft_model, call):
    before = snapshot(peft_model)
    with pytest.raises(ValueError, match=rf"{call}: unknown adapter\(s\) 'nope'.*'default'.*nothing was merged"):
        getattr(peft_model, call)(adapter_names=["default", "nope"])
    assert_unchanged(peft_model, before)
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


def layer_actives(model):
    return [(n, list(m.active_adapters)) for n, m in model.named_modules() if isinstance(m, fourierft.FourierFTLinear)]


# Every entry point that takes adapter names, ours and PEFT's reached through the tuner: unknown names raise, naming
# them, and nothing changes (PEFT's tuner.set_adapter makes every layer's active adapter a name no layer holds,
# set_requires_grad silently does nothing, merges skip them).
UNKNOWN_NAME_CALLS = {
    "PeftModel.set_adapter": lambda m: m.set_adapter("nope"),
    "tuner.set_adapter": lambda m: m.base_model.set_adapter("nope"),
    "tuner.set_adapter (list)": lambda m: m.base_model.set_adapter(["default", "nope"]),
    "PeftModel.set_requires_grad": lambda m: m.set_requires_grad(["default", "nope"], requires_grad=False),
    "tuner.set_requires_grad": lambda m: m.base_model.set_requires_grad("nope"),
    "PeftModel.delete_adapter": lambda m: m.delete_adapter("nope"),
    "tuner.delete_adapter": lambda m: m.base_model.delete_adapter("nope"),
    "merge_adapter": lambda m: m.base_model.merge_adapter(["nope"]),
    "merge_and_unload": lambda m: m.merge_and_unload(adapter_names=["nope"]),
    "mixed-adapter batch": lambda m: m.eval()(**INPUTS, adapter_names=["nope"] * INPUTS["input_ids"].shape[0]),
    "hotswap_adapter": lambda m: fourierft.hotswap_adapter(m, "/nonexistent", "nope"),
}


@pytest.mark.parametrize("call", UNKNOWN_NAME_CALLS)
def test_unknown_adapter_names_are_refused_everywhere_and_change_nothing(peft_model, call):
    peft_model.eval()
    before, actives = snapshot(peft_model), layer_actives(peft_model)
    with pytest.raises(ValueError, match="nope"):
        UNKNOWN_NAME_CALLS[call](peft_model)
    peft_model.eval()
    assert_unchanged(peft_model, before)
    assert layer_actives(peft_model) == actives


# ---- loading -----------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path, peft_model):
    """An adapter saved by this package (query/value targeted), and a fresh base to load it into."""
    path = tmp_path / "adapter"
    peft_model.save_pretrained(path)
    return path


def damage_config(path, **fields):
    file = path / "adapter_config.json"
    data = json.loads(file.read_text())
    data.update(fields)
    file.write_text(json.dumps(data))
    return file


def load_both_ways(path, name="other"):
    """fourierft.load_adapter into a PEFT model, and FourierFTModel.from_pretrained into a base: both must raise
    the same ValueError and leave their model as it was."""
    target = fourierft.get_peft_model(tiny_bert(), config())
    base = tiny_bert()
    errors = []
    for model, load in [(target, lambda: fourierft.load_adapter(target, path, adapter_name=name)),
                        (base, lambda: fourierft.FourierFTModel.from_pretrained(base, path, adapter_name=name))]:
        before = snapshot(model)
        with pytest.raises(ValueError) as error:
            load()
        assert_unchanged(model, before)
        errors.append(str(error.value))
    return errors


@pytest.mark.parametrize("field,value", [("bias", "sometimes"), ("scaling", None), ("n_frequency", "many"),
                                         ("init_weights", "no")])
def test_loading_a_config_with_a_bad_field_names_the_file_field_and_value(saved, field, value):
    file = damage_config(saved, **{field: value})
    for message in load_both_ways(saved):
        assert str(file) in message and f"FourierFTConfig.{field}={value!r}" in message, message


def test_loading_a_config_that_is_not_json_names_the_file(saved):
    file = saved / "adapter_config.json"
    file.write_text('{"peft_type": "FOURIERFT", ')
    for message in load_both_ways(saved):
        assert str(file) in message and "not a JSON adapter config" in message, message


def test_loading_a_spectrum_for_a_module_the_config_does_not_target(saved):
    weights = saved / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.bert.encoder.layer.0.attention.self.key.fourierft_spectrum"] = torch.randn(50)
    save_file(tensors, weights)
    for message in load_both_ways(saved):
        assert str(weights) in message and "attention.self.key.fourierft_spectrum" in message, message
        assert "does not target" in message and "'query'" in message, message


def test_loading_a_spectrum_whose_length_disagrees_with_n_frequency(saved):
    damage_config(saved, n_frequency=40)
    for message in load_both_ways(saved):
        assert "has 50 values" in message and "n_frequency=40" in message, message


@pytest.mark.parametrize("name", ["a.b", ""])
def test_loading_under_a_bad_adapter_name_changes_nothing(saved, name):
    for message in load_both_ways(saved, name=name):
        assert f"adapter name {name!r} is invalid" in message


def test_a_good_adapter_still_loads_both_ways(saved, tmp_path):
    target = fourierft.get_peft_model(tiny_bert(), config())
    fourierft.load_adapter(target, saved, adapter_name="other")
    assert "other" in target.peft_config
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    loaded = fourierft.FourierFTModel.from_pretrained(tiny_bert(), copy)
    assert list(loaded.peft_config) == ["default"]


def test_peft_own_load_adapter_refuses_a_bad_config_field_before_changing_anything(saved):
    """PEFT's PeftModel.load_adapter injects through the registered tuner, which checks the config first; the file
    itself is read by PEFT after injecting (docs/errors.md: use fourierft.load_adapter for untrusted files)."""
    damage_config(saved, bias="sometimes")
    target = fourierft.get_peft_model(tiny_bert(), config())
    before = snapshot(target)
    with pytest.raises(ValueError, match="FourierFTConfig.bias='sometimes'"):
        target.load_adapter(saved, adapter_name="other")
    assert_unchanged(target, before)


@pytest.mark.parametrize("pattern", [{"lin0": 5}, {"lin1": 7, "lin0": 5}, {"sub.lin0": 9}, {"lin.": 11},
                                     {"0": 13}, {}])
def test_strict_loader_takes_the_n_frequency_peft_gives_each_module(pattern, tmp_path):
    """The strict check's n_frequency per module is what PEFT's tuner gave that module (read from the layers plain
    PEFT builds), including PEFT's fallback to the full module name as a pattern key; and every adapter PEFT saved
    loads through fourierft.FourierFTModel.from_pretrained."""
    from fourierft.config import n_frequency_for as _n_frequency_for

    def base():
        torch.manual_seed(0)
        net = torch.nn.Module()
        net.lin0 = torch.nn.Linear(8, 8)
        net.lin1 = torch.nn.Linear(8, 8)
        net.sub = torch.nn.Module()
        net.sub.lin0 = torch.nn.Linear(8, 8)
        net.forward = lambda x: net.sub.lin0(net.lin1(net.lin0(x)))
        return net

    config = peft.FourierFTConfig(target_modules=["lin0", "lin1"], n_frequency=3, n_frequency_pattern=pattern)
    with fourierft.registered(False):
        plain = peft.get_peft_model(base(), config)
    given = {name: module.fourierft_n_frequency["default"] for name, module in plain.base_model.model.named_modules()
             if hasattr(module, "fourierft_n_frequency")}
    assert set(given) == {"lin0", "lin1", "sub.lin0"}
    assert given == {name: _n_frequency_for(config, name) for name in given}
    plain.save_pretrained(tmp_path)
    loaded = fourierft.FourierFTModel.from_pretrained(base(), tmp_path)
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), plain(x), atol=1e-6)


# ---- config fields fourierft does not implement (a newer PEFT's) -------------------------------------------

@dataclasses.dataclass
class NewerFourierFTConfig(peft.FourierFTConfig):
    """FourierFTConfig as a newer PEFT may define it: fields that change the math (a PEFT pull request adds these
    two), defaulting to the values that leave it unchanged."""
    alpha: typing.Optional[float] = None
    ifft2_norm: str = "backward"
    sharpen: float = 0.0


@pytest.mark.parametrize("field,value", [("alpha", 2.0), ("ifft2_norm", "ortho"), ("sharpen", 0.5)])
def test_get_peft_model_refuses_fields_that_change_the_math(field, value):
    base = tiny_bert()
    before = snapshot(base)
    newer = NewerFourierFTConfig(target_modules=["query"], n_frequency=50, **{field: value})
    for make in (lambda: fourierft.get_peft_model(base, newer), lambda: peft.get_peft_model(base, newer)):
        with pytest.raises(ValueError, match=rf"{field}={value!r} is a FourierFTConfig field fourierft does not "
                                             rf"implement.*PEFT {peft.__version__}"):
            make()
        assert_unchanged(base, before)
    # At the values that leave the math as it is, the same config builds a model equal to PEFT's own.
    fourierft.get_peft_model(tiny_bert(), NewerFourierFTConfig(target_modules=["query"], n_frequency=50))


def test_accelerate_refuses_a_plain_peft_model_with_such_a_field():
    with fourierft.registered(False):
        plain = peft.get_peft_model(tiny_bert(), NewerFourierFTConfig(target_modules=["query"], n_frequency=50,
                                                                      ifft2_norm="forward"))
    with pytest.raises(ValueError, match=r"fourierft.accelerate \(adapter 'default'\).*ifft2_norm='forward'"):
        fourierft.accelerate(plain)
    assert not any(fourierft.is_accelerated(m) for m in plain.modules())


@pytest.mark.parametrize("field,value,refused", [("ifft2_norm", "ortho", True), ("alpha", 3.0, True),
                                                 ("some_new_field", 1, True), ("ifft2_norm", "backward", False),
                                                 ("alpha", None, False)])
def test_loading_an_adapter_saved_by_a_newer_peft(saved, field, value, refused):
    """adapter_config.json keys the installed PEFT does not know (it drops them when it loads): refused unless they
    are alpha/ifft2_norm at the values that leave the math unchanged."""
    file = damage_config(saved, **{field: value})
    if refused:
        for message in load_both_ways(saved):
            assert str(file) in message and f"{field}={value!r} is not a field of the installed PEFT" in message
    else:
        fourierft.FourierFTModel.from_pretrained(tiny_bert(), saved)
