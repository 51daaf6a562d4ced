"""The GPU benchmark: one adapted layer of a 3B model (Llama-3.2-3B's shapes), a bfloat16 base with PEFT's float32
adapters (what get_peft_model makes of a bf16 model), per training step and per inference call: the frozen layer,
PEFT's LoRA r=32, PEFT's FourierFT, and fourierft (the cost model's choice, and each route forced).

    python benchmarks/gpu.py                           # on a CUDA machine: writes docs/benchmarks-gpu.md and .json
    python benchmarks/gpu.py --out "$OUT/gpu.md"       # elsewhere (the lent machine's $OUT)
    python benchmarks/gpu.py --smoke --device cpu      # tiny shapes, a few rounds, prints only (run by the tests)

Each training step is forward + backward of the layer with the input requiring grad (a layer inside a network) and
the adapter's parameters requiring grad; an inference call is a forward under no_grad with the layer in eval().
The device is synchronised around every call. The frozen layer, LoRA and fourierft (auto) run in rounds, the order
rotated each round; ratios are medians over rounds of the per-round ratio with a 95% bootstrap interval; PEFT's
FourierFT and the forced routes run in their own passes after the rounds. Peak memory: the most the device
allocator held during one step beyond what it held before (CUDA only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys

import torch
from torch import nn

import peft
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear
from peft.tuners.lora.layer import Linear as LoraLinear

import fourierft

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_layer import median_interval, paired_ratios  # noqa: E402
from timing import rotated_rounds  # noqa: E402

SHAPES_3B = {"q/o": (3072, 3072), "k/v": (1024, 3072), "gate/up": (8192, 3072), "down": (3072, 8192)}
SMOKE_SHAPES = {"tiny": (48, 40), "wide": (96, 64)}
INTERLEAVED = ("frozen base", "LoRA r=32", "fourierft")


class Forced(nn.Module):
    """fourierft's layer with one route forced (fourierft.ops.linear_path) around each call."""

    def __init__(self, layer: nn.Module, route: str):
        super().__init__()
        self.layer, self.route = layer, route

    def forward(self, x):
        with fourierft.ops.linear_path(self.route):
            return self.layer(x)


def make_variants(out_features, in_features, n, device, dtype):
    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features).to(device, dtype).requires_grad_(False)
    config = peft.FourierFTConfig(n_frequency=n, scaling=300.0, target_modules=["x"])
    lora = LoraLinear(base, "default", config=peft.LoraConfig(r=32, lora_alpha=32, lora_dropout=0.0,
                                                             target_modules=["x"]), r=32, lora_alpha=32)
    nn.init.normal_(lora.lora_B["default"].weight, std=0.02)  # as after some training: B != 0
    ours = fourierft.FourierFTLinear(base, "default", config, n_frequency=n)
    variants = {"frozen base": base, "LoRA r=32": lora, "fourierft": ours,
                "PEFT FourierFT": PeftFourierFTLinear(base, "default", config, n_frequency=n),
                "fourierft spectral": Forced(ours, "spectral"), "fourierft dense": Forced(ours, "dense")}
    for layer in variants.values():  # adapters in float32 beside a half-precision base, as get_peft_model keeps them
        for p in layer.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return variants


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(layer, x, grad_out):
    layer(x).backward(grad_out)
    x.grad = None
    for p in layer.parameters():
        p.grad = None


def infer(layer, x):
    with torch.no_grad():
        layer(x)


def peak_bytes(call, device):
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure(variants, calls, device, reps, seconds):
    """Per-call seconds of every variant: INTERLEAVED in rotated rounds (at least `reps`, more until `seconds`,
    at most 500), the others in their own passes of as many calls (benchmarks/timing.py)."""
    return rotated_rounds({name: calls[name] for name in variants}, reps=reps, seconds=seconds, device=device,
                          apart=[name for name in variants if name not in INTERLEAVED], warmup=2)


