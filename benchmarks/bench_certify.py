"""Certificates that are proofs, at image scale: the targets of issue 22 in one run.

Sections (``--only`` picks some, comma-separated):

- ``spectrum``: ``injectivity_report`` of All-CNN-B (``all-cnn-b-crelu`` and ``all-cnn-b-relu``, seeded Gaussian
  filters) at ``--size`` (224): per layer the verdict, the proof, the estimate of sigma_min and the proven lower
  bound, seconds; whether every layer is decided (proven injective, proven not injective, or shown singular);
  the total per model against the 60 s target.
- ``resnet``: the same for ResNet-18's stem and layer1 (``--size``; target 120 s).
- ``masked``: the active-set certificate (``invertnet.activeset.certify``, with the banded proof allowed
  ``--proof-flops``) of All-CNN-B ReLU conv4 and of the trained MobileNetV2 stem, on the astronaut at ``--size``:
  decided or not, which proof, the bound, seconds.
- ``battery``: 200 seeded random small layers (strides, dilations, groups, every padding mode, masks): for every
  proof, the largest ratio bound / dense sigma_min (must be at most 1) and the ratios sigma_min / bound on
  well-conditioned layers (condition number below 100).
- ``spectrum64``: All-CNN-B's spectrum at 64 px: today against turn 2's computation (``bench_spectrum.py``'s
  ``_before``), the 5x target.
- ``scaling``: seconds against unknowns from 64 to 448 px: All-CNN-B ReLU conv4, conv7 and conv10's spectrum rows,
  and the trained MobileNetV2 stem's active-set certificate.
- ``square``: why ResNet-18's layer1 stays undecided: ``sigma_min`` of layer1.0.conv1 on 8x8 to 32x32 grids by
  inverse iteration through a sparse LU factorisation of the square operator (SuperLU), each a proven upper bound
  (``vector_upper_bound`` of the vector found); not in the default run (222 s and 12 GB at 32x32).

Run: ``python benchmarks/bench_certify.py [--size 224] [--threads 1] [--only battery,masked,...]``.
One run, one thread by default; the machine, torch build and commit are printed first. The seconds need a quiet
machine; the verdicts, proofs and ratios do not.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from _timing import print_machine, touch_memory

from invertnet.activeset import activation_constraints, certify, clip_levels
from invertnet.analysis.injectivity import (
    LayerSpectrum,
    _layer_spectrum,
    _records,
    format_spectrum,
    injectivity_report,
)
from invertnet.capture.graph import capture
from invertnet.io.files import load_image
from invertnet.linalg.spectrum import sigma_max
from invertnet.operators import ConvOperator
from invertnet.pinv.proofs import (
    banded_proof,
    dense_proof,
    gram_proof,
    patch_proof,
    prove,
    vector_upper_bound,
    window_proof,
)
from invertnet.zoo.models import build_model, trained_mobilenet_v2

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"

DECIDED = ("injective", "not injective", "numerically singular")

#: ``--proof-flops``: the budget of the banded proof (ReLU conv4 masked at 224 px: 1.1e13; CReLU conv4: 9.1e13;
#: ResNet-18 layer1: 2.1e13 each).
PROOF_FLOPS = 2e13


def _report_table(title: str, report: list[LayerSpectrum], seconds: float, target: float | None) -> None:
    print(f"\n{title}: {seconds:.1f} s" + (f" (target {target:.0f} s)" if target else ""))
    print(format_spectrum(report, seconds=True), flush=True)
    undecided = [r.name for r in report if not r.verdict.startswith(DECIDED)]
    print(f"  decided: {len(report) - len(undecided)} of {len(report)}" + (f"; not: {undecided}" if undecided else ""))


def spectrum(size: int, proof_flops: float, models: list[str]) -> None:
    for name in models:
        model = build_model(name).double()
        start = time.perf_counter()
        report = injectivity_report(
            model, (size, size), progress=lambda line: print(f"    {line}", flush=True), proof_flops=proof_flops
        )
        _report_table(f"{name} at {size}x{size}", report, time.perf_counter() - start, 60.0)


def resnet(size: int, proof_flops: float) -> None:
    model = build_model("resnet18").double().eval()
    start = time.perf_counter()
    report = injectivity_report(
        model, (size, size), "layer1", progress=lambda line: print(f"    {line}", flush=True), proof_flops=proof_flops
    )
    _report_table(f"resnet18 stem + layer1 at {size}x{size}", report, time.perf_counter() - start, 120.0)


def _certificate_row(
    label: str, model: torch.nn.Module, image: torch.Tensor, layer: str, proof_flops: float = PROOF_FLOPS
) -> None:
    graph = capture(model, image, layer)
    node = graph.nodes[graph.target]
    below = graph.nodes[node.parents[0]]
    while not isinstance(below.module, torch.nn.Conv2d):
        below = graph.nodes[below.parents[0]]
    source = graph.nodes[below.parents[0]].tensor
    conv = below.module
    assert isinstance(conv, torch.nn.Conv2d)
    op = ConvOperator.from_conv(conv, (source.shape[-2], source.shape[-1]))
    lower, upper = clip_levels(node.module) if node.module is not None else (0.0, None)
    known = activation_constraints(node.tensor, lower, upper).known
    start = time.perf_counter()
    (certificate,) = certify(op, known, proof_flops=proof_flops)
    seconds = time.perf_counter() - start
    print(
        f"  {label:<34} {op.in_dim:>9} {certificate.rows:>9} {certificate.determined!s:>10} "
        f"{certificate.proof or '-':<8} {certificate.lower_bound:>10.4g} {seconds:>7.1f}  {certificate.reason}",
        flush=True,
    )


def masked(size: int, proof_flops: float) -> None:
    image, _ = load_image(ASSET, size)
    image = image.double()
    print(f"\nactive-set certificates on the astronaut at {size}x{size} (float64)")
    print(
        f"  {'layer':<34} {'unknowns':>9} {'known':>9} {'determined':>10} {'proof':<8} {'bound':>10} {'s':>7}  reason"
    )
    relu = build_model("all-cnn-b-relu").double().eval()
    _certificate_row("all-cnn-b-relu conv4 (ReLU)", relu, image, "conv4.act", proof_flops)
    mobilenet = trained_mobilenet_v2().double().eval()
    _certificate_row("trained MobileNetV2 features.0 (ReLU6)", mobilenet, image, "features.0", proof_flops)


def _random_layer(seed: int) -> tuple[ConvOperator, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)

    def pick(*options: int) -> int:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    kernel, stride, dilation = (pick(1, 2, 3), pick(1, 2, 3)), (pick(1, 1, 2), pick(1, 1, 2)), (pick(1, 1, 2), 1)
    padding = (pick(0, 1, 2), pick(0, 1, 2))
    mode = ("zeros", "zeros", "reflect", "replicate", "circular")[pick(0, 1, 2, 3, 4)]
    groups, c_in = pick(1, 1, 2), pick(1, 2, 3)
    patch = c_in * kernel[0] * kernel[1]
    c_out = max(1, patch * stride[0] * stride[1] // pick(1, 1, 2, 4) + pick(0, 1, 4))
    span = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    size = [max(span[i] - 2 * padding[i], padding[i] + 1, 2) + pick(2, 4, 6, 8) for i in range(2)]
    weight = torch.randn(c_out * groups, c_in, *kernel, generator=generator, dtype=torch.float64)
    op = ConvOperator(weight, (size[0], size[1]), stride, padding, dilation, groups, mode)
    share = (1.0, 1.0, 0.9, 0.7)[pick(0, 1, 2, 3)]
    known = None if share == 1.0 else torch.rand(op.out_shape, generator=generator) < share
    return op, known


def battery(count: int = 200) -> None:
    ratios: dict[str, list[tuple[float, float]]] = {}
    above = 0
    for seed in range(count):
        op, known = _random_layer(seed)
        matrix = op.placed_matrix()
        if known is not None:
            matrix = matrix[known.reshape(-1)]
        if matrix.shape[0] < matrix.shape[1]:
            continue
        values = torch.linalg.svdvals(matrix)
        truth, condition = float(values[-1]), float(values[0] / values[-1]) if float(values[-1]) > 0 else math.inf
        proofs = {"prove": prove(op, known), "dense": dense_proof(op, known)[0], "gram": gram_proof(op, known)[0]}
        proofs["patch"] = patch_proof(op, known)
        proofs["window"] = window_proof(op, known)
        if op.pad.mode == "zeros" and truth > 0:
            proofs["banded"] = banded_proof(op, truth, known)  # the shift from the true value: the tightest
        for name, proof in proofs.items():
            if proof is not None and proof.injective:
                above += proof.lower_bound > truth
                ratios.setdefault(name, []).append((truth / proof.lower_bound, condition))
    print(f"\nbattery: {count} seeded layers; proven bounds above the dense sigma_min: {above} (must be 0)")
    print(f"  {'proof':<8} {'proven':>6} {'well-cond.':>10} {'median':>8} {'max':>8}   sigma_min / bound, cond < 100")
    for name, pairs in ratios.items():
        good = sorted(r for r, c in pairs if c < 100)
        median = statistics.median(good) if good else math.nan
        print(f"  {name:<8} {len(pairs):>6} {len(good):>10} {median:>8.3g} {max(good, default=math.nan):>8.3g}")


def scaling(sizes: tuple[int, ...] = (64, 128, 224, 448)) -> None:
    """Time against unknowns: one All-CNN-B ReLU layer's spectrum row, and the MobileNetV2 stem's certificate."""
    relu = build_model("all-cnn-b-relu").double().eval()
    mobilenet = trained_mobilenet_v2().double().eval()
    print("\nscaling: seconds against unknowns (one thread, float64)")
    print(f"  {'what':<44} {'size':>5} {'unknowns':>9} {'s':>8}  how")
    for size in sizes:
        image, _ = load_image(ASSET, size)
        image = image.double()
        for layer in ("conv4.conv", "conv7.conv", "conv10.conv"):
            graph = capture(relu, torch.zeros(1, 3, size, size, dtype=torch.float64), layer)
            records = _records(graph)
            record, previous = records[-1]
            start = time.perf_counter()
            row = _layer_spectrum(record, previous, 1e-6)
            seconds = time.perf_counter() - start
            how = f"{row.sigma_method}, proof {row.proof or '-'}, sigma_min {row.sigma_min:.6g}"
            how += f" >= {row.sigma_min_lower:.6g}"
            print(
                f"  {'spectrum, all-cnn-b-relu ' + layer:<44} {size:>5} {row.in_dim:>9} {seconds:>8.1f}  {how}",
                flush=True,
            )
        _certificate_row(f"certificate, MobileNetV2 stem at {size}", mobilenet, image, "features.0")


def _sparse_conv(op: ConvOperator) -> scipy.sparse.csc_matrix:
    """The matrix of a stride-1, zero-padded, ungrouped convolution, sparse (the columns of ``op.placed_matrix``)."""
    weight = op.weight.detach().double().numpy()
    (c_out, c_in, kh, kw), (_, h, w) = weight.shape, op.in_shape
    left, _, top, _ = op.pad.pads
    o, c = np.meshgrid(np.arange(c_out), np.arange(c_in), indexing="ij")
    i, j = np.meshgrid(np.arange(op.out_shape[1]), np.arange(op.out_shape[2]), indexing="ij")
    rows, cols, values = [], [], []
    for a in range(kh):
        for b in range(kw):
            ii, jj = i + a - top, j + b - left
            inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
            out_pixel, in_pixel = (i * op.out_shape[2] + j)[inside], (ii * w + jj)[inside]
            rows.append((o[None] * op.out_shape[1] * op.out_shape[2] + out_pixel[:, None, None]).ravel())
            cols.append((c[None] * h * w + in_pixel[:, None, None]).ravel())
            values.append(np.broadcast_to(weight[:, :, a, b][None], (out_pixel.size, c_out, c_in)).ravel())
    shape = (op.out_dim, op.in_dim)
    return scipy.sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape)


def square(sizes: tuple[int, ...] = (8, 12, 16, 24, 32), steps: int = 12) -> None:
    """sigma_min of ResNet-18's layer1.0.conv1 on small grids: inverse iteration on (A^T A)^-1 through SuperLU."""
    conv = build_model("resnet18").double().eval().layer1[0].conv1
    print("\nsquare: ResNet-18 layer1.0.conv1 (64 -> 64, 3x3), sigma_min by inverse iteration through a sparse LU")
    print(f"  {'grid':>5} {'unknowns':>9} {'LU s':>7} {'sigma_min <=':>13} {'sigma_max ~':>11}")
    for size in sizes:
        op = ConvOperator.from_conv(conv, (size, size))
        matrix = _sparse_conv(op)
        start = time.perf_counter()
        lu = scipy.sparse.linalg.splu(matrix, permc_spec="COLAMD")
        seconds = time.perf_counter() - start
        x = np.random.default_rng(0).standard_normal(op.in_dim)
        for _ in range(steps):  # x <- (A^T A)^{-1} x: A^{-T} then A^{-1}
            x = lu.solve(lu.solve(x, trans="T"))
            x /= np.linalg.norm(x)
        bound = vector_upper_bound(op, torch.from_numpy(x))
        print(f"  {size:>5} {op.in_dim:>9} {seconds:>7.1f} {bound:>13.4g} {sigma_max(op):>11.4g}", flush=True)


def spectrum64() -> None:
    import bench_spectrum

    for name in ("all-cnn-b-crelu", "all-cnn-b-relu"):
        bench_spectrum.compare(name, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="battery,masked,spectrum64,resnet,spectrum")
    parser.add_argument("--proof-flops", type=float, default=PROOF_FLOPS)
    parser.add_argument("--models", default="all-cnn-b-crelu,all-cnn-b-relu", help="of the spectrum section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    touch_memory(3.0)
    sections = args.only.split(",")
    for section in sections:
        start = time.perf_counter()
        if section == "spectrum":
            spectrum(args.size, args.proof_flops, args.models.split(","))
        elif section == "resnet":
            resnet(args.size, args.proof_flops)
        elif section == "masked":
            masked(args.size, args.proof_flops)
        elif section == "battery":
            battery()
        elif section == "square":
            square()
        elif section == "spectrum64":
            spectrum64()
        elif section == "scaling":
            scaling()
        else:
            raise SystemExit(f"bench_certify: unknown section {section!r}")
        print(f"[{section}: {time.perf_counter() - start:.1f} s]", flush=True)


if __name__ == "__main__":
    main()
