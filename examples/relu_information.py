r"""
What ReLU keeps
===============

The paper's ReLU baseline reads a ReLU output as its input: the negative part is simply gone. That is the worst
reading. For :math:`h = \max(0, W x + b)` every positive entry is an *equation* on the input
(:math:`W_i x + b_i = h_i`) and every zero an *inequality* (:math:`W_i x + b_i \le 0`). Where the equations
determine the input, the layer is exactly invertible; ``reconstruct`` reads every ReLU, ReLU6 and Hardtanh that
way by default (``relu="active_set"``, :mod:`invertnet.activeset`).

:func:`~invertnet.analysis.information.layer_information` measures, per layer: the share of outputs that are equations,
whether a certificate proves that they determine the layer's input, and the PSNR of the reconstruction by the
active set, by the identity (the paper's baseline) and by the network's **CReLU twin**
(:func:`~invertnet.analysis.information.crelu_twin`: every ``Conv2d -> ReLU`` keeps its first half of filters and
becomes CReLU). The command line does the same: ``invertnet information IMAGE --model all-cnn-b-relu``.

Run: ``python examples/relu_information.py [--out DIR] [--small]`` (All-CNN-B at 64x64, about two minutes on one
core; ``--small``: 32x32, what the tests and this gallery run). The tables at 64 and 224 px are in
:doc:`/user_guide/relu`.
"""

# %%
# Random ReLU filters: All-CNN-B and its CReLU twin
# -------------------------------------------------
# No layer is determined: ReLU switches off more than half of the rows, which leaves fewer equations than
# unknowns. Still, the active set keeps far more than the identity reading says.

from _common import ASSETS, arguments

from invertnet.analysis.information import crelu_twin, format_information, layer_information
from invertnet.io.files import load_image
from invertnet.plotting.figures import information_figure, save_figure
from invertnet.zoo.models import build_model, trained_mobilenet_v2

args = arguments("What each ReLU layer keeps: active share, certificate and PSNR by active set, identity, twin.")
size = 32 if args.small else 64
image, _ = load_image(ASSETS / "astronaut.png", size)
model = build_model("all-cnn-b-relu").double().eval()
twin = crelu_twin(model).eval()
rows = layer_information(model, image.double(), ["conv1", "conv2", "conv3"], twin=twin)
print(format_information(rows))
for row in rows:
    print(f"{row.layer}: {row.certificate}")
save_figure(information_figure(rows, f"All-CNN-B (ReLU, Gaussian filters) at {size} px"), args.out / "relu.png")

# %%
# A trained network: MobileNetV2's stem is determined
# ---------------------------------------------------
# The trained stem (3x3 stride-2 convolution, BatchNorm, ReLU6) keeps half its outputs as equations, and a
# certificate proves that they determine the input: the active set gives the image back to rounding, where the
# identity reading is far below a flat grey image.

trained = trained_mobilenet_v2().double().eval()
stem = layer_information(trained, load_image(ASSETS / "astronaut.png", 32)[0].double(), ["features.0"])
print(format_information(stem))
print(f"features.0: {stem[0].certificate}")
