"""Per-layer training-step cost: frozen base vs PEFT FourierFT vs our dense and spectral paths.

Measured side by side in one process, same inputs, interleaved repetitions, median time.
Each variant does forward + backward of one linear layer with a frozen base weight, the input
requiring grad (as for a layer inside a network) and, for the adapters, the spectrum requiring grad.

    .venv/bin/python benchmarks/bench_layer.py            # full table, writes docs/benchmarks-layer.md
    .venv/bin/python benchmarks/bench_layer.py --quick    # two shapes, prints only

The kernels come from the installed `fourierft` package (scripts/bootstrap.sh installs it into .venv).
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import peft
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear

ROOT = pathlib.Path(__file__).resolve().parents[1]
import fourierft  # noqa: E402,F401  (registers torch.ops.fourierft.*)
ops = torch.ops.fourierft


def make_variants(in_features: int, out_features: int, n: int):
    torch.manual_seed(0)
    config = peft.FourierFTConfig(n_frequency=n, scaling=150.0, target_modules=["x"])
    base = nn.Linear(in_features, out_features)
    base.requires_grad_(False)
    peft_layer = PeftFourierFTLinear(base, "default", config, n_frequency=n)
    spectrum = peft_layer.fourierft_spectrum["default"]
    indices = peft_layer.indices["default"]

    def frozen_base(x):
        return base(x)

    def peft_formula(x):
        return peft_layer(x)

    def ours_dense(x):
        dw = ops.delta_weight(spectrum, indices, out_features, in_features, 150.0)
        return base(x) + F.linear(x, dw)

    def ours_spectral(x):
        return base(x) + ops.spectral_linear(x, spectrum, indices, out_features, in_features, 150.0)

    return {
        "frozen base": frozen_base,
        "PEFT FourierFT": peft_formula,
        "ours dense": ours_dense,
        "ours spectral": ours_spectral,
    }, spectrum


def time_step(fn, x, grad_out, spectrum):
    start = time.perf_counter()
    y = fn(x)
    y.backward(grad_out)
    elapsed = time.perf_counter() - start
    x.grad = None
    spectrum.grad = None
    return elapsed


def measure(in_features, out_features, n, tokens, reps):
    variants, spectrum = make_variants(in_features, out_features, n)
    x = torch.randn(tokens, in_features, requires_grad=True)
    grad_out = torch.randn(tokens, out_features)
    times = {name: [] for name in variants}
    for name, fn in variants.items():  # warm-up
        time_step(fn, x, grad_out, spectrum)
    for _ in range(reps):  # interleaved so that machine noise hits every variant alike
        for name, fn in variants.items():
            times[name].append(time_step(fn, x, grad_out, spectrum))
    return {name: statistics.median(t) for name, t in times.items()}


def time_delta_weight(size, n, reps=5):
    _, spectrum = make_variants(size, size, n)
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
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-layer.md"))
    args = parser.parse_args()

    if args.quick:
        configs = [((768, 768), 1000, 2048), ((1024, 1024), 3000, 256)]
    else:
        shapes = [(768, 768), (1024, 1024), (3072, 768), (4096, 4096)]
        configs = [(s, n, t) for s in shapes for n in (1000, 3000) for t in (256, 2048)]

    header = (
        "| in x out | n | tokens | frozen base (ms) | PEFT FourierFT | ours dense | ours spectral | "
        "PEFT overhead | ours spectral overhead |"
    )
    rows = [header, "|" + "---|" * 9]
    print(header, flush=True)
    for (in_f, out_f), n, tokens in configs:
        reps = args.reps if in_f * out_f * tokens < 4096 * 4096 * 1024 else max(3, args.reps // 2)
        r = measure(in_f, out_f, n, tokens, reps)
        base = r["frozen base"]
        row = (
            f"| {in_f} x {out_f} | {n} | {tokens} | {base * 1e3:.2f} | "
            f"{r['PEFT FourierFT'] / base:.2f}x | {r['ours dense'] / base:.2f}x | {r['ours spectral'] / base:.2f}x | "
            f"+{(r['PEFT FourierFT'] / base - 1) * 100:.0f}% | +{(r['ours spectral'] / base - 1) * 100:.0f}% |"
        )
        rows.append(row)
        print(row, flush=True)

    dw_size = 1024 if args.quick else 4096
    dw = time_delta_weight(dw_size, 1000)
    dw_lines = [f"| {name} | {t * 1e3:.1f} |" for name, t in dw.items()]
    peft_t, ours_t = dw.values()
    print("\n".join(dw_lines), f"\nspeed-up {peft_t / ours_t:.2f}x")

    if args.quick:
        return
    command = "  .venv/bin/python benchmarks/bench_layer.py"
    text = f"""# Benchmarks

All numbers below come from one run of

```
{command}
```

on {datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}
(CPU, {torch.get_num_threads()} threads), peft {peft.__version__}. Times are medians of interleaved repetitions.

## Training step of one layer (forward + backward)

Frozen base weight, input requiring grad (a layer inside a network), spectrum requiring grad. Ratios are to
the frozen base layer alone (1.00x = free). "PEFT FourierFT" is the real `peft` `FourierFTLinear` (dense
`ifft2` + extra GEMM every step); "ours dense" materialises delta_W with our `irfft2` route and does one GEMM;
"ours spectral" is the matrix-free path that never allocates an out x in matrix.

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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
