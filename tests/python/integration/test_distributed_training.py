"""Training, saving and merging under DDP, FSDP2 (fully_shard) and FSDP1 with two gloo processes on the CPU.

Each rank trains on its half of every batch; with the mean loss, the averaged gradients are one process's on the
whole batch, so the spectra and the head after the steps must equal one process's (the reference, trained here).
Every engine saves through fourierft.distributed.save_pretrained; the files must hold the single-process model's
tensor names and values (FSDP1 with the adapted layers wrapped on their own included: PEFT's own save writes no
tensor there) and load back through fourierft's and PEFT's loaders. merge_and_unload on a sharded model is refused
with the way to do it, and changes nothing."""
import json
import pathlib
import sys

import peft
import torch
from safetensors.torch import load_file

import fourierft

WIDTH, N, STEPS, BATCH = 64, 100, 3, 16


def base() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH),
                               torch.nn.ReLU(), torch.nn.Linear(WIDTH, 4))


def adapted() -> torch.nn.Module:
    config = peft.FourierFTConfig(target_modules=["0", "2"], n_frequency=N, scaling=50.0, modules_to_save=["4"])
    return fourierft.get_peft_model(base(), config)


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, WIDTH, generator=generator), torch.randint(0, 4, (BATCH,), generator=generator))
            for _ in range(STEPS)]


def train(model: torch.nn.Module, rank: int = 0, world: int = 1) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for x, y in batches():
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss = torch.nn.functional.cross_entropy(model(x[part]), y[part])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _worker(rank: int, init_file: str, out: str) -> None:
    from distributed import process_group
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from torch.nn.parallel import DistributedDataParallel

    report = {}
    with process_group(rank, init_file):
        model = DistributedDataParallel(adapted())
        train(model, rank, 2)
        fourierft.distributed.save_pretrained(model, f"{out}/ddp")

        model = adapted()
        for layer in (model.base_model.model[0], model.base_model.model[2]):
            fully_shard(layer)
        fully_shard(model)
        train(model, rank, 2)
        fourierft.distributed.save_pretrained(model, f"{out}/fsdp2")
        try:
            model.merge_and_unload()
            report["fsdp2 merge"] = "merged"
        except ValueError as error:
            report["fsdp2 merge"] = str(error)
        report["fsdp2 still adapted"] = isinstance(model.base_model.model[0], fourierft.FourierFTLinear)

        # FSDP1 with each adapted layer wrapped on its own: names carry _fsdp_wrapped_module. in the middle
        model = FullyShardedDataParallel(adapted(), use_orig_params=True, device_id=torch.device("cpu"),
                                         auto_wrap_policy=ModuleWrapPolicy({fourierft.FourierFTLinear}))
        train(model, rank, 2)
        report["fsdp1 names"] = [n for n, p in model.named_parameters() if "fourierft_spectrum" in n]
        fourierft.distributed.save_pretrained(model, f"{out}/fsdp1")
        try:
            model.module.merge_and_unload()
            report["fsdp1 merge"] = "merged"
        except ValueError as error:
            report["fsdp1 merge"] = str(error)
    pathlib.Path(f"{out}/report.{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":  # one worker: python test_distributed_training.py RANK INIT_FILE OUT
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/python: distributed.py
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])


def test_ddp_fsdp2_fsdp1_train_like_one_process_save_whole_adapters_and_refuse_sharded_merges(tmp_path):
    from distributed import run_workers

    reference = adapted()
    train(reference)
    reference.save_pretrained(tmp_path / "single")
    want = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert any(k.endswith("fourierft_spectrum") for k in want) and any(".4." in k for k in want)

    run_workers(__file__, lambda rank: (tmp_path / "rendezvous", tmp_path))
    for engine in ("ddp", "fsdp2", "fsdp1"):
        got = load_file(tmp_path / engine / "adapter_model.safetensors")
        assert sorted(got) == sorted(want), engine
        for key in want:
            assert torch.allclose(got[key], want[key], atol=1e-6, rtol=1e-5), (engine, key)
        x = torch.randn(5, WIDTH)
        ours = fourierft.FourierFTModel.from_pretrained(base(), tmp_path / engine)
        reference.eval()
        with torch.no_grad():
            assert torch.allclose(ours(x), reference(x), atol=1e-5), engine
    with fourierft.registered(False):
        theirs = peft.PeftModel.from_pretrained(base(), tmp_path / "fsdp1")
    with torch.no_grad():
        assert torch.allclose(theirs(x), reference(x), atol=1e-5)

    for rank in range(2):
        report = json.loads((tmp_path / f"report.{rank}.json").read_text())
        assert any("_fsdp_wrapped_module." in n.split("base_model.model.", 1)[-1] for n in report["fsdp1 names"])
        for engine in ("fsdp2", "fsdp1"):
            assert "sharded by FSDP" in report[f"{engine} merge"], report
            assert "fourierft.distributed.save_pretrained" in report[f"{engine} merge"]
        assert report["fsdp2 still adapted"]
