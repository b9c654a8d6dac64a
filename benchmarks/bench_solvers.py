"""Whole-operator solvers: LSQR on All-CNN-B conv1, LSQR against scipy on a sparse matrix, the FFT pseudo-inverse.

Run: ``python benchmarks/bench_solvers.py`` (a few minutes on 2 cores). One run; compare the ratios.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from _timing import median_seconds

from invertnet import ConvOperator, conv_pinv
from invertnet.io import load_image
from invertnet.models import build_model
from invertnet.spectral import CirculantFactorization

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"


def sparse_matrix(op: ConvOperator) -> scipy.sparse.csr_matrix:
    """The operator's matrix from its im2col indices (zero padding: padded entries dropped)."""
    n = op.in_dim
    index = torch.arange(1, n + 1, dtype=torch.float64).reshape(1, *op.in_shape)
    columns = op.patches(index)[0].round().long() - 1  # (C_in*kh*kw, L); -1 where padding was read
    weights = op.patch_matrices()[0].double()  # groups=1 here: (C_out, C_in*kh*kw)
    c_out, length = weights.shape[0], columns.shape[1]
    rows = torch.arange(c_out).reshape(c_out, 1, 1) * length + torch.arange(length).reshape(1, 1, length)
    rows = rows.expand(c_out, columns.shape[0], length)
    cols = columns.unsqueeze(0).expand_as(rows)
    vals = weights.unsqueeze(-1).expand_as(rows)
    keep = cols >= 0
    return scipy.sparse.csr_matrix(
        (vals[keep].numpy(), (rows[keep].numpy(), cols[keep].numpy())), shape=(op.out_dim, n)
    )


def conv1_problem(size: int) -> tuple[torch.nn.Conv2d, torch.Tensor, ConvOperator, torch.Tensor]:
    """All-CNN-B conv1 (seeded Gaussian filters), the astronaut at ``size``, its operator and response."""
    conv = build_model("all-cnn-b-crelu").double().conv1.conv
    x, _ = load_image(ASSET, size)
    with torch.no_grad():
        y = conv(x)
    return conv, x, ConvOperator.from_conv(conv, (size, size)), y


def conv1_lsqr(size: int, atol: float) -> None:
    conv, x, op, y = conv1_problem(size)
    unit = median_seconds(lambda: op.adjoint(op.forward(x)))
    covered = op.coverage() > 0
    print(
        f"\nAll-CNN-B conv1 (96 x 3 x 11 x 11, stride 4, zero padding) at {size}x{size}, float64; "
        f"1 unit = forward + adjoint = {unit * 1e3:.1f} ms"
    )
    for precondition in (False, True):
        start = time.perf_counter()
        with torch.no_grad():
            x_hat, info = conv_pinv(
                conv, y, (size, size), "lsqr", atol=atol, precondition=precondition, return_info=True
            )
        seconds = time.perf_counter() - start
        error = float((x_hat - x)[..., covered].norm() / x[..., covered].norm())
        label = "lsqr + coverage scaling" if precondition else "lsqr"
        print(
            f"  {label:<24} {info.iterations:4d} iterations  {seconds:6.2f} s = {seconds / unit:5.0f} units  "
            f"relative error (pixels read) {error:.1e}  converged {info.converged}"
        )


def against_scipy(size: int, atol: float) -> None:
    conv, x, op, y = conv1_problem(size)
    z = y - conv.bias.detach().reshape(1, -1, 1, 1)
    start = time.perf_counter()
    matrix = sparse_matrix(op)
    build = time.perf_counter() - start
    assert np.allclose(matrix @ x.flatten().numpy(), z.flatten().numpy())
    start = time.perf_counter()
    reference = scipy.sparse.linalg.lsqr(matrix, z.flatten().numpy(), atol=atol, btol=atol, iter_lim=20_000)
    scipy_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        ours, info = conv_pinv(conv, y, (size, size), "lsqr", atol=atol, return_info=True)
    our_seconds = time.perf_counter() - start
    gap = np.linalg.norm(ours.flatten().numpy() - reference[0]) / np.linalg.norm(reference[0])
    print(
        f"\nconv1 at {size}x{size}: scipy.sparse.linalg.lsqr on the explicit matrix ({matrix.nnz:,} non-zeros, "
        f"built in {build:.2f} s): {scipy_seconds:.2f} s, {reference[2]} iterations"
    )
    print(
        f"  invertnet lsqr (matrix-free): {our_seconds:.2f} s, {info.iterations} iterations -> "
        f"{scipy_seconds / our_seconds:.1f}x faster (solutions differ by {gap:.1e} relative)"
    )


def fft_apply() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, padding_mode="circular", bias=False).double()
    x = torch.rand(1, 64, 64, 64, dtype=torch.float64)
    op = ConvOperator.from_conv(conv, (64, 64))
    with torch.no_grad():
        forward = median_seconds(lambda: conv(x))
        y = conv(x)
    start = time.perf_counter()
    factors = CirculantFactorization(op, y)
    factor_seconds = time.perf_counter() - start
    apply = median_seconds(lambda: factors.pinv(y, 1e-12))
    error = float((factors.pinv(y, 1e-12) - x).norm() / x.norm())
    print(
        f"\nFFT pseudo-inverse, circular 3x3 64->64 at 64x64, float64: factorisation {factor_seconds:.2f} s (once per "
        f"layer); apply {apply * 1e3:.1f} ms vs forward {forward * 1e3:.1f} ms = {apply / forward:.1f}x; "
        f"relative error {error:.1e}"
    )


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    fft_apply()
    against_scipy(64, 1e-10)
    conv1_lsqr(224, 1e-10)


if __name__ == "__main__":
    main()
