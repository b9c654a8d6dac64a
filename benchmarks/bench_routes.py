"""Which route ``auto`` takes for All-CNN-B conv2 (a 1x1 convolution, 192 -> 96), and what that costs.

Before this round ``auto`` took ``fft`` there (the patch matrix is wide, so the patch reading was not proven
exact, and the DFT diagonalises an unpadded 1x1 layer): one 96x192 complex SVD per frequency, all of them
identical. For a 1x1 kernel at stride 1 the patch pseudo-inverse *is* the operator's (the system decouples per
pixel), so ``auto`` now takes ``patch``. Each case runs in a fresh process: the time of the first call
(factorisation included) and its peak memory above the process's resident size before the call.

Run: ``python benchmarks/bench_routes.py [--sizes 224 448 896] [--threads 1]`` (448 with ``fft`` needs about
12 GB; a route whose factorisation would not fit in this machine's memory is not run, and the line says so).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _timing import print_machine

from invertnet import ROUTES, SolveOptions, conv_pinv
from invertnet.capture.chain import trace
from invertnet.io.files import load_image
from invertnet.pinv import ConvLayer, choose_route
from invertnet.zoo.models import build_model

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _conv2_response(size: int) -> tuple[torch.nn.Conv2d, torch.Tensor, tuple[int, int]]:
    model = build_model("all-cnn-b-crelu").double()
    image, _ = load_image(ASSET, size)
    record = next(r for r in trace(model, image, "conv2.conv").records if r.name == "conv2.conv")
    conv = model.conv2.conv
    with torch.no_grad():
        y = conv(record.input)
    return conv, y, (record.input.shape[-2], record.input.shape[-1])


def child(size: int, route: str, threads: int) -> None:
    torch.set_num_threads(threads)
    conv, y, input_size = _conv2_response(size)
    before = _resident_mb()
    start = time.perf_counter()
    x, info = conv_pinv(conv, y, input_size, route, options=SolveOptions(max_memory=2**40), return_info=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    torch.save(x, f"/tmp/bench_routes_{size}_{route}.pt")
    print(json.dumps({"seconds": seconds, "peak_mb": peak - before, "route": info.method}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "ROUTE"))
    args = parser.parse_args()
    if not args.child:
        torch.set_num_threads(args.threads)
        print_machine()
    if args.child:
        child(int(args.child[0]), args.child[1], args.threads)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), float64, All-CNN-B CReLU conv2 (1x1, 192 -> 96)")
    for size in args.sizes:
        conv, _, input_size = _conv2_response(size)
        route, reason = choose_route(ConvLayer(conv, input_size), SolveOptions())
        print(f"\n{size}x{size} (conv2 input {input_size[0]}x{input_size[1]}): auto now takes {route.name}: {reason}")
        rows = {}
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        for name in ("fft", "patch"):
            need = ROUTES[name].cost(ConvLayer(conv, input_size), SolveOptions()).memory
            if need > 0.8 * available:
                have = available / 2**30
                print(f"  {name:<6} not run: it would keep {need / 2**30:.1f} GB, this machine has {have:.0f}")
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(size), name, "--threads", str(args.threads)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
                print(f"  {name:<6} failed: {last}")
                continue
            rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  {name:<6} first call {rows[name]['seconds']:8.3f} s   peak memory +{rows[name]['peak_mb']:8.0f} MB"
            )
        if len(rows) == 2:
            fft = torch.load(f"/tmp/bench_routes_{size}_fft.pt", weights_only=True)
            patch = torch.load(f"/tmp/bench_routes_{size}_patch.pt", weights_only=True)
            gap = float((fft - patch).norm() / fft.norm())
            print(
                f"  fft / patch: {rows['fft']['seconds'] / rows['patch']['seconds']:.0f}x the time, "
                f"{rows['fft']['peak_mb'] / max(rows['patch']['peak_mb'], 1):.0f}x the memory; "
                f"relative difference of the two estimates {gap:.1e}"
            )


if __name__ == "__main__":
    main()
