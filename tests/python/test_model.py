"""The Python API against plain peft (PEFT's own layers): registration and loader paths, errors,
adapters, checkpoints both ways and broken ones, all-or-nothing safe merge, accelerate()."""
import copy
import inspect
import warnings

import peft
import pytest
import torch
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear

import fourierft
from models import CASES, assert_close, build_pair, first_tensor, plain_peft_model

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
    import os
    assert os.path.isfile(os.path.join(fourierft.cmake_prefix_path, "fourierft", "fourierftConfig.cmake"))
    for name in fourierft.__all__:
        obj = getattr(fourierft, name)
        if callable(obj) or inspect.ismodule(obj):
            assert inspect.getdoc(obj), f"fourierft.{name} has no docstring"
    for name, member in vars(fourierft.FourierFTModel).items():
        if inspect.isfunction(member) and not name.startswith("__"):
            assert inspect.getdoc(member), f"FourierFTModel.{name} has no docstring"


def test_config_is_peft_config():
    assert fourierft.FourierFTConfig is peft.FourierFTConfig


def test_torch_version_check_refuses_another_torch(monkeypatch):
    from fourierft import _build_info
    _build_info.check_torch()  # the running torch is the one it was built with
    monkeypatch.setattr(torch, "__version__", "2.4.0+cu121")
    with pytest.raises(ImportError, match=r"built against torch .* but torch 2\.4\.0\+cu121 is installed"):
        _build_info.check_torch()


def test_registration_switches_what_peft_builds():
    assert fourierft.is_registered()
    with fourierft.registered(False):
        assert not fourierft.is_registered()
        plain = peft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10))
        # fourierft.get_peft_model builds ours even while registration is off
        ours = fourierft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10))
    assert fourierft.is_registered()
    assert type(plain.base_model.model.q) is PeftFourierFTLinear
    assert type(ours.base_model.model.q) is fourierft.FourierFTLinear
    assert type(peft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10))
                .base_model.model.q) is fourierft.FourierFTLinear


def test_every_peft_loader_path_builds_our_layers(tmp_path):
    config = peft.FourierFTConfig(target_modules=["q", "v"], n_frequency=20)
    model = peft.get_peft_model(mlp(), config)
    model.save_pretrained(tmp_path)
    ours = fourierft.FourierFTLinear

    def layers(m):
        return [type(x) for x in m.modules() if isinstance(x, PeftFourierFTLinear)]

    loaded = peft.PeftModel.from_pretrained(mlp(), tmp_path)
    assert layers(loaded) == [ours, ours]
    loaded.load_adapter(tmp_path, "second")
    loaded.add_adapter("third", peft.FourierFTConfig(target_modules=["classifier"], n_frequency=5))
    assert layers(loaded) == [ours, ours, ours]
    injected = peft.inject_adapter_in_model(config, mlp())
    assert layers(injected) == [ours, ours]
    # AutoPeftModel on a transformers model saved next to its adapter
    base = CASE["bert"].build()
    auto_dir = tmp_path / "auto"
    base.save_pretrained(auto_dir / "base")
    adapter = peft.get_peft_model(base, peft.FourierFTConfig(task_type="SEQ_CLS", n_frequency=30))
    adapter.peft_config["default"].base_model_name_or_path = str(auto_dir / "base")
    adapter.save_pretrained(auto_dir / "adapter")
    auto = peft.AutoPeftModelForSequenceClassification.from_pretrained(auto_dir / "adapter")
    assert layers(auto) and set(layers(auto)) == {ours}


# ---- errors PEFT raises too -----------------------------------------------------------------
def both(build_config, **kwargs):
    """Runs plain peft and fourierft get_peft_model on the same MLP; returns both exceptions."""
    errors = []
    for make in (lambda m: plain_peft_model(m, peft.FourierFTConfig(**build_config)),
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
    assert isinstance(theirs, ValueError) and type(ours) is type(theirs)
    assert "nothing_like_this" in str(ours)


def test_failed_injection_leaves_model_unchanged():
    # PEFT leaves q adapted when v fails; fourierft.get_peft_model puts the model back.
    theirs = mlp()
    with pytest.raises(ValueError):
        plain_peft_model(theirs, peft.FourierFTConfig(target_modules=["q", "v"], n_frequency=500))
    assert type(theirs.q) is not torch.nn.Linear
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError):  # q is fine, v is too small: q must be restored
        fourierft.get_peft_model(model, fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=500))
    assert type(model.q) is torch.nn.Linear and type(model.v) is torch.nn.Linear
    assert model.state_dict().keys() == before.keys()
    assert [p.requires_grad for p in model.parameters()] == flags


