"""Two-process tests on the CPU: each worker is the test file itself run as a script, with a file rendezvous (no port
to race for) and a time limit, so a test fails and never hangs."""
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
