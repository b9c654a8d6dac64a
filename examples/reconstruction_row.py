"""The paper's reconstruction row (Shang et al. 2016, Fig. 5): the input, then the image from conv1..conv4.

Run: ``python examples/reconstruction_row.py [--out DIR] [--small]`` (All-CNN-B at 224x224, about a
minute; ``--small``: ConvPool-CNN-C at 32x32).
"""

from __future__ import annotations

from pathlib import Path

from _common import arguments

from invertnet import reconstruct
from invertnet.io import load_image
from invertnet.models import MODELS, build_model
from invertnet.plotting import layer_row_figure, save_figure

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def main(out: Path, small: bool = False) -> dict[str, float]:
    """Write ``reconstruction_row.png``; return the PSNR (dB) from each layer."""
    name = "convpool-cnn-c-crelu" if small else "all-cnn-b-crelu"
    spec = MODELS[name]
    model = build_model(name).double()
    image, _ = load_image(ASSETS / "astronaut.png", spec.input_size)
    results = [reconstruct(model, image, layer) for layer in spec.figure_layers]
    save_figure(layer_row_figure(results), out / "reconstruction_row.png")
    return {r.layer: float(r.psnr[0]) for r in results}


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    for layer, value in main(args.out, args.small).items():
        print(f"{layer}: {value:.2f} dB")