def test_adapter_name_errors_like_peft():
    theirs = plain_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10))
    ours = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q"], n_frequency=10))
    for model in (theirs, ours):
        with pytest.raises(ValueError, match="nope"):
            model.set_adapter("nope")
        with pytest.raises(ValueError, match="nope"):
            model.delete_adapter("nope")


def test_merging_a_merged_adapter_warns_like_peft():
    for model in (plain_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10)),
                  fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q"], n_frequency=10))):
        model.merge_adapter()
        weight = model.base_model.model.q.base_layer.weight.clone()
        with pytest.warns(UserWarning, match="All adapters are already merged"):
            model.merge_adapter()
        assert torch.equal(model.base_model.model.q.base_layer.weight, weight)


@pytest.mark.parametrize("how", ["merge_adapter", "merge_and_unload"])
def test_safe_merge_of_a_broken_adapter_changes_nothing(how):
    # PEFT merges q, then fails on v and leaves q merged; ours checks every layer first.
    theirs = plain_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q", "v"], n_frequency=10))
    with torch.no_grad():
        theirs.base_model.model.v.fourierft_spectrum["default"][0] = float("inf")
    q_weight = theirs.base_model.model.q.get_base_layer().weight
    q_before = q_weight.detach().clone()
    with pytest.raises(ValueError):
        getattr(theirs, how)(safe_merge=True)
    assert not torch.equal(q_weight, q_before)  # PEFT merged q before failing on v
    model = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q", "v"], n_frequency=10))
    with torch.no_grad():
        model.base_model.model.v.fourierft_spectrum["default"][0] = float("inf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'v'.*default"):
        getattr(model, how)(safe_merge=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.base_model.model.q.merged
    assert type(model.base_model.model.q) is fourierft.FourierFTLinear


# ---- multiple adapters --------------------------------------------------------------------
def test_add_set_delete_adapter_like_peft():
    x = torch.randn(5, 24)
    results = []
    for build in (plain_peft_model, fourierft.get_peft_model):
        torch.manual_seed(3)
        with fourierft.registered(build is fourierft.get_peft_model):
            model = build(mlp(), peft.FourierFTConfig(target_modules=["q", "v"], n_frequency=20))
            model.add_adapter("other", peft.FourierFTConfig(target_modules=["q"], n_frequency=30, scaling=7.0))
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
        with fourierft.registered(False):
            loaded = peft.PeftModel.from_pretrained(base, str(tmp_path))
    assert not any(isinstance(m, fourierft.FourierFTLinear) for m in loaded.modules())
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
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert isinstance(loaded, peft.PeftModel)
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
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    # (PEFT itself would inject the adapter and then fail with "size mismatch"; the check reads the file first.)
    with pytest.raises(ValueError, match=r"spectrum 'base_model.model.q.fourierft_spectrum' has 21 values, but .*"
                                         r"adapter_config.json gives 'q' n_frequency=20"):
        fourierft.load_adapter(model, tmp_path / "wrong_size", "bad")
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert model.state_dict().keys() == before.keys()
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == trainable
    fourierft.load_adapter(model, tmp_path / "good", "twin")
    x = torch.randn(4, 24)
    y = model(x)
    model.set_adapter("twin")
    assert_close(model(x), y)
    # from_pretrained failure restores the user's module, its trainability and its mode
    base = mlp().train()
    flags = [p.requires_grad for p in base.parameters()]
    with pytest.raises(ValueError, match="has 21 values"):
        fourierft.FourierFTModel.from_pretrained(base, tmp_path / "wrong_size")
    assert type(base.q) is torch.nn.Linear and type(base.classifier) is torch.nn.Linear
    assert [p.requires_grad for p in base.parameters()] == flags and base.training
    assert not hasattr(base, "peft_config")


def test_load_adapter_is_trainable_like_peft(tmp_path):
    fourierft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=20)).save_pretrained(tmp_path)
    for is_trainable in (False, True):
        flags = []
        for load in ("plain", "fourierft"):
            with fourierft.registered(load == "fourierft"):
                model = peft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=20))
                if load == "plain":
                    model.load_adapter(tmp_path, "other", is_trainable=is_trainable)
                else:
                    fourierft.load_adapter(model, tmp_path, "other", is_trainable=is_trainable)
            flags.append(sorted((n, p.requires_grad) for n, p in model.named_parameters()))
            flags.append(model.peft_config["other"].inference_mode)
        assert flags[0] == flags[2] and flags[1] == flags[3] == (not is_trainable)
        assert dict(flags[2])["base_model.model.q.fourierft_spectrum.other"] is is_trainable


