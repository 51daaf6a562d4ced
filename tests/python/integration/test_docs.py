"""Every ```python block in docs/*.md runs: the blocks of one page in order, in one namespace."""
import re

import pytest

from conftest import ROOT

PAGES = sorted(p for p in (ROOT / "docs").glob("*.md") if "```python" in p.read_text())


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_doc_page_python_blocks_run(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    namespace = {"__name__": "__docs__"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{page.name} python block {index}", "exec"), namespace)


def test_python_guide_is_checked():
    assert any(p.name == "python.md" for p in PAGES)


def test_cost_model_tables_are_what_the_cost_model_says():
    """docs/gpu.md's and docs/python.md's route tables and docs/routes.json are written by scripts/routes.py
    from fourierft.ops.linear_routes / linear_route_estimates: a change of the cost model that moves a number must
    come with the rewritten docs (`python scripts/routes.py`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("routes_script", ROOT / "scripts" / "routes.py")
    routes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(routes)
    assert routes.rewrite(routes.compute(), check=True) == []


def test_kernel_count_table_is_a_fresh_count():
    """docs/gpu.md's launches-and-syncs table and docs/kernel-counts.json are what benchmarks/kernel_counts.py counts
    now: a change that adds work to a layer's step must come with the rewritten table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernel_counts_script", ROOT / "benchmarks" / "kernel_counts.py")
    counts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(counts)
    data = counts.compute()
    assert counts.rewrite(data, check=True) == []
    for record in data["records"]:  # the budgets (a dense step, inference), beside test_fake_cuda.py's pins
        for kind in ("ours", "ours_dense", "ours_kept"):
            ours = record[kind]
            assert ours["train_syncs"] == ours["inference_syncs"] == 0, record["shape"]
            # the spectral route's sparse patterns synchronise on the first step with an indices tensor, never again
            assert ours["first_step_syncs"] == (3 if ours["routes"]["forward"] == "spectral" else 0), record["shape"]
            assert ours["inference_launches"] <= 4, record["shape"]
        assert record["ours_dense"]["train_launches"] <= 20 and record["ours_kept"]["train_launches"] <= 15


def test_readme_and_guide_numbers_are_those_of_the_raw_outputs_beside_the_docs():
    """The figures the README and the guide quote from a benchmark or the demo are read from the JSON that the
    command wrote (docs/*.json), not retyped: a re-run that moves them fails here until the text follows."""
    import json
    import statistics

    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "docs" / "guide.md").read_text()
    demo = json.loads((ROOT / "docs" / "demo-summary.json").read_text())
    assert f"{demo['wall_seconds_scripts_demo_sh']:.0f} s on 2 CPU cores" in readme
    assert (f"held-out accuracy {demo['eval_accuracy_before']:.2f} -> {demo['eval_accuracy_after']:.2f}"
            in readme)
    assert (f"head alone {demo['head_only_eval_accuracy_after']:.3f}, FourierFT adapter + head "
            f"{demo['eval_accuracy_after']:.3f}" in readme)
    assert f"`out/finetune/adapter`, {demo['adapter_file_bytes']:,} bytes" in readme

    serving = json.loads((ROOT / "docs" / "benchmarks-serving.json").read_text())["seconds_per_round"]

    def throughput_share(single, mixed):  # median over rounds of the per-round ratio, as benchmarks/serving.py
        return round(100 * statistics.median(s / m for s, m in zip(serving[single], serving[mixed])))
    ours = throughput_share("fourierft, one adapter for all rows", "fourierft, 64 adapters in one batch")
    lora = throughput_share("PEFT LoRA r=8, one adapter for all rows", "PEFT LoRA r=8, 64 adapters in one batch")
    assert f"{ours}% of the single-adapter throughput on the CPU (PEFT's LoRA r=8: {lora}%" in readme

    merge = json.loads((ROOT / "docs" / "benchmarks-layer.json").read_text())["delta_weight_seconds"]
    peft_ms, ours_ms = 1e3 * merge["PEFT get_delta_weight (complex ifft2)"], 1e3 * merge["ours delta_weight (irfft2)"]
    assert f"{peft_ms / ours_ms:.2f}x faster than PEFT's complex `ifft2`" in guide
    assert f"{ours_ms:.1f} ms against {peft_ms:.1f}" in guide
