"""All model-level benchmarks in one command; writes docs/benchmarks.md and docs/benchmarks.png.

    .venv/bin/python benchmarks/run.py            # full run (about 10 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/run.py --quick    # fewer repetitions and sizes, prints only

Every comparison is measured side by side in one run, same inputs, repetitions interleaved across the
variants, medians reported:

1. training step (forward + backward + AdamW step) on all-MiniLM-L6-v2 (16 x 128 tokens, FourierFT and LoRA
   on query/value) and on a LLaMA-shaped stack at hidden 2048 (random weights, 2 decoder layers, 2 x 128
   tokens, q_proj/v_proj): frozen base / PEFT FourierFT / PEFT FourierFT + fourierft.accelerate / PEFT LoRA r=8 /
   fourierft. "Frozen base" trains nothing but what makes backward run through the whole stack (the first
   LayerNorm and the head), which is the work any adapter in the first layer forces.
2. peak memory added by the same training steps, each variant in its own process (resident set size
   sampled every millisecond during 3 steps, minus the size before the first step: activations, gradients,
   optimizer state and per-step temporaries).
3. inference tokens/s on MiniLM: base, PEFT unmerged, PEFT + accelerate, ours unmerged, merged.
4. merge (delta_W) time for a 4096 x 4096 layer: PEFT's get_delta_weight vs ours.
5. scaling curves per layer (forward + backward, ratio to the frozen layer): n_frequency 100 ... 100k at
   1024 x 1024 and hidden 256 ... 8192 at n = 1000, PEFT's formula vs ours.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

import fourierft  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from fourierft.examples.data import minilm_path  # noqa: E402
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear  # noqa: E402
from timing import rotated_rounds  # noqa: E402

transformers.logging.set_verbosity_error()
ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ["frozen base", "PEFT FourierFT", "PEFT FourierFT + accelerate", "PEFT LoRA r=8", "fourierft"]


# ---- models ------------------------------------------------------------------------------------
def minilm_base():
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=5)


def llama_base():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=2,
                                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=256)
    return transformers.LlamaModel(config)


WORKLOADS = {
    "MiniLM (22.7M params), 16 x 128 tokens, query/value, n=1000, scaling 150": dict(
        build=minilm_base, targets=["query", "value"], n=1000, scaling=150.0, task="SEQ_CLS",
        frozen_open=["embeddings.LayerNorm", "classifier"], batch=(16, 128), vocab=30000, labels=5),
    "LLaMA-shaped, hidden 2048, 2 layers, 2 x 128 tokens, q_proj/v_proj, n=1000, scaling 300": dict(
        build=llama_base, targets=["q_proj", "v_proj"], n=1000, scaling=300.0, task=None,
        frozen_open=["layers.0.input_layernorm"], batch=(2, 128), vocab=1000, labels=None),
    "MiniLM, 16 x 128 tokens, all-linear, n=1000, scaling 150": dict(
        build=minilm_base, targets="all-linear", n=1000, scaling=150.0, task="SEQ_CLS",
        frozen_open=["embeddings.LayerNorm", "classifier"], batch=(16, 128), vocab=30000, labels=5),
    "LLaMA-shaped, hidden 2048, 2 layers, 2 x 128 tokens, all-linear, n=1000, scaling 300": dict(
        build=llama_base, targets="all-linear", n=1000, scaling=300.0, task=None,
        frozen_open=["layers.0.input_layernorm"], batch=(2, 128), vocab=1000, labels=None),
}


def make_variant(name: str, spec: dict):
    base = spec["build"]()
    torch.manual_seed(1)
    if name == "frozen base":
        model = base
        for pname, p in model.named_parameters():
            p.requires_grad_(any(pname.startswith(o) or f".{o}" in pname for o in spec["frozen_open"]))
    elif name.startswith("PEFT FourierFT"):
        with fourierft.registered(False):  # PEFT's own layers (importing fourierft registers ours)
            model = peft.get_peft_model(base, peft.FourierFTConfig(task_type=spec["task"], target_modules=spec["targets"],
                                                                   n_frequency=spec["n"], scaling=spec["scaling"]))
        if name.endswith("accelerate"):
            fourierft.accelerate(model)
    elif name == "PEFT LoRA r=8":
        model = peft.get_peft_model(base, peft.LoraConfig(task_type=spec["task"], target_modules=spec["targets"], r=8,
                                                          lora_alpha=8, lora_dropout=0.0))
    elif name == "fourierft":
        model = fourierft.get_peft_model(base, fourierft.FourierFTConfig(
            task_type=spec["task"], target_modules=spec["targets"], n_frequency=spec["n"], scaling=spec["scaling"]))
    else:
        raise ValueError(name)
    model.train()
    if spec["task"] is None:  # the LLaMA stack: backward must reach the first layer's norm
        for pname, p in model.named_parameters():
            if any(f"{o}." in pname for o in spec["frozen_open"]):
                p.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer


def make_batch(spec: dict):
    g = torch.Generator().manual_seed(3)
    batch, length = spec["batch"]
    ids = torch.randint(0, spec["vocab"], (batch, length), generator=g)
    labels = torch.randint(0, spec["labels"], (batch,), generator=g) if spec["labels"] else None
    return ids, labels


def train_step(model, optimizer, ids, labels):
    if labels is not None:
        loss = model(input_ids=ids, labels=labels).loss
    else:
        loss = model(input_ids=ids).last_hidden_state.float().square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def interleaved(fns: dict, reps: int, warmup: int = 2) -> dict:
    """Median seconds per call of each function, in rotated rounds so that machine noise hits every variant alike
    (benchmarks/timing.py); PEFT FourierFT's variants run in a pass of their own after the others: their dense
    out x in complex temporaries evict the caches and return pages to the OS, which slowed whichever variant ran
    next (up to 15% per layer, benchmarks/bench_layer.py) and would not happen in a model without PEFT's layers."""
    times = rotated_rounds(fns, reps=reps, warmup=warmup, apart=[k for k in fns if k.startswith("PEFT FourierFT")])
    return {k: statistics.median(v) for k, v in times.items()}


