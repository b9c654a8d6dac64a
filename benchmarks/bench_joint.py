"""Joint inversion against a Mahendran & Vedaldi (2015) style baseline, and against layer by layer.

All-CNN-B with CReLU on conv1-4, seeded Gaussian filters, astronaut at 224x224, float64, CPU.
For each of conv1..conv4 it runs, in this one process:

- the layer-by-layer routes ``patch`` and ``auto`` (LSQR where no closed form is exact);
- ``joint`` as the CLI runs it: L-BFGS on the feature misfit with a TV prior (weight 0.01) from a
  flat start, then at most 5 pattern-fixed Gauss-Newton steps, in the box [0, 1];
- the baseline: gradient descent with momentum 0.9 from small noise on Mahendran & Vedaldi's
  objective ``||f(x) - y||^2 / ||y||^2 + R_alpha(x) + R_TV(x)`` with their normalised priors
  (alpha = 6, beta = 2, B = 80/255 on images centred at 0.5, V = B / 6.5), the learning rate
  divided by 10 halfway (the published recipe runs 200 iterations with a step decay). Its
  iteration count is set so that it runs at least as long as ``joint`` did, and at least 200.

PSNR is reported over the whole image and over the pixels conv1's filters read (the last row and
column of a 224 image are read by none). Run: ``python benchmarks/bench_joint.py [--layers conv2]``
(about ten minutes for all four layers).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _timing import print_machine

from invertnet import ConvOperator, JointOptions, psnr, reconstruct
from invertnet.capture.chain import trace
from invertnet.io.files import load_image
from invertnet.zoo.models import build_model

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"
B = 80 / 255
V = B / 6.5


def mahendran_vedaldi(
    prefix, y: torch.Tensor, shape: torch.Size, iterations: int, lr: float, seed: int = 0
) -> torch.Tensor:
    """Gradient descent with momentum on Mahendran & Vedaldi's normalised objective, from noise."""
    generator = torch.Generator().manual_seed(seed)
    x = (0.5 + 1e-3 * torch.randn(shape, generator=generator, dtype=y.dtype)).requires_grad_(True)
    optimiser = torch.optim.SGD([x], lr=lr, momentum=0.9)
    pixels = shape[-2] * shape[-1]
    y_norm2 = y.pow(2).sum()
    for i in range(iterations):
        if i == iterations // 2:
            optimiser.param_groups[0]["lr"] = lr / 10
        optimiser.zero_grad()
        centred = x - 0.5
        dh = centred[..., 1:, :-1] - centred[..., :-1, :-1]
        dw = centred[..., :-1, 1:] - centred[..., :-1, :-1]
        loss = (
            (prefix(x) - y).pow(2).sum() / y_norm2
            + centred.abs().pow(6).sum() / (pixels * B**6)
            + (dh.pow(2) + dw.pow(2)).sum() / (pixels * V**2)
        )
        loss.backward()
        optimiser.step()
    return x.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="conv1,conv2,conv3,conv4")
    parser.add_argument("--lr", type=float, default=None, help="baseline learning rate [default: best of a grid]")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print_machine()
    model = build_model("all-cnn-b-crelu", seed=0).double()
    image = load_image(ASSET, 224)[0].double()
    conv1 = ConvOperator.from_conv(model.conv1.conv, (224, 224))
    read = (conv1.coverage() > 0).expand_as(image[0])

    def region_psnr(x: torch.Tensor) -> float:
        return float(psnr(x[..., read].reshape(1, 1, 1, -1), image[..., read].reshape(1, 1, 1, -1), data_range=1.0))

    print(f"{'layer':<6} {'method':<26} {'PSNR':>7} {'PSNR read':>9} {'feat. res.':>10} {'seconds':>8}")
    for layer in args.layers.split(","):
        recorded = trace(model, image, layer)

        def prefix(x: torch.Tensor, records=recorded.records) -> torch.Tensor:
            for record in records:
                x = record.module(x)
            return x

        def row(name: str, x: torch.Tensor, seconds: float, layer=layer, prefix=prefix, y=recorded.features) -> None:
            with torch.no_grad():
                residual = float((prefix(x) - y).norm() / y.norm())
            whole = float(psnr(x, image, data_range=1.0))
            print(f"{layer:<6} {name:<26} {whole:>7.2f} {region_psnr(x):>9.2f} {residual:>10.2g} {seconds:>8.1f}")

        joint_seconds = 0.0
        for method in ("patch", "auto", "joint"):
            start = time.perf_counter()
            options = JointOptions(tv=0.01, box=(0.0, 1.0), max_steps=5) if method == "joint" else None
            result = reconstruct(model, image, layer, method, joint=options)
            seconds = time.perf_counter() - start
            row(
                method
                if method != "joint"
                else f"joint ({int(result.joint.evaluations[0])} ev, {int(result.joint.iterations[0])} GN)",
                result.image,
                seconds,
            )
            joint_seconds = seconds
        # the baseline's iteration count: at least 200, and at least joint's time
        start = time.perf_counter()
        probe = 5
        mahendran_vedaldi(prefix, recorded.features, image.shape, probe, 1.0)
        per_iteration = (time.perf_counter() - start) / probe
        iterations = max(200, int(joint_seconds / per_iteration) + 1)
        rates = [args.lr] if args.lr is not None else [0.1, 1.0, 10.0, 100.0]
        best = None
        for lr in rates:
            start = time.perf_counter()
            x = mahendran_vedaldi(prefix, recorded.features, image.shape, iterations, lr)
            seconds = time.perf_counter() - start
            score = region_psnr(x) if torch.isfinite(x).all() else float("-inf")
            if best is None or score > best[0]:
                best = (score, lr, x, seconds)
        _, lr, x, seconds = best
        row(f"M&V ({iterations} it, lr {lr:g})", x, seconds)


if __name__ == "__main__":
    main()
