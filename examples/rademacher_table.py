"""
Theorem 4.1 in numbers
======================

Shang et al. (2016), Theorem 4.1, bounds the Rademacher complexity of a CReLU layer followed by a linear map.
For each CReLU layer of a model: ``d_in`` (its filters), ``B`` (the spectral norm of the next layer's weight, the
linear map ``H`` that reads the CReLU output), the Rademacher complexity of the unit-norm linear class on L image
patches, and the bound for CReLU against a ReLU layer of the same output width. Then the check on random finite
classes: how often the stated constant (1) holds, and the largest constant needed (the provable one is 4, from
the Ledoux-Talagrand contraction; see :doc:`/user_guide/analyses`).

Run: ``python examples/rademacher_table.py [--out DIR] [--small]`` (``--small``: two layers and 20 random
classes instead of four and 300).
"""

# %%
# The bound per layer
# -------------------

import torch
from _common import ASSETS, arguments
from matplotlib.figure import Figure

from invertnet.analysis.bounds import (
    composed_rademacher,
    linear_class_bound,
    rademacher_complexity,
    spectral_norm,
    theorem_4_1_bound,
)
from invertnet.capture.chain import layer_outputs
from invertnet.io.files import load_image
from invertnet.plotting.figures import save_figure
from invertnet.zoo.models import build_model

args = arguments("Theorem 4.1 of Shang et al. (2016): the bound per layer, and a check of it.")
model = build_model("convpool-cnn-c-crelu").double()
image, _ = load_image(ASSETS / "coffee.png", 32)
layers = ["conv1", "conv2"] if args.small else ["conv1", "conv2", "conv3", "conv4"]
inputs = layer_outputs(model, image, ["conv1.conv", *[f"{layer}.act" for layer in layers]])
rows = []
previous = image.double()
for k, layer in enumerate(layers, start=1):
    conv = getattr(model, layer).conv
    patches = torch.nn.functional.unfold(previous, conv.kernel_size, padding=conv.padding)[0].T  # (L, d)
    r_f = linear_class_bound(patches, 1.0)  # closed form for unit-norm filters
    b = spectral_norm(getattr(model, f"conv{k + 1}").conv)
    d_in = conv.out_channels
    rows.append((layer, d_in, b, r_f, theorem_4_1_bound(d_in, b, r_f), theorem_4_1_bound(d_in, b, r_f, "relu")))
    previous = inputs[f"{layer}.act"]
for row in rows:
    print("{:<6} d_in {:>4}  B {:8.3g}  R_L(F) {:8.3g}  CReLU {:8.3g}  ReLU {:8.3g}".format(*row))

# %%
# The stated constant, checked on random finite classes
# -----------------------------------------------------
# :func:`~invertnet.analysis.bounds.composed_rademacher` computes the left side exactly for a finite class.

generator = torch.Generator().manual_seed(0)
ratios = []
for _ in range(20 if args.small else 300):
    values = torch.randn(
        int(torch.randint(1, 10, (1,), generator=generator)), 8, generator=generator, dtype=torch.float64
    )
    ratios.append(composed_rademacher(values, 1, 1.0) / theorem_4_1_bound(1, 1.0, rademacher_complexity(values)))
check = {"classes": len(ratios), "stated_holds": sum(r <= 1 for r in ratios) / len(ratios), "worst": max(ratios)}
print(check)

# %%
# The table as a figure
# ---------------------

fig = Figure(figsize=(8, 1.0 + 0.35 * len(rows)), layout="constrained")
ax = fig.subplots()
ax.set_axis_off()
cells = [[n, str(d), f"{b:.3g}", f"{r:.3g}", f"{c:.3g}", f"{u:.3g}"] for n, d, b, r, c, u in rows]
ax.table(cells, colLabels=["layer", "d_in", "B", "R_L(F)", "CReLU bound", "ReLU (2 d_in)"], loc="center")
ax.set_title(
    f"Theorem 4.1 (ConvPool-CNN-C, Gaussian filters). Random finite classes: the stated bound holds for "
    f"{check['stated_holds']:.0%}, worst ratio {check['worst']:.2f}",
    fontsize=8,
)
save_figure(fig, args.out / "rademacher_table.png")
result = {"rows": rows, "check": check}
