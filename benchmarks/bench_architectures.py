"""The graph walk and the joint inversion on torchvision's architectures (our own definitions, same names).

For each architecture: its node count, then the bundled astronaut reconstructed from three depths, layer by
layer (``auto``) and jointly, with PSNR / SSIM against the input, the relative feature residual and the
seconds of the call. Random He-Gaussian weights (seed 0) unless ``(trained)``: MobileNetV2's ImageNet
features shipped in ``assets/weights``. float64, one process, the thread count printed.

Run: ``python benchmarks/bench_architectures.py [--size 64] [--only resnet18,...] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _timing import print_machine
from torch import nn

from invertnet import JointOptions, SolveOptions, invert_jointly, reconstruct
from invertnet.capture.graph import graph_layers
from invertnet.io.files import load_image
from invertnet.zoo.models import build_model, trained_mobilenet_v2

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"
ARCHITECTURES = ["alexnet", "vgg16_bn", "resnet18", "squeezenet1_0", "mobilenet_v2", "densenet121"]
#: Where in the feature extractor the three depths sit (fractions of its nodes).
DEPTHS = (0.1, 0.25, 0.45)


def _model(name: str) -> nn.Module:
    if name == "mobilenet_v2 (trained)":
        return trained_mobilenet_v2().double().eval()
    return build_model(name).double().eval()


def _depths(model: nn.Module, image: torch.Tensor) -> tuple[int, list[str]]:
    nodes = [n for n in graph_layers(model, image) if n[0] != "x"]
    features = [n for n in nodes if not n[1].startswith(("classifier", "fc", "flatten", "avgpool"))]
    picked = [features[max(1, int(f * len(features)))][0] for f in DEPTHS]
    return len(nodes), picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", default=",".join([*ARCHITECTURES, "mobilenet_v2 (trained)"]))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--maxiter", type=int, default=300, help="LSQR cap per layer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    image, _ = load_image(ASSET, args.size)
    image = image.double()
    solve = SolveOptions(maxiter=args.maxiter, warn=False)
    joint = JointOptions(tv=0.01, box=(0.0, 1.0), lbfgs_evaluations=200, max_steps=5)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, astronaut {args.size}x{args.size}, "
        f"LSQR cap {args.maxiter}, joint: TV 0.01, box [0, 1], 200 L-BFGS evaluations, 5 Gauss-Newton steps"
    )
    print(f"{'model':<24} {'nodes':>5} {'node':<34} {'method':<6} {'PSNR':>7} {'SSIM':>7} {'feat.res.':>9} {'s':>7}")
    for name in args.only.split(","):
        model = _model(name)
        count, depths = _depths(model, image)
        for node in depths:
            for method in ("auto", "joint"):
                start = time.perf_counter()
                try:
                    if method == "joint":
                        result = invert_jointly(model, image, node, joint, options=solve)
                    else:
                        result = reconstruct(model, image, node, options=solve)
                except Exception as err:  # a refusal is a result too: print it
                    print(f"{name:<24} {count:>5} {node:<34} {method:<6} refused: {str(err)[:90]}")
                    continue
                seconds = time.perf_counter() - start
                print(
                    f"{name:<24} {count:>5} {node:<34} {method:<6} {float(result.psnr[0]):7.2f} "
                    f"{float(result.ssim[0]):7.4f} {float(result.feature_residual[0]):9.2g} {seconds:7.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
