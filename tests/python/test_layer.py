"""The layer on our kernels against PEFT's own formula (``FourierFTLayer.get_delta_weight``, a dense
complex ifft2): the frozen-spectrum delta_W cache never serves a stale result, survives
inference_mode, empty batches, threads, and models pickle without the cache."""
import copy
import io
import pickle
import threading

import peft
import pytest
import torch
from peft.tuners.fourierft.layer import FourierFTLayer as PeftFourierFTLayer

import fourierft
from models import plain_peft_model


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(24, 20)
        self.head = torch.nn.Linear(20, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.q(x)))


def frozen_layer():
    """A small layer with a frozen spectrum: the cost model sends it down the cached delta_W path."""
    torch.manual_seed(0)
    model = fourierft.get_peft_model(Net(), peft.FourierFTConfig(target_modules=["q"], n_frequency=30, scaling=20.0))
    model.eval()
    layer = model.base_model.model.q
    layer.fourierft_spectrum["default"].requires_grad_(False)
    assert fourierft._C.adapter_path(torch.device("cpu"), torch.float32, 4096, 20, 24, 30, False, True) == "dense"
    assert fourierft._C.inference_cache_for(torch.device("cpu"), torch.float32, 4096, 20, 24, 30) == "weight"
    return model, layer


def peft_output(layer, x):
    """base(x) + x @ delta_W^T with delta_W from PEFT's own get_delta_weight, in float64."""
    delta = PeftFourierFTLayer.get_delta_weight(layer, "default").double()
    return layer.base_layer(x) + (x.double() @ delta.T).float()


def cached(layer):
    """The tensor the layer cached for adapter "default": W + delta_W (the whole-layer inference path,
    plain nn.Linear base) or delta_W (other bases), else None."""
    cache = layer.__dict__.get("_fourierft_cache", {})
    entry = cache.get(("default", "weight"), cache.get("default"))
    return None if entry is None else entry[-1]


MUTATIONS = {
    "data_mul_": lambda p: p.data.mul_(3.0),
    "data_assign": lambda p: setattr(p, "data", torch.randn_like(p)),
    "vector_to_parameters": lambda p: torch.nn.utils.vector_to_parameters(torch.randn(p.numel()), [p]),
    "ema_lerp": lambda p: p.data.lerp_(torch.randn_like(p), 0.5),
    "inplace_no_grad": lambda p: p.add_(1.0),
}


BASE_MUTATIONS = {
    "weight_data_mul_": lambda layer: layer.base_layer.weight.data.mul_(3.0),
    "weight_data_assign": lambda layer: setattr(layer.base_layer.weight, "data", torch.randn_like(layer.base_layer.weight)),
    "weight_one_entry": lambda layer: layer.base_layer.weight.data[3, 5].add_(0.5),
    "load_state_dict": lambda layer: layer.base_layer.load_state_dict(
        {"weight": torch.randn_like(layer.base_layer.weight), "bias": torch.randn_like(layer.base_layer.bias)}),
}