def bench_training(reps: int) -> dict:
    results = {}
    for title, spec in WORKLOADS.items():
        ids, labels = make_batch(spec)
        fns = {}
        for name in VARIANTS:
            model, optimizer = make_variant(name, spec)
            fns[name] = (lambda m=model, o=optimizer: train_step(m, o, ids, labels))
        results[title] = interleaved(fns, reps)
        print(f"[train] {title}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results[title].items()), flush=True)
    return results


# ---- memory (one process per variant) ------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(title: str, name: str, steps: int) -> None:
    spec = WORKLOADS[title]
    model, optimizer = make_variant(name, spec)
    ids, labels = make_batch(spec)
    import gc
    gc.collect()
    before = _rss_bytes()  # model, optimizer and batch built; no step taken yet
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(steps):
        train_step(model, optimizer, ids, labels)
    done.set()
    thread.join()
    print(json.dumps({"added_bytes": peak[0] - before}))


def bench_memory(steps: int) -> dict:
    results = {}
    for title in WORKLOADS:
        results[title] = {}
        for name in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--memory-child", title, name, str(steps)],
                                 capture_output=True, text=True, check=True)
            results[title][name] = json.loads(out.stdout.strip().splitlines()[-1])["added_bytes"]
        print(f"[memory] {title}: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in results[title].items()),
              flush=True)
    return results


# ---- inference ----------------------------------------------------------------------------------
INFERENCE = {
    "MiniLM, 32 x 128 tokens, query/value": dict(build=minilm_base, task="SEQ_CLS", targets=["query", "value"],
                                                 scaling=150.0, batch=(32, 128), vocab=30000),
    "LLaMA-shaped, hidden 2048, 2 layers, 4 x 128 tokens, q_proj/v_proj": dict(
        build=llama_base, task=None, targets=["q_proj", "v_proj"], scaling=300.0, batch=(4, 128), vocab=1000),
}


