"""Per-layer training-step cost: frozen base vs LoRA r=8 vs PEFT FourierFT vs fourierft.

Measured side by side in one process, same inputs: the frozen layer, LoRA and ours in rounds (order rotated),
ratios as medians of per-round ratios with a 95% bootstrap interval; PEFT FourierFT in its own pass.
Each variant does forward + backward of one linear layer with a frozen base weight, the input
requiring grad (as for a layer inside a network) and, for the adapters, the spectrum requiring grad.

    .venv/bin/python benchmarks/bench_layer.py            # full table, writes docs/benchmarks-layer.md (+ .json)
    .venv/bin/python benchmarks/bench_layer.py --quick    # two shapes, prints only

The kernels come from the installed `fourierft` package (scripts/bootstrap.sh installs it into .venv).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import resource
import statistics
import sys
import time

import torch
from torch import nn

import peft
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear
from peft.tuners.lora.layer import Linear as LoraLinear

ROOT = pathlib.Path(__file__).resolve().parents[1]
import fourierft  # noqa: E402,F401  (registers torch.ops.fourierft.*)
from timing import rotated_rounds  # noqa: E402
ops = torch.ops.fourierft


def make_variants(in_features: int, out_features: int, n: int, with_peft: bool = True, device="cpu",
                  dtype=torch.float32):
    """One layer per method around the same frozen nn.Linear, each built by its own package's layer class:
    PEFT's LoRA Linear (r=8, alpha=8, no dropout), PEFT's FourierFTLinear, and fourierft.FourierFTLinear
    (PEFT's layer class on our kernels: the whole layer runs as fourierft.ops.linear)."""
    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features).to(device, dtype)
    base.requires_grad_(False)
    config = peft.FourierFTConfig(n_frequency=n, scaling=150.0, target_modules=["x"])
    lora = LoraLinear(base, "default", config=peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["x"]),
                      r=8, lora_alpha=8)
    nn.init.normal_(lora.lora_B["default"].weight, std=0.02)  # as after some training: B != 0
    ours = fourierft.FourierFTLinear(base, "default", config, n_frequency=n)
    variants = {"frozen base": base, "LoRA r=8": lora}
    if with_peft:
        variants["PEFT FourierFT"] = PeftFourierFTLinear(base, "default", config, n_frequency=n)
    variants["fourierft"] = ours
    for layer in variants.values():  # adapters in float32 beside a half-precision base, as get_peft_model makes them
        for p in trainable(layer):
            p.data = p.data.float()
    return variants


def trainable(layer):
    return [p for p in layer.parameters() if p.requires_grad]


# glibc's malloc hands blocks above a moving threshold (128 KiB, raised as such blocks are freed) to mmap and
# trims freed memory at the heap's top: then a step that frees and reallocates a few MiB page-faults them back in.
# Measured with the default settings (width 1024, 2048 tokens): LoRA r=8 took 5000-7000 minor faults per step in
# one process and none in another, its step 1.44x or 1.25x the frozen layer's; ours none. Fixed thresholds keep
# freed memory in the heap (the steady state a long training loop reaches), so every variant is timed without
# that lottery. --default-malloc times glibc as it comes.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def saved_bytes(layer, x):
    """Bytes of the tensors the training step keeps for backward beyond the base layer's parameters (unique
    storages; the input counts: the frozen layer alone does not keep it) plus trainable parameters with
    their gradients and two AdamW moments."""
    params = {p.data_ptr() for p in layer.parameters()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values()) + 4 * sum(p.numel() * p.element_size() for p in trainable(layer))


