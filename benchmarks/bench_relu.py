"""What ReLU keeps: reconstruction from conv1..conv4 through the active set, as the identity, and by the CReLU twin.

All-CNN-B with ReLU (seeded Gaussian filters) and its CReLU twin (the same filters, halved: ``crelu_twin``), on
the astronaut at ``--size`` px, float64, one run. Per layer: the active share, how many images the active rows
determine (certificate), PSNR and seconds of each reading. ``--trained`` runs the trained MobileNetV2 features
shipped in ``assets/weights`` (ReLU6; no twin) at its first blocks instead.

    python benchmarks/bench_relu.py --size 224 --threads 1
    python benchmarks/bench_relu.py --trained --size 64 --threads 1
"""

from __future__ import annotations

import argparse

import torch
from _timing import print_machine
from skimage import data
from skimage.transform import resize

from invertnet.analysis.information import crelu_twin, format_information, layer_information
from invertnet.zoo.models import all_cnn_b, trained_mobilenet_v2


def astronaut(size: int) -> torch.Tensor:
    image = resize(data.astronaut(), (size, size), anti_aliasing=True).transpose(2, 0, 1)
    return torch.tensor(image, dtype=torch.float64).unsqueeze(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", default=None, help="comma-separated [default: conv1..conv4, or features.0..3]")
    parser.add_argument("--trained", action="store_true", help="the trained MobileNetV2 features (ReLU6)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    if args.trained:
        model = trained_mobilenet_v2().double().eval()
        twin = None
        default = "features.0,features.1.conv.0,features.2.conv.0,features.2.conv.1"
        what = "trained MobileNetV2 features (ImageNet, ReLU6), no CReLU twin"
    else:
        model = all_cnn_b(crelu_layers=(), seed=0).double().eval()
        twin = crelu_twin(model).eval()
        default = "conv1,conv2,conv3,conv4"
        what = "All-CNN-B, ReLU, Gaussian filters (seed 0); twin: CReLU on the first half of each layer's filters"
    layers = (args.layers or default).split(",")
    print(f"{what}; astronaut at {args.size} px, float64, {args.threads} thread(s)")
    rows = layer_information(model, astronaut(args.size), layers, twin=twin, progress=print)
    print(format_information(rows))
    for row in rows:
        print(f"{row.layer}: {row.certificate}")


if __name__ == "__main__":
    main()
