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
    """docs/gpu.md's and docs/python.md's route tables and docs/routes.json are written by benchmarks/routes.py
    from fourierft.ops.linear_routes / linear_route_estimates: a change of the cost model that moves a number must
    come with the rewritten docs (`python benchmarks/routes.py`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("routes_script", ROOT / "benchmarks" / "routes.py")
    routes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(routes)
    assert routes.rewrite(routes.compute(), check=True) == []
