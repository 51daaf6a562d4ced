"""The routes of fourierft.linear and of the layers (issue "GPU training at LoRA's cost"), on CPU tensors:

- every route (the fused CPU kernels, and the ATen implementation registered for CUDA run through
  fourierft.ops.generic_kernels(): its dense and sparse spectral routes) against PEFT's formula in float64, for
  float32/float64 models and for bfloat16/float16 models with a float32 spectrum (what PEFT's get_peft_model makes of
  a half-precision model), n from 1 to in x out, odd widths, leading dimensions, non-contiguous inputs, empty batches;
- the one cost model's decisions on CUDA for the 3B model's shapes, as a table (fourierft.ops.linear_routes needs no
  GPU);
- the layers' inference caches (delta_W in the model's dtype, W + delta_W): hit, never stale, and off on request.

GPU tests proper live in test_cuda.py (skipped without CUDA)."""
import pytest
import torch
import transformers

import fourierft
import peft
from peft.tuners.fourierft.layer import FourierFTLayer as PeftFourierFTLayer

from reference import dense_delta_float64

HALF = (torch.bfloat16, torch.float16)


@pytest.fixture(params=["fused", "generic"])
def kernels(request):
    with fourierft.ops.generic_kernels(request.param == "generic"):
        yield request.param


def float64_reference(x, w, b, c, indices, out_features, in_features, scaling, g):
    """PEFT's formula (delta_W = Re(ifft2(F)) * scaling, F dense complex) in float64 on exactly the given values:
    the output and the gradients with respect to x and c for the upstream gradient g."""
    x64 = x.detach().double().requires_grad_(True)
    c64 = c.detach().double().requires_grad_(True)
    y = x64 @ (w.double() + dense_delta_float64(c64, indices, out_features, in_features, scaling)).T + b.double()
    gx, gc = torch.autograd.grad((y * g.double()).sum(), [x64, c64])
    return y.detach(), gx, gc


def relative(got, want):
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


def linear_inputs(out_features, in_features, n, leading, model_dtype, spectrum_dtype):
    """indices, weight, bias, spectrum and a non-contiguous input (a transposed view) of fourierft.ops.linear, seeded
    by n; spectrum and input require grad."""
    torch.manual_seed(n)
    indices = fourierft.ops.entry_indices(out_features, in_features, n, 11)
    w = (torch.randn(out_features, in_features) / in_features**0.5).to(model_dtype)
    b = torch.randn(out_features).to(model_dtype)
    c = torch.randn(n).to(spectrum_dtype).requires_grad_(True)
    x = torch.randn(in_features, *leading).to(model_dtype).movedim(0, -1).requires_grad_(True)
    return indices, w, b, c, x


MODEL_DTYPES = [(torch.float32, torch.float32, 1e-5), (torch.float64, torch.float64, 1e-10),
                (torch.bfloat16, torch.float32, 1e-2), (torch.float16, torch.float32, 1e-2)]


