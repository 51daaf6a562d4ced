"""The Python API against peft: config fields and files, checkpoints both ways, errors, adapters,
accelerate() on PEFT's own models."""
import copy
import dataclasses
import inspect
import json
import warnings

import peft
import pytest
import torch
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear
from peft.utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING

import fourierft
from fourierft.target_modules import DEFAULT_TARGET_MODULES
from models import CASES, assert_close, build_pair, first_tensor

CASE = {case.name: case for case in CASES}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 24)
        self.q = torch.nn.Linear(24, 24)
        self.v = torch.nn.Linear(24, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.classifier = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.norm(self.v(torch.relu(self.q(x)))))


def mlp():
    torch.manual_seed(0)
    return MLP()


# ---- package --------------------------------------------------------------------------------
def test_package_metadata_and_docstrings():
    assert fourierft.__version__ == "0.1.0"
    assert (fourierft.cmake_prefix_path + "/fourierft/fourierftConfig.cmake")
    import os
    assert os.path.isfile(os.path.join(fourierft.cmake_prefix_path, "fourierft", "fourierftConfig.cmake"))
    for name in fourierft.__all__:
        obj = getattr(fourierft, name)
        if callable(obj) or inspect.ismodule(obj):
            assert inspect.getdoc(obj), f"fourierft.{name} has no docstring"
    for name, member in inspect.getmembers(fourierft.FourierFTModel, inspect.isfunction):
        if not name.startswith("_") and name not in ("forward", "generate", "get_base_model", "enable_adapter_layers",
                                                      "unmerge_adapter", "get_nb_trainable_parameters",
                                                      "print_trainable_parameters", "disable_adapter_layers"):
            assert inspect.getdoc(member), f"FourierFTModel.{name} has no docstring"


def test_default_target_modules_equal_peft():
    assert DEFAULT_TARGET_MODULES == TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING


# ---- config ---------------------------------------------------------------------------------
def test_config_fields_and_defaults_equal_peft():
    ours = {f.name: f for f in dataclasses.fields(fourierft.FourierFTConfig)}
    theirs = {f.name: f for f in dataclasses.fields(peft.FourierFTConfig) if f.name != "peft_version"}
    assert set(ours) == set(theirs)
    a, b = fourierft.FourierFTConfig(), peft.FourierFTConfig()
    for name in ours:
        if name == "peft_type":
            assert getattr(b, name).value == getattr(a, name)
        else:
            assert getattr(a, name) == getattr(b, name), name


@pytest.mark.parametrize("kwargs", [
    dict(target_modules=["q", "v"], n_frequency=77, scaling=12.5, random_loc_seed=3, bias="fourier_only"),
    dict(target_modules=".*(q|v)$", exclude_modules=["x"], modules_to_save=["classifier"], init_weights=True),
    dict(target_modules=["q"], layers_to_transform=[0, 2], layers_pattern="layers",
         n_frequency_pattern={"q": 5, "layers.1.q": 9}, task_type="SEQ_CLS"),
])
def test_config_file_equals_peft(tmp_path, kwargs):
    ours = fourierft.FourierFTConfig(**copy.deepcopy(kwargs))
    theirs = peft.FourierFTConfig(**copy.deepcopy(kwargs))
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    a = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    b = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    b.pop("peft_version")
    for key in ("target_modules", "exclude_modules"):
        if isinstance(b[key], list):
            b[key] = sorted(b[key])
    assert a == b
    # Each reads the other's file.
    assert fourierft.FourierFTConfig.from_pretrained(tmp_path / "theirs") == ours
    assert peft.FourierFTConfig.from_pretrained(str(tmp_path / "ours")).to_dict() | {"peft_version": None} == \
        theirs.to_dict() | {"peft_version": None}
    # Conversions.
    assert fourierft.FourierFTConfig.from_peft_config(theirs) == ours
    assert ours.to_peft_config().to_dict() == theirs.to_dict()


@pytest.mark.parametrize("kwargs", [
    dict(target_modules=".*q", layers_to_transform=1),
    dict(target_modules=".*q", layers_pattern="layers"),
    dict(target_modules=["q"], layers_pattern="layers"),
])
def test_config_errors_like_peft(kwargs):
    with pytest.raises(ValueError) as theirs:
        peft.FourierFTConfig(**kwargs)
    with pytest.raises(ValueError) as ours:
        fourierft.FourierFTConfig(**kwargs)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(target_modules=["q"], n_frequency=0), ["n_frequency", "0"]),
    (dict(target_modules=["q"], bias="some"), ["bias", "some"]),
    (dict(target_modules="(?P<x>q)"), ["(?P<x>q)"]),
    (dict(target_modules=["q"], scaling=float("nan")), ["scaling"]),
])
def test_config_validation_from_cpp_names_field_and_value(kwargs, words):
    with pytest.raises(ValueError) as error:
        fourierft.FourierFTConfig(**kwargs)
    for word in words:
        assert word in str(error.value)


