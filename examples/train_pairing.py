"""Do ReLU filters learn opposite-phase pairs? Train a ReLU autoencoder and its CReLU twin, compare pairings.

Both are one-layer convolutional autoencoders on 16x16 grey patches of scikit-image's bundled
photographs (zero mean per patch): encoder ``Conv2d(1, 32, 7)`` then ReLU or CReLU, decoder a
transposed convolution back to the patch; Adam on the squared reconstruction error. The CReLU twin
has the same 32 filters (its decoder reads 64 channels). The figure puts both encoders' pairing
histograms against Gaussian random filters of the same shape. Shang et al. (2016) report that the
lower layers of ReLU networks learn pairs (mu near -1) and argue that CReLU makes them unnecessary.

Run: ``python examples/train_pairing.py [--out DIR] [--small]`` (a few minutes on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from _common import arguments
from skimage import color, data
from torch import nn

from invertnet import CReLU
from invertnet.pairing import expected_random_mu, pairing
from invertnet.plotting import pairing_figure, save_figure

PATCH, FILTERS, KERNEL = 16, 32, 7


def patches(count: int, seed: int = 0) -> torch.Tensor:
    """``count`` random 16x16 grey patches of four bundled photographs, each with zero mean, unit std overall."""
    photos = [color.rgb2gray(data.astronaut()), data.camera() / 255.0, color.rgb2gray(data.coffee())]
    photos.append(color.rgb2gray(data.chelsea()))
    rng = np.random.default_rng(seed)
    out = np.empty((count, 1, PATCH, PATCH))
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        r, c = rng.integers(0, photo.shape[0] - PATCH), rng.integers(0, photo.shape[1] - PATCH)
        out[i, 0] = photo[r : r + PATCH, c : c + PATCH]
    out -= out.mean(axis=(2, 3), keepdims=True)
    return torch.from_numpy(out / out.std()).float()


def autoencoder(activation: nn.Module, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    width = 2 * FILTERS if isinstance(activation, CReLU) else FILTERS
    return nn.Sequential(
        nn.Conv2d(1, FILTERS, KERNEL, padding=KERNEL // 2),
        activation,
        nn.ConvTranspose2d(width, 1, KERNEL, padding=KERNEL // 2),
    )


def train(model: nn.Sequential, x: torch.Tensor, steps: int, batch: int = 128) -> float:
    """Adam on the mean squared reconstruction error; returns the final error on all patches."""
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        sample = x[torch.randint(0, len(x), (batch,), generator=generator)]
        optimiser.zero_grad()
        loss = (model(sample) - sample).pow(2).mean()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return float((model(x) - x).pow(2).mean())


def main(out: Path, small: bool = False) -> dict[str, dict[str, float]]:
    """Write ``train_pairing.png``; return, per model, its error, mean mu and fraction of filters with mu < -0.9."""
    x = patches(2_000 if small else 20_000)
    steps = 50 if small else 2_000
    results, pairings = {}, {}
    for name, activation in (("ReLU", nn.ReLU()), ("CReLU", CReLU())):
        model = autoencoder(activation, seed=0)
        error = train(model, x, steps)
        p = pairing(model[0].weight)
        pairings[name] = p
        results[name] = {
            "error": error,
            "mean_mu": float(p.mu.mean()),
            "paired": float((p.mu < -0.9).float().mean()),
            "random_mean_mu": expected_random_mu(KERNEL * KERNEL, FILTERS),
        }
    save_figure(pairing_figure(pairings, [f"{n} autoencoder" for n in pairings]), out / "train_pairing.png")
    return results


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    for name, r in main(args.out, args.small).items():
        print(
            f"{name:<6} error {r['error']:.4f}  mean mu {r['mean_mu']:.3f} (random {r['random_mean_mu']:.3f})  "
            f"pairs (mu < -0.9) {r['paired']:.0%}"
        )
