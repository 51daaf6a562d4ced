"""The one cost model's decisions and estimates, tabled for the docs: no timing, no GPU needed
(fourierft.ops.linear_routes and fourierft.ops.linear_route_estimates answer for any device from the constants in
src/ops/cost_model.cpp).

    .venv/bin/python scripts/routes.py           # rewrites docs/routes.json and the marked tables in the docs
    .venv/bin/python scripts/routes.py --check   # exits 1 if any of them differs from what the cost model says

The tables sit between `<!-- routes.py:NAME -->` and `<!-- /routes.py -->` in docs/gpu.md (the 3B model's routes
on CUDA and the estimates behind them) and docs/python.md (where the CPU leaves the spectral route, and what a
frozen layer keeps there for inference);
tests/python/integration/test_docs.py runs the --check, so a change of the cost model that moves a number fails the tests
until the docs are rewritten.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import torch

import fourierft

ROOT = pathlib.Path(__file__).resolve().parents[1]
JSON_PATH = ROOT / "docs" / "routes.json"
PASSES = ("forward", "grad_x", "grad_spectrum")

# Llama-3.2-3B's adapted shapes (out, in): hidden 3072, intermediate 8192, 24 query / 8 key-value heads of 128.
SHAPES_3B = {"q/o 3072 x 3072": (3072, 3072), "k/v 1024 x 3072": (1024, 3072),
             "gate/up 8192 x 3072": (8192, 3072), "down 3072 x 8192": (3072, 8192)}
GPU_TOKENS = (1, 16, 2048, 16384)
GPU_N = (1000, 10000)
CPU_SHAPES = ((384, 384), (768, 768), (1024, 1024), (2048, 2048), (4096, 4096), (1024, 4096))
CPU_N = 1000
CPU_CACHE_TOKENS = (1, 64, 512, 4096)


def gpu_records() -> list[dict]:
    """CUDA, bfloat16 model (PEFT's float32 spectrum): every 3B shape x tokens x n, training and inference."""
    records = []
    for name, (out_features, in_features) in SHAPES_3B.items():
        for tokens in GPU_TOKENS:
            for n in GPU_N:
                args = ("cuda", torch.bfloat16, tokens, out_features, in_features, n)
                records.append({
                    "shape": name, "out_features": out_features, "in_features": in_features, "tokens": tokens,
                    "n_frequency": n,
                    "routes": fourierft.ops.linear_routes(*args, training=True),
                    "estimates_ns": fourierft.ops.linear_route_estimates(*args, training=True),
                    "inference_cache": fourierft._C.inference_cache_for(torch.device("cuda"), torch.bfloat16,
                                                                        tokens, out_features, in_features, n),
                })
    return records


def first_tokens_off_spectral(out_features: int, in_features: int, n: int, pass_: str) -> dict | None:
    """The smallest token count at which the CPU's float32 training call leaves the spectral route in `pass_`
    (binary search; the routes are monotone in the tokens), or None below 2^22 tokens."""
    def route(tokens):
        return fourierft.ops.linear_routes("cpu", torch.float32, tokens, out_features, in_features, n)[pass_]
    lo, hi = 1, 1 << 22
    if route(hi) == "spectral":
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if route(mid) == "spectral":
            lo = mid + 1
        else:
            hi = mid
    return {"tokens": lo, "route": route(lo)}


def cpu_records() -> list[dict]:
    """Per shape, at n = 1000 and at n = 10% of the entries: where each pass leaves the spectral route."""
    records = []
    for out_features, in_features in CPU_SHAPES:
        for n in (CPU_N, out_features * in_features // 10):
            records.append({"out_features": out_features, "in_features": in_features, "n_frequency": n,
                            **{pass_: first_tokens_off_spectral(out_features, in_features, n, pass_)
                               for pass_ in PASSES}})
    return records


def cpu_cache_records() -> list[dict]:
    """What a frozen float32 layer keeps for inference on the CPU: "weight" (W + delta_W) or "none"."""
    return [{"out_features": o, "in_features": i, "n_frequency": CPU_N, "tokens": tokens,
             "inference_cache": fourierft._C.inference_cache_for(torch.device("cpu"), torch.float32, tokens, o, i,
                                                                 CPU_N)}
            for o, i in CPU_SHAPES for tokens in CPU_CACHE_TOKENS]


def compute() -> dict:
    return {
        "what": "fourierft.ops.linear_routes / linear_route_estimates (the cost model's decisions and estimates, "
                "ns per call; not timings) and fourierft._C.inference_cache_for",
        "cuda_bfloat16_3b": gpu_records(),
        "cpu_float32_leaves_spectral": cpu_records(),
        "cpu_float32_inference_cache": cpu_cache_records(),
    }


def cell(routes: dict) -> str:
    values = [routes[p] for p in PASSES]
    if len(set(values)) == 1:
        return values[0]
    return ", ".join(f"{p} {routes[p]}" for p in PASSES)


def table_gpu_routes(data: dict) -> str:
    records = data["cuda_bfloat16_3b"]
    names = list(SHAPES_3B)
    lines = ["| call | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for tokens in GPU_TOKENS:
        cells = {n: [cell(next(r["routes"] for r in records
                                if r["shape"] == s and r["tokens"] == tokens and r["n_frequency"] == n))
                     for s in names] for n in GPU_N}
        if all(cells[n] == cells[GPU_N[0]] for n in GPU_N):
            label = f"training, {tokens} token{'s' * (tokens != 1)}, n = " + " or ".join(map(str, GPU_N))
            lines.append(f"| {label} | " + " | ".join(cells[GPU_N[0]]) + " |")
        else:
            for n in GPU_N:
                lines.append(f"| training, {tokens} token{'s' * (tokens != 1)}, n = {n} | " + " | ".join(cells[n]) + " |")
    caches = [{r["inference_cache"] for r in records if r["shape"] == s} for s in names]
    lines.append(f"| inference, frozen spectrum, {' / '.join(map(str, GPU_TOKENS))} tokens | " + " | ".join(
        "cached `delta_W`" if c == {"delta"} else "/".join(sorted(c)) for c in caches) + " |")
    return "\n".join(lines)


def table_gpu_estimates(data: dict) -> str:
    shape, n = "q/o 3072 x 3072", GPU_N[0]
    lines = ["| tokens | forward: spectral / dense | grad_x: spectral / dense | grad_spectrum: spectral / dense |",
             "|---:|---|---|---|"]
    for tokens in GPU_TOKENS:
        r = next(r for r in data["cuda_bfloat16_3b"]
                 if r["shape"] == shape and r["tokens"] == tokens and r["n_frequency"] == n)
        est = r["estimates_ns"]
        cells = [f"{est[p]['spectral'] / 1e6:.3f} / {est[p]['dense'] / 1e6:.3f} ms" for p in PASSES]
        lines.append(f"| {tokens} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_cpu_crossover(data: dict) -> str:
    lines = ["| out x in | n | forward leaves spectral at | grad_x leaves spectral at | spectrum gradient leaves "
             "spectral at |", "|---|---|---|---|---|"]
    for r in data["cpu_float32_leaves_spectral"]:
        square = r["out_features"] == r["in_features"] and r["n_frequency"] == CPU_N

        def at(entry):
            if entry is None:
                return "spectral at every size"
            per_feature = f" ({entry['tokens'] / r['in_features']:.1f} per feature)" if square else ""
            return f"{entry['tokens']} token{'s' * (entry['tokens'] != 1)}{per_feature}, {entry['route']}"
        n = r["n_frequency"]
        n_cell = f"{n} (10%)" if n == r["out_features"] * r["in_features"] // 10 else str(n)
        lines.append(f"| {r['out_features']} x {r['in_features']} | {n_cell} | {at(r['forward'])} | {at(r['grad_x'])} | "
                     f"{at(r['grad_spectrum'])} |")
    return "\n".join(lines)


def table_cpu_inference_cache(data: dict) -> str:
    names = {"weight": "`W + delta_W`", "none": "nothing (spectral forward)", "delta": "`delta_W`"}
    lines = ["| out x in | " + " | ".join(f"{t} token{'s' * (t != 1)}" for t in CPU_CACHE_TOKENS) + " |",
             "|---|" + "---|" * len(CPU_CACHE_TOKENS)]
    for o, i in CPU_SHAPES:
        cells = [names[r["inference_cache"]] for t in CPU_CACHE_TOKENS for r in data["cpu_float32_inference_cache"]
                 if (r["out_features"], r["in_features"], r["tokens"]) == (o, i, t)]
        lines.append(f"| {o} x {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES = {
    ("gpu.md", "gpu-routes"): table_gpu_routes,
    ("gpu.md", "gpu-estimates"): table_gpu_estimates,
    ("python.md", "cpu-crossover"): table_cpu_crossover,
    ("python.md", "cpu-inference-cache"): table_cpu_inference_cache,
}


def marked(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- routes\.py:{re.escape(name)} -->\n)(.*?)(^<!-- /routes\.py -->)", re.S | re.M)


def rewrite(data: dict, check: bool) -> list[str]:
    """Puts every table into its page (or, with `check`, only compares); returns what differed."""
    differ = []
    for (page, name), make in TABLES.items():
        path = ROOT / "docs" / page
        text = path.read_text()
        match = marked(name).search(text)
        if match is None:
            differ.append(f"docs/{page}: no <!-- routes.py:{name} --> ... <!-- /routes.py --> block")
            continue
        table = make(data) + "\n"
        if match.group(2) != table:
            differ.append(f"docs/{page}: table {name}")
            if not check:
                path.write_text(text[:match.start(2)] + table + text[match.end(2):])
    json_text = json.dumps(data, indent=1) + "\n"
    if not JSON_PATH.exists() or JSON_PATH.read_text() != json_text:
        differ.append(f"docs/{JSON_PATH.name}")
        if not check:
            JSON_PATH.write_text(json_text)
    return differ


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the docs differ")
    args = parser.parse_args(argv)
    differ = rewrite(compute(), args.check)
    for item in differ:
        print(("differs from the cost model: " if args.check else "rewritten: ") + item)
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
