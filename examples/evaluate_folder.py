"""
Evaluate a folder of images
===========================

:func:`invertnet.evaluation.evaluate.evaluate` reconstructs every image of a folder from each layer with each method and
returns one row per (image, layer, method): PSNR, SSIM, relative error, feature residual, whether the result is
proven exact, the route of every step, the seconds and the settings. With ``out=`` it appends each finished row to
a CSV file, so the same call run again computes only the rows still missing. The command line does the same
(``invertnet evaluate photos/ --layers conv1,conv2 --methods auto,joint --out results.csv``), and under
``torchrun`` the images are dealt to the processes (see :doc:`/user_guide/datasets`).

Here the folder is made on the spot: square crops at random places and scales of scikit-image's bundled
photographs, half of them mirrored, written as PNG files into a temporary folder.

Run: ``python examples/evaluate_folder.py [--out DIR] [--small]`` (8 crops at 64x64 from conv1..conv4, a few
minutes; ``--small``: 4 crops at 32x32 from conv1 and conv2, what the tests and this gallery run). The same
evaluation over 50 crops is in :doc:`/user_guide/datasets`:

.. image:: /evaluation_50_all_cnn_b_crelu_64.png
   :alt: mean PSNR by layer and method over 50 photographs
"""

# %%
# A folder of photographs
# -----------------------

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import arguments
from skimage import color, data, transform, util

from invertnet import JointOptions
from invertnet.evaluation.evaluate import evaluate, format_summary, read_rows, summarize
from invertnet.io.files import save_image
from invertnet.plotting.figures import evaluation_figure, save_figure
from invertnet.zoo.models import build_model

args = arguments("Evaluate reconstructions over a folder of generated photographs.")
count, size = (4, 32) if args.small else (8, 64)
layers = ["conv1", "conv2"] if args.small else ["conv1", "conv2", "conv3", "conv4"]

rng = np.random.default_rng(0)
photos = [data.astronaut(), data.chelsea(), data.coffee(), color.gray2rgb(data.camera())]
folder = Path(tempfile.mkdtemp(prefix="invertnet-photos-"))
for k in range(count):
    photo = util.img_as_float(photos[k % len(photos)])
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.4, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = photo[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = transform.resize(crop, (2 * size, 2 * size), anti_aliasing=True)
    save_image(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))), folder / f"photo_{k}.png")
print(sorted(p.name for p in folder.iterdir()))

# %%
# Every image, every layer, two methods
# -------------------------------------
# All-CNN-B with CReLU (seeded Gaussian filters) in float64; ``joint`` with the command line's settings (a TV
# prior and the box [0, 1]). Each row is appended to ``results.csv`` as soon as it is finished.

model = build_model("all-cnn-b-crelu").double().eval()
joint = JointOptions(tv=0.01, box=(0.0, 1.0), lbfgs_evaluations=100 if args.small else 500, max_steps=5)
results = folder / "results.csv"
rows = evaluate(model, folder, layers, ["auto", "joint"], size=size, joint=joint, out=results)
for r in rows[: 2 * len(layers)]:
    print(f"{Path(r.image).name} {r.layer} {r.method:<5} PSNR {r.psnr:6.2f} dB  exact {r.exact}  {r.route}")

# %%
# Run again: nothing left to do
# -----------------------------
# The rows already in ``results.csv`` are read back instead of computed (an interrupted run resumes the same way).

again = evaluate(model, folder, layers, ["auto", "joint"], size=size, joint=joint, out=results)
print(f"{len(read_rows(results))} rows in the file, {len(again)} returned, the same: {again == rows}")

# %%
# The summary
# -----------
# Mean per layer and method with its 95% Student-t interval.

summary = summarize(rows)
print(format_summary(summary))
save_figure(evaluation_figure(summary), args.out / "evaluation.png")

shutil.rmtree(folder)  # the photographs were only for this example
# sphinx_gallery_thumbnail_path = 'evaluation_50_all_cnn_b_crelu_64.png'