# ---- errors PEFT raises too -----------------------------------------------------------------
def both(build_config, **kwargs):
    """Runs peft and fourierft get_peft_model on the same MLP; returns both exceptions."""
    errors = []
    for make in (lambda m: peft.get_peft_model(m, peft.FourierFTConfig(**build_config)),
                 lambda m: fourierft.get_peft_model(m, fourierft.FourierFTConfig(**build_config))):
        with pytest.raises(Exception) as error:
            make(mlp())
        errors.append(error.value)
    return errors


def test_n_frequency_too_large_is_a_value_error_naming_module():
    theirs, ours = both(dict(target_modules=["v"], n_frequency=24 * 16 + 1))
    assert type(ours) is type(theirs) is ValueError
    assert "385" in str(ours) and "384" in str(ours) and "'v'" in str(ours) and "default" in str(ours)


def test_unsupported_layer_type_is_a_type_error():
    theirs, ours = both(dict(target_modules=["norm"]))
    assert type(ours) is type(theirs) is TypeError
    assert "LayerNorm" in str(ours) and "norm" in str(ours)


def test_no_target_found_is_a_value_error():
    theirs, ours = both(dict(target_modules=["nothing_like_this"]))
    assert isinstance(theirs, ValueError) and type(ours) is ValueError
    assert "nothing_like_this" in str(ours)


def test_failed_injection_leaves_model_unchanged():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):  # q is fine, v is too small: q must be restored
        fourierft.get_peft_model(model, fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=500))
    assert type(model.q) is torch.nn.Linear and type(model.v) is torch.nn.Linear
    assert model.state_dict().keys() == before.keys()


def test_adapter_name_errors_like_peft():
    theirs = peft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10))
    ours = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q"], n_frequency=10))
    for model in (theirs, ours):
        with pytest.raises(ValueError, match="nope"):
            model.set_adapter("nope")
        with pytest.raises(ValueError, match="nope"):
            model.delete_adapter("nope")


def test_merging_a_merged_adapter_warns_like_peft():
    for model in (peft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10)),
                  fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q"], n_frequency=10))):
        model.merge_adapter()
        weight = model.base_model.model.q.base_layer.weight.clone()
        with pytest.warns(UserWarning, match="All adapters are already merged"):
            model.merge_adapter()
        assert torch.equal(model.base_model.model.q.base_layer.weight, weight)


