"""The compiled ops against the installed PEFT package (the reference implementation), for both
implementations: the fused CPU kernels and the device-generic one (ATen operations, registered for
CUDA), run on CPU through fourierft.ops.generic_kernels()."""
import pytest
import torch
from torch import nn

import fourierft
import peft
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear

from reference import dense_delta_float64


@pytest.fixture(params=["fused", "generic"])
def kernels(request):
    with fourierft.ops.generic_kernels(request.param == "generic"):
        yield request.param


def peft_layer(out_features, in_features, n_frequency, seed=777, scaling=150.0, dtype=torch.float32):
    """A PEFT FourierFTLinear around a fresh nn.Linear, built the way get_peft_model builds it."""
    config = peft.FourierFTConfig(
        n_frequency=n_frequency, scaling=scaling, random_loc_seed=seed, target_modules=["lin"]
    )
    base = nn.Linear(in_features, out_features).to(dtype)
    return PeftFourierFTLinear(base, "default", config, n_frequency=n_frequency)


SHAPES = [(1, 1), (7, 13), (13, 7), (64, 48), (768, 768), (3072, 768), (100, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("seed", [777, 0, 123456789, 2**40 + 5, -3])
def test_entry_indices_equal_peft(ops, shape, seed):
    out_features, in_features = shape
    for n in sorted({1, min(10, out_features * in_features), min(1000, out_features * in_features),
                     out_features * in_features if out_features * in_features <= 5000 else 5000}):
        layer = peft_layer(out_features, in_features, n, seed=seed)
        ours = ops.entry_indices(out_features, in_features, n, seed)
        assert ours.dtype == torch.int64
        assert torch.equal(ours, layer.indices["default"]), (shape, n, seed)


@pytest.mark.parametrize("shape,n", [((7, 13), 50), ((64, 48), 3072), ((768, 768), 1000), ((3072, 768), 3000), ((1, 1), 1)])
def test_delta_weight_equals_peft(ops, kernels, shape, n):
    out_features, in_features = shape
    torch.manual_seed(0)
    layer = peft_layer(out_features, in_features, n, scaling=77.0)
    spectrum = layer.fourierft_spectrum["default"].detach()
    expected = layer.get_delta_weight("default")
    ours = ops.delta_weight(spectrum, layer.indices["default"], out_features, in_features, 77.0)
    assert ours.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


@pytest.fixture(params=["auto", "spectral", "dense", "folded"])
def linear_path(request):
    """ops.linear by the cost model's choice, or every route forced: "spectral" (forward and grad_x matrix-free, the
    spectrum's gradient by correlating the rows' spectra: the CPU's pipeline, or the generic kernels' sparse
    products), "dense" (delta_W built for the call, GEMMs) and "folded" (CPU: the coefficients folded onto two
    half-spectrum matrices, GEMMs between row FFTs; the generic kernels take "dense"); the last two take the
    spectrum's gradient by GEMMs. With n = all 3072 entries of 64 x 48, "auto" takes the GEMM gradient as well."""
    with fourierft.ops.linear_path(request.param):
        yield request.param


@pytest.mark.parametrize("shape,n", [((7, 13), 50), ((64, 48), 1000), ((64, 48), 3072), ((768, 768), 1000),
                                     ((3072, 768), 3000), ((768, 3072), 3000)])
@pytest.mark.parametrize("leading", [(5,), (2, 3)])
def test_spectral_linear_matches_peft_forward_and_gradients(ops, kernels, shape, n, leading):
    out_features, in_features = shape
    torch.manual_seed(1)
    layer = peft_layer(out_features, in_features, n)
    spectrum = layer.fourierft_spectrum["default"]
    x = torch.randn(*leading, in_features, requires_grad=True)
    expected = layer(x)
    grad_out = torch.randn_like(expected)
    expected_gx, expected_gc = torch.autograd.grad((expected * grad_out).sum(), [x, spectrum])

    spectrum_ours = spectrum.detach().clone().requires_grad_(True)
    x_ours = x.detach().clone().requires_grad_(True)
    ours = layer.base_layer(x_ours) + ops.spectral_linear(
        x_ours, spectrum_ours, layer.indices["default"], out_features, in_features, 150.0
    )
    gx, gc = torch.autograd.grad((ours * grad_out).sum(), [x_ours, spectrum_ours])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert (gx - expected_gx).norm() / expected_gx.norm() < 1e-5
    assert (gc - expected_gc).norm() / expected_gc.norm() < 1e-4


def float64_problem(indices, rows, out_features, in_features, seed):
    """Random float64 coefficients (requiring grad), input (requiring grad), upstream gradient, base weight and
    bias, and PEFT's dense delta_W = Re(ifft2(spectrum)) * 150 built from them: the reference of the route tests."""
    n = indices.shape[1]
    torch.manual_seed(seed)
    c = torch.randn(n, dtype=torch.float64, requires_grad=True)
    x = torch.randn(rows, in_features, dtype=torch.float64, requires_grad=True)
    g = torch.randn(rows, out_features, dtype=torch.float64)
    weight = torch.randn(out_features, in_features, dtype=torch.float64) / in_features**0.5
    bias = torch.randn(out_features, dtype=torch.float64)
    return c, x, g, weight, bias, dense_delta_float64(c, indices, out_features, in_features, 150.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("out_features,in_features,rows", [(2048, 1536, 67), (1536, 2048, 9), (770, 388, 131),
                                                          (256, 256, 3), (4096, 64, 17)])
def test_spectral_pipeline_blocks_match_dense_float64(ops, dtype, out_features, in_features, rows):
    """The blocked pipeline (blocks of 8-64 rows split across threads; tiled transposes between row-major and
    bin-major half spectra) at row counts around its block sizes and widths whose half spectra are not
    multiples of the tiles, against PEFT's dense formula in float64 (delta_W = Re(ifft2(spectrum)) * scaling),
    differentiated by autograd: output, grad_x and grad_c, for spectral_linear and for ops.linear on the
    spectral path."""
    n = 1000
    indices = ops.entry_indices(out_features, in_features, n, 2024)
    c, x, g, weight, bias, delta_w = float64_problem(indices, rows, out_features, in_features, seed=5)
    expected = x @ delta_w.T
    want = torch.autograd.grad((expected * g).sum(), [x, c])
    tol = 1e-4 if dtype == torch.float32 else 1e-10

    def check(got, reference, name):
        assert ((got.double() - reference).norm() / reference.norm()).item() < tol, name

    for layer in ("spectral_linear", "linear"):
        xs = x.detach().to(dtype).requires_grad_(True)
        cs = c.detach().to(dtype).requires_grad_(True)
        with fourierft.ops.linear_path("spectral"):  # ops.linear's forward and backward; spectral_linear has no other
            if layer == "spectral_linear":
                y = ops.spectral_linear(xs, cs, indices, out_features, in_features, 150.0)
                reference, base_grad_x = expected, 0
            else:
                y = ops.linear(xs, weight.to(dtype), bias.to(dtype), cs, indices, out_features, in_features, 150.0)
                reference, base_grad_x = expected + x @ weight.T + bias, g @ weight
            gx, gc = torch.autograd.grad((y * g.to(dtype)).sum(), [xs, cs])
        check(y, reference.detach(), f"{layer} output")
        check(gx, want[0] + base_grad_x, f"{layer} grad_x")
        check(gc, want[1], f"{layer} grad_c")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("out_features,in_features,rows,n", [(64, 48, 37, 3072), (33, 20, 5, 300), (770, 388, 131, 30000),
                                                            (1, 7, 3, 7), (6, 1, 4, 6), (128, 257, 70, 1000)])
def test_folded_route_matches_dense_float64(ops, dtype, out_features, in_features, rows, n):
    """The folded route (forward, grad_x and grad_c by GEMMs against the coefficients folded onto the half
    spectra's bins) against PEFT's dense formula in float64, differentiated by autograd, with entries on every
    self-mirrored bin (u or v = 0 or width/2, where the fold doubles or cancels) and odd and even widths."""
    indices = ops.entry_indices(out_features, in_features, n, 99).clone()
    special = [(u, v) for u in {0, out_features // 2, out_features - 1} for v in {0, in_features // 2, in_features - 1}]
    taken = {tuple(p) for p in indices.t().tolist()}
    free = [k for k in range(n) if tuple(indices[:, k].tolist()) not in special]
    for k, (u, v) in zip(free, [p for p in special if p not in taken]):
        indices[:, k] = torch.tensor([u, v])
    assert len({tuple(p) for p in indices.t().tolist()}) == n
    c, x, g, weight, bias, delta_w = float64_problem(indices, rows, out_features, in_features, seed=6)
    expected = x @ (weight + delta_w).T + bias
    want = torch.autograd.grad((expected * g).sum(), [x, c])
    xs = x.detach().to(dtype).requires_grad_(True)
    cs = c.detach().to(dtype).requires_grad_(True)
    with fourierft.ops.linear_path("folded"):
        y = ops.linear(xs, weight.to(dtype), bias.to(dtype), cs, indices, out_features, in_features, 150.0)
        gx, gc = torch.autograd.grad((y * g.to(dtype)).sum(), [xs, cs])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, got, reference in [("output", y, expected.detach()), ("grad_x", gx, want[0]), ("grad_c", gc, want[1])]:
        assert got.dtype == dtype, name
        assert ((got.double() - reference).norm() / reference.norm()).item() < tol, name


def test_half_precision_runs_where_peft_needs_float32(ops, kernels):
    # PEFT's own formula in float32 is the reference; ours computes bf16/fp16 inputs in float32 inside.
    torch.manual_seed(2)
    layer = peft_layer(64, 96, 300)
    indices = layer.indices["default"]
    x = torch.randn(4, 96)
    spectrum = layer.fourierft_spectrum["default"].detach()
    with torch.no_grad():
        reference = x @ layer.get_delta_weight("default").T
    for dtype, tol in [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)]:
        y = ops.spectral_linear(x.to(dtype), spectrum.to(dtype), indices, 64, 96, 150.0)
        assert y.dtype == dtype
        assert ((y.float() - reference).norm() / reference.norm()).item() < tol


def test_generic_and_fused_kernels_agree_and_the_switch_is_scoped(ops):
    torch.manual_seed(4)
    indices = ops.entry_indices(40, 56, 500, 777)
    x = torch.randn(3, 7, 56, requires_grad=True)
    c = torch.randn(500, requires_grad=True)
    results = []
    for generic in (False, True):
        with fourierft.ops.generic_kernels(generic):
            assert fourierft._C.generic_kernels() is generic
            y = ops.spectral_linear(x, c, indices, 40, 56, 30.0)
            gx, gc = torch.autograd.grad(y.square().sum(), [x, c])
            results.append((y, gx, gc, ops.delta_weight(c, indices, 40, 56, 30.0)))
    assert fourierft._C.generic_kernels() is False
    for fused, generic in zip(*results):
        torch.testing.assert_close(generic, fused, rtol=1e-5, atol=1e-5 * fused.abs().max().item())


def test_cuda_kernels_are_registered_in_every_build():
    for op in ("delta_weight", "_delta_weight_backward", "spectral_linear", "_spectral_linear_backward", "linear",
               "_linear_backward"):
        table = torch._C._dispatch_dump(f"fourierft::{op}")
        assert any(line.startswith("CUDA: registered") for line in table.splitlines()), (op, table)


def test_gradcheck_spectral_linear(ops, kernels):
    torch.manual_seed(3)
    for out_features, in_features, n in [(5, 6, 12), (7, 4, 28), (9, 8, 5)]:
        indices = ops.entry_indices(out_features, in_features, n, 11)
        x = torch.randn(3, in_features, dtype=torch.float64, requires_grad=True)
        c = torch.randn(n, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, c: ops.spectral_linear(x, c, indices, out_features, in_features, 2.0), (x, c)
        )


def test_gradcheck_delta_weight(ops, kernels):
    indices = ops.entry_indices(6, 10, 30, 5)
    c = torch.randn(30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: ops.delta_weight(c, indices, 6, 10, 3.0), (c,))


@pytest.mark.parametrize("shape,n", [((7, 13), 50), ((64, 48), 1000), ((64, 48), 3072), ((768, 768), 1000),
                                     ((3072, 768), 3000), ((768, 3072), 3000)])
@pytest.mark.parametrize("leading", [(5,), (2, 300)])
def test_linear_matches_peft_layer_forward_and_gradients(ops, kernels, linear_path, shape, n, leading):
    """ops.linear (the whole layer) against PEFT's FourierFTLinear.forward: output, grad_x, grad_c, and
    the gradients of a trainable base weight and bias."""
    out_features, in_features = shape
    torch.manual_seed(1)
    layer = peft_layer(out_features, in_features, n)
    layer.base_layer.requires_grad_(True)
    spectrum = layer.fourierft_spectrum["default"]
    base = layer.base_layer
    x = torch.randn(*leading, in_features, requires_grad=True)
    expected = layer(x)
    grad_out = torch.randn_like(expected)
    wrt = [x, spectrum, base.weight, base.bias]
    expected_grads = torch.autograd.grad((expected * grad_out).sum(), wrt)

    ours_wrt = [t.detach().clone().requires_grad_(True) for t in wrt]
    ours = ops.linear(ours_wrt[0], ours_wrt[2], ours_wrt[3], ours_wrt[1], layer.indices["default"], out_features,
                      in_features, 150.0)
    grads = torch.autograd.grad((ours * grad_out).sum(), ours_wrt)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
    for name, got, want in zip(["x", "spectrum", "weight", "bias"], grads, expected_grads):
        assert (got - want).norm() / want.norm() < 1e-4, name


def test_linear_frozen_base_saves_only_the_input(ops, linear_path):
    """Trainable spectrum, frozen base: the graph holds x (and the parameters), no activation of its own."""
    torch.manual_seed(0)
    indices = ops.entry_indices(64, 48, 100, 1)
    w, b = torch.randn(64, 48), torch.randn(64)
    c = torch.randn(100, requires_grad=True)
    x = torch.randn(32, 48, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.linear(x, w, b, c, indices, 64, 48, 150.0)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 2 and any(t is x or t.data_ptr() == x.data_ptr() for t in big), [t.shape for t in saved]
    assert all(t.data_ptr() in (x.data_ptr(), w.data_ptr()) for t in big)


def test_gradcheck_linear(ops, kernels, linear_path):
    torch.manual_seed(3)
    for out_features, in_features, n in [(5, 6, 12), (7, 4, 28), (9, 8, 5)]:
        indices = ops.entry_indices(out_features, in_features, n, 11)
        x = torch.randn(2, 3, in_features, dtype=torch.float64, requires_grad=True)
        w = torch.randn(out_features, in_features, dtype=torch.float64, requires_grad=True)
        b = torch.randn(out_features, dtype=torch.float64, requires_grad=True)
        c = torch.randn(n, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, w, b, c: ops.linear(x, w, b, c, indices, out_features, in_features, 2.0), (x, w, b, c)
        )
        assert torch.autograd.gradcheck(
            lambda x, c: ops.linear(x, w.detach(), None, c, indices, out_features, in_features, 2.0), (x, c)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_linear(ops, kernels, linear_path, dtype):
    indices = ops.entry_indices(12, 10, 40, 777)
    for requires_grad in [(True, True, False), (False, True, False), (True, False, False), (True, True, True)]:
        x = torch.randn(2, 3, 10, dtype=dtype, requires_grad=requires_grad[0])
        c = torch.randn(40, dtype=dtype, requires_grad=requires_grad[1])
        w = torch.randn(12, 10, dtype=dtype, requires_grad=requires_grad[2])
        b = torch.randn(12, dtype=dtype, requires_grad=requires_grad[2])
        torch.library.opcheck(ops.linear.default, (x, w, b, c, indices, 12, 10, 150.0))
        torch.library.opcheck(ops.linear.default, (x, w, None, c, indices, 12, 10, 150.0))


@pytest.mark.parametrize("x_dtype,spectrum_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float64),
                                                    (torch.float16, torch.float32)])
def test_linear_mixed_dtypes_match_float64_forward_and_gradients(ops, kernels, linear_path, x_dtype, spectrum_dtype):
    """A spectrum of another dtype than the model's. A half-precision model with a float32 spectrum (what PEFT's
    get_peft_model makes of a bf16 model): the result in x's dtype, as PEFT's layer returns it; a float32 model with
    a float64 spectrum: PEFT's composition, promoted. Output and every gradient (x, spectrum, a trainable weight and
    bias) against the float64 formula on the same (rounded) inputs, on every route."""
    out_features, in_features, n = 40, 24, 300
    indices = ops.entry_indices(out_features, in_features, n, 3)
    c, x, g, weight, bias, _ = float64_problem(indices, 6, out_features, in_features, seed=0)
    x_in = x.detach().to(x_dtype).requires_grad_(True)
    w_in = weight.to(x_dtype).requires_grad_(True)
    b_in = bias.to(x_dtype).requires_grad_(True)
    c_in = c.detach().to(spectrum_dtype).requires_grad_(True)
    y = ops.linear(x_in, w_in, b_in, c_in, indices, out_features, in_features, 150.0)
    half = x_dtype in (torch.bfloat16, torch.float16)
    assert y.dtype == (x_dtype if half else spectrum_dtype)
    grads = torch.autograd.grad((y * g.to(y.dtype)).sum(), [x_in, c_in, w_in, b_in])
    # The reference: float64 on exactly the values the op was given.
    x64, c64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x_in, c_in, w_in, b_in))
    reference = x64 @ (w64 + dense_delta_float64(c64, indices, out_features, in_features, 150.0)).T + b64
    g64 = g.to(y.dtype).double()
    want = torch.autograd.grad((reference * g64).sum(), [x64, c64, w64, b64])
    tol = 1e-2 if half else 1e-5
    for name, got, expected in zip(["output", "grad_x", "grad_spectrum", "grad_weight", "grad_bias"],
                                   [y, *grads], [reference.detach(), *want]):
        error = ((got.double() - expected).norm() / expected.norm()).item()
        assert error < tol, (name, error)


def test_linear_empty_batch(ops, kernels, linear_path):
    indices = ops.entry_indices(16, 12, 30, 3)
    w, b = torch.randn(16, 12, requires_grad=True), torch.randn(16, requires_grad=True)
    c = torch.randn(30, requires_grad=True)
    for shape in [(0, 12), (2, 0, 12)]:
        x = torch.randn(*shape, requires_grad=True)
        y = ops.linear(x, w, b, c, indices, 16, 12, 20.0)
        assert y.shape == (*shape[:-1], 16)
        y.sum().backward()
        assert x.grad.shape == x.shape and torch.all(c.grad == 0) and torch.all(w.grad == 0)
        c.grad = w.grad = b.grad = None


def test_linear_errors_name_the_values(ops):
    indices = ops.entry_indices(16, 12, 30, 3)
    c = torch.randn(30)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[out_features, in_features\] = \[16, 12\], got \[12, 16\]"):
        ops.linear(torch.randn(2, 12), torch.randn(12, 16), None, c, indices, 16, 12, 1.0)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[out_features\] = \[16\], got \[12\]"):
        ops.linear(torch.randn(2, 12), torch.randn(16, 12), torch.randn(12), c, indices, 16, 12, 1.0)
    with pytest.raises(RuntimeError, match=r"weight and input must have the same dtype"):
        ops.linear(torch.randn(2, 12), torch.randn(16, 12, dtype=torch.float64), None, c, indices, 16, 12, 1.0)
    with pytest.raises(ValueError, match="linear path must be"):
        with fourierft.ops.linear_path("fast"):
            pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_spectral_linear(ops, kernels, dtype):
    indices = ops.entry_indices(12, 10, 40, 777)
    for requires_grad in [(True, True), (False, True), (True, False)]:
        x = torch.randn(2, 3, 10, dtype=dtype, requires_grad=requires_grad[0])
        c = torch.randn(40, dtype=dtype, requires_grad=requires_grad[1])
        torch.library.opcheck(ops.spectral_linear.default, (x, c, indices, 12, 10, 150.0))


def test_opcheck_delta_weight_and_internal_ops(ops, kernels):
    indices = ops.entry_indices(12, 10, 40, 777)
    c = torch.randn(40, requires_grad=True)
    torch.library.opcheck(ops.delta_weight.default, (c, indices, 12, 10, 150.0))
    x = torch.randn(4, 10)
    g = torch.randn(4, 12)
    for need in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(ops._spectral_linear_backward.default, (g, x, c.detach(), indices, 12, 10, 150.0, *need))
    w = torch.randn(12, 10)
    for need in [(True, True, True, True), (True, False, False, True), (False, False, False, True), (True, True, False, False)]:
        torch.library.opcheck(ops._linear_backward.default, (g, x, w, c.detach(), indices, 12, 10, 150.0, *need))
    torch.library.opcheck(ops._delta_weight_backward.default, (torch.randn(12, 10), c.detach(), indices, 12, 10, 150.0))


def test_errors_are_runtime_errors_with_values(ops):
    indices = ops.entry_indices(8, 6, 10, 777)
    with pytest.raises(RuntimeError, match=r"\[1, 48\], got n_frequency=49"):
        ops.entry_indices(8, 6, 49, 0)
    with pytest.raises(RuntimeError, match=r"last dimension in_features=6, got shape \[2, 7\]"):
        ops.spectral_linear(torch.randn(2, 7), torch.randn(10), indices, 8, 6, 1.0)
