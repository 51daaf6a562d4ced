"""FourierFT over bitsandbytes-quantized bases (bitsandbytes' CPU backend): 4-bit nf4 / fp4 / nf4 with double
quantization in float32 and bfloat16 compute, and 8-bit int8. References: bitsandbytes' own quantize / dequantize
functions and the float64 dense FourierFT formula (tests/python/reference.py); PEFT's loader."""
import copy
import warnings

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")  # installed by the test command (requirements.txt)

import peft  # noqa: E402

import fourierft  # noqa: E402
from fourierft import quantized  # noqa: E402
from fourierft.layer import FourierFTLinear  # noqa: E402
from reference import dense_delta_float64  # noqa: E402

IN, OUT = 128, 64  # bitsandbytes' CPU layout needs out % 32 == 0 and in % blocksize == 0
KINDS = {
    "nf4": dict(quant_type="nf4", compress_statistics=False, compute_dtype=torch.float32),
    "fp4": dict(quant_type="fp4", compress_statistics=False, compute_dtype=torch.float32),
    "nf4-dq": dict(quant_type="nf4", compress_statistics=True, compute_dtype=torch.float32),
    "nf4-bf16": dict(quant_type="nf4", compress_statistics=True, compute_dtype=torch.bfloat16),
    "int8": None,
}


class Net(nn.Module):
    def __init__(self, linear=nn.Linear):
        super().__init__()
        self.q = linear(IN, OUT)
        self.v = linear(IN, OUT)
        self.head = nn.Linear(OUT, 8)

    def forward(self, x):
        return self.head(torch.tanh(self.q(x)) + self.v(x))


def float_net(seed=0) -> Net:
    torch.manual_seed(seed)
    return Net()


def quantized_net(kind: str, seed=0) -> Net:
    """The float net with q and v quantized by bitsandbytes (quantization happens on .to(device))."""
    reference = float_net(seed)
    settings = KINDS[kind]
    if settings is None:
        net = Net(lambda i, o: bnb.nn.Linear8bitLt(i, o, has_fp16_weights=False))
    else:
        net = Net(lambda i, o: bnb.nn.Linear4bit(i, o, **settings))
    net.load_state_dict(reference.state_dict())
    return net.to("cpu")


def config(**kwargs):
    fields = dict(n_frequency=200, scaling=30.0, target_modules=["q", "v"], random_loc_seed=3, init_weights=False)
    fields.update(kwargs)
    return peft.FourierFTConfig(**fields)


def reference_weight(layer) -> torch.Tensor:
    """The weight by bitsandbytes' own dequantization of a layer in its standard layout."""
    if quantized.quantization_of(layer) == "4bit":
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).double()
    scales = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    return (layer.weight.data.double() * scales.double()[:, None] / 127)


def dense_output(layer, x: torch.Tensor, adapter="default") -> torch.Tensor:
    """float64: x W^T + b + x delta_W^T, W by bitsandbytes' dequantization, delta_W by the dense formula."""
    base = layer.get_base_layer()
    delta = dense_delta_float64(layer.fourierft_spectrum[adapter].double(), layer.indices[adapter], OUT, IN,
                                layer.fourierft_scaling[adapter])
    return x.double() @ (reference_weight(base) + delta).T + base.bias.double()