def test_safe_merge_of_a_broken_adapter_changes_nothing():
    model = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=10))
    with torch.no_grad():
        model.base_model.model.v.fourierft_spectrum["default"][0] = float("inf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="default"):
        model.merge_adapter(safe_merge=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.base_model.model.q.merged


# ---- multiple adapters --------------------------------------------------------------------
def test_add_set_delete_adapter_like_peft():
    x = torch.randn(5, 24)
    results = []
    for lib in (peft, fourierft):
        torch.manual_seed(3)
        model = lib.get_peft_model(mlp(), lib.FourierFTConfig(target_modules=["q", "v"], n_frequency=20))
        model.add_adapter("other", lib.FourierFTConfig(target_modules=["q"], n_frequency=30, scaling=7.0))
        trainable_before = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        y_default = model(x)
        model.set_adapter("other")
        trainable_after = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        y_other = model(x)
        model.delete_adapter("other")
        results.append((trainable_before, trainable_after, y_default, y_other, model.active_adapters,
                        sorted(model.state_dict())))
    (a, b, c, d, e, f), (a2, b2, c2, d2, e2, f2) = results
    assert a == a2 and b == b2 and e == e2 and f == f2
    assert_close(c2, c)
    assert_close(d2, d)


# ---- checkpoints both ways ----------------------------------------------------------------
def shift_saved_modules(model):
    """Makes the modules_to_save copies differ from the base modules, so a checkpoint that lost them shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(0.25)


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_checkpoint_saved_by_fourierft_loads_in_peft(tmp_path, name):
    case = CASE[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ours = build_pair(case, seed=11)
        shift_saved_modules(ours)
        ours.save_pretrained(tmp_path)
        torch.manual_seed(1234)
        base = case.build().eval()
        loaded = peft.PeftModel.from_pretrained(base, str(tmp_path))
    inputs = case.inputs()
    with torch.no_grad():
        assert_close(first_tensor(loaded(**inputs)), first_tensor(ours(**inputs)))


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_checkpoint_saved_by_peft_loads_in_fourierft(tmp_path, name):
    case = CASE[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, _ = build_pair(case, seed=12)
        shift_saved_modules(theirs)
        theirs.save_pretrained(str(tmp_path))
        torch.manual_seed(1234)
        base = case.build().eval()
        loaded = fourierft.FourierFTModel.from_pretrained(base, tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode, as PEFT
    inputs = case.inputs()
    with torch.no_grad():
        assert_close(first_tensor(loaded(**inputs)), first_tensor(theirs(**inputs)))


def test_load_adapter_second_adapter_and_failed_load_changes_nothing(tmp_path):
    model = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=20,
                                                                       modules_to_save=["classifier"]))
    model.save_pretrained(tmp_path / "good")
    other = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=21,
                                                                       modules_to_save=["classifier"]))
    other.save_pretrained(tmp_path / "wrong_size")
    # Same config file, weights of another size: the config passes, the weights do not.
    (tmp_path / "wrong_size" / "adapter_config.json").write_text(
        (tmp_path / "good" / "adapter_config.json").read_text())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"fourierft_spectrum.*\(21,\).*\(20,\)"):
        model.load_adapter(tmp_path / "wrong_size", "bad")
    assert list(model.peft_config) == ["default"]
    assert model.state_dict().keys() == before.keys()
    model.load_adapter(tmp_path / "good", "twin")
    x = torch.randn(4, 24)
    y = model(x)
    model.set_adapter("twin")
    assert_close(model(x), y)
    # from_pretrained failure restores the user's module
    base = mlp()
    with pytest.raises(ValueError):
        fourierft.FourierFTModel.from_pretrained(base, tmp_path / "wrong_size")
    assert type(base.q) is torch.nn.Linear and type(base.classifier) is torch.nn.Linear


def test_bias_modes_train_and_save_biases_like_peft(tmp_path):
    for bias in ("all", "fourier_only"):
        theirs = peft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10, bias=bias))
        ours = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q"], n_frequency=10,
                                                                          bias=bias))
        assert sorted(n for n, p in ours.named_parameters() if p.requires_grad) == \
            sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
        ours.save_pretrained(tmp_path / bias / "ours")
        theirs.save_pretrained(str(tmp_path / bias / "theirs"))
        from safetensors.torch import load_file
        assert sorted(load_file(tmp_path / bias / "ours" / "adapter_model.safetensors")) == \
            sorted(load_file(tmp_path / bias / "theirs" / "adapter_model.safetensors"))


def test_state_dict_round_trip_with_torch_save(tmp_path):
    model = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=20))
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(99)
    again = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=20))
    again.load_state_dict(torch.load(tmp_path / "state.pt"))
    x = torch.randn(3, 24)
    assert torch.equal(again(x), model(x))


# ---- accelerate(): PEFT's model on our kernels -------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "gpt2", "minilm"])
def test_accelerate_keeps_outputs_gradients_and_checkpoints(tmp_path, name):
    case = CASE[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, _ = build_pair(case)
    fast = copy.deepcopy(reference)
    assert fourierft.accelerate(fast) is fast
    layers = [m for m in fast.modules() if isinstance(m, PeftFourierFTLinear)]
    assert layers and all(fourierft.is_accelerated(m) for m in layers)
    assert list(fast.state_dict()) == list(reference.state_dict())
    inputs = case.inputs()
    expected, actual = first_tensor(reference(**inputs)), first_tensor(fast(**inputs))
    assert_close(actual, expected)
    expected.square().mean().backward()
    actual.square().mean().backward()
    fast_params = dict(fast.named_parameters())
    for n, p in reference.named_parameters():
        if p.requires_grad and p.grad is not None:
            scale = p.grad.abs().max().clamp_min(1e-12)
            assert (fast_params[n].grad - p.grad).abs().max() / scale <= 1e-4, n
    # Merging through PEFT's merge uses our delta_weight.
    with torch.no_grad():
        merged = copy.deepcopy(fast).merge_and_unload()
        assert_close(first_tensor(merged(**inputs)), expected.detach(), 1e-4)
    # Checkpoints are PEFT's own.
    fast.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").is_file()
    fourierft.accelerate(fast, enabled=False)
    assert all(type(m) is PeftFourierFTLinear for m in layers)


def test_accelerate_without_fourierft_layers_is_an_error():
    with pytest.raises(ValueError, match="no peft FourierFT layer"):
        fourierft.accelerate(mlp())
