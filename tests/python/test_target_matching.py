"""tests/data/target_matching.json (also checked by the C++ suite against fourierft::match_target_module)
checked against the installed peft package, so the C++ matching and PEFT's agree case by case."""
import json
import pathlib
import re

import pytest

import peft
from peft.tuners.tuners_utils import check_target_module_exists

TABLE = json.loads((pathlib.Path(__file__).resolve().parents[1] / "data" / "target_matching.json").read_text())
CASES = [(group, case) for group in TABLE["groups"] for case in group["cases"]]


def peft_n_frequency(config, key):
    # peft/tuners/fourierft/model.py, FourierFTModel._create_and_replace:
    pattern_keys = list(config.n_frequency_pattern.keys())
    target_name_key = next(filter(lambda k: re.match(rf".*\.{k}$", key), pattern_keys), key)
    return config.n_frequency_pattern.get(target_name_key, config.n_frequency)


@pytest.mark.parametrize("group,case", CASES, ids=[f"{g['name']}: {c['key']}" for g, c in CASES])
def test_table_agrees_with_peft(group, case):
    config = peft.FourierFTConfig(**group["config"])
    assert bool(check_target_module_exists(config, case["key"])) == case["matched"]
    if case["matched"]:
        assert peft_n_frequency(config, case["key"]) == case["n_frequency"]


def test_table_is_substantial():
    assert len(CASES) >= 40
