"""The ends of the supported PEFT range (fourierft.config.SUPPORTED_PEFT, pyproject.toml's requirement). The suite runs
against the pinned PEFT (requirements.txt); here the unit tests that hold fourierft to PEFT run again against the
lowest supported PEFT (its wheel, fetched by scripts/bootstrap.sh into build/peft-lowest/, put first on the path),
and `import fourierft` is shown to refuse an older PEFT and to warn under a newer one."""
import os
import pathlib
import re
import subprocess
import sys

import peft
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from fourierft.config import SUPPORTED_PEFT, lowest_supported_peft

ROOT = pathlib.Path(__file__).resolve().parents[3]
# The unit tests that compare with PEFT: the tuner and loaders, the generated semantics and target-matching tables
# (re-run on this PEFT), bad input, the layer.
PEFT_COMPARISONS = ["tests/python/test_model.py", "tests/python/test_semantics.py",
                    "tests/python/test_target_matching.py", "tests/python/test_bad_input.py",
                    "tests/python/test_layer.py"]


def test_the_range_is_the_package_requirement_and_the_pinned_peft_lies_in_it():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"peft{SUPPORTED_PEFT}"' in pyproject
    pinned = re.search(r"^peft==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert Version(pinned) in SpecifierSet(SUPPORTED_PEFT) and peft.__version__ == pinned


def test_peft_comparisons_pass_under_the_lowest_supported_peft():
    sites = list((ROOT / "build" / "peft-lowest").glob("*/site"))
    assert len(sites) == 1, "scripts/bootstrap.sh fetches the lowest supported PEFT into build/peft-lowest"
    env = dict(os.environ, PYTHONPATH=str(sites[0]), HF_HUB_OFFLINE="1")
    version = subprocess.run([sys.executable, "-c", "import peft; print(peft.__version__)"], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert Version(version) == lowest_supported_peft() != Version(peft.__version__)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PEFT_COMPARISONS],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"under PEFT {version}:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert re.search(r"\b\d{3,} passed", done.stdout), done.stdout[-2000:]


def import_under(version: str) -> subprocess.CompletedProcess:
    """`import fourierft` with the installed PEFT reporting another version."""
    return subprocess.run([sys.executable, "-W", "always", "-c",
                           f"import peft; peft.__version__ = {version!r}; import fourierft; print('imported')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_refuses_an_older_peft_and_warns_under_a_newer_one():
    older = import_under("0.20.0")
    assert older.returncode != 0 and "imported" not in older.stdout
    assert (f"ImportError: fourierft reproduces PEFT {SUPPORTED_PEFT}'s FourierFT; the installed PEFT is 0.20.0"
            in older.stderr), older.stderr[-2000:]
    assert f"Install 'peft{SUPPORTED_PEFT}'" in older.stderr
    newer = import_under("0.22.0")
    assert newer.returncode == 0 and "imported" in newer.stdout, newer.stderr[-2000:]
    assert "untested with the installed PEFT 0.22.0" in newer.stderr
