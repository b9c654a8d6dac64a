"""How time and peak memory grow with the image: ``reconstruct`` and the metrics from 64 to 896 pixels a side.

Each cell runs in a fresh process (so its peak resident memory is its own): All-CNN-B CReLU (float64), the
astronaut resized to ``size`` x ``size``, ``reconstruct`` from conv1, conv2 and conv4 with ``auto`` (the first
call pays the per-layer factorisations; conv1 and conv2 are called a second time, as an evaluation over a folder
calls them), then ``psnr`` and ``ssim`` against the image. Memory is the process's peak resident set during the
calls minus its resident set before them (``getrusage``), so the model, the image and the libraries are not
counted. A unit is one forward + adjoint of conv1 at that size, timed in the same process: seconds per unit
show how much of the growth is the machine's caches rather than the algorithm.

The last lines fit ``t ~ pixels^k`` by least squares on log-log, over all sizes and over the largest three;
``k <= 1`` is linear or better.

Run: ``python benchmarks/bench_scaling.py [--sizes 64,128,224,448,896] [--threads 1]`` (one run; about 20
minutes at 1 thread, most of it conv4 at 896).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _timing import print_machine

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"
#: (label, layer, calls): the calls after the first reuse the cached factorisations
TASKS = (("conv1", "conv1", 2), ("conv2", "conv2", 2), ("conv4", "conv4", 1))


def _resident_mb() -> float:
    """Current resident set of this process, MB (``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    """Peak resident set of this process so far, MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(task: str, size: int) -> dict[str, float]:
    """One cell, in this process: seconds per call, peak memory above the start, seconds per unit."""
    from _timing import median_seconds

    from invertnet import psnr, reconstruct, ssim
    from invertnet.io.files import load_image
    from invertnet.operators import ConvOperator
    from invertnet.zoo.models import build_model

    model = build_model("all-cnn-b-crelu").double().eval()
    image, _ = load_image(ASSET, size)
    op = ConvOperator.from_conv(model.conv1.conv, (size, size))
    unit = median_seconds(lambda: op.adjoint(op.forward(image)), repeat=3)
    noisy = (image + 0.05 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    start_mb = _resident_mb()
    out: dict[str, float] = {"unit": unit}
    if task == "metrics":
        begin = time.perf_counter()
        out["psnr"] = float(psnr(noisy, image, 1.0))
        out["seconds"] = time.perf_counter() - begin
        begin = time.perf_counter()
        out["ssim"] = float(ssim(noisy, image, 1.0))
        out["seconds_ssim"] = time.perf_counter() - begin
    else:
        _, layer, calls = next(t for t in TASKS if t[0] == task)
        for call in range(calls):
            begin = time.perf_counter()
            result = reconstruct(model, image, layer)
            out["seconds" if call == 0 else "seconds_warm"] = time.perf_counter() - begin
        out["psnr"] = float(result.psnr[0])
    out["peak_mb"] = _peak_mb() - start_mb
    return out


def _exponent(pixels: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(pixels)."""
    slope, _ = np.polyfit(np.log(pixels), np.log(np.maximum(values, 1e-9)), 1)
    return float(slope)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,224,448,896")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", default=",".join([t[0] for t in TASKS] + ["metrics"]))
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    print_machine()
    sizes = [int(s) for s in args.sizes.split(",")]
    pixels = [s * s for s in sizes]
    print(f"torch {torch.__version__}, float64, {args.threads} thread(s), one process per cell")
    header = f"{'task':<14}" + "".join(f"{s:>10}" for s in sizes) + "   exponent (all / largest 3)"
    for task in args.tasks.split(","):
        rows: dict[str, list[float]] = {}
        for size in sizes:
            command = [sys.executable, __file__, "--child", task, str(size), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                rows.setdefault(key, []).append(value)
        print(f"\n{task}\n{header}")
        for key in ("seconds", "seconds_warm", "seconds_ssim", "peak_mb", "unit", "psnr", "ssim"):
            if key not in rows:
                continue
            values = rows[key]
            line = f"{key:<14}" + "".join(f"{v:>10.4g}" for v in values)
            if key in ("seconds", "seconds_warm", "seconds_ssim", "peak_mb", "unit") and len(sizes) >= 2:
                tail = _exponent(pixels[-3:], values[-3:]) if len(sizes) >= 3 else math.nan
                line += f"   {_exponent(pixels, values):.2f} / {tail:.2f}"
            print(line, flush=True)
        if "seconds" in rows and task != "metrics":
            units = [s / u for s, u in zip(rows["seconds"], rows["unit"], strict=True)]
            print(f"{'units':<14}" + "".join(f"{v:>10.0f}" for v in units) + f"   {_exponent(pixels, units):.2f}")


if __name__ == "__main__":
    main()