def summarise(times):
    base = statistics.median(times["frozen base"])
    row = {"frozen_ms": 1e3 * base, "rounds": len(times["frozen base"])}
    for name, t in times.items():
        if name == "frozen base":
            continue
        if name in INTERLEAVED:
            row[name] = statistics.median(paired_ratios(t, times["frozen base"]))
        else:  # own pass: its median over the frozen layer's
            row[name] = statistics.median(t) / base
    ours_to_lora = paired_ratios(times["fourierft"], times["LoRA r=32"])
    row["fourierft / LoRA"] = statistics.median(ours_to_lora)
    row["interval"] = median_interval(ours_to_lora)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--reps", type=int, default=10, help="least rounds per configuration")
    parser.add_argument("--seconds", type=float, default=1.5, help="more rounds until this long per configuration")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 3 rounds, print only")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-gpu.md"))
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes, token_counts, ns = ((SMOKE_SHAPES, (5, 64), (30, 300)) if args.smoke else
                                (SHAPES_3B, (2048, 16384), (1000, 10000)))
    reps, seconds = (3, 0.0) if args.smoke else (args.reps, args.seconds)
    configs, train_rows, infer_rows = [], [], []
    for shape, (out_features, in_features) in shapes.items():
        for tokens in token_counts:
            for n in ns:
                variants = make_variants(out_features, in_features, n, device, dtype)
                x = torch.randn(tokens, in_features, device=device, dtype=dtype, requires_grad=True)
                grad_out = torch.randn(tokens, out_features, device=device, dtype=dtype)
                train = {name: (lambda layer=layer: train_step(layer, x, grad_out)) for name, layer in variants.items()}
                train_times = measure(variants, train, device, reps, seconds)
                memory = {name: peak_bytes(call, device) for name, call in train.items()}
                for layer in variants.values():
                    layer.eval()
                x_infer = x.detach()
                infer_calls = {name: (lambda layer=layer: infer(layer, x_infer)) for name, layer in variants.items()}
                infer_times = measure(variants, infer_calls, device, reps, seconds)
                routes = fourierft.ops.linear_routes(device, dtype, tokens, out_features, in_features, n)
                label = {"shape": shape, "out_features": out_features, "in_features": in_features, "tokens": tokens,
                         "n": n}
                train_rows.append({**label, **summarise(train_times), "routes": routes, "peak_bytes": memory})
                infer_rows.append({**label, **summarise(infer_times)})
                configs.append({**label, "routes": routes, "train_seconds": train_times,
                                "inference_seconds": infer_times, "train_peak_bytes": memory})
                print(format_row(train_rows[-1], True), flush=True)
                print(format_row(infer_rows[-1], False), flush=True)
                del variants, train, infer_calls
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    text = page(args, device, dtype, train_rows, infer_rows)
    print(text)
    if args.smoke or device.type != "cuda":
        print("(smoke or non-CUDA run: printed only)")
        return 0
    out = pathlib.Path(args.out)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({
        "command": "python benchmarks/gpu.py", "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "dtype": args.dtype, "configurations": configs}, indent=1) + "\n")
    return 0


def format_row(row, training):
    cells = [row["shape"], str(row["tokens"]), str(row["n"]), f"{row['frozen_ms']:.3f}"]
    cells += [f"{row[name]:.2f}x" for name in ("LoRA r=32", "PEFT FourierFT", "fourierft", "fourierft spectral",
                                              "fourierft dense")]
    low, high = row["interval"]
    cells.append(f"{row['fourierft / LoRA']:.3f} [{low:.3f}, {high:.3f}]")
    if training:
        cells.append(", ".join(f"{k} {v}" for k, v in row["routes"].items()))
    return "| " + " | ".join(cells) + " |"


def page(args, device, dtype, train_rows, infer_rows):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    head = ("| layer | tokens | n | frozen (ms) | LoRA r=32 | PEFT FourierFT | fourierft | fourierft spectral | "
            "fourierft dense | fourierft / LoRA [95%] |")
    lines = [
        "# GPU benchmark: one layer of a 3B model", "",
        f"`python benchmarks/gpu.py` on {datetime.date.today().isoformat()}, {name}, torch {torch.__version__}"
        f" (CUDA {torch.version.cuda}), {args.dtype} base, float32 adapters (raw per-call times: benchmarks-gpu.json)."
        " Ratios to the frozen layer (1.00x = free); the frozen layer, LoRA and fourierft in rotated rounds (medians of"
        " per-round ratios), PEFT FourierFT and the forced routes in their own passes.", "",
        "## Training step (forward + backward)", "", head + " routes (cost model) |", "|" + "---|" * 11]
    lines += [format_row(r, True) for r in train_rows]
    lines += ["", "## Inference (no_grad, eval, unmerged)", "", head, "|" + "---|" * 10]
    lines += [format_row(r, False) for r in infer_rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
