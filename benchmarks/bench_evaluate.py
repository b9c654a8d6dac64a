"""``evaluate`` on each device: the same images, layers and methods on CPU and, when torch sees one, on CUDA.

Writes ``--count`` crops of the bundled photographs (``make_photographs.py``) to a temporary folder and runs
:func:`invertnet.evaluation.evaluate.evaluate` on them once per device (All-CNN-B CReLU, float64 by default; ``joint``
with the settings of ``invertnet evaluate``: TV 0.01, the [0, 1] box, 500 L-BFGS evaluations, 5 Gauss-Newton
steps), then prints, per device, layer and method, the mean seconds and PSNR of the rows, and the ratio of the
devices' total times. Without a CUDA device only the CPU runs (``--devices cuda`` then says so and stops).

Run: ``python benchmarks/bench_evaluate.py [--devices cpu,cuda] [--count 8] [--size 64]
[--layers conv1,conv2] [--methods auto,joint] [--dtype float64] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import print_machine
from make_photographs import crops
from skimage import io, util

from invertnet.cli.common import JOINT_TV, joint_options
from invertnet.evaluation.evaluate import evaluate
from invertnet.zoo.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--devices", default=default_devices)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="all-cnn-b-crelu")
    parser.add_argument("--layers", default="conv1,conv2")
    parser.add_argument("--methods", default="auto,joint")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: torch sees no CUDA device here; run with --devices cpu")
    dtype = getattr(torch, args.dtype)
    layers, methods = args.layers.split(","), args.methods.split(",")
    print(
        f"torch {torch.__version__}, {args.model}, {args.dtype}, {args.count} images at {args.size} px, "
        f"{torch.get_num_threads()} CPU thread(s)"
    )
    totals: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for k, image in enumerate(crops(args.count, args.size)):
            pixels = util.img_as_ubyte(np.clip(image, 0, 1))
            io.imsave(Path(folder) / f"photo_{k:03d}.png", pixels, check_contrast=False)
        for device in devices:
            model = build_model(args.model).to(device=device, dtype=dtype).eval()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            rows = evaluate(model, folder, layers, methods, size=args.size, joint=joint_options(JOINT_TV))
            if device == "cuda":
                torch.cuda.synchronize()
            totals[device] = time.perf_counter() - start
            print(f"\n{device}: {len(rows)} rows in {totals[device]:.1f} s")
            print(f"  {'layer':<8} {'method':<8} {'seconds':>8} {'PSNR dB':>8}")
            for layer in layers:
                for method in methods:
                    cell = [r for r in rows if r.layer == layer and r.method == method]
                    seconds = statistics.mean(r.seconds for r in cell)
                    psnr = statistics.mean(r.psnr for r in cell)
                    print(f"  {layer:<8} {method:<8} {seconds:>8.3f} {psnr:>8.2f}")
    if len(totals) > 1:
        base = totals[devices[0]]
        for device in devices[1:]:
            print(f"\n{device} took {totals[device] / base:.2f}x the time of {devices[0]}")


if __name__ == "__main__":
    main()
