"""fourierft.get_peft_model against plain peft.get_peft_model (PEFT's own layers) on real transformers models: same adapted
modules, parameter counts, state-dict keys, outputs, spectrum gradients and merged outputs, for the
real all-MiniLM-L6-v2 and tiny BERT/RoBERTa/GPT-2/LLaMA/T5/ViT models."""
import copy
import warnings

import peft
import pytest
import torch
from peft.tuners.fourierft.layer import FourierFTLayer as PeftFourierFTLayer

import fourierft
from models import CASES, assert_close, build_pair, first_tensor


def adapted_names(model, cls):
    return sorted(name for name, module in model.named_modules() if isinstance(module, cls))


@pytest.fixture(scope="module", params=CASES, ids=[case.name for case in CASES])
def pair(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out notices, transformers deprecations
        peft_model, ours = build_pair(request.param)
    return request.param, peft_model, ours


def test_same_adapted_modules_counts_and_keys(pair):
    case, peft_model, ours = pair
    names = adapted_names(ours, fourierft.FourierFTLinear)
    assert names, "nothing adapted"
    assert names == adapted_names(peft_model, PeftFourierFTLayer)
    assert not adapted_names(peft_model, fourierft.FourierFTLinear)  # the reference runs PEFT's own math
    assert isinstance(ours, peft.PeftModel) and type(ours) is type(peft_model)
    assert ours.get_nb_trainable_parameters() == peft_model.get_nb_trainable_parameters()
    assert list(ours.state_dict()) == list(peft_model.state_dict())
    trainable = sorted(n for n, p in ours.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in peft_model.named_parameters() if p.requires_grad)
    # Identical spectra (same seeds, same draw order) and entry matrices.
    peft_state = peft_model.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, peft_state[key]), key
    for name in names:
        ours_layer, peft_layer = ours.get_submodule(name), peft_model.get_submodule(name)
        assert torch.equal(ours_layer.indices["default"], peft_layer.indices["default"]), name


def test_same_outputs_and_spectrum_gradients(pair):
    """Outputs against PEFT in float32; gradients against PEFT's formula run in float64. How close float32 gradients
    of a whole model can come to float64 depends on the model and on the CPU's kernels (on tiny RoBERTa, PEFT's own
    float32 gradients were 4e-4 off on one machine and 1.2e-4 on another, ours 4e-5 and 2.8e-4: the rounding of
    a different order of float32 sums, amplified by the model). So the bound is 1e-4 of the gradient's largest
    entry, or 4 times PEFT's own float32 error on the same model, whichever is larger; a wrong gradient is off by
    O(1). The layers alone are held to ~1e-6 of float64 in test_routes.py and test_ops.py."""
    case, peft_model, ours = pair
    inputs = case.inputs()
    expected = first_tensor(peft_model(**inputs))
    actual = first_tensor(ours(**inputs))
    assert_close(actual, expected)
    reference = copy.deepcopy(peft_model).double()
    for model in (reference, peft_model, ours):
        model.zero_grad()
    weight = torch.randn(expected.shape, generator=torch.Generator().manual_seed(9))
    (first_tensor(reference(**inputs)) * weight.double()).sum().backward()
    (expected * weight).sum().backward()  # PEFT's own float32 gradients, from the forward above
    (actual * weight).sum().backward()
    reference_params = dict(reference.named_parameters())
    peft_params = dict(peft_model.named_parameters())

    def relative_error(grad, expected_grad):
        return ((grad.double() - expected_grad).abs().max() / expected_grad.abs().max().clamp_min(1e-12)).item()

    peft_error = max(relative_error(peft_params[name].grad, param.grad)
                     for name, param in reference_params.items() if param.grad is not None)
    bound = max(1e-4, 4 * peft_error)
    checked = 0
    for name, param in ours.named_parameters():
        if not param.requires_grad:
            continue
        expected_grad = reference_params[name].grad
        if expected_grad is None:  # a layer the output does not depend on (e.g. RoBERTa's pooler)
            assert param.grad is None, name
            continue
        assert param.grad is not None, name
        error = relative_error(param.grad, expected_grad)
        assert error <= bound, f"{name}: {error:.2e} of float64's largest entry (PEFT float32: {peft_error:.2e})"
        checked += "fourierft_spectrum" in name
    assert checked >= len(adapted_names(ours, fourierft.FourierFTLinear)) - 1


def test_merged_outputs_equal(pair):
    case, peft_model, ours = pair
    inputs = case.inputs()
    with torch.no_grad():
        unmerged = first_tensor(ours(**inputs))
        merged_peft = copy.deepcopy(peft_model).merge_and_unload()
        merged_ours = copy.deepcopy(ours).merge_and_unload()
        assert not any(isinstance(m, fourierft.FourierFTLinear) for m in merged_ours.modules())
        y_peft, y_ours = first_tensor(merged_peft(**inputs)), first_tensor(merged_ours(**inputs))
    assert_close(y_ours, y_peft)
    assert_close(y_ours, unmerged, 1e-4)
    assert sorted(merged_ours.state_dict()) == sorted(merged_peft.state_dict())


def test_disable_adapter_gives_base_output(pair):
    case, peft_model, ours = pair
    inputs = case.inputs()
    with torch.no_grad():
        with ours.disable_adapter():
            base_ours = first_tensor(ours(**inputs))
        with peft_model.disable_adapter():
            base_peft = first_tensor(peft_model(**inputs))
        adapted = first_tensor(ours(**inputs))
    assert torch.allclose(base_ours, base_peft, atol=1e-6, rtol=0)
    assert not torch.allclose(adapted, base_ours, atol=1e-6)
