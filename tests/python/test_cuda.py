"""On a CUDA GPU: every route of fourierft.linear against float64 on the device, a PEFT model's train step against
plain PEFT's, and the inference cache. Skipped, with that reason, where torch sees no GPU (CI and the developers'
machines); run on a GPU machine with `python -m pytest tests/python/test_cuda.py`."""
import pytest
import torch

import fourierft
import peft
from peft.tuners.fourierft.layer import FourierFTLayer as PeftFourierFTLayer

from reference import dense_delta_float64

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def relative(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("route", ["auto", "spectral", "dense"])
@pytest.mark.parametrize("model_dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("out_features,in_features,n,tokens", [(3072, 3072, 1000, 2048), (1024, 3072, 10000, 512),
                                                               (33, 20, 660, 7)])
def test_routes_on_cuda_match_float64(route, model_dtype, tol, out_features, in_features, n, tokens):
    torch.manual_seed(0)
    indices = fourierft.ops.entry_indices(out_features, in_features, n, 777).cuda()
    w = (torch.randn(out_features, in_features) / in_features**0.5).to("cuda", model_dtype)
    b = torch.randn(out_features).to("cuda", model_dtype)
    c = torch.randn(n, device="cuda", requires_grad=True)
    x = torch.randn(tokens, in_features).to("cuda", model_dtype).requires_grad_(True)
    with fourierft.ops.linear_path(route):
        y = fourierft.ops.linear(x, w, b, c, indices, out_features, in_features, 150.0)
        g = torch.randn_like(y)
        gx, gc = torch.autograd.grad((y * g).sum(), [x, c])
    x64, c64 = x.detach().cpu().double().requires_grad_(True), c.detach().cpu().double().requires_grad_(True)
    ref = x64 @ (w.cpu().double() + dense_delta_float64(c64, indices.cpu(), out_features, in_features, 150.0)).T \
        + b.cpu().double()
    want_gx, want_gc = torch.autograd.grad((ref * g.cpu().double()).sum(), [x64, c64])
    assert y.dtype == model_dtype
    for name, got, want in [("output", y, ref.detach()), ("grad_x", gx, want_gx), ("grad_spectrum", gc, want_gc)]:
        assert relative(got.cpu(), want) < tol, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_peft_model_train_step_equals_plain_peft_on_cuda(dtype):
    import transformers

    def build():
        torch.manual_seed(0)
        config = transformers.LlamaConfig(vocab_size=99, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2)
        return transformers.LlamaForCausalLM(config).to("cuda", dtype)

    cfg = dict(target_modules=["q_proj", "v_proj"], n_frequency=500, scaling=150.0)
    ids = torch.randint(0, 99, (2, 16), device="cuda")
    with fourierft.registered(False):
        plain = peft.get_peft_model(build(), peft.FourierFTConfig(**cfg))
    ours = fourierft.get_peft_model(build(), fourierft.FourierFTConfig(**cfg))
    losses, grads = [], []
    for model in (plain, ours):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten().float() for n, p in model.named_parameters() if p.requires_grad]))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert abs(losses[0] - losses[1]) <= tol * abs(losses[0])
    assert relative(grads[1].cpu(), grads[0].cpu().double()) < (1e-4 if dtype == torch.float32 else 5e-2)


def test_inference_on_cuda_caches_delta_in_the_models_dtype():
    torch.manual_seed(0)
    layer_cfg = peft.FourierFTConfig(target_modules=["0"], n_frequency=300)
    model = fourierft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(64, 48)).to("cuda", torch.bfloat16),
                                     layer_cfg).eval()
    layer = model.base_model.model[0]
    x = torch.randn(32, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        y = layer(x)
        entries = layer.__dict__["_fourierft_cache"]
        assert [key[1:] for key in entries] == [("delta", torch.bfloat16)]
        # PEFT's formula: base(x) + x.float() @ delta_W^T with PEFT's own get_delta_weight (float32 spectrum).
        delta = PeftFourierFTLayer.get_delta_weight(layer, "default")
        want = layer.base_layer(x).double() + x.double() @ delta.double().T
    assert relative(y.cpu(), want.cpu()) < 1e-2
