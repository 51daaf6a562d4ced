"""PEFT's own FourierFT tests (tests/ of the pinned peft sdist, fetched by scripts/bootstrap.sh), run
three times: plain PEFT (the baseline), with every PEFT entry point building fourierft's layers and PEFT's
entry points replaced by fourierft's documented ones (``fourierft.get_peft_model``,
``fourierft.FourierFTModel.from_pretrained``, ``fourierft.load_adapter``), and with PEFT's layers switched by
``fourierft.accelerate``. Any test that plain PEFT passes must pass in both fourierft modes, and the
fourierft modes must really have run our layers (forward counts from the plugin)."""
import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import peft

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SUITE = ROOT / "build" / "peft-src" / f"peft-{peft.__version__}"

# Tests that need the Hugging Face hub (a model or config download): offline they fail in every mode,
# plain PEFT included, after network time-outs. Excluded by name.
NEEDS_HUB = [
    "tests/test_config.py::TestPeftConfig::test_from_pretrained[FourierFTConfig-mandatory_kwargs7]",
    "tests/test_config.py::TestPeftConfig::test_from_pretrained_cache_dir[FourierFTConfig-mandatory_kwargs7]",
    "tests/test_config.py::TestPeftConfig::test_save_pretrained_with_runtime_config[FourierFTConfig-mandatory_kwargs7]",
]


def start_suite(mode: str, tmp_path: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path, pathlib.Path]:
    """Starts PEFT's FourierFT tests in one mode (a pytest process of their own, one thread: the three modes run
    side by side on the machine's cores)."""
    junit, counts = tmp_path / f"{mode}.xml", tmp_path / f"{mode}.json"
    env = dict(os.environ, FOURIERFT_PEFT_SUITE_MODE=mode, FOURIERFT_PEFT_SUITE_COUNTS=str(counts),
               PYTHONPATH=str(HERE / "peft_suite"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-p",
               "fourierft_peft_plugin", f"--junitxml={junit}", "-k", "fourier or Fourier",
               "tests/test_custom_models.py", "tests/test_config.py"]
    command += [f"--deselect={test}" for test in NEEDS_HUB]
    output = open(tmp_path / f"{mode}.log", "w")
    process = subprocess.Popen(command, cwd=SUITE, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    output.close()
    return process, junit, counts


def finish_suite(mode: str, started) -> tuple[dict[str, str], dict]:
    process, junit, counts = started
    process.wait(timeout=1200)
    log = (junit.parent / f"{mode}.log").read_text()
    assert junit.exists(), f"PEFT's suite did not run ({mode}):\n{log[-6000:]}"
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed")
    return outcomes, json.loads(counts.read_text())


def test_peft_own_fourierft_suite_passes_with_our_layers(tmp_path):
    assert (SUITE / "tests" / "test_custom_models.py").exists(), \
        f"{SUITE} is missing: scripts/bootstrap.sh fetches PEFT's sdist (tests included)"
    started = {mode: start_suite(mode, tmp_path) for mode in ("peft", "registered", "accelerate")}
    try:
        baseline, counts = finish_suite("peft", started["peft"])
        assert counts["ours"] == 0 and counts["peft"] > 0
        passed = {name for name, outcome in baseline.items() if outcome == "passed"}
        assert len(passed) >= 370, f"plain PEFT passed only {len(passed)} of {len(baseline)} tests"
        summary = {"peft": f"{len(passed)} passed of {len(baseline)}"}
        for mode in ("registered", "accelerate"):
            outcomes, counts = finish_suite(mode, started[mode])
            regressions = sorted(name for name in passed if outcomes.get(name) != "passed")
            assert not regressions, (f"{mode}: {len(regressions)} tests that plain PEFT passes fail:\n"
                                     + "\n".join(regressions[:50]))
            assert counts["ours"] > 100, f"{mode}: only {counts['ours']} forwards ran through fourierft's layers"
            if mode == "registered":
                assert counts["peft"] == 0, f"registered: {counts['peft']} forwards ran through PEFT's own layer"
                assert counts["from_pretrained"] > 10 and counts["load_adapter"] > 10, counts
            summary[mode] = f"{sum(o == 'passed' for o in outcomes.values())} passed, our forwards {counts['ours']}"
    finally:
        for process, _, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    print(summary)
