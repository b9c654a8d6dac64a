"""Singular value spectra and injectivity verdicts of every convolution and pooling layer of a model.

Run: ``python examples/spectra.py [--out DIR] [--small]`` (All-CNN-B at 64x64, a few minutes;
``--small``: ConvPool-CNN-C at 16x16).
"""

from __future__ import annotations

from pathlib import Path

from _common import arguments

from invertnet.injectivity import injectivity_report
from invertnet.models import build_model
from invertnet.plotting import save_figure, spectrum_figure


def main(out: Path, small: bool = False) -> dict[str, str]:
    """Write ``spectra.png``; return each layer's verdict."""
    model = build_model("convpool-cnn-c-crelu" if small else "all-cnn-b-crelu").double()
    size = 16 if small else 64
    report = injectivity_report(model, (size, size), "conv2" if small else None)
    save_figure(spectrum_figure(report), out / "spectra.png")
    return {r.name: r.verdict for r in report}


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    for layer, verdict in main(args.out, args.small).items():
        print(f"{layer:<12} {verdict}")
