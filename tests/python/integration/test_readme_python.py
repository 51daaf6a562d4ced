"""Every Python block the README marks with <!-- readme-python --> runs as written."""
import re

import pytest

from conftest import ROOT


def readme_blocks(path):
    text = path.read_text()
    return re.findall(r"<!-- readme-python -->\s*```python\n(.*?)```", text, flags=re.S)


BLOCKS = readme_blocks(ROOT / "README.md")


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    for expected in re.findall(r"# (trainable params: .*)", BLOCKS[index]):
        assert expected in out