@pytest.mark.parametrize("kind", KINDS)
def test_training_forward_and_gradients_match_float64(kind):
    model = fourierft.get_peft_model(quantized_net(kind), config())
    layer = model.base_model.model.q
    expected_kind = "8bit" if kind == "int8" else "4bit"
    assert isinstance(layer, FourierFTLinear) and quantized.quantization_of(layer.get_base_layer()) == expected_kind
    x = torch.randn(5, IN, requires_grad=True)
    y = layer(x)
    x64 = x.detach().double().requires_grad_()
    spectrum64 = layer.fourierft_spectrum["default"].detach().double().requires_grad_()
    base = layer.get_base_layer()
    delta = dense_delta_float64(spectrum64, layer.indices["default"], OUT, IN, 30.0)
    expected = x64 @ (reference_weight(base) + delta).T + base.bias.double()
    tolerance = 3e-2 if kind == "nf4-bf16" else 2e-4  # bf16 compute rounds the base GEMM
    assert (y.double() - expected).abs().max() < tolerance * expected.abs().max()
    g = torch.randn_like(expected)
    y.backward(g.float())
    expected.backward(g)
    spectrum_grad = layer.fourierft_spectrum["default"].grad.double()
    assert (spectrum_grad - spectrum64.grad).abs().max() < 1e-4 * spectrum64.grad.abs().max()
    assert (x.grad.double() - x64.grad).abs().max() < tolerance * x64.grad.abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_inference_adds_to_the_quantized_output_and_keeps_no_cache(kind):
    # many tokens and a large n: where the layer over a float base keeps an inference cache (the control below)
    control = fourierft.get_peft_model(float_net(), config(n_frequency=4000)).eval()
    x = torch.randn(8, 64, IN)
    with torch.no_grad():
        control(x)
    assert "_fourierft_cache" in control.base_model.model.q.__dict__, "the control keeps no cache: the test cannot fail"
    model = fourierft.get_peft_model(quantized_net(kind), config(n_frequency=4000))
    with torch.no_grad():
        train_mode = model(x)
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    for layer in (model.base_model.model.q, model.base_model.model.v):
        assert "_fourierft_cache" not in layer.__dict__, "an inference cache over a quantized base"
    tolerance = 3e-2 if kind == "nf4-bf16" else 1e-2  # bitsandbytes' CPU eval kernels compute in bf16
    assert (first - train_mode).abs().max() < tolerance * train_mode.abs().max()
    assert torch.equal(first, second)


@pytest.mark.parametrize("kind", ["nf4", "nf4-dq", "int8"])
def test_dequantized_weight_reads_every_layout_without_changing_it(kind):
    layer = quantized_net(kind).q
    before = reference_weight(layer)
    assert torch.allclose(quantized.dequantized_weight(layer).double(), before, rtol=1e-6, atol=0)
    layer.eval()
    with torch.no_grad():  # on a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight here; int8 scales move
        computed = layer(torch.eye(IN)).T - layer.bias[:, None]
    if kind != "int8" and bnb.functional.has_avx512bf16():
        assert layer.weight.quant_state.packing_format_for_cpu, "the CPU layout this test is about"
    data, state = layer.weight.data.clone(), copy.copy(layer.weight.quant_state) if kind != "int8" else None
    now = quantized.dequantized_weight(layer)
    assert torch.equal(layer.weight.data, data)
    if state is not None:
        assert layer.weight.quant_state.__dict__.keys() == state.__dict__.keys()
    # what the layer computes with: its own forward (bf16 kernel: 2^-8 relative) and the weight before (absmax to bf16)
    assert (now - computed.float()).abs().max() < 4e-3 * before.abs().max()
    assert (now.double() - before).abs().max() < 4e-3 * before.abs().max()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("after_eval_forward", [False, True])
