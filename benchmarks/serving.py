"""Serving many adapters from one model (issue "Deployment and serving"): a LLaMA-shaped model (hidden 1024,
random weights), a batch of 64 rows x 128 tokens, q/v adapters.

Measured side by side in one run, inference (no_grad), median of repeats:
- fourierft: 64 distinct FourierFT adapters in one batch (adapter_names, one per row) vs one adapter for all rows;
- PEFT LoRA r=8 with the same mixed batch vs one adapter for all rows;
- the frozen base model.
Then the memory of 1,000 resident FourierFT adapters (bytes of their spectra and entry indices).

    .venv/bin/python benchmarks/serving.py            # writes docs/benchmarks-serving.md
"""
from __future__ import annotations

import pathlib
import statistics
import time

import peft
import torch
import transformers

import fourierft

ROOT = pathlib.Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, ROWS, TOKENS, ADAPTERS, RESIDENT = 1024, 2, 64, 128, 64, 1000
TARGETS = ["q_proj", "v_proj"]


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=HIDDEN, intermediate_size=2816, num_hidden_layers=LAYERS,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=TOKENS)).eval()


def timed(fn, repeats=3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_adapters(build, config_of, count):
    model = build(base_model(), config_of(0))
    for i in range(1, count):
        torch.manual_seed(i)
        model.add_adapter(f"a{i}", config_of(i))
    return model.eval()


def main() -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 512, (ROWS, TOKENS))
    mixed = ["default"] + [f"a{i}" for i in range(1, ADAPTERS)]
    rows = {}

    base = base_model()
    with torch.no_grad():
        rows["frozen base"] = timed(lambda: base(ids).logits)

    fourier = with_adapters(fourierft.get_peft_model,
                            lambda i: peft.FourierFTConfig(target_modules=TARGETS, n_frequency=1000, scaling=150.0,
                                                           random_loc_seed=777 + i), ADAPTERS)
    with torch.no_grad():
        rows["fourierft, one adapter for all rows"] = timed(lambda: fourier(ids).logits)
        rows[f"fourierft, {ADAPTERS} adapters in one batch"] = timed(lambda: fourier(ids, adapter_names=mixed).logits)

    with fourierft.registered(False):
        lora = with_adapters(peft.get_peft_model,
                             lambda i: peft.LoraConfig(target_modules=TARGETS, r=8, lora_alpha=16,
                                                       init_lora_weights=False), ADAPTERS)
    with torch.no_grad():
        rows["PEFT LoRA r=8, one adapter for all rows"] = timed(lambda: lora(ids).logits)
        rows[f"PEFT LoRA r=8, {ADAPTERS} adapters in one batch"] = timed(lambda: lora(ids, adapter_names=mixed).logits)

    # 1,000 resident adapters: what they add in memory (spectra + entry indices, shared where seeds agree)
    resident = with_adapters(fourierft.get_peft_model,
                             lambda i: peft.FourierFTConfig(target_modules=TARGETS, n_frequency=1000, scaling=150.0),
                             RESIDENT)
    storages = {}
    for module in resident.modules():
        if isinstance(module, fourierft.FourierFTLinear):
            for tensor in list(module.fourierft_spectrum.values()) + list(module.indices.values()):
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    resident_bytes = sum(storages.values())
    spectra_bytes = sum(p.numel() * p.element_size() for n, p in resident.named_parameters() if "fourierft_spectrum" in n)

    single_f = rows["fourierft, one adapter for all rows"]
    mixed_f = rows[f"fourierft, {ADAPTERS} adapters in one batch"]
    single_l = rows["PEFT LoRA r=8, one adapter for all rows"]
    mixed_l = rows[f"PEFT LoRA r=8, {ADAPTERS} adapters in one batch"]
    lines = [
        "# Serving many adapters (CPU)",
        "",
        f"`.venv/bin/python benchmarks/serving.py`, one run on this machine ({torch.get_num_threads()} threads): "
        f"LLaMA-shaped model (hidden {HIDDEN}, {LAYERS} layers, random weights), {ROWS} rows x {TOKENS} tokens, "
        f"adapters on {', '.join(TARGETS)}, FourierFT n=1000, inference, median of 3.",
        "",
        "| configuration | seconds per batch | tokens/s | throughput vs one adapter |",
        "|---|---|---|---|",
    ]
    for name, seconds in rows.items():
        reference = single_f if name.startswith("fourierft") else single_l if name.startswith("PEFT") else seconds
        lines.append(f"| {name} | {seconds:.3f} | {ROWS * TOKENS / seconds:,.0f} | {reference / seconds:.0%} |")
    lines += [
        "",
        f"Goal: {ADAPTERS} distinct adapters in one batch at >= 90% of single-adapter throughput. "
        f"fourierft: {single_f / mixed_f:.0%} ({'met' if single_f / mixed_f >= 0.9 else 'not met'}); "
        f"PEFT LoRA r=8: {single_l / mixed_l:.0%}.",
        "",
        f"{RESIDENT:,} resident FourierFT adapters (q/v of {LAYERS} layers, n=1000): {resident_bytes / 2**20:.1f} MiB "
        f"of spectra and entry indices ({spectra_bytes / 2**20:.1f} MiB of it spectra; adapters with the same seed share "
        f"one index tensor per layer), {resident_bytes / RESIDENT / 1024:.1f} KiB per adapter.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "docs" / "benchmarks-serving.md").write_text(text)


if __name__ == "__main__":
    main()
