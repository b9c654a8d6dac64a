"""The default answer against the flat image, the paper's layer-by-layer reading and the joint inversion.

The panel of issue 19: eleven (model, layer, size) rows, the astronaut resized, float64, one process, the
thread count printed. Per row and method: PSNR, SSIM, relative feature residual ``||f(x_hat) - f(x)|| / ||f(x)||``,
seconds of the call (each method on its own deep copy of the model, so no method reuses another's cached
factorisations), and why it stopped. ``flat`` is the image of the input's mean colour: the floor every method
must clear. ``joint`` is the joint inversion with the CLI's settings (TV 0.01, box [0, 1], 500 L-BFGS
evaluations, 5 Gauss-Newton steps).

Run: ``python benchmarks/bench_default.py [--only 1,2] [--methods flat,auto,joint] [--threads 1]``
and ``python benchmarks/bench_default.py --main-job`` (All-CNN-B CReLU at 224 px, conv1..conv4).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _timing import machine
from torch import nn

import invertnet
from invertnet import JointOptions
from invertnet.capture.graph import capture
from invertnet.io.files import load_image
from invertnet.metrics import psnr, ssim
from invertnet.zoo.models import build_model, trained_mobilenet_v2

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"
CLI_JOINT = JointOptions(tv=0.01, box=(0.0, 1.0), lbfgs_evaluations=500, max_steps=5)


@dataclass(frozen=True)
class Row:
    label: str
    build: Callable[[], nn.Module]
    layer: str
    size: int = 64
    #: the joint inversion's PSNR in issue 19's table (main 563144b), the default's target; None: this run's joint
    before: float | None = None


PANEL = [
    Row("All-CNN-B CReLU", lambda: build_model("all-cnn-b-crelu"), "conv3", before=20.4),
    Row("MobileNetV2 (trained)", trained_mobilenet_v2, "features.1", before=35.7),
    Row("MobileNetV2 (trained)", trained_mobilenet_v2, "features.3", before=20.5),
    Row("ResNet-18", lambda: build_model("resnet18"), "layer1.0", before=14.8),
    Row("ResNet-18", lambda: build_model("resnet18"), "layer2.0", before=11.9),
    Row("All-CNN-B ReLU", lambda: build_model("all-cnn-b-relu"), "conv2", before=25.7),
    Row("SqueezeNet 1.0", lambda: build_model("squeezenet1_0"), "features.3", before=12.8),
    Row("VGG-16-BN", lambda: build_model("vgg16_bn"), "features.13", before=19.6),
    Row("DenseNet-121", lambda: build_model("densenet121"), "features.denseblock1"),
    Row("AlexNet", lambda: build_model("alexnet"), "features.4"),
    Row("All-CNN-B ReLU", lambda: build_model("all-cnn-b-relu"), "conv1", 224),
]
MAIN_JOB = [
    Row("All-CNN-B CReLU", lambda: build_model("all-cnn-b-crelu"), f"conv{k}", 224, before=target)
    for k, target in ((1, 28.7), (2, 40.0), (3, 27.0), (4, 27.0))  # conv1: the walk's; conv2..4: issue 19's targets
]


def flat(image: torch.Tensor) -> torch.Tensor:
    """The image of the input's mean colour (per image and channel)."""
    return image.mean(dim=(2, 3), keepdim=True).expand_as(image).clone()


def run(method: str, model: nn.Module, image: torch.Tensor, layer: str) -> tuple[torch.Tensor, float, str]:
    """The estimate, its relative feature residual and why the method stopped."""
    if method == "joint":
        result = invertnet.invert_jointly(model, image, layer, CLI_JOINT)
    else:
        result = invertnet.reconstruct(model, image, layer, method)
    why = result.stopped[0] if result.stopped else ""
    if result.completion is not None:
        why = (
            f"[{result.frontier}, start {result.completion.start[0]}, {int(result.completion.evaluations[0])} ev, "
            f"{int(result.completion.steps[0])} GN] {why}"
        )
    return result.image, float(result.feature_residual[0]), why


def feature_residual(model: nn.Module, image: torch.Tensor, estimate: torch.Tensor, layer: str) -> float:
    graph = capture(model, image, layer)
    with torch.no_grad():
        value = graph.evaluate({graph.input: estimate})
    return float((value - graph.features).norm() / graph.features.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated row numbers (1-based) of the panel")
    parser.add_argument("--methods", default="flat,layers,auto,joint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--main-job", action="store_true", help="All-CNN-B CReLU at 224 px, conv1..conv4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = MAIN_JOB if args.main_job else PANEL
    picked = range(1, len(rows) + 1) if args.only is None else [int(k) for k in args.only.split(",")]
    methods = args.methods.split(",")
    print(machine())
    print("float64, the astronaut resized")
    print(f"{'#':>2} {'model':<22} {'layer':<21} {'px':>4} {'method':<6} {'PSNR':>7} {'SSIM':>7} {'feat.res.':>9} "
          f"{'s':>7}  stopped")  # fmt: skip
    verdicts = []
    for k in picked:
        row = rows[k - 1]
        model = row.build().double().eval()
        image = load_image(ASSET, row.size)[0].double()
        measured: dict[str, tuple[float, float, float]] = {}
        for method in methods:
            start = time.perf_counter()
            if method == "flat":
                estimate, why = flat(image), "the mean colour"
                residual = feature_residual(model, image, estimate, row.layer)
            else:
                estimate, residual, why = run(method, copy.deepcopy(model), image, row.layer)
            seconds = time.perf_counter() - start
            quality = float(psnr(estimate, image, 1.0)[0]), float(ssim(estimate, image, 1.0)[0])
            measured[method] = (quality[0], residual, seconds)
            print(
                f"{k:>2} {row.label:<22} {row.layer:<21} {row.size:>4} {method:<6} {quality[0]:7.2f} {quality[1]:7.4f} "
                f"{residual:9.2g} {seconds:7.1f}  {why}",
                flush=True,
            )
        verdicts.append(_verdict(k, row, measured))
    print("\ntargets (issue 19): PSNR >= joint's (the issue's table, else this run's) and > flat; residual <= 1e-3; "
          "seconds <= this run's joint")  # fmt: skip
    for line in verdicts:
        print(line)


def _verdict(k: int, row: Row, measured: dict[str, tuple[float, float, float]]) -> str:
    """Whether the default met the row's targets, from this run's numbers."""
    if "auto" not in measured:
        return f"{k:>2} (no default in this run)"
    psnr_auto, residual, seconds = measured["auto"]
    parts = []
    reference = row.before if row.before is not None else measured.get("joint", (float("nan"),))[0]
    if reference == reference:  # no reference without the value or a joint column
        parts.append(f"PSNR {psnr_auto:.2f} vs {reference:.2f}: {'ok' if psnr_auto >= reference else 'MISSED'}")
    else:
        parts.append(f"PSNR {psnr_auto:.2f} (no joint reference in this run)")
    if "flat" in measured:
        parts.append(f"above flat {measured['flat'][0]:.2f}: {'ok' if psnr_auto > measured['flat'][0] else 'MISSED'}")
    parts.append(f"residual {residual:.2g}: {'ok' if residual <= 1e-3 else 'MISSED'}")
    if "joint" in measured:
        joint_seconds = measured["joint"][2]
        parts.append(
            f"{seconds:.1f} s vs joint {joint_seconds:.1f} s: {'ok' if seconds <= joint_seconds else 'MISSED'}"
        )
    return f"{k:>2} " + "; ".join(parts)


if __name__ == "__main__":
    main()
