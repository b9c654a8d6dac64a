"""Joint inversion's cost in units, from one run: All-CNN-B (CReLU) conv2, the astronaut, float64, 1 thread.

A unit is one forward and backward pass of the prefix (input to conv2's CReLU), timed in the same
process; a run's cost is its CPU time over that unit's (CPU time: other processes' load hardly moves
it). The run is what the CLI does for
``--method joint``: ``start="auto"`` (the layer-by-layer estimate, used per image where it matches the
features), L-BFGS with the TV prior 0.01 from a flat start in the box [0, 1], then at most 5
Gauss-Newton steps. The window factorisation of conv1 is computed before timing (it is cached per
layer; its own cost is another benchmark's). Also prints the counts behind the cost: L-BFGS
evaluations, Gauss-Newton steps and LSQR iterations (each one ``jvp`` and one ``vjp``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_joint_units.py [--sizes 128,224] [--steps 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import print_machine

from invertnet import JointOptions, invert_jointly, reconstruct
from invertnet.capture.chain import trace
from invertnet.io.files import load_image
from invertnet.zoo.models import build_model

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"


def median_cpu_seconds(fn: Callable[[], object], repeat: int = 7) -> float:
    """Median CPU time of ``repeat`` calls (after one untimed call): other processes' load hardly moves it."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--steps", type=int, default=5, help="Gauss-Newton steps at most (the CLI's 5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print_machine()
    model = build_model("all-cnn-b-crelu", seed=0).double()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64")
    print(
        f"{'size':>5} {'unit ms':>8} {'units':>7} {'seconds':>8} {'L-BFGS ev':>9} {'GN':>3} {'LSQR it':>7} "
        f"{'PSNR':>6} {'feat. res.':>10}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        image = load_image(ASSET, size)[0].double()
        records = trace(model, image, "conv2").records
        x = image.clone().requires_grad_(True)

        def unit_pass(records=records, x=x) -> None:
            out = x
            for record in records:
                out = record.module(out)
            out.sum().backward()
            x.grad = None

        with torch.no_grad():
            reconstruct(model, image, "conv1", "auto")  # conv1's window factorisation, cached
        unit = median_cpu_seconds(unit_pass)
        options = JointOptions(tv=0.01, box=(0.0, 1.0), max_steps=args.steps)
        start = time.process_time()
        result = invert_jointly(model, image, "conv2", options)
        seconds = time.process_time() - start
        unit = (unit + median_cpu_seconds(unit_pass)) / 2  # before and after: the machine's load drifts
        joint = result.joint
        assert joint is not None

        def total(count: object) -> int:
            return int(torch.as_tensor(count).sum())  # per image (a tensor) since batching; an int before

        history = joint.history[0] if isinstance(joint.history[0], list) else joint.history
        print(
            f"{size:>5} {unit * 1e3:>8.1f} {seconds / unit:>7.0f} {seconds:>8.1f} {total(joint.evaluations):>9} "
            f"{total(joint.iterations):>3} {total(joint.inner_iterations):>7} {float(result.psnr[0]):>6.2f} "
            f"{float(result.feature_residual[0]):>10.2e}  history {' '.join(f'{h:.2g}' for h in history)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
