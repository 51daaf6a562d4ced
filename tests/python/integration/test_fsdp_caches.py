"""FSDP and the inference caches, with two gloo processes on the CPU: after an eval pass under FSDP2 (fully_shard) and
FSDP1 (use_orig_params=True) no rank keeps a weight-sized cache (the weights a forward sees there are temporarily
gathered copies: a cache would keep an unsharded copy of every adapted layer on every rank), and the eval outputs
equal one process's. The same model in one process does build its cache (so the check can fail)."""
import json
import pathlib
import sys

import torch

import fourierft
import peft

TOKENS, WIDTH, N = 512, 64, 100


def adapted() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH))
    return fourierft.get_peft_model(net, peft.FourierFTConfig(target_modules=["0", "2"], n_frequency=N))


def batch() -> torch.Tensor:
    return torch.randn(TOKENS, WIDTH, generator=torch.Generator().manual_seed(1))


def cache_entries(model: torch.nn.Module) -> int:
    return sum(len(m.__dict__.get("_fourierft_cache", {})) for m in model.modules())


def eval_pass(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch())


def _worker(rank: int, init_file: str, out_path: str) -> None:
    from distributed import process_group
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    report = {}
    with process_group(rank, init_file):
        model = adapted()
        fully_shard(model)
        y = eval_pass(model)
        report["fsdp2"] = {"entries": cache_entries(model), "output": y.tolist()}
        model = FullyShardedDataParallel(adapted(), use_orig_params=True, device_id=torch.device("cpu"))
        y = eval_pass(model)
        report["fsdp1"] = {"entries": cache_entries(model), "output": y.tolist()}
        del model
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":  # one worker: python test_fsdp_caches.py RANK INIT_FILE OUT
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/python: distributed.py
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])


def test_no_rank_keeps_a_cache_after_an_eval_pass_under_fsdp(tmp_path):
    single = adapted()
    want = eval_pass(single)
    assert cache_entries(single) == 2, "the single-process control builds no cache: the check below could not fail"
    from distributed import run_workers  # (the workers, this file run as a script, do not need it)

    out = tmp_path / "report"
    run_workers(__file__, lambda rank: (tmp_path / "rendezvous", out))
    for rank in range(2):
        report = json.loads((tmp_path / f"report.{rank}").read_text())
        for engine in ("fsdp2", "fsdp1"):
            assert report[engine]["entries"] == 0, (rank, engine)
            assert torch.allclose(torch.tensor(report[engine]["output"]), want, atol=1e-5), (rank, engine)
