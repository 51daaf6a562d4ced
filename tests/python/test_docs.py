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