def bench_inference(reps: int) -> dict:
    results = {}
    for title, spec in INFERENCE.items():
        batch, length = spec["batch"]
        ids = torch.randint(0, spec["vocab"], (batch, length), generator=torch.Generator().manual_seed(4))
        base = spec["build"]().eval()
        config = dict(task_type=spec["task"], target_modules=spec["targets"], n_frequency=1000, scaling=spec["scaling"])
        torch.manual_seed(1)
        with fourierft.registered(False):  # PEFT's own layers (importing fourierft registers ours)
            peft_model = peft.get_peft_model(spec["build"](), peft.FourierFTConfig(**config)).eval()
            torch.manual_seed(1)
            accelerated = fourierft.accelerate(peft.get_peft_model(spec["build"](), peft.FourierFTConfig(**config))).eval()
        torch.manual_seed(1)
        ours = fourierft.get_peft_model(spec["build"](), fourierft.FourierFTConfig(**config)).eval()
        merged = copy.deepcopy(ours).merge_and_unload().eval()
        models = {"frozen base": base, "PEFT FourierFT unmerged": peft_model,
                  "PEFT FourierFT + accelerate unmerged": accelerated, "fourierft unmerged": ours,
                  "fourierft merged": merged}

        def run(m):
            with torch.no_grad():
                m(input_ids=ids)

        times = interleaved({k: (lambda m=m: run(m)) for k, m in models.items()}, reps)
        results[title] = {k: ids.numel() / v for k, v in times.items()}
        print(f"[inference] {title}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in results[title].items()), flush=True)
    return results


# ---- merge ----------------------------------------------------------------------------------------
def bench_merge(reps: int, size: int = 4096, n: int = 1000) -> dict:
    torch.manual_seed(0)
    layer = PeftFourierFTLinear(torch.nn.Linear(size, size), "default",
                                peft.FourierFTConfig(target_modules=["x"], n_frequency=n), n_frequency=n)
    spectrum, indices = layer.fourierft_spectrum["default"], layer.indices["default"]
    with torch.no_grad():
        times = interleaved({
            "PEFT get_delta_weight": lambda: layer.get_delta_weight("default"),
            "fourierft delta_weight": lambda: fourierft.ops.delta_weight(spectrum, indices, size, size, 150.0),
        }, reps, warmup=1)
    print(f"[merge] {size}x{size}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()), flush=True)
    return times


# ---- scaling curves ----------------------------------------------------------------------------------
def layer_costs(size_out: int, size_in: int, n: int, tokens: int, reps: int) -> dict:
    torch.manual_seed(0)
    base = torch.nn.Linear(size_in, size_out)
    base.requires_grad_(False)
    layer = PeftFourierFTLinear(base, "default", peft.FourierFTConfig(target_modules=["x"], n_frequency=n),
                                n_frequency=n)
    spectrum, indices = layer.fourierft_spectrum["default"], layer.indices["default"]
    x = torch.randn(tokens, size_in, requires_grad=True)
    grad = torch.randn(tokens, size_out)

    def step(fn):
        x.grad = None
        spectrum.grad = None
        fn().backward(grad)

    fns = {
        "frozen": lambda: step(lambda: base(x)),
        "PEFT": lambda: step(lambda: layer(x)),
        "fourierft": lambda: step(lambda: base(x) + fourierft.ops.spectral_linear(
            x, spectrum, indices, size_out, size_in, 150.0)),
    }
    times = interleaved(fns, reps, warmup=1)
    return {"PEFT": times["PEFT"] / times["frozen"], "fourierft": times["fourierft"] / times["frozen"],
            "frozen_ms": times["frozen"] * 1000}


def bench_scaling(quick: bool) -> dict:
    ns = [100, 1000, 10_000, 100_000] if not quick else [100, 10_000]
    sizes = [256, 512, 1024, 2048, 4096, 8192] if not quick else [256, 1024]
    vs_n = {n: layer_costs(1024, 1024, n, 1024, 5) for n in ns}
    print("[scaling n] " + ", ".join(f"n={n}: PEFT {v['PEFT']:.2f}x ours {v['fourierft']:.2f}x" for n, v in vs_n.items()),
          flush=True)
    vs_size = {}
    for d in sizes:
        vs_size[d] = layer_costs(d, d, 1000, 512, 5 if d <= 2048 else 2)
        print(f"[scaling d] d={d}: PEFT {vs_size[d]['PEFT']:.2f}x ours {vs_size[d]['fourierft']:.2f}x", flush=True)
    return {"n": vs_n, "size": vs_size}


def plot(scaling: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, xlabel in ((axes[0], "n", "n_frequency (1024 x 1024 layer, 1024 tokens)"),
                            (axes[1], "size", "hidden size d (d x d layer, n = 1000, 512 tokens)")):
        xs = sorted(scaling[key])
        for variant, style in (("PEFT", "o-"), ("fourierft", "s-")):
            ax.plot(xs, [100 * (scaling[key][x][variant] - 1) for x in xs], style, label=variant)
        ax.set_xscale("log", base=2 if key == "size" else 10)
        ax.set_yscale("symlog", linthresh=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fwd+bwd overhead over frozen layer (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- report -----------------------------------------------------------------------------------------
def write_report(results: dict, command: str) -> None:
    lines = ["# Benchmarks", "",
             f"Generated by `{command}` on {datetime.date.today()} ({platform.machine()}, "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__}, peft {peft.__version__}, "
             f"{torch.get_num_threads()} threads). Medians of interleaved repetitions; ratios are to the frozen base "
             "measured in the same run. Per-layer details: [benchmarks-layer.md](benchmarks-layer.md).", ""]
    lines += ["## Training step (forward + backward + AdamW)", ""]
    for title, times in results["train"].items():
        base = times["frozen base"]
        lines += [f"**{title}**", "", "| variant | ms / step | vs frozen base | overhead |", "|---|---:|---:|---:|"]
        for name, t in times.items():
            lines.append(f"| {name} | {t * 1000:.0f} | {t / base:.2f}x | {100 * (t / base - 1):+.0f}% |")
        lines.append("")
    lines += ["## Peak memory added by the training steps", "",
              "Resident set size sampled every millisecond during 3 steps, minus the size before the first step "
              "(activations, gradients, optimizer state, per-step temporaries); one process per variant. "
              "The frozen base row is what backward through the stack costs anyway.", ""]
    for title, mem in results["memory"].items():
        lines += [f"**{title}**", "", "| variant | added MiB |", "|---|---:|"]
        lines += [f"| {name} | {b / 2**20:.1f} |" for name, b in mem.items()]
        lines.append("")
    lines += ["## Inference (no_grad, unmerged unless stated)", ""]
    for title, inf in results["inference"].items():
        lines += [f"**{title}**", "", "| variant | tokens / s | vs frozen base |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:,.0f} | {v / inf['frozen base']:.3f}x |" for k, v in inf.items()]
        lines.append("")
    merge = results["merge"]
    lines += ["", "## Merge: delta_W of a 4096 x 4096 layer (n = 1000)", "", "| implementation | ms |", "|---|---:|"]
    lines += [f"| {k} | {v * 1000:.0f} |" for k, v in merge.items()]
    lines += ["", f"fourierft is {merge['PEFT get_delta_weight'] / merge['fourierft delta_weight']:.2f}x faster.", ""]
    lines += ["## Scaling: `base(x) + fourierft.ops.spectral_linear(x, ...)` against PEFT's layer (forward + backward, "
              "ratio to the frozen layer)", "",
              "The adapter-only op that layers take when their base is not a plain `nn.Linear` (its backward always "
              "correlates), not the whole-layer `fourierft.ops.linear` of benchmarks-layer.md.", "",
              "![scaling curves](benchmarks.png)", "", "| n_frequency (1024 x 1024, 1024 tokens) | PEFT | fourierft |",
              "|---:|---:|---:|"]
    lines += [f"| {n:,} | {v['PEFT']:.2f}x | {v['fourierft']:.2f}x |" for n, v in results["scaling"]["n"].items()]
    lines += ["", "| hidden d (d x d, n = 1000, 512 tokens) | frozen ms | PEFT | fourierft |", "|---:|---:|---:|---:|"]
    lines += [f"| {d} | {v['frozen_ms']:.1f} | {v['PEFT']:.2f}x | {v['fourierft']:.2f}x |"
              for d, v in results["scaling"]["size"].items()]
    lines.append("")
    path = ROOT / "docs" / "benchmarks.md"
    marker = "<!-- notes: kept across runs -->"
    notes = ""
    if path.exists() and marker in path.read_text():
        notes = path.read_text().split(marker, 1)[1]
    path.write_text("\n".join(lines) + "\n" + marker + (notes or "\n"))
    (ROOT / "docs" / "benchmarks.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes; prints, writes nothing")
    parser.add_argument("--reps", type=int, default=9, help="repetitions per variant (default 9)")
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    results = {
        "train": bench_training(reps),
        "memory": bench_memory(3),
        "inference": bench_inference(reps),
        "merge": bench_merge(3 if args.quick else 5),
        "scaling": bench_scaling(args.quick),
    }
    if not args.quick:
        plot(results["scaling"], ROOT / "docs" / "benchmarks.png")
        write_report(results, ".venv/bin/python benchmarks/run.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
