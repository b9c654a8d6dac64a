"""``invertnet.ssim`` against scikit-image's loop, image sizes 64..2048, float64, one thread.

Wang's setting on both sides: ``structural_similarity(a, b, data_range=1, channel_axis=2, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)`` on an RGB ``(H, W, 3)`` array against ``ssim(x, y, 1.0)`` on ``(1, 3, H, W)``.
The images are a tiling of ``skimage.data.astronaut()`` and a noisy copy. Each line: the median of ``--repeat``
calls of each (after one untimed call), their ratio ours/scikit-image (below 1: ours is faster) and |diff|.

Run: ``python benchmarks/bench_metrics.py [--sizes 64 128 256 512 1024 2048] [--repeat 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import median_seconds, print_machine
from skimage import data
from skimage.metrics import structural_similarity

from invertnet import ssim


def _pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    base = data.astronaut() / 255.0
    reps = -(-size // base.shape[0])
    clean = np.tile(base, (reps, reps, 1))[:size, :size]
    noisy = np.clip(clean + 0.05 * np.random.default_rng(size).standard_normal(clean.shape), 0, 1)
    return clean, noisy


def _row(size: int, repeat: int) -> str:
    clean, noisy = _pair(size)
    x = torch.from_numpy(clean.transpose(2, 0, 1).copy()).unsqueeze(0)
    y = torch.from_numpy(noisy.transpose(2, 0, 1).copy()).unsqueeze(0)

    def reference() -> float:
        return float(
            structural_similarity(
                clean,
                noisy,
                data_range=1.0,
                channel_axis=2,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
        )

    theirs = median_seconds(reference, repeat)
    ours = median_seconds(lambda: ssim(x, y, 1.0), repeat)
    diff = abs(float(ssim(x, y, 1.0)) - reference())
    return f"{size:>6} {theirs * 1e3:>8.1f} ms {ours * 1e3:>8.1f} ms {ours / theirs:>13.2f} {diff:>8.0e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    print(f"SSIM (Wang 2004), RGB, float64, {torch.get_num_threads()} thread(s), median of {args.repeat}")
    print(f"{'size':>6} {'skimage':>11} {'invertnet':>11} {'ours/skimage':>13} {'|diff|':>8}")
    for size in args.sizes:
        print(_row(size, args.repeat), flush=True)


if __name__ == "__main__":
    main()
