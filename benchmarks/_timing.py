"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], repeat: int = 5, warmup: bool = True) -> float:
    """Median wall time of ``repeat`` calls of ``fn`` (after one untimed call when ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def touch_memory(gib: float) -> None:
    """Write ``gib`` GiB once, untimed, before timing sections that allocate that much.

    On a freshly booted virtual machine the first write to each page of memory costs about 2 s per GiB
    (measured on this machine: 2.3 s for a first 0.7 GiB array, 0.05 s for the next); without this, that
    one-off cost lands in whichever timed section first needs the memory.
    """
    block = torch.ones(int(gib * 2**30) // 8, dtype=torch.float64)
    del block
