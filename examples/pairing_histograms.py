r"""
Filter pairing
==============

The paper's Figs. 2-3: for every convolution weight of a checkpoint, the histogram of
:math:`\mu_i = \min_j \langle \phi_i, \phi_j \rangle` over its unit-norm filters (how close each filter's
most opposite partner is to :math:`-\phi_i`), against the exact distribution for random filters of the same
shape. Lower layers of trained ReLU networks learn opposite-phase pairs (:math:`\mu` near -1); CReLU makes them
unnecessary.

Run: ``python examples/pairing_histograms.py [--checkpoint PATH] [--out DIR] [--small]``; without a checkpoint it
analyses the built-in ConvPool-CNN-C's Gaussian filters, which sit on the random reference by construction (a
check of the reference itself). ``--small`` keeps the first three layers. The command line does the same:
``invertnet pairing CHECKPOINT --out pairing.png``. Trained filters look different: ``train_pairing.py`` trains
a ReLU autoencoder and its CReLU twin, and the trained MobileNetV2's first convolution has a mean :math:`\mu` of
-0.711 against -0.388 for random filters.
"""

# %%
# Pairings of every layer
# -----------------------

import argparse
import math
from pathlib import Path

from _common import arguments

from invertnet.analysis.pairing import expected_random_mu, pairing_by_layer
from invertnet.io.files import load_state_dict
from invertnet.plotting.figures import pairing_figure, save_figure
from invertnet.zoo.models import build_model

parser = argparse.ArgumentParser(description="Pairing histograms of every conv layer of a checkpoint.")
parser.add_argument("--checkpoint", type=Path, default=None, help="a state dict (.pt or .safetensors)")
args = arguments(parser.description, parser)
source = load_state_dict(args.checkpoint) if args.checkpoint else build_model("convpool-cnn-c-relu").state_dict()
pairings = pairing_by_layer(source)
if args.small:
    pairings = dict(list(pairings.items())[:3])

means = {
    name: (float(p.mu.mean()), expected_random_mu(math.prod(p.shape[1:]), p.shape[0])) for name, p in pairings.items()
}
for name, (mean, random) in means.items():
    print(f"{name:<24} mean mu {mean:7.3f}   random filters {random:7.3f}")

# %%
# The histograms
# --------------

save_figure(pairing_figure(pairings), args.out / "pairing.png")