@pytest.mark.parametrize("breakage, words", [
    ("truncate", ["adapter_model.safetensors"]),
    ("unknown_key", ["base_model.model.nothing.fourierft_spectrum", "no linear layer"]),
    ("head_shape", ["classifier.weight", "[3, 17]", "[3, 16]"]),
    ("spectrum_2d", ["base_model.model.q.fourierft_spectrum", "[4, 5]"]),
    ("missing", ["base_model.model.v.fourierft_spectrum", "missing"]),
])
def test_broken_checkpoint_is_refused_and_changes_nothing(tmp_path, breakage, words):
    from safetensors.torch import load_file, save_file
    model = fourierft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q", "v"], n_frequency=20,
                                                                  modules_to_save=["classifier"]))
    model.save_pretrained(tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    tensors = load_file(file)
    if breakage == "truncate":
        file.write_bytes(file.read_bytes()[:-7])
    else:
        if breakage == "unknown_key":
            tensors["base_model.model.nothing.fourierft_spectrum"] = torch.zeros(3)
        elif breakage == "head_shape":
            tensors["base_model.model.classifier.weight"] = torch.zeros(3, 17)
        elif breakage == "spectrum_2d":
            tensors["base_model.model.q.fourierft_spectrum"] = torch.zeros(4, 5)
        elif breakage == "missing":
            del tensors["base_model.model.v.fourierft_spectrum"]
        save_file(tensors, file)
    base = mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError) as error:
        fourierft.FourierFTModel.from_pretrained(base, tmp_path)
    for word in words:
        assert word in str(error.value)
    assert type(base.q) is torch.nn.Linear and base.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def test_bias_modes_train_and_save_biases_like_peft(tmp_path):
    for bias in ("all", "fourier_only"):
        theirs = plain_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q"], n_frequency=10, bias=bias))
        ours = fourierft.get_peft_model(mlp(), fourierft.FourierFTConfig(target_modules=["q"], n_frequency=10,
                                                                          bias=bias))
        assert sorted(n for n, p in ours.named_parameters() if p.requires_grad) == \
            sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
        ours.save_pretrained(tmp_path / bias / "ours")
        theirs.save_pretrained(str(tmp_path / bias / "theirs"))
        from safetensors.torch import load_file
        assert sorted(load_file(tmp_path / bias / "ours" / "adapter_model.safetensors")) == \
            sorted(load_file(tmp_path / bias / "theirs" / "adapter_model.safetensors"))


@pytest.mark.parametrize("bias", ["all", "fourier_only"])
def test_checkpoint_with_biases_and_head_loads_with_the_trained_values(tmp_path, bias):
    with fourierft.registered(False):  # written by PEFT itself
        theirs = peft.get_peft_model(mlp(), peft.FourierFTConfig(target_modules=["q", "v"], n_frequency=10, bias=bias,
                                                                 modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.requires_grad:
                p.add_(0.25)  # stands for training
    theirs.save_pretrained(str(tmp_path))
    loaded = fourierft.FourierFTModel.from_pretrained(mlp(), tmp_path)
    x = torch.randn(4, 24)
    with torch.no_grad():
        assert_close(loaded(x), theirs.eval()(x))


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
