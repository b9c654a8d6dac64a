"""Pairing histograms (the paper's Figs. 2-3) of every conv layer of a checkpoint, against random filters.

Run: ``python examples/pairing_histograms.py [--checkpoint PATH] [--out DIR] [--small]``; without a
checkpoint it analyses the built-in ConvPool-CNN-C's Gaussian filters, which sit on the random
reference by construction (a check of the reference itself).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from invertnet.io import load_state_dict
from invertnet.models import build_model
from invertnet.pairing import expected_random_mu, pairing_by_layer
from invertnet.plotting import pairing_figure, save_figure


def main(out: Path, small: bool = False, checkpoint: Path | None = None) -> dict[str, tuple[float, float]]:
    """Write ``pairing.png``; return, per layer, the mean pairing cosine and its value for random filters."""
    source = load_state_dict(checkpoint) if checkpoint else build_model("convpool-cnn-c-relu").state_dict()
    pairings = pairing_by_layer(source)
    if small:
        pairings = dict(list(pairings.items())[:3])
    save_figure(pairing_figure(pairings), out / "pairing.png")
    return {
        name: (float(p.mu.mean()), expected_random_mu(math.prod(p.shape[1:]), p.shape[0]))
        for name, p in pairings.items()
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    for name, (mean, random) in main(args.out, args.small, args.checkpoint).items():
        print(f"{name:<24} mean mu {mean:7.3f}   random filters {random:7.3f}")