@pytest.mark.parametrize("route", ["spectral", "dense", "folded", "auto"])
@pytest.mark.parametrize("model_dtype,spectrum_dtype,tol", MODEL_DTYPES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("out_features,in_features,n,leading", [(16, 12, 1, (5,)), (33, 20, 300, (2, 3)),
                                                                (7, 9, 63, (4,)), (40, 64, 1000, (3, 2, 2))])
def test_every_route_matches_float64(kernels, route, model_dtype, spectrum_dtype, tol, out_features, in_features, n,
                                     leading):
    """Output, grad_x and grad_c of fourierft.ops.linear against float64 on the same (rounded) inputs: float32 models
    within 1e-5 relative, bfloat16/float16 within 1e-2 (the adapter's GEMMs run in the model's dtype). n = 1, odd
    widths, n = in x out (63 = 7 x 9), x non-contiguous (a transposed view)."""
    indices, w, b, c, x = linear_inputs(out_features, in_features, n, leading, model_dtype, spectrum_dtype)
    assert not x.is_contiguous()
    with fourierft.ops.linear_path(route):
        y = fourierft.ops.linear(x, w, b, c, indices, out_features, in_features, 20.0)
        g = torch.randn(y.shape).to(y.dtype)
        gx, gc = torch.autograd.grad((y * g).sum(), [x, c])
    assert y.dtype == model_dtype and gx.dtype == model_dtype and gc.dtype == spectrum_dtype
    want_y, want_gx, want_gc = float64_reference(x, w, b, c, indices, out_features, in_features, 20.0, g)
    for name, got, want in [("output", y, want_y), ("grad_x", gx, want_gx), ("grad_spectrum", gc, want_gc)]:
        assert relative(got, want) < tol, (name, relative(got, want))


@pytest.mark.parametrize("route", ["dense", "spectral"])
@pytest.mark.parametrize("model_dtype,spectrum_dtype,tol", MODEL_DTYPES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("out_features,in_features,n,leading", [(33, 20, 300, (2, 3)), (40, 64, 1000, (64, 2))])
def test_kept_dense_operand_matches_float64_and_is_kept(route, model_dtype, spectrum_dtype, tol, out_features,
                                                         in_features, n, leading):
    """fourierft.ops.keep_delta: the dense forward's operand (delta_W in a half-precision model's dtype, W + delta_W
    otherwise) saved for grad_x instead of rebuilt, run by the ATen implementation (what CUDA runs): output, grad_x
    and grad_c against float64, and the operand is among the saved tensors (one more weight-sized tensor) only with
    the option on and the dense route taken (forced here; on CUDA the cost model takes it at training sizes:
    test_fake_cuda.py)."""
    indices, w, b, c, x = linear_inputs(out_features, in_features, n, leading, model_dtype, spectrum_dtype)
    results = {}
    for keep in (False, True):
        saved = []

        def pack(t):
            saved.append((tuple(t.shape), t.dtype))
            return t

        with fourierft.ops.generic_kernels(), fourierft.ops.linear_path(route), fourierft.ops.keep_delta(keep), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fourierft.ops.linear(x, w, b, c, indices, out_features, in_features, 20.0)
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)
            gx, gc = torch.autograd.grad((y * g).sum(), [x, c])
        weight_sized = saved.count(((out_features, in_features), model_dtype))
        assert weight_sized == (2 if keep and route == "dense" else 1), (keep, saved)
        want_y, want_gx, want_gc = float64_reference(x, w, b, c, indices, out_features, in_features, 20.0, g)
        for name, got, want in [("output", y, want_y), ("grad_x", gx, want_gx), ("grad_spectrum", gc, want_gc)]:
            assert relative(got, want) < tol, (keep, name, relative(got, want))
        results[keep] = (y, gx, gc)
    # Kept or rebuilt, the operand is the same tensor's values: the results agree exactly.
    assert all(torch.equal(a, b) for a, b in zip(results[False], results[True]))


@pytest.mark.parametrize("dtype", HALF)
def test_spectral_linear_half_precision_matches_float64(kernels, dtype):
    """ops.spectral_linear on bfloat16/float16 inputs and spectrum (the adapter path of layers that cannot run as
    one op: Conv1D bases, several adapters): output, grad_x and grad_c against float64 on the same rounded values."""
    out_features, in_features, n = 40, 24, 300
    torch.manual_seed(7)
    indices = fourierft.ops.entry_indices(out_features, in_features, n, 5)
    x = torch.randn(6, in_features).to(dtype).requires_grad_(True)
    c = torch.randn(n).to(dtype).requires_grad_(True)
    y = fourierft.ops.spectral_linear(x, c, indices, out_features, in_features, 20.0)
    g = torch.randn(y.shape).to(dtype)
    gx, gc = torch.autograd.grad((y * g).sum(), [x, c])
    assert y.dtype == gx.dtype == gc.dtype == dtype
    zero_w, zero_b = torch.zeros(out_features, in_features), torch.zeros(out_features)
    want_y, want_gx, want_gc = float64_reference(x, zero_w, zero_b, c, indices, out_features, in_features, 20.0, g)
    for name, got, want in [("output", y, want_y), ("grad_x", gx, want_gx), ("grad_spectrum", gc, want_gc)]:
        assert relative(got, want) < 1e-2, (name, relative(got, want))


@pytest.mark.parametrize("route", ["spectral", "dense", "auto"])
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_routes_with_an_empty_batch(kernels, route, model_dtype):
    indices = fourierft.ops.entry_indices(16, 12, 30, 3)
    w = torch.randn(16, 12).to(model_dtype)
    c = torch.randn(30, requires_grad=True)
    for shape in [(0, 12), (2, 0, 12)]:
        x = torch.zeros(shape, dtype=model_dtype, requires_grad=True)
        with fourierft.ops.linear_path(route):
            y = fourierft.ops.linear(x, w, None, c, indices, 16, 12, 20.0)
            assert y.shape == (*shape[:-1], 16) and y.dtype == model_dtype
            gx, gc = torch.autograd.grad(y.sum(), [x, c])
        assert gx.shape == x.shape and torch.equal(gc, torch.zeros_like(c))


def test_spectral_linear_generic_matches_float64_at_self_mirrored_bins():
    """The sparse spectral route: entries at every self-mirrored bin (0 and width/2 of even widths, where the
    Hermitian fold doubles or cancels) and their mirrors, which share a position of the sparse operator."""
    out_features, in_features = 8, 10
    pairs = [(0, 0), (0, 5), (4, 0), (4, 5), (1, 2), (7, 8), (3, 7), (5, 3), (2, 9), (6, 1)]
    indices = torch.tensor(pairs).t().contiguous()
    torch.manual_seed(0)
    c = torch.randn(len(pairs), dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, in_features, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, out_features, dtype=torch.float64)
    zero_w, zero_b = torch.zeros(out_features, in_features), torch.zeros(out_features)
    want_y, want_gx, want_gc = float64_reference(x, zero_w, zero_b, c, indices, out_features, in_features, 3.0, g)
    with fourierft.ops.generic_kernels():
        y = fourierft.ops.spectral_linear(x, c, indices, out_features, in_features, 3.0)
        gx, gc = torch.autograd.grad((y * g).sum(), [x, c])
    for name, got, want in [("output", y, want_y), ("grad_x", gx, want_gx), ("grad_spectrum", gc, want_gc)]:
        assert relative(got, want) < 1e-12, name


# The 3B model of the issue (Llama-3.2-3B shapes): q and o 3072 x 3072, k and v 1024 x 3072, gate and up
# 8192 x 3072, down 3072 x 8192; bf16 with PEFT's float32 spectrum.
SHAPES_3B = {"q_proj": (3072, 3072), "k_proj": (1024, 3072), "gate_proj": (8192, 3072), "down_proj": (3072, 8192)}


# What the cost model takes for a bf16 3B training call on CUDA, per shape and token count (docs/gpu.md explains it):
# the dense route's delta_W build costs the same at every token count (an irfft2 over out x in points), the spectral
# route's transforms grow with the tokens, and each pass pays ~14 us per launch and ~4 us per op on the host (the
# dense pass launches fewer kernels).
TRAINING_ROUTES_3B = {  # tokens -> route, per shape
    "q_proj": {1: "dense", 16: "dense", 2048: "dense", 16384: "dense"},
    "k_proj": {1: "dense", 16: "dense", 2048: "dense", 16384: "dense"},
    # 25M-point delta_W builds: the spectral transforms of 2048 rows cost about as much (0.55 vs 0.57 ms a pass)
    "gate_proj": {1: "spectral", 16: "spectral", 2048: "spectral", 16384: "dense"},
    "down_proj": {1: "spectral", 16: "spectral", 2048: "spectral", 16384: "dense"},
}


@pytest.mark.parametrize("n", [1000, 10000])
@pytest.mark.parametrize("name", SHAPES_3B)
def test_cost_model_on_cuda_3b_training_routes(n, name):
    """Every pass of a 3B layer's training call takes one route, the one of TRAINING_ROUTES_3B, whatever n is
    (nothing dense grows with it, and the spectral route's n-dependent part is small at n <= 10000)."""
    out_features, in_features = SHAPES_3B[name]
    for tokens, route in TRAINING_ROUTES_3B[name].items():
        routes = fourierft.ops.linear_routes("cuda", torch.bfloat16, tokens, out_features, in_features, n)
        assert routes == {"forward": route, "grad_x": route, "grad_spectrum": route}, (tokens, routes)


@pytest.mark.parametrize("name", SHAPES_3B)
def test_cost_model_on_cuda_inference_caches_delta_w(name):
    """Inference with a frozen spectrum caches delta_W in the model's dtype at every size (one more weight read per
    call, nothing rebuilt)."""
    out_features, in_features = SHAPES_3B[name]
    for tokens in (1, 2048, 16384):
        cache = fourierft._C.inference_cache_for(torch.device("cuda"), torch.bfloat16, tokens, out_features,
                                                 in_features, 1000)
        assert cache == "delta", tokens


def test_cost_model_on_cuda_float32_keeps_the_spectral_gradient():
    """A float32 model (TF32 off): its g^T x GEMM is costed at the float32 rate, so at training sizes the spectrum's
    gradient stays spectral while the forward and grad_x go dense (docs/gpu.md says so)."""
    for tokens in (2048, 16384):
        routes = fourierft.ops.linear_routes("cuda", torch.float32, tokens, 3072, 3072, 1000)
        assert routes == {"forward": "dense", "grad_x": "dense", "grad_spectrum": "spectral"}, tokens

def test_cost_model_on_cpu_keeps_its_routes():
    """The CPU's decisions are the fitted ones of docs/benchmarks-layer.md (spot checks); a half-precision model on
    the CPU never caches W + delta_W (it would lose the adapter in bf16)."""
    assert fourierft.ops.linear_routes("cpu", torch.float32, 128, 1024, 1024, 1000)["forward"] == "spectral"
    assert fourierft.ops.linear_routes("cpu", torch.float32, 8192, 256, 256, 1000)["forward"] == "dense"
    assert fourierft._C.inference_cache_for(torch.device("cpu"), torch.float32, 4096, 20, 24, 30) == "weight"
    assert fourierft._C.inference_cache_for(torch.device("cpu"), torch.bfloat16, 4096, 20, 24, 30) == "none"


def test_forced_routes_are_what_linear_routes_reports():
    with fourierft.ops.linear_path("spectral"):
        assert set(fourierft.ops.linear_routes("cuda", torch.bfloat16, 16384, 3072, 3072, 1000).values()) == {
            "spectral"}
    with fourierft.ops.linear_path("folded"):  # no folded route off the CPU
        assert set(fourierft.ops.linear_routes("cuda", torch.bfloat16, 8, 64, 64, 10).values()) == {"dense"}
        assert set(fourierft.ops.linear_routes("cpu", torch.float32, 8, 64, 64, 10).values()) == {"folded"}
    with pytest.raises(ValueError, match="'auto', 'spectral', 'dense' or 'folded', got 'merged'"):
        fourierft.ops.linear_path("merged").__enter__()  # one name per route: no aliases
    assert fourierft._C.linear_path() == "auto"



def picked(device, estimates):
    """The route linear_routes must report for these estimates: the smallest; a tie goes to "spectral" on the CPU
    (the pipeline is taken at <=) and otherwise to the later candidate (spectral, dense, folded: the GPU takes
    spectral only when strictly cheaper, the CPU's dense only when strictly cheaper than folded)."""
    best = min(estimates.values())
    ties = [route for route, ns in estimates.items() if ns == best]
    return "spectral" if device == "cpu" and "spectral" in ties else ties[-1]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_route_estimates_are_what_the_routes_are_picked_by(device, dtype, training):
    """linear_route_estimates (the numbers scripts/routes.py tables in docs/) and linear_routes (what the op runs)
    agree on a grid of calls that crosses every decision: for each pass, the route reported is the cheapest
    estimate; the CPU offers folded, no other device does; forcing a route changes the routes, not the estimates."""
    passes = {"forward", "grad_x", "grad_spectrum"} if training else {"forward"}
    seen = set()
    for tokens in (1, 16, 512, 2048, 16384):
        for out_features, in_features in ((64, 64), (256, 256), (768, 3072), (3072, 3072), (1024, 3072),
                                          (8192, 3072)):
            for n in (10, 1000, 10000, out_features * in_features // 10):
                args = (device, dtype, tokens, out_features, in_features, n, training)
                estimates = fourierft.ops.linear_route_estimates(*args)
                routes = fourierft.ops.linear_routes(*args)
                assert set(estimates) == set(routes) == passes, args
                for name, per_route in estimates.items():
                    expected = {"spectral", "folded"} if device == "cpu" and name == "grad_spectrum" else (
                        {"spectral", "dense", "folded"} if device == "cpu" else {"spectral", "dense"})
                    assert set(per_route) == expected, (args, name)
                    assert all(ns > 0 for ns in per_route.values()), (args, name, per_route)
                    assert routes[name] == picked(device, per_route), (args, name, per_route, routes)
                    seen.add((name, routes[name]))
                with fourierft.ops.linear_path("spectral"):
                    assert fourierft.ops.linear_route_estimates(*args) == estimates
    # the grid reaches both sides of every decision it can take on this device
    for name in passes:
        assert {route for pass_, route in seen if pass_ == name} >= {"spectral"} | (
            {"folded"} if device == "cpu" and name == "grad_spectrum" else {"dense"}), (name, seen)


# ---- the layers' inference caches -------------------------------------------------------------------------

class Net(torch.nn.Module):
    def __init__(self, conv1d=False):
        super().__init__()
        self.q = transformers.pytorch_utils.Conv1D(20, 24) if conv1d else torch.nn.Linear(24, 20)
        self.head = torch.nn.Linear(20, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.q(x)))


def peft_layer_output(layer, x, adapters=("default",)):
    """PEFT's own forward in float64: base(x) + sum of x @ delta_W^T with PEFT's get_delta_weight."""
    out = layer.base_layer(x).double()
    for name in adapters:
        out = out + x.double() @ PeftFourierFTLayer.get_delta_weight(layer, name).double().T
    return out


def adapted(conv1d=False, dtype=torch.float32, adapters=("default",)):
    torch.manual_seed(0)
    config = dict(n_frequency=30, scaling=20.0, fan_in_fan_out=conv1d)
    model = fourierft.get_peft_model(Net(conv1d), peft.FourierFTConfig(target_modules=["q"], **config))
    for name in adapters[1:]:
        model.add_adapter(name, peft.FourierFTConfig(target_modules=["q"], random_loc_seed=5, **config))
    model = model.to(dtype).eval()
    layer = model.base_model.model.q
    layer.set_adapter(list(adapters))
    for name in adapters:
        spectrum = layer.fourierft_spectrum[name]
        spectrum.data = spectrum.data.float()  # PEFT's autocast_adapter_dtype keeps adapters in float32
        spectrum.requires_grad_(False)
    return model, layer


def cache_entries(layer):
    return layer.__dict__.get("_fourierft_cache", {})


CASES = {
    "linear_bf16_delta": dict(dtype=torch.bfloat16),  # the GPU's cache (forced here by linear_path("dense"))
    "linear_float32_delta": dict(),
    "conv1d": dict(conv1d=True),  # GPT-2's Conv1D: the adapter path's cached delta_W
    "two_adapters": dict(adapters=("default", "other")),  # several active adapters: the same cache per adapter
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mutation", ["data_mul_", "data_assign"])
def test_inference_caches_are_used_and_never_stale(case, mutation):
    """Frozen spectra, dense route: the layer caches delta_W (in the model's dtype for the whole-layer path, in the
    spectrum's for the adapter path) and a write behind the version counter (p.data.mul_, p.data = ...) is seen.
    Each case's cache is asserted to exist, so a cache that never fills cannot pass for one that is checked."""
    kwargs = CASES[case]
    model, layer = adapted(**kwargs)
    adapters = kwargs.get("adapters", ("default",))
    dtype = kwargs.get("dtype", torch.float32)
    tol = 2e-2 if dtype in HALF else 1e-5
    x = torch.randn(64, 24).to(dtype)
    with torch.no_grad(), fourierft.ops.linear_path("dense"):
        first = layer(x)
        assert len(cache_entries(layer)) == len(adapters), cache_entries(layer).keys()
        assert relative(first, peft_layer_output(layer, x, adapters)) < tol
        assert relative(layer(x), peft_layer_output(layer, x, adapters)) < tol  # served from the cache
        spectrum = layer.fourierft_spectrum[adapters[-1]]
        if mutation == "data_mul_":
            spectrum.data.mul_(3.0)
        else:
            spectrum.data = torch.randn_like(spectrum)
        second = layer(x)
    assert relative(second, peft_layer_output(layer, x, adapters)) < tol
    assert relative(second, first.double()) > 10 * tol


def test_inference_cache_off_keeps_nothing_and_gives_the_same_outputs():
    model, layer = adapted(dtype=torch.bfloat16)
    x = torch.randn(64, 24).to(torch.bfloat16)
    with torch.no_grad(), fourierft.ops.linear_path("dense"):
        with fourierft.ops.inference_cache(False):
            assert fourierft._C.inference_cache() is False
            off = layer(x)
        assert cache_entries(layer) == {}
        on = layer(x)
        assert len(cache_entries(layer)) == 1
    assert fourierft._C.inference_cache() is True
    assert relative(off, peft_layer_output(layer, x)) < 2e-2
    assert relative(on, off.double()) < 1e-2


def test_half_model_trains_through_one_op_with_gradients_equal_to_peft():
    """A bf16 model with PEFT's float32 spectrum runs as one fourierft.linear (no float32 copy of the activations):
    the spectrum's gradient and the input's against PEFT's own layer in float64, and an optimizer step moves the
    spectrum the same way."""
    model, layer = adapted(dtype=torch.bfloat16)
    spectrum = layer.fourierft_spectrum["default"].requires_grad_(True)
    x = torch.randn(2, 32, 24).to(torch.bfloat16).requires_grad_(True)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    g = torch.randn_like(y)
    gx, gc = torch.autograd.grad((y * g).sum(), [x, spectrum])
    x64 = x.detach().double().requires_grad_(True)
    c64 = spectrum.detach().double().requires_grad_(True)
    w = layer.base_layer.weight.double()
    ref = x64 @ (w + dense_delta_float64(c64, layer.indices["default"], 20, 24, 20.0)).T + layer.base_layer.bias.double()
    want_gx, want_gc = torch.autograd.grad((ref * g.double()).sum(), [x64, c64])
    assert relative(y, ref.detach()) < 1e-2
    assert relative(gx, want_gx) < 1e-2
    assert relative(gc, want_gc) < 1e-2
