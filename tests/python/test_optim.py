"""fourierft.optim.param_groups: which parameter lands in which group, with which lr and weight decay."""
import pytest
import torch
import transformers

import fourierft


def model(bias):
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        num_labels=3))
    return fourierft.get_peft_model(base, fourierft.FourierFTConfig(
        task_type="SEQ_CLS", target_modules=["query", "value"], n_frequency=40, bias=bias))


@pytest.mark.parametrize("bias", ["none", "fourier_only", "all"])
def test_groups_split_spectra_biases_and_head(bias):
    peft_model = model(bias)
    groups = fourierft.optim.param_groups(peft_model, spectrum_lr=0.05, head_lr=0.01, bias_lr=0.003,
                                          weight_decay=0.1, head_weight_decay=0.02)
    names = {id(p): n for n, p in peft_model.named_parameters()}
    by_group = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    trainable = sorted(n for n, p in peft_model.named_parameters() if p.requires_grad)
    assert sorted(sum(by_group.values(), [])) == trainable  # every trainable parameter, once
    assert by_group["spectrum"] and all("fourierft_spectrum" in n for n in by_group["spectrum"])
    assert len(by_group["spectrum"]) == 4  # query and value of two layers
    assert by_group["head"] and all(".modules_to_save." in n for n in by_group["head"])
    if bias == "none":
        assert "bias" not in by_group
    else:
        assert by_group["bias"] and all(n.endswith("bias") and ".modules_to_save." not in n for n in by_group["bias"])
        assert (bias == "all") == any("LayerNorm" in n for n in by_group["bias"])
    settings = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert settings["spectrum"] == (0.05, 0.1) and settings["head"] == (0.01, 0.02)
    if bias != "none":
        assert settings["bias"] == (0.003, 0.0)
    torch.optim.AdamW(groups)  # torch accepts them


def test_no_trainable_parameters_raises():
    peft_model = model("none")
    for p in peft_model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fourierft.optim.param_groups(peft_model)
