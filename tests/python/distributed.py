"""Two-process tests on the CPU: each worker is the test file itself run as a script, with a file rendezvous (no port
to race for) and a time limit, so a test fails and never hangs."""
import contextlib
import datetime
import gc
import subprocess
import sys


def run_workers(script: str, args_of_rank, world_size: int = 2, timeout: float = 240) -> None:
    """Runs `python script RANK *args_of_rank(RANK)` for every rank at once; raises AssertionError with the workers'
    output unless every one exits 0."""
    workers = [subprocess.Popen([sys.executable, script, str(rank), *map(str, args_of_rank(rank))],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for rank in range(world_size)]
    try:
        outputs = [w.communicate(timeout=timeout)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert all(w.returncode == 0 for w in workers), outputs


@contextlib.contextmanager
def process_group(rank: int, init_file: str, world_size: int = 2):
    """In a worker: one thread, the gloo group of the test's processes (file rendezvous), torn down at the end."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        yield
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
