"""Peak memory and step time of a training step of a Llama-shaped model on a 4-bit base: fourierft vs PEFT's own
FourierFT vs PEFT's LoRA r=8 (QLoRA) on the same nf4 base, and both methods on the bf16 base, side by side in one run.

    .venv/bin/python benchmarks/quantized.py                # writes docs/benchmarks-quantized.{json,md}
    .venv/bin/python benchmarks/quantized.py --layers 2 --tokens 64 --steps 2 --out /tmp/q   # a quick run

Every variant runs in a process of its own (python benchmarks/quantized.py --variant NAME), so that one variant's
memory never counts against another's. The model: transformers' LlamaForCausalLM, random weights (no download),
hidden 2048, MLP 5632, 16 heads, 4 key/value heads, vocabulary 1024; the 4-bit base is bitsandbytes' nf4 with double
quantization and bf16 compute (QLoRA's settings), every projection of every layer quantized; adapters on every
projection (q, k, v, o, gate, up, down), float32 as PEFT makes them. One step: forward with labels (causal LM loss),
backward, AdamW step, zero_grad. Memory: the process's resident set (Linux VmHWM, reset after the model is built), so
"resident" is the model as built and "step peak" the most the process held during the timed steps; both include
what PyTorch's CPU allocator keeps. Times: the median of the timed steps after one warm-up step.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

VARIANTS = {
    # name: (method, base)
    "frozen nf4 base (forward only)": ("frozen", "nf4"),
    "fourierft, nf4 base": ("fourierft", "nf4"),
    "PEFT FourierFT, nf4 base": ("peft-fourierft", "nf4"),
    "PEFT LoRA r=8, nf4 base (QLoRA)": ("lora", "nf4"),
    "fourierft, bf16 base": ("fourierft", "bf16"),
    "PEFT LoRA r=8, bf16 base": ("lora", "bf16"),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _status(key: str) -> int:
    """A /proc/self/status entry in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def build(method: str, base: str, args):
    import peft
    import torch
    import transformers

    import fourierft

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=1024, hidden_size=args.width, intermediate_size=args.mlp,
                                      num_hidden_layers=args.layers, num_attention_heads=16, num_key_value_heads=4,
                                      max_position_embeddings=args.tokens)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if base == "nf4":
        import bitsandbytes as bnb

        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, linear in list(parent.named_children()):
                    if not isinstance(linear, torch.nn.Linear):
                        continue
                    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                          compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
                    q.load_state_dict({"weight": linear.weight.data})
                    setattr(parent, name, q.to("cpu"))
                    del linear
    if method == "frozen":
        model.requires_grad_(False)
        return model
    if method == "lora":
        lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS)
        with fourierft.registered(False):
            return peft.get_peft_model(model, lora)
    spec = peft.FourierFTConfig(n_frequency=args.n_frequency, scaling=150.0, target_modules=TARGETS)
    if method == "peft-fourierft":
        with fourierft.registered(False):
            return peft.get_peft_model(model, spec)
    return fourierft.get_peft_model(model, spec)


def run_variant(name: str, args) -> dict:
    import torch

    torch.manual_seed(0)
    method, base = VARIANTS[name]
    rss_start = _status("VmRSS")
    model = build(method, base, args)
    ids = torch.randint(0, 1024, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    resident = _status("VmRSS")
    _reset_peak()
    times = []
    for step in range(args.steps + 1):
        began = time.perf_counter()
        if optimizer is None:
            with torch.no_grad():
                model(input_ids=ids)
        else:
            model.train()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - began)
    peak = _status("VmHWM")
    return {"variant": name, "method": method, "base": base,
            "trainable_params": sum(p.numel() for p in params),
            "resident_bytes": resident, "step_peak_bytes": peak, "process_start_bytes": rss_start,
            "step_seconds": statistics.median(times), "step_seconds_all": times}


def table(records: list[dict]) -> str:
    by_name = {r["variant"]: r for r in records}
    qlora = by_name.get("PEFT LoRA r=8, nf4 base (QLoRA)")
    lines = ["| variant | trainable | resident after build (MiB) | step peak (MiB) | peak - resident (MiB) | "
             "step peak / QLoRA's | step (s) | step / QLoRA's |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        mib = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
        ratio_peak = f"{r['step_peak_bytes'] / qlora['step_peak_bytes']:.2f}" if qlora else "-"
        ratio_time = f"{r['step_seconds'] / qlora['step_seconds']:.2f}" if qlora else "-"
        lines.append(f"| {r['variant']} | {r['trainable_params']:,} | {mib(r['resident_bytes'])} | "
                     f"{mib(r['step_peak_bytes'])} | {mib(r['step_peak_bytes'] - r['resident_bytes'])} | {ratio_peak} | "
                     f"{r['step_seconds']:.2f} | {ratio_time} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default: 4)")
    parser.add_argument("--width", type=int, default=2048, help="hidden size (default: 2048)")
    parser.add_argument("--mlp", type=int, default=5632, help="MLP width (default: 5632)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per step, batch 1 (default: 128)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default: 3)")
    parser.add_argument("--n-frequency", type=int, default=1000, help="FourierFT n per layer (default: 1000)")
    parser.add_argument("--out", default="docs/benchmarks-quantized", help="writes OUT.json and OUT.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in this process: prints its JSON
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return 0
    records = []
    for name in VARIANTS:
        command = [sys.executable, __file__, "--variant", name, *[a for a in (argv or sys.argv[1:])]]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "0"})
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        records.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = records[-1]
        print(f"{name}: step peak {r['step_peak_bytes'] / 2**20:,.0f} MiB, {r['step_seconds']:.2f} s/step", flush=True)
    import torch

    settings = {k: v for k, v in vars(args).items() if k not in ("variant", "out")}
    data = {"command": "python benchmarks/quantized.py " + " ".join(argv or sys.argv[1:]), "settings": settings,
            "torch": torch.__version__, "machine": f"{os.cpu_count()} CPU cores, no GPU", "records": records}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        "# Training on a 4-bit base: memory and step time\n\n"
        f"`{data['command'].strip()}` on {data['machine']} (torch {data['torch']}); settings: "
        f"{json.dumps(settings)}. Raw numbers: [{out.with_suffix('.json').name}]({out.with_suffix('.json').name}). "
        "What is measured: see the docstring of benchmarks/quantized.py.\n\n" + table(records) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
