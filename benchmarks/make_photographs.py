"""Write N test images made from scikit-image's bundled photographs: square crops at several places and scales,
some flipped (no download). Used for the README's evaluation (``invertnet evaluate``).

    python benchmarks/make_photographs.py OUT_DIR [--count 50] [--side 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage import color, data, io, transform, util

PHOTOGRAPHS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "motorcycle_left")


def photographs() -> list[np.ndarray]:
    """The bundled photographs as float RGB in [0, 1] (grey ones repeated over three channels)."""
    images = []
    for name in PHOTOGRAPHS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        image = util.img_as_float(loader())
        images.append(color.gray2rgb(image) if image.ndim == 2 else image[..., :3])
    return images


def crops(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` square crops (side 40-100% of the shorter edge) resized to ``side``, half of them mirrored."""
    rng = np.random.default_rng(seed)
    sources = photographs()
    out = []
    for k in range(count):
        image = sources[k % len(sources)]
        h, w = image.shape[:2]
        extent = int(min(h, w) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, h - extent + 1), rng.integers(0, w - extent + 1)
        crop = image[top : top + extent, left : left + extent]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(transform.resize(crop, (side, side), anti_aliasing=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(crops(args.count, args.side)):
        io.imsave(args.out / f"photo_{k:03d}.png", util.img_as_ubyte(np.clip(image, 0, 1)), check_contrast=False)
    print(f"wrote {args.count} images to {args.out}")


if __name__ == "__main__":
    main()
