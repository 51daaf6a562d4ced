"""benchmarks/gpu.py (the GPU benchmark a lent GPU machine runs through scripts/gpu_check.sh) must not rot between
GPU sessions: its --smoke run on the CPU builds every variant, times training and inference, and prints one row
per configuration and variant, writing nothing."""
import importlib.util
import re

from conftest import ROOT


def test_gpu_benchmark_smoke_run_on_cpu(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    out = tmp_path / "gpu.md"
    assert gpu.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()  # smoke and non-CUDA runs print only
    training = printed[printed.index("## Training"):printed.index("## Inference")]
    inference = printed[printed.index("## Inference"):]
    for section, columns in ((training, 11), (inference, 10)):
        rows = [line for line in section.splitlines() if re.match(r"\| (tiny|wide) \|", line)]
        assert len(rows) == len(gpu.SMOKE_SHAPES) * 2 * 2, section  # shapes x tokens x n
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert len(cells) == columns, row
            ratios = [float(c[:-1]) for c in cells[4:9]]  # LoRA, PEFT, fourierft, spectral, dense: "1.23x"
            assert all(r > 0 for r in ratios), row
    assert "forward spectral" in training  # the cost model's routes beside each training row
