"""Foundation benchmark: reconstruction cost against a forward pass, and batched SSIM against scikit-image.

Run: ``python benchmarks/bench_foundation.py`` (about a minute on 2 cores). Prints one table; ratios
are from this one run (machines here are noisy: compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _timing import median_seconds, print_machine
from skimage import data
from skimage.metrics import structural_similarity

from invertnet import CONV_METHODS, reconstruct, ssim
from invertnet.io.files import load_image
from invertnet.zoo.models import build_model

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--method", choices=sorted(CONV_METHODS), default="patch", help="convolution route timed")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print_machine()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, All-CNN-B (CReLU conv1-4), "
        f"{args.size}x{args.size}, method {args.method}, median of {args.repeat}"
    )

    model = build_model("all-cnn-b-crelu").to(dtype)
    image, _ = load_image(ASSET, args.size)
    image = image.to(dtype)
    prefix = model[:4]  # conv1..conv4 blocks
    with torch.no_grad():
        forward = median_seconds(lambda: prefix(image), args.repeat, warmup=False)
    print(f"\nforward conv1..conv4: {forward * 1e3:8.1f} ms  (1.0x)")
    print(f"{'from':>6} {'first call':>12} {'cached':>10} {'ratio':>8} {'PSNR':>8} {'SSIM':>7}")
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        fresh = build_model("all-cnn-b-crelu").to(dtype)  # empty pseudo-inverse cache
        start = time.perf_counter()
        result = reconstruct(fresh, image, layer, args.method)
        first = time.perf_counter() - start
        cached = median_seconds(
            lambda layer=layer, fresh=fresh: reconstruct(fresh, image, layer, args.method), args.repeat
        )
        print(
            f"{layer:>6} {first * 1e3:9.1f} ms {cached * 1e3:7.1f} ms {cached / forward:7.1f}x "
            f"{float(result.psnr):6.2f} dB {float(result.ssim):7.4f}"
        )

    print("\nSSIM (Wang 2004: 11x11 Gaussian, population covariance), 16 RGB images 224x224, float64")
    rng = np.random.default_rng(0)
    base = data.astronaut()[:224, :224] / 255.0
    clean = np.stack([np.roll(base, 7 * i, axis=1) for i in range(16)])
    noisy = np.clip(clean + 0.05 * rng.standard_normal(clean.shape), 0, 1)
    x = torch.from_numpy(clean.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(noisy.transpose(0, 3, 1, 2).copy())
    batched = median_seconds(lambda: ssim(x, y, 1.0), args.repeat)

    def loop() -> list[float]:
        return [
            structural_similarity(
                a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            for a, b in zip(clean, noisy, strict=True)
        ]

    reference = median_seconds(loop, args.repeat)
    gap = float(np.max(np.abs(ssim(x, y, 1.0).numpy() - np.array(loop()))))
    batched32 = median_seconds(lambda: ssim(x.float(), y.float(), 1.0), args.repeat)
    print(f"skimage loop (float64):    {reference * 1e3:8.1f} ms   (1.0x)")
    print(f"invertnet.ssim (float64):  {batched * 1e3:8.1f} ms ({reference / batched:.2f}x the speed, diff {gap:.0e})")
    print(
        f"invertnet.ssim (float32):  {batched32 * 1e3:8.1f} ms   ({reference / batched32:.2f}x the speed of the loop)"
    )


if __name__ == "__main__":
    main()