def test_merge_and_unload_requantizes_with_the_layers_settings(kind, after_eval_forward):
    model = fourierft.get_peft_model(quantized_net(kind), config())
    x = torch.randn(6, IN)
    if after_eval_forward:
        model.eval()
    with torch.no_grad():
        model(x)  # in eval mode: bitsandbytes repacks 4-bit weights here (AVX512-BF16 CPUs)
        expected = {}
        for name in ("q", "v"):
            layer = getattr(model.base_model.model, name)
            base = layer.get_base_layer()
            weight = quantized.dequantized_weight(base) if after_eval_forward else reference_weight(base).float()
            exact = weight + layer.get_delta_weight("default")
            if quantized.quantization_of(base) == "4bit":
                data, state = bnb.functional.quantize_4bit(exact, blocksize=base.weight.blocksize,
                                                           compress_statistics=base.weight.compress_statistics,
                                                           quant_type=base.weight.quant_type)
                expected[name] = bnb.functional.dequantize_4bit(data, state)
            else:
                codes, scales, _ = bnb.functional.int8_vectorwise_quant(exact.half())
                expected[name] = codes.float() * scales[:, None] / 127
    merged = model.merge_and_unload()
    for name in ("q", "v"):
        layer = getattr(merged, name)
        assert type(layer) is type(getattr(quantized_net(kind), name)), "the merged layer stays quantized"
        assert torch.allclose(quantized.dequantized_weight(layer), expected[name].float(), rtol=0, atol=1e-7)
    with torch.no_grad():  # the merged model computes with the re-quantized weights (reference: float64)
        out = merged(x)
        x64 = x.double()
        hidden = torch.tanh(x64 @ expected["q"].double().T + merged.q.bias.double()) \
            + x64 @ expected["v"].double().T + merged.v.bias.double()
        reference = hidden @ merged.head.weight.double().T + merged.head.bias.double()
    tolerance = 3e-2 if kind == "nf4-bf16" or after_eval_forward else 1e-4  # bf16 compute / bf16 CPU eval kernels
    assert (out.double() - reference).abs().max() < tolerance * reference.abs().max()


@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_merge_then_unmerge_and_disable_adapters(kind):
    model = fourierft.get_peft_model(quantized_net(kind), config())
    x = torch.randn(6, IN)
    with torch.no_grad():
        before = model(x)
        model.base_model.merge_adapter()
        merged = model(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.base_model.unmerge_adapter()
        assert any("quantizes the weight again" in str(w.message) for w in caught)
        after = model(x)
    # each merge and unmerge rounds the weight to the quantization grid again; a 4-bit step is ~1/8 of a block's range
    bound = (0.15 if kind != "int8" else 0.02) * before.abs().max()
    assert 0 < (merged - before).abs().max() < bound
    assert (after - before).abs().max() < bound
    assert not model.base_model.model.q.merged


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_safe_merge_of_a_broken_adapter_changes_nothing(kind):
    model = fourierft.get_peft_model(quantized_net(kind), config())
    with torch.no_grad():
        model.base_model.model.v.fourierft_spectrum["default"][0] = float("nan")
    weights = {n: quantized.dequantized_weight(getattr(model.base_model.model, n).get_base_layer()).clone()
               for n in ("q", "v")}
    with pytest.raises(ValueError, match="NaNs detected"):
        model.merge_and_unload(safe_merge=True)
    for name in ("q", "v"):
        layer = getattr(model.base_model.model, name)
        assert isinstance(layer, FourierFTLinear) and not layer.merged
        assert torch.equal(quantized.dequantized_weight(layer.get_base_layer()), weights[name])


@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_adapter_files_are_peft_s_and_reload_through_both_loaders(kind, tmp_path):
    model = fourierft.get_peft_model(quantized_net(kind), config())
    x = torch.randn(3, IN)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path)
    ours = fourierft.FourierFTModel.from_pretrained(quantized_net(kind), tmp_path)
    with fourierft.registered(False):
        theirs = peft.PeftModel.from_pretrained(quantized_net(kind), tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(x), expected, atol=1e-6)
        assert torch.allclose(theirs(x), expected, atol=1e-4)  # PEFT's own layers on the same quantized base
    assert type(theirs.base_model.model.q) is not FourierFTLinear


def test_loader_sizes_a_4bit_layer_by_its_features_not_its_packed_weight(tmp_path):
    model = fourierft.get_peft_model(quantized_net("nf4"), config(n_frequency=IN * OUT))  # the most a layer takes
    model.save_pretrained(tmp_path)
    assert quantized_net("nf4").q.weight.shape[0] * 1 < IN * OUT  # the packed storage is smaller than out x in
    loaded = fourierft.FourierFTModel.from_pretrained(quantized_net("nf4"), tmp_path)
    assert loaded.base_model.model.q.fourierft_spectrum["default"].numel() == IN * OUT


