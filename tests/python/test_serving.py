"""Serving: mixed-adapter batches (each row equals that row run alone with its adapter active, also
through generate and on an accelerated PEFT model), shared entry indices for resident adapters, and
hot-swapping an adapter's spectra in place under torch.compile without recompiling."""
import copy

import peft
import pytest
import torch
import transformers

import fourierft
from models import plain_peft_model


def tiny_llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).eval()


def with_adapters(build=fourierft.get_peft_model, names=("a", "b", "c")):
    torch.manual_seed(1)
    model = build(tiny_llama(), peft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=64,
                                                    scaling=80.0))
    for i, name in enumerate(names):
        torch.manual_seed(10 + i)
        model.add_adapter(name, peft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=64,
                                                     scaling=80.0, random_loc_seed=777 + i))
    return model.eval()


def alone(model, ids, name):
    if name == "__base__":
        with model.disable_adapter():
            return model(ids).logits
    model.set_adapter(name)
    try:
        return model(ids).logits
    finally:
        model.set_adapter("default")


@pytest.mark.parametrize("how", ["fourierft", "accelerate"])
def test_mixed_batch_rows_equal_each_row_alone(how):
    build = fourierft.get_peft_model if how == "fourierft" else plain_peft_model
    model = with_adapters(build)
    if how == "accelerate":
        fourierft.accelerate(model)
    names = ["a", "__base__", "c", "default", "b", "a"]
    ids = torch.randint(1, 64, (len(names), 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mixed = model(ids, adapter_names=names).logits
        for row, name in enumerate(names):
            expected = alone(model, ids[row:row + 1], name)[0]
            torch.testing.assert_close(mixed[row], expected, rtol=1e-5, atol=1e-5)
        # The adapters really differ: one row through every adapter (and none) in one batch gives distinct outputs.
        every = ["a", "b", "c", "default", "__base__"]
        same_row = model(ids[:1].repeat(len(every), 1), adapter_names=every).logits
        for i in range(len(every)):
            for j in range(i):
                assert not torch.allclose(same_row[i], same_row[j], atol=1e-3), (every[i], every[j])


def assert_generate_rows_equal_each_row_alone(model, ids, names, **kwargs):
    """model.generate with adapter_names equals, row by row, generating that row alone with its adapter active
    (adapters disabled for "__base__")."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, adapter_names=names, **kwargs)
        for row, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    one = model.generate(input_ids=ids[row:row + 1], **kwargs)
            else:
                model.set_adapter(name)
                one = model.generate(input_ids=ids[row:row + 1], **kwargs)
                model.set_adapter("default")
            assert torch.equal(out[row, :one.shape[1]], one[0]), name


def test_mixed_batch_through_generate():
    ids = torch.randint(1, 64, (3, 5), generator=torch.Generator().manual_seed(3))
    assert_generate_rows_equal_each_row_alone(with_adapters(), ids, ["b", "__base__", "a"], max_new_tokens=4,
                                              do_sample=False)


@pytest.mark.parametrize("num_beams", [2, 3])
def test_mixed_batch_beam_search_on_a_causal_lm(num_beams):
    """generate(num_beams=k) repeats every row k times: each name is repeated with it (PEFT's LoRA does the same);
    each row equals that row generated alone with its adapter."""
    ids = torch.randint(1, 64, (3, 5), generator=torch.Generator().manual_seed(4))
    assert_generate_rows_equal_each_row_alone(with_adapters(), ids, ["a", "__base__", "c"], max_new_tokens=4,
                                              do_sample=False, num_beams=num_beams)


def test_unknown_names_and_training_mode_raise_before_any_compute():
    model = with_adapters()
    calls = []
    model.base_model.model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(1, 64, (2, 4))
    with pytest.raises(ValueError, match="nope"):
        model(ids, adapter_names=["a", "nope"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(ids, adapter_names=["a", "b"])
    assert not calls
    model.eval()
    with pytest.raises(ValueError, match="3 names for a batch of 2 rows"):
        model(ids, adapter_names=["a", "b", "c"])


def test_resident_adapters_share_entry_indices():
    model = with_adapters(names=[f"user{i}" for i in range(20)])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    # seeds 777..796: "default" and "user0" share seed 777 and n, so they share one tensor
    assert layer.indices["user0"] is layer.indices["default"]
    torch.manual_seed(5)
    model.add_adapter("same_seed", peft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=64,
                                                        scaling=80.0, random_loc_seed=780))
    assert layer.indices["same_seed"] is layer.indices["user3"]
    assert torch.equal(layer.indices["same_seed"], fourierft.ops.entry_indices(32, 32, 64, 780))


def test_hotswap_under_torch_compile_without_recompiling(tmp_path):
    config = peft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=64, scaling=80.0)
    base = tiny_llama()
    torch.manual_seed(7)  # after building the base, which seeds the generator itself
    other = fourierft.get_peft_model(base, config)
    other.save_pretrained(tmp_path / "other")
    base = tiny_llama()
    torch.manual_seed(8)
    model = fourierft.get_peft_model(base, config).eval()
    layers_before = [id(m) for m in model.modules()]
    ids = torch.randint(1, 64, (2, 6), generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        before = compiled(ids).logits
        with torch._dynamo.config.patch(error_on_recompile=True):
            fourierft.hotswap_adapter(model, tmp_path / "other", "default")
            after = compiled(ids).logits
        expected = other.eval()(ids).logits
    assert [id(m) for m in model.modules()] == layers_before
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_hotswap_refuses_an_adapter_of_another_shape_and_changes_nothing(tmp_path):
    torch.manual_seed(7)
    fourierft.get_peft_model(tiny_llama(), peft.FourierFTConfig(target_modules=["q_proj"], n_frequency=64,
                                                                scaling=80.0)).save_pretrained(tmp_path / "q_only")
    fourierft.get_peft_model(tiny_llama(), peft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=64,
                                                                scaling=9.0)).save_pretrained(tmp_path / "scaling")
    model = with_adapters(names=())
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="does not adapt the same modules"):
        fourierft.hotswap_adapter(model, tmp_path / "q_only")
    with pytest.raises(ValueError, match="scaling differs"):
        fourierft.hotswap_adapter(model, tmp_path / "scaling")
    with pytest.raises(ValueError, match="no adapter 'nope'"):
        fourierft.hotswap_adapter(model, tmp_path / "q_only", "nope")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("bias", ["none", "all", "fourier_only"])
def test_hotswap_copies_heads_and_biases_too(tmp_path, bias):
    """A sequence classifier with its head in modules_to_save (and trained biases): hot-swapping another trained
    adapter's directory makes the model give exactly that adapter's outputs, head and biases included."""
    def build(seed):
        torch.manual_seed(0)
        base = transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            num_labels=3))
        torch.manual_seed(seed)
        return fourierft.get_peft_model(base, fourierft.FourierFTConfig(
            task_type="SEQ_CLS", target_modules=["query", "value"], n_frequency=40, scaling=50.0, bias=bias))

    other = build(1)
    with torch.no_grad():  # "training": every trainable tensor, head and biases included, moves
        for p in other.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    other.save_pretrained(tmp_path / "other")
    model = build(2).eval()
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fourierft.hotswap_adapter(model, tmp_path / "other", "default")
        torch.testing.assert_close(model(input_ids=ids).logits, other.eval()(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
    trained = {n: p for n, p in other.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trained)
    assert (bias != "none") == any(n.endswith("bias") and "classifier" not in n for n in trained)
    mine = dict(model.named_parameters())
    for name, value in trained.items():
        assert torch.equal(mine[name], value), name


def test_mixed_batch_beam_search_on_an_encoder_decoder():
    """T5: the decoder's rows are the beams, the encoder's the original rows (each sees its own names)."""
    torch.manual_seed(0)
    base = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0)).eval()
    torch.manual_seed(1)
    config = dict(target_modules=["q", "v"], n_frequency=64, scaling=80.0)
    model = fourierft.get_peft_model(base, peft.FourierFTConfig(**config))
    model.add_adapter("a", peft.FourierFTConfig(random_loc_seed=5, **config))
    model.eval()
    ids = torch.randint(1, 64, (3, 6), generator=torch.Generator().manual_seed(6))
    assert_generate_rows_equal_each_row_alone(model, ids, ["a", "__base__", "default"], max_new_tokens=4,
                                              do_sample=False, num_beams=2)
