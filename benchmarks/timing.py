"""The benchmarks' one way to time calls: rounds of one call per variant, the order rotated from round to round (the
variant after another runs with its caches and pages disturbed, so each takes every place in turn), the device
synchronised around each call on a GPU (the kernels are timed, not their launches)."""
from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

import torch


def synchronize(device) -> None:
    """Waits for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], object], device=None) -> float:
    """Seconds one call takes, its device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def rotated_rounds(calls: dict, *, reps: int, seconds: float = 0.0, max_rounds: int = 500, device=None,
                   apart: Iterable[str] = (), warmup: int = 1,
                   after: Optional[Callable[[str], None]] = None) -> dict[str, list[float]]:
    """Seconds per call of every entry of ``calls`` (name -> callable): ``warmup`` untimed calls each, then rounds
    of one timed call each in rotated order, at least ``reps`` rounds and more until ``seconds`` have passed (at
    most ``max_rounds``). The names in ``apart`` run after the rounds, in a pass of their own with as many calls as
    rounds ran: a variant whose temporaries evict the caches (PEFT's dense FourierFT) would slow whichever ran next.
    ``after(name)`` runs after each call, untimed (e.g. dropping gradients)."""
    apart = [name for name in apart if name in calls]
    rotated = [name for name in calls if name not in apart]
    for name in calls:
        for _ in range(warmup):
            calls[name]()
            if after is not None:
                after(name)
    times = {name: [] for name in calls}

    def run(name):
        times[name].append(timed(calls[name], device))
        if after is not None:
            after(name)

    start, rounds = time.perf_counter(), 0
    while rotated and (rounds < reps or (time.perf_counter() - start < seconds and rounds < max_rounds)):
        shift = rounds % len(rotated)
        for name in rotated[shift:] + rotated[:shift]:
            run(name)
        rounds += 1
    for name in apart:
        for _ in range(max(rounds, reps)):
            run(name)
    return times