def test_too_large_n_frequency_names_the_module_and_changes_nothing():
    net = quantized_net("nf4")
    modules = dict(net.named_modules())
    with pytest.raises(ValueError, match=rf"{IN * OUT}.*module 'q'|module 'q'.*"):
        fourierft.get_peft_model(net, config(n_frequency=IN * OUT + 1))
    assert dict(net.named_modules()) == modules


def test_mixed_adapter_batch_and_hotswap_on_a_4bit_base(tmp_path):
    model = fourierft.get_peft_model(quantized_net("nf4-dq"), config())
    model.add_adapter("other", config(random_loc_seed=9))
    with torch.no_grad():
        for layer in (model.base_model.model.q, model.base_model.model.v):
            layer.fourierft_spectrum["other"].normal_()
    model.eval()
    x = torch.randn(3, IN)
    with torch.no_grad():
        mixed = model(x, adapter_names=["default", "other", "__base__"])
        model.set_adapter("other")
        other = model(x)
        model.set_adapter("default")
        default = model(x)
        with model.disable_adapter():
            base = model(x)
    assert torch.allclose(mixed[0], default[0], atol=1e-5)
    assert torch.allclose(mixed[1], other[1], atol=1e-5)
    assert torch.allclose(mixed[2], base[2], atol=1e-5)
    donor = fourierft.get_peft_model(quantized_net("nf4-dq"), config())
    with torch.no_grad():
        for layer in (donor.base_model.model.q, donor.base_model.model.v):
            layer.fourierft_spectrum["default"].normal_()
        donor.eval()
        expected = donor(x)
    donor.save_pretrained(tmp_path)
    fourierft.hotswap_adapter(model, tmp_path, "default")
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_dequantize_then_merge_is_exact_in_a_float_dtype():
    model = fourierft.get_peft_model(quantized_net("nf4-dq"), config())
    x = torch.randn(4, IN)
    with torch.no_grad():
        unmerged = model(x)
    weight = quantized.dequantized_weight(model.base_model.model.q.get_base_layer())
    fourierft.quantized.dequantize(model, torch.float32)
    base = model.base_model.model.q.get_base_layer()
    assert type(base) is nn.Linear and torch.equal(base.weight, weight)
    merged = model.merge_and_unload()
    assert type(merged.q) is nn.Linear
    with torch.no_grad():
        assert torch.allclose(merged(x), unmerged, atol=1e-5)
    with pytest.raises(ValueError, match="dtype=torch.int8"):
        fourierft.quantized.dequantize(merged, torch.int8)


def test_peft_s_own_fourierft_cannot_merge_a_quantized_base():
    """The gap this package fills (PEFT 0.21: delta_W is added to the packed or int8 data)."""
    for kind in ("nf4", "int8"):
        with fourierft.registered(False):
            model = peft.get_peft_model(quantized_net(kind), config())
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            model.merge_and_unload()


@pytest.mark.parametrize("kind", ["nf4", "fp4", "nf4-dq"])
def test_train_after_an_eval_forward_restores_the_standard_layout_exactly(kind):
    """bitsandbytes 0.50 repacks a 4-bit weight at an eval forward on a CPU with AVX512-BF16 and cannot train it
    afterwards; model.train() puts it back (the adapted layers and the others), computing with the same weight."""
    model = fourierft.get_peft_model(quantized_net(kind), config())
    x = torch.randn(4, IN)
    model.eval()
    with torch.no_grad():
        model(x)
    layer = model.base_model.model.q.get_base_layer()
    if bnb.functional.has_avx512bf16():
        assert layer.weight.quant_state.packing_format_for_cpu
    computed_with = quantized.dequantized_weight(layer)
    model.train()
    state = layer.weight.quant_state
    assert not getattr(state, "packing_format_for_cpu", False)
    assert torch.equal(bnb.functional.dequantize_4bit(layer.weight.data, state).float(), computed_with)
    loss = model(x.requires_grad_()).square().sum()
    loss.backward()
    assert model.base_model.model.q.fourierft_spectrum["default"].grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()
