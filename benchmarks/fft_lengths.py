"""Real FFT cost per point by transform length, on this CPU: what the row transforms of the spectral pipeline cost
for a layer of that width (fourierft's CPU kernels call the same `at::_fft_r2c` / `_fft_c2r` as torch.fft).

    .venv/bin/python benchmarks/fft_lengths.py     # prints the table, writes docs/fft-lengths.json

Rows of 256 (a 2 x 128-token batch), float32; r2c (rfft) and c2r (irfft) of every length in rounds, the order
rotated each round, medians over rounds. Lengths: powers of two, 3 x 2^k (3072, 6144), and LLaMA-7B's MLP side
11008 = 2^8 x 43 with its half 5504 = 2^7 x 43 (the LLaMA-shaped benchmark of docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import statistics
import sys

import torch

from timing import rotated_rounds

ROOT = pathlib.Path(__file__).resolve().parents[1]
LENGTHS = (1024, 2048, 3072, 4096, 5504, 6144, 8192, 11008)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    inputs = {n: torch.randn(args.rows, n) for n in LENGTHS}
    spectra = {n: torch.fft.rfft(inputs[n], dim=1) for n in LENGTHS}
    calls = {}
    for n in LENGTHS:
        calls[(n, "r2c")] = lambda n=n: torch.fft.rfft(inputs[n], dim=1)
        calls[(n, "c2r")] = lambda n=n: torch.fft.irfft(spectra[n], n=n, dim=1)
    # five transforms per timed call; the first call of each (plans, allocations) untimed
    fives = {key: (lambda call=call: [call() for _ in range(5)]) for key, call in calls.items()}
    seconds = {key: [t / 5 for t in times]
               for key, times in rotated_rounds(fives, reps=args.rounds, max_rounds=args.rounds).items()}
    rows = []
    for n in LENGTHS:
        entry = {"length": n, "factors": factorise(n)}
        for kind in ("r2c", "c2r"):
            median = statistics.median(seconds[(n, kind)])
            entry[f"{kind}_ms"] = median * 1e3
            entry[f"{kind}_ns_per_point"] = median * 1e9 / (args.rows * n)
            entry[f"{kind}_ns_per_point_log2"] = median * 1e9 / (args.rows * n * math.log2(n))
        rows.append(entry)
    lines = ["| length | factors | rfft ns/point | irfft ns/point | rfft ns/(point log2 n) | irfft ns/(point log2 n) |",
             "|---:|---|---:|---:|---:|---:|"]
    for e in rows:
        lines.append(f"| {e['length']} | {e['factors']} | {e['r2c_ns_per_point']:.2f} | {e['c2r_ns_per_point']:.2f} | "
                     f"{e['r2c_ns_per_point_log2']:.3f} | {e['c2r_ns_per_point_log2']:.3f} |")
    print("\n".join(lines))
    if not args.no_write:
        result = {"command": "python benchmarks/fft_lengths.py", "date": str(datetime.date.today()),
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": args.rows,
                  "rounds": args.rounds, "lengths": rows,
                  "seconds_per_call": {f"{n}/{kind}": s for (n, kind), s in seconds.items()}}
        (ROOT / "docs" / "fft-lengths.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def factorise(n: int) -> str:
    factors, p = [], 2
    while n > 1:
        count = 0
        while n % p == 0:
            n //= p
            count += 1
        if count:
            factors.append(f"{p}^{count}" if count > 1 else str(p))
        p += 1
    return " x ".join(factors)


if __name__ == "__main__":
    sys.exit(main())
