"""Serving many adapters from one model (issue "Deployment and serving"): a LLaMA-shaped model (hidden 1024,
random weights), a batch of 64 rows x 128 tokens, q/v adapters.

Measured side by side in one run, inference (no_grad): the configurations run in rounds, one batch each, the order
rotated every round (at least --reps rounds), and each is reported as the median; throughput ratios are medians
of per-round ratios (the two runs of a round are back to back, so the machine's drift cancels). The raw per-round
times go to docs/benchmarks-serving.json beside the page.
- fourierft: 64 distinct FourierFT adapters in one batch (adapter_names, one per row) vs one adapter for all rows;
- PEFT LoRA r=8 with the same mixed batch vs one adapter for all rows;
- the frozen base model.
Then the memory of 1,000 resident FourierFT adapters (bytes of their spectra and entry indices).

    .venv/bin/python benchmarks/serving.py            # writes docs/benchmarks-serving.md and .json
    .venv/bin/python benchmarks/serving.py --device cuda --no-write
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import peft
import torch
import transformers

import fourierft
from timing import rotated_rounds

ROOT = pathlib.Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, ROWS, TOKENS, ADAPTERS, RESIDENT = 1024, 2, 64, 128, 64, 1000
TARGETS = ["q_proj", "v_proj"]


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=HIDDEN, intermediate_size=2816, num_hidden_layers=LAYERS,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=TOKENS)).eval()


def rounds(fns: dict, reps: int, device: str) -> dict:
    """Per-round seconds of every configuration: one call each per round, the order rotated, after a warm-up
    (benchmarks/timing.py), without autograd."""
    with torch.no_grad():
        return rotated_rounds(fns, reps=reps, max_rounds=reps, device=device)


def ratio(numerator: list, denominator: list) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def with_adapters(build, config_of, count, device="cpu"):
    model = build(base_model().to(device), config_of(0))
    for i in range(1, count):
        torch.manual_seed(i)
        model.add_adapter(f"a{i}", config_of(i))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9, help="rounds (one batch per configuration each)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: cuda when torch sees a GPU, else cpu)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.manual_seed(0)
    ids = torch.randint(0, 512, (ROWS, TOKENS)).to(args.device)
    mixed = ["default"] + [f"a{i}" for i in range(1, ADAPTERS)]

    base = base_model().to(args.device)
    fourier = with_adapters(fourierft.get_peft_model,
                            lambda i: peft.FourierFTConfig(target_modules=TARGETS, n_frequency=1000, scaling=150.0,
                                                           random_loc_seed=777 + i), ADAPTERS, args.device)
    with fourierft.registered(False):
        lora = with_adapters(peft.get_peft_model,
                             lambda i: peft.LoraConfig(target_modules=TARGETS, r=8, lora_alpha=16,
                                                       init_lora_weights=False), ADAPTERS, args.device)
    times = rounds({
        "frozen base": lambda: base(ids).logits,
        "fourierft, one adapter for all rows": lambda: fourier(ids).logits,
        f"fourierft, {ADAPTERS} adapters in one batch": lambda: fourier(ids, adapter_names=mixed).logits,
        "PEFT LoRA r=8, one adapter for all rows": lambda: lora(ids).logits,
        f"PEFT LoRA r=8, {ADAPTERS} adapters in one batch": lambda: lora(ids, adapter_names=mixed).logits,
    }, args.reps, args.device)
    rows = {name: statistics.median(t) for name, t in times.items()}

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

    single_f, mixed_f = "fourierft, one adapter for all rows", f"fourierft, {ADAPTERS} adapters in one batch"
    single_l, mixed_l = "PEFT LoRA r=8, one adapter for all rows", f"PEFT LoRA r=8, {ADAPTERS} adapters in one batch"
    mixed_vs_single_f = ratio(times[single_f], times[mixed_f])
    mixed_vs_single_l = ratio(times[single_l], times[mixed_l])
    lines = [
        f"# Serving many adapters ({args.device})",
        "",
        f"`.venv/bin/python benchmarks/serving.py --reps {args.reps}`, one run on this machine "
        f"({torch.get_num_threads()} threads; raw per-round times in benchmarks-serving.json): LLaMA-shaped model "
        f"(hidden {HIDDEN}, {LAYERS} layers, random weights), {ROWS} rows x {TOKENS} tokens, adapters on "
        f"{', '.join(TARGETS)}, FourierFT n=1000, inference; {args.reps} rounds of one batch per configuration in "
        "rotated order, medians.",
        "",
        "| configuration | seconds per batch (median) | tokens/s | vs the frozen base (time) | "
        "throughput vs one adapter |",
        "|---|---|---|---|---|",
    ]
    for name, seconds in rows.items():
        reference = single_f if name.startswith("fourierft") else single_l if name.startswith("PEFT") else name
        lines.append(f"| {name} | {seconds:.3f} | {ROWS * TOKENS / seconds:,.0f} | "
                     f"{ratio(times[name], times['frozen base']):.3f}x | {ratio(times[reference], times[name]):.0%} |")
    lines += [
        "",
        f"Goal: {ADAPTERS} distinct adapters in one batch at >= 90% of single-adapter throughput (median of per-round "
        f"ratios). fourierft: {mixed_vs_single_f:.0%} ({'met' if mixed_vs_single_f >= 0.9 else 'not met'}); "
        f"PEFT LoRA r=8: {mixed_vs_single_l:.0%}.",
        "",
        f"{RESIDENT:,} resident FourierFT adapters (q/v of {LAYERS} layers, n=1000): {resident_bytes / 2**20:.1f} MiB "
        f"of spectra and entry indices ({spectra_bytes / 2**20:.1f} MiB of it spectra; adapters with the same seed share "
        f"one index tensor per layer), {resident_bytes / RESIDENT / 1024:.1f} KiB per adapter.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_write:
        return
    (ROOT / "docs" / "benchmarks-serving.md").write_text(text)
    raw = {"command": f"benchmarks/serving.py --reps {args.reps}", "device": args.device,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "seconds_per_round": times,
           "resident_adapters": RESIDENT, "resident_bytes": resident_bytes, "spectra_bytes": spectra_bytes}
    (ROOT / "docs" / "benchmarks-serving.json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