@pytest.mark.parametrize("mutation", BASE_MUTATIONS)
def test_merged_weight_cache_sees_base_weight_changes(mutation):
    """The inference cache holds W + delta_W: a change of W behind the version counter must be seen."""
    model, layer = frozen_layer()
    x = torch.randn(4096, 24)
    with torch.no_grad():
        first = layer(x)
        assert layer.__dict__["_fourierft_cache"][("default", "weight")] is not None
        BASE_MUTATIONS[mutation](layer)
        second = layer(x)
    torch.testing.assert_close(second, peft_output(layer, x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first, second)


def test_merged_weight_cache_after_peft_merge_and_unmerge():
    model, layer = frozen_layer()
    x = torch.randn(4096, 24)
    with torch.no_grad():
        expected = peft_output(layer, x)
        layer(x)
        layer.merge()  # PEFT's merge: W.data += delta_W
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
        layer.unmerge()  # W.data -= delta_W: back to W up to rounding
        torch.testing.assert_close(layer(x), peft_output(layer, x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_cache_never_serves_a_stale_delta(mutation):
    model, layer = frozen_layer()
    x = torch.randn(4096, 24)
    with torch.no_grad():
        first = layer(x)
        assert cached(layer) is not None  # the dense cached path really ran
        torch.testing.assert_close(first, peft_output(layer, x), atol=1e-4, rtol=1e-4)
        MUTATIONS[mutation](layer.fourierft_spectrum["default"])
        second = layer(x)
    torch.testing.assert_close(second, peft_output(layer, x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first, second)


def test_scaling_change_is_seen():
    model, layer = frozen_layer()
    x = torch.randn(4096, 24)
    with torch.no_grad():
        layer(x)
        layer.fourierft_scaling["default"] = 3.0
        torch.testing.assert_close(layer(x), peft_output(layer, x), atol=1e-4, rtol=1e-4)


def test_delta_cached_under_inference_mode_then_a_forward_with_gradients():
    model, layer = frozen_layer()
    x = torch.randn(4096, 24)
    with torch.inference_mode():
        layer(x)
    assert cached(layer).is_inference()
    x.requires_grad_(True)
    y = layer(x)  # saliency: gradient with respect to the input
    y.square().sum().backward()
    reference_x = x.detach().clone().requires_grad_(True)
    peft_output(layer, reference_x).square().sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("shape", [(0, 24), (2, 0, 24), (0, 5, 24)])
@pytest.mark.parametrize("trainable", [True, False])
def test_empty_batch_gives_an_empty_output_like_linear(shape, trainable):
    torch.manual_seed(0)
    model = fourierft.get_peft_model(Net(), peft.FourierFTConfig(target_modules=["q"], n_frequency=30))
    layer = model.base_model.model.q
    layer.fourierft_spectrum["default"].requires_grad_(trainable)
    x = torch.zeros(shape, requires_grad=True)
    y = layer(x)
    assert y.shape == shape[:-1] + (20,)
    y.sum().backward()
    assert x.grad.shape == x.shape
    spectrum = layer.fourierft_spectrum["default"]
    if trainable:
        assert torch.equal(spectrum.grad, torch.zeros_like(spectrum))
    with torch.no_grad():
        assert layer(torch.zeros(shape)).shape == shape[:-1] + (20,)


def test_threads_share_one_layer_without_stale_or_torn_results():
    model, layer = frozen_layer()
    inputs = [torch.randn(512 * (i % 3 + 1), 24) for i in range(8)]
    expected = [peft_output(layer, x) for x in inputs]
    errors = []

    def work(i):
        try:
            for _ in range(5):
                with torch.no_grad():
                    torch.testing.assert_close(layer(inputs[i]), expected[i], atol=1e-4, rtol=1e-4)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_accelerated_model_pickles_and_saves_without_the_cache(tmp_path):
    torch.manual_seed(0)
    model = plain_peft_model(Net(), peft.FourierFTConfig(target_modules=["q"], n_frequency=30)).eval()
    fourierft.accelerate(model)
    layer = model.base_model.model.q
    x = torch.randn(4096, 24)
    with torch.no_grad():
        y = model(x)
    assert cached(layer) is not None
    clone = pickle.loads(pickle.dumps(model))
    assert "_fourierft_cache" not in clone.base_model.model.q.__dict__
    assert type(clone.base_model.model.q) is fourierft.FourierFTLinear
    buffer = io.BytesIO()
    torch.save(model, buffer)
    size_with = buffer.tell()
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(again(x), y)
        torch.testing.assert_close(clone(x), y)
    layer.__dict__.pop("_fourierft_cache")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert buffer.tell() == size_with  # the cache (20 x 24 floats) was not in the file
    assert "_fourierft_cache" not in copy.deepcopy(model).base_model.model.q.__dict__
