"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

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


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _caches() -> str:
    """The first core's cache sizes, from ``/sys/devices/system/cpu/cpu0/cache`` (Linux), e.g. ``L1d 32K L2 512K``."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    found = []
    for index in sorted(root.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        name = f"L{level}{'d' if kind == 'Data' else ''}"
        found.append(f"{name} {size} (cpus {shared})")
    return ", ".join(found) or "cache sizes unknown"


def _commit() -> str:
    """The git commit of the checkout the benchmark runs from, ``+dirty`` when it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "no git checkout"
    return commit + ("+dirty" if dirty.strip() else "")


def _torch_build() -> str:
    """torch's version and the BLAS / CPU capability it was built with."""
    config = torch.__config__.show()
    blas = next((part.split("=")[1] for part in config.replace(",", " ").split() if part.startswith("BLAS_INFO=")), "")
    capability = next((line.split(":")[1].strip() for line in config.splitlines() if "CPU capability" in line), "")
    return f"torch {torch.__version__} (BLAS {blas or '?'}, CPU capability {capability or '?'})"


def machine() -> str:
    """One line naming what produced a benchmark's numbers: CPU, caches, torch build, threads, git commit."""
    return (
        f"machine: {_cpu_model()}, {os.cpu_count()} CPUs; {_caches()}; {_torch_build()}; "
        f"{torch.get_num_threads()} thread(s); commit {_commit()}; python {platform.python_version()}"
    )


def print_machine() -> None:
    """Print :func:`machine` (every benchmark does, beside its numbers)."""
    print(machine(), flush=True)
