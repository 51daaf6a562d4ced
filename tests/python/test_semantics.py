"""tests/data/peft_semantics.json (asserted against the C++ walker by tests/cpp/test_semantics.cpp) is what
the installed peft does today: the generator re-runs every case on plain peft and must print the same file."""
import json
import pathlib
import subprocess
import sys

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from fourierft.config import SUPPORTED_PEFT

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def test_checked_in_table_equals_what_peft_does():
    done = subprocess.run([sys.executable, str(DATA / "make_peft_semantics.py"), "--print"], capture_output=True,
                          text=True, check=True, timeout=600)
    fresh = json.loads(done.stdout)
    checked_in = json.loads((DATA / "peft_semantics.json").read_text())
    # The same outcomes whichever supported PEFT runs it (test_peft_versions.py runs this under the lowest one).
    assert Version(checked_in.pop("peft_version")) in SpecifierSet(SUPPORTED_PEFT)
    fresh.pop("peft_version")
    assert fresh == checked_in, "peft's behaviour changed: regenerate with tests/data/make_peft_semantics.py"


def test_table_covers_the_operations():
    table = json.loads((DATA / "peft_semantics.json").read_text())
    ops = {step["op"] for case in table["cases"] for step in case["steps"]}
    assert {"get_peft_model", "add_adapter", "set_adapter", "delete_adapter", "merge_adapter", "unmerge_adapter",
            "disable_adapter_layers", "enable_adapter_layers", "unload", "merge_and_unload", "train_heads"} <= ops
    errors = [step for case in table["cases"] for step in case["steps"] if "error" in step["expect"]]
    assert len(errors) >= 4
