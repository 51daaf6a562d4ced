"""What an adapted layer asks of a GPU, counted without one: kernel launches and host synchronisations per adapted
layer and training step (forward + backward), and per inference call, for Llama-3.2-3B's adapted shapes at
4 x 512 = 2048 tokens, bfloat16 base (PEFT's float32 adapters), side by side with the frozen layer, PEFT's LoRA r=32
and PEFT's own FourierFT counted the same way.

    .venv/bin/python benchmarks/kernel_counts.py            # prints the table, writes docs/kernel-counts.json and the
                                                            # marked table in docs/gpu.md
    .venv/bin/python benchmarks/kernel_counts.py --check    # exits 1 if the docs differ from a fresh count

How (tests/python/fake_cuda.py): ATen ops dispatched on fake tensors are counted, except views, uninitialised
allocations and sparse-tensor construction; data-dependent ops (unique, nonzero, item, equal) count as host syncs.
fourierft's rows run its CUDA kernels on fake CUDA tensors (the ops called directly: autograd's engine cannot run on
fake CUDA tensors in a CPU-only torch), its inference row is its Python layer on fake CUDA tensors. The other rows
are PEFT's and torch's Python code run through autograd on fake CPU tensors: the same ATen ops up to device-specific
transfers (PEFT's FourierFT also copies its indices to the GPU in every forward, which a CPU run cannot show).
One ATen op can launch more than one kernel (cuFFT plans, sorts): a count of dispatched work, not a timing.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import fourierft  # noqa: E402
import peft  # noqa: E402
from fake_cuda import call_cuda, counting, cuda_tensor, fake_cuda, fake_peft_linear, to_fake  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily  # noqa: E402

JSON_PATH = ROOT / "docs" / "kernel-counts.json"
DOC = ROOT / "docs" / "gpu.md"
SHAPES_3B = {"q/o 3072 x 3072": (3072, 3072), "k/v 1024 x 3072": (1024, 3072),
             "gate/up 8192 x 3072": (8192, 3072), "down 3072 x 8192": (3072, 8192)}
TOKENS = 2048
N_FREQUENCY = 1000
LORA_RANK = 32


def _peft_layer(kind: str, out_features: int, in_features: int):
    """One nn.Linear adapted by plain PEFT (kind "lora" or "fourierft") or left frozen ("frozen"), built on meta."""
    with unset_fake_temporarily():
        net = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, bias=False, device="meta"))
        if kind == "frozen":
            net.requires_grad_(False)
            return net, net[0]
        config = (peft.LoraConfig(target_modules=["0"], r=LORA_RANK, lora_alpha=2 * LORA_RANK) if kind == "lora" else
                  peft.FourierFTConfig(target_modules=["0"], n_frequency=N_FREQUENCY, scaling=150.0))
        with fourierft.registered(False):
            model = peft.get_peft_model(net, config)
    return model, model.base_model.model[0]


def peft_counts(kind: str, out_features: int, in_features: int) -> dict:
    """Training step and inference call of a plain-PEFT (or frozen) layer through autograd on fake CPU tensors."""
    with FakeTensorMode():
        _, layer = _peft_layer(kind, out_features, in_features)
        # bfloat16 base, float32 adapters (PEFT's default on a half-precision model)
        to_fake(layer, torch.bfloat16, device="cpu", float32=("lora_", "fourierft_spectrum"))
        x = torch.empty(TOKENS, in_features, dtype=torch.bfloat16, requires_grad=True)
        g = torch.empty(TOKENS, out_features, dtype=torch.bfloat16)

        def step():
            # optimizer.zero_grad() sets gradients to None (torch's default): no accumulation kernel in a step.
            for t in [x, *layer.parameters()]:
                t.grad = None
            torch.autograd.backward(layer(x), g)

        step()  # warm-up (PEFT's lazy state, if any)
        with counting() as counted:
            step()
        layer.eval()
        with torch.no_grad():
            layer(x)
        with torch.no_grad(), counting() as inference:
            layer(x)
    return {"train_launches": counted.total()[0], "train_syncs": counted.total()[1],
            "inference_launches": inference.total()[0], "inference_syncs": inference.total()[1],
            "train_ops": dict(counted.launches)}


def ours_counts(out_features: int, in_features: int, route: str = "auto") -> dict:
    """fourierft's layer: the training step as its ops' CUDA kernels (forward and backward of ops.linear, the route
    the cost model picks, or `route` forced: "dense", or "kept" for the dense route with fourierft.ops.keep_delta);
    inference through the Python layer."""
    kept = route == "kept"
    with fourierft.ops.linear_path("dense" if kept else route):
        routes = fourierft.ops.linear_routes("cuda", torch.bfloat16, TOKENS, out_features, in_features, N_FREQUENCY)
    with fake_cuda(), fourierft.ops.linear_path("dense" if kept else route):
        x, w = cuda_tensor(TOKENS, in_features, dtype=torch.bfloat16), cuda_tensor(out_features, in_features,
                                                                                    dtype=torch.bfloat16)
        c, idx = cuda_tensor(N_FREQUENCY), cuda_tensor(2, N_FREQUENCY, dtype=torch.long)
        g = cuda_tensor(TOKENS, out_features, dtype=torch.bfloat16)
        args = (c, idx, out_features, in_features, 150.0)

        def step():
            operand = None
            if kept:  # what fourierft.ops.linear's autograd runs under keep_delta on the dense route
                _, operand = call_cuda(torch.ops.fourierft._linear_dense_forward.default, x, w, None, *args)
            else:
                call_cuda(torch.ops.fourierft.linear.default, x, w, None, *args)
            return call_cuda(torch.ops.fourierft._linear_backward.default, g, x, w, *args, True, False, False, True,
                             operand)

        with counting() as warm:
            step()
        with counting() as counted:
            step()
        _, layer = fake_peft_linear(out_features, in_features, N_FREQUENCY, torch.bfloat16, bias=False)
        xi = cuda_tensor(4, TOKENS // 4, in_features, dtype=torch.bfloat16)
        with torch.no_grad(), counting():
            layer(xi)  # builds the inference cache
        with torch.no_grad(), counting() as inference:
            layer(xi)
    return {"train_launches": counted.total()[0], "train_syncs": counted.total()[1],
            "first_step_syncs": warm.total()[1], "inference_launches": inference.total()[0],
            "inference_syncs": inference.total()[1], "routes": routes, "train_ops": dict(counted.launches)}


COLUMNS = [("frozen", "frozen layer"), ("lora", f"PEFT LoRA r={LORA_RANK}"), ("fourierft", "PEFT FourierFT"),
           ("ours", "fourierft (cost model's route)"), ("ours_dense", "fourierft dense"),
           ("ours_kept", "fourierft dense + keep_delta")]


def compute() -> dict:
    records = []
    for name, (out_features, in_features) in SHAPES_3B.items():
        row = {"shape": name, "out_features": out_features, "in_features": in_features}
        for kind, _ in COLUMNS:
            if kind.startswith("ours"):
                row[kind] = ours_counts(out_features, in_features, {"ours": "auto", "ours_dense": "dense",
                                                                     "ours_kept": "kept"}[kind])
            else:
                row[kind] = peft_counts(kind, out_features, in_features)
        records.append(row)
    return {"tokens": TOKENS, "n_frequency": N_FREQUENCY, "lora_rank": LORA_RANK, "model_dtype": "bfloat16",
            "torch": torch.__version__, "peft": peft.__version__, "records": records}


def table(data: dict) -> str:
    head = "| shape | " + " | ".join(f"{label}: train / infer" for _, label in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for r in data["records"]:
        cells = []
        for kind, _ in COLUMNS:
            c = r[kind]
            sync = lambda k: f" +{c[k]} sync" if c[k] else ""  # noqa: E731
            route = f" ({c['routes']['forward']})" if kind == "ours" else ""
            cells.append(f"{c['train_launches']}{sync('train_syncs')}{route} / {c['inference_launches']}"
                         f"{sync('inference_syncs')}")
        lines.append(f"| {r['shape']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MARK = re.compile(r"(<!-- kernel_counts.py -->\n)(?:.*?\n)?(<!-- /kernel_counts.py -->)", re.S)


def rewrite(data: dict, check: bool) -> list[str]:
    """Writes (or, with check, compares) docs/kernel-counts.json and docs/gpu.md's table; returns what differs."""
    stale = []
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if not JSON_PATH.exists() or JSON_PATH.read_text() != text:
        stale.append(str(JSON_PATH))
        if not check:
            JSON_PATH.write_text(text)
    doc = DOC.read_text()
    if not MARK.search(doc):
        raise SystemExit(f"{DOC} has no <!-- kernel_counts.py --> ... <!-- /kernel_counts.py --> block")
    new = MARK.sub(lambda m: m.group(1) + table(data) + "\n" + m.group(2), doc)
    if new != doc:
        stale.append(str(DOC))
        if not check:
            DOC.write_text(new)
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the docs differ from a fresh count")
    args = parser.parse_args()
    data = compute()
    print(table(data))
    stale = rewrite(data, args.check)
    if args.check and stale:
        raise SystemExit(f"stale: {', '.join(stale)} (run benchmarks/kernel_counts.py)")


if __name__ == "__main__":
    main()