def measure(in_features, out_features, n, tokens, reps, seconds, with_peft=True, device="cpu", dtype=torch.float32):
    """Per-step times of every variant. The frozen layer, LoRA and ours run in rounds, one step each, the
    order rotated from round to round (the variant after another runs with its caches and pages disturbed);
    at least `reps` rounds, and more until `seconds` have passed (at most 500 rounds): a 0.2 ms step needs
    hundreds of repetitions for a stable median, a 200 ms step a few."""
    variants = make_variants(in_features, out_features, n, with_peft, device, dtype)
    x = torch.randn(tokens, in_features, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(tokens, out_features, device=device, dtype=dtype)
    faults = {name: [] for name in variants}
    last_faults = [resource.getrusage(resource.RUSAGE_SELF).ru_minflt]

    def after(name):  # drop the step's gradients; count its minor page faults (since the previous call ended)
        x.grad = None
        for p in trainable(variants[name]):
            p.grad = None
        now = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        faults[name].append(now - last_faults[0])
        last_faults[0] = now

    # PEFT FourierFT runs in its own pass: its dense out x in complex temporaries evict the caches and return
    # pages to the OS, which slowed whatever ran next by up to 15% (measured at width 256 and 2048, 128 tokens)
    # and would not happen in a model without PEFT's layers.
    steps = {name: (lambda layer=layer: layer(x).backward(grad_out)) for name, layer in variants.items()}
    times = rotated_rounds(steps, reps=reps, seconds=seconds, device=x.device, apart=["PEFT FourierFT"], after=after)
    faults = {name: counts[1:] for name, counts in faults.items()}  # without the warm-up step's
    memory = {name: saved_bytes(layer, x) for name, layer in variants.items()}
    return times, memory, faults


def paired_ratios(numerator, denominator):
    """numerator[i] / denominator[i] per round: the two steps of one round ran back to back, so the machine's
    drift cancels."""
    return [a / b for a, b in zip(numerator, denominator)]


def median_interval(ratios, resamples=2000):
    """95% bootstrap interval of the median of `ratios` (fixed seed: reproducible)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def time_delta_weight(size, n, reps=5):
    config = peft.FourierFTConfig(n_frequency=n, scaling=150.0, target_modules=["x"])
    layer = PeftFourierFTLinear(nn.Linear(size, size), "default", config, n_frequency=n)
    spectrum = layer.fourierft_spectrum["default"].detach()
    indices = layer.indices["default"]
    results = {"PEFT get_delta_weight (complex ifft2)": [], "ours delta_weight (irfft2)": []}
    with torch.no_grad():
        layer.get_delta_weight("default")
        ops.delta_weight(spectrum, indices, size, size, 150.0)
        for _ in range(reps):
            t0 = time.perf_counter()
            layer.get_delta_weight("default")
            t1 = time.perf_counter()
            ops.delta_weight(spectrum, indices, size, size, 150.0)
            t2 = time.perf_counter()
            results["PEFT get_delta_weight (complex ifft2)"].append(t1 - t0)
            results["ours delta_weight (irfft2)"].append(t2 - t1)
    return {k: statistics.median(v) for k, v in results.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two configurations, print only")
    parser.add_argument("--reps", type=int, default=7, help="least rounds per configuration")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="more rounds until this long has passed per configuration (at most 500 rounds)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-layer.md"))
    parser.add_argument("--default-malloc", action="store_true",
                        help="time with glibc malloc's default (moving) thresholds instead of pinned ones")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the layers run (default: cuda when torch sees a GPU, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the base layer's and the input's dtype (adapters stay float32, as get_peft_model "
                             "keeps them)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in PINNED_MALLOC.items()):
        # The thresholds are read when the process starts: run again with them set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_MALLOC})

    if args.quick:
        configs = [(768, 1000, 2048), (4096, 1000, 128)]
    else:
        # Every width 256..8192 at about 2M token x width (the table) and at 128 tokens, n = 1000;
        # n = 100 and n = 10% of the entries at three widths.
        configs = [(256, 1000, 8192), (384, 1000, 4096), (768, 1000, 2048), (1024, 1000, 2048), (2048, 1000, 1024),
                   (4096, 1000, 512), (8192, 1000, 256),
                   (256, 1000, 128), (768, 1000, 128), (2048, 1000, 128), (4096, 1000, 128), (8192, 1000, 128),
                   (384, 100, 4096), (1024, 100, 1024), (4096, 100, 512),
                   (384, 14746, 4096), (1024, 104858, 1024), (2048, 419430, 256)]
    header = ("| width | n | tokens | rounds | frozen base (ms) | LoRA r=8 | PEFT FourierFT | fourierft | "
              "fourierft / LoRA [95% interval] | | page faults per step: LoRA / fourierft | "
              "added memory: LoRA / PEFT FourierFT / fourierft (MiB) |")
    rows = [header, "|" + "---|" * 12]
    print(header, flush=True)
    verdicts = {"below": 0, "tie": 0, "above": 0}
    raw = []  # every configuration's per-round seconds, written beside the page
    for width, n, tokens in configs:
        with_peft = width <= 4096  # PEFT's dense complex spectrum at 8192^2 is 512 MiB per step
        times, memory, faults = measure(width, width, n, tokens, args.reps, args.seconds, with_peft, args.device,
                                        dtype)
        base = statistics.median(times["frozen base"])
        lora = statistics.median(paired_ratios(times["LoRA r=8"], times["frozen base"]))
        ours = statistics.median(paired_ratios(times["fourierft"], times["frozen base"]))
        ours_to_lora = paired_ratios(times["fourierft"], times["LoRA r=8"])
        ratio, (low, high) = statistics.median(ours_to_lora), median_interval(ours_to_lora)
        verdict = "below" if high < 1.0 else "above" if low > 1.0 else "tie"
        verdicts[verdict] += 1
        peft_cell = f"{statistics.median(times['PEFT FourierFT']) / base:.2f}x" if with_peft else "—"
        peft_mem = f"{memory['PEFT FourierFT'] / 2**20:.1f}" if with_peft else "—"
        row = (f"| {width} | {n} | {tokens} | {len(times['frozen base'])} | {base * 1e3:.2f} | {lora:.3f}x | "
               f"{peft_cell} | {ours:.3f}x | {ratio:.3f} [{low:.3f}, {high:.3f}] | {verdict} | "
               f"{statistics.median(faults['LoRA r=8']):.0f} / {statistics.median(faults['fourierft']):.0f} | "
               f"{memory['LoRA r=8'] / 2**20:.1f} / {peft_mem} / {memory['fourierft'] / 2**20:.1f} |")
        rows.append(row)
        print(row, flush=True)
        raw.append({"width": width, "n": n, "tokens": tokens, "seconds_per_round": times,
                    "added_bytes": memory, "page_faults_per_step": faults, "verdict": verdict})
    summary = (f"fourierft below LoRA r=8 in {verdicts['below']} of {len(configs)} configurations, tied (the interval "
               f"contains 1) in {verdicts['tie']}, above in {verdicts['above']}")
    print(summary, flush=True)

    dw_size = 1024 if args.quick else 4096
    dw = time_delta_weight(dw_size, 1000)
    dw_lines = [f"| {name} | {t * 1e3:.1f} |" for name, t in dw.items()]
    peft_t, ours_t = dw.values()
    print("\n".join(dw_lines), f"\nspeed-up {peft_t / ours_t:.2f}x")

    if args.quick:
        return
    if args.device != "cpu" or dtype != torch.float32:
        print("(docs/benchmarks-layer.md holds the CPU float32 run; this run is printed only)")
        return
    command = "  .venv/bin/python benchmarks/bench_layer.py" + (" --default-malloc" if args.default_malloc else "")
    malloc_note = ("glibc malloc with its default thresholds" if args.default_malloc else
                   "glibc malloc with fixed thresholds (" + ", ".join(f"{k}={v}" for k, v in PINNED_MALLOC.items()) +
                   ": freed memory stays in the heap, the steady state of a long training loop; with the moving "
                   "default, a layer's step could page-fault its temporaries back in every time in one process and "
                   "never in another — `--default-malloc` times that)")
    text = f"""# Benchmarks

All numbers below come from one run of

```
{command}
```

on {datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}
(CPU, {torch.get_num_threads()} threads), peft {peft.__version__}.

## Training step of one layer (forward + backward), square layers

Frozen base weight, input requiring grad (a layer inside a network), adapter parameters requiring grad.
Layers: PEFT's LoRA `Linear` (r=8), PEFT's `FourierFTLinear` (dense `ifft2` + extra GEMM every step), and
`fourierft.FourierFTLinear` (the whole layer as `fourierft.ops.linear`: the cost model picks the spectral
pipeline, one GEMM with W + delta_W or the folded half-spectrum GEMMs, forward and backward separately).
The frozen layer, LoRA and ours run in rounds of one step each, the order rotated every round, at least
{args.reps} rounds and more until {args.seconds:g} s have passed (at most 500). Ratios to the frozen layer (1.00x = free)
and "fourierft / LoRA" are medians over rounds of the two steps' ratio within a round (the machine's drift
cancels); the interval is a 95% bootstrap interval of that median: "below" / "above" when it excludes 1, "tie"
when the two are not told apart by this run. PEFT FourierFT is timed in its own pass after the rounds (its dense
temporaries slowed whichever layer ran next): the median of that pass over the frozen layer's median.
Memory allocation: {malloc_note}. "Page faults per step": median minor faults of one step.
Added memory: tensors kept for backward beyond the layer's parameters (the input included) plus trainable
parameters with gradient and two AdamW moments.
{summary}.

{chr(10).join(rows)}

## delta_W for a {dw_size} x {dw_size} layer (n = 1000), merge / get_delta_weight

| route | ms |
|---|---|
{chr(10).join(dw_lines)}

Speed-up of the real-FFT route: {peft_t / ours_t:.2f}x.
"""
    # Hand-written analysis below the marker survives a re-run.
    out = pathlib.Path(args.out)
    marker = "<!-- notes: kept across runs -->"
    if out.exists() and marker in out.read_text():
        text += "\n" + marker + out.read_text().split(marker, 1)[1]
    out.write_text(text)
    raw_path = out.with_suffix(".json")
    raw_path.write_text(json.dumps({"command": command.strip(), "date": datetime.date.today().isoformat(),
                                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "configurations": raw, "delta_weight_seconds": dw}, indent=1) + "\n")
    print(f"wrote {args.out} and {raw_path}")


if __name__ == "__main__":
    sys.exit(main())
