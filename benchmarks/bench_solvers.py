"""Whole-operator solvers: LSQR on All-CNN-B conv1, LSQR against scipy on a sparse matrix, the FFT pseudo-inverse.

``--only conv1`` runs the conv1 part alone; ``--only window`` the window factorisation of conv1 (QR against the
SVD it replaced, in units of one forward + adjoint of conv1 at 224x224); ``--only offrange`` the iterations and
units to reach 1e-6 of ``A^+ z`` for a response off conv1's range, LSQR against CGLS preconditioned by
:class:`invertnet.linalg.preconditioners.BorderPreconditioner` (``--size`` sets the input size, default 224);
``--only padded`` the same for a zero-padded 3x3 stride-2 layer.

Run: ``python benchmarks/bench_solvers.py [--threads 1]`` (a few minutes; one thread by default). One run;
compare the ratios.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from _timing import median_seconds, print_machine

from invertnet import ConvOperator, SolveOptions, conv_pinv
from invertnet.io.files import load_image
from invertnet.linalg.preconditioners import BorderPreconditioner
from invertnet.linalg.solvers import LsqrResult, lsqr, pcgls
from invertnet.linalg.spectral import CirculantFactorization
from invertnet.pinv import windows
from invertnet.pinv.windows import WindowInverse, window_block, window_operator
from invertnet.zoo.models import build_model

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
    """LSQR on conv1: from zero, with coverage scaling, and from the window estimate; exact and noisy responses."""
    conv, x, op, y = conv1_problem(size)
    unit = median_seconds(lambda: op.adjoint(op.forward(x)))
    covered = op.coverage() > 0
    print(
        f"\nAll-CNN-B conv1 (96 x 3 x 11 x 11, stride 4, zero padding) at {size}x{size}, float64; "
        f"1 unit = forward + adjoint = {unit * 1e3:.1f} ms"
    )
    start = time.perf_counter()
    with torch.no_grad():
        conv_pinv(conv, y, (size, size), "window")
    print(f"  window factorisation (once per layer, cached): {time.perf_counter() - start:.2f} s")

    def solve(target: torch.Tensor, label: str, reference: torch.Tensor, **options: Any) -> torch.Tensor:
        start = time.perf_counter()
        with torch.no_grad():
            x_hat, info = conv_pinv(
                conv, target, (size, size), "lsqr", options=SolveOptions(atol=atol, **options), return_info=True
            )
        seconds = time.perf_counter() - start
        error = float((x_hat - reference)[..., covered].norm() / reference[..., covered].norm())
        print(
            f"  {label:<40} {info.iterations:4d} iterations  {seconds:6.2f} s = {seconds / unit:5.0f} units  "
            f"relative error (pixels read) {error:.1e}  converged {info.converged}"
        )
        return x_hat

    print("  exact response y = A x + b, error against x:")
    solve(y, "lsqr from zero", x, warm_start=False, precondition=False)
    solve(y, "lsqr from zero + coverage scaling", x, warm_start=False, precondition=True)
    solve(y, "lsqr from the window estimate (default)", x)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    noisy = y + 0.01 * (y - conv.bias.reshape(1, -1, 1, 1)).norm() / noise.norm() * noise
    with torch.no_grad():
        exact = SolveOptions(atol=1e-14, warm_start=False, precondition=False)
        reference = conv_pinv(conv, noisy, (size, size), "lsqr", options=exact)
    print("  response + 1% Gaussian noise, error against A^+ (y - b) (LSQR from zero at atol 1e-14):")
    solve(noisy, "lsqr from zero", reference, warm_start=False, precondition=False)
    solve(noisy, "lsqr from zero + coverage scaling", reference, warm_start=False, precondition=True)
    solve(noisy, "lsqr from the window estimate", reference, precondition=False)
    solve(noisy, "lsqr from the window + coverage", reference, precondition=True)
    solve(noisy, "cgls from the window + border (default)", reference)


def offrange(size: int, layer: str = "conv1", target: float = 1e-6) -> None:
    """Iterations and units to reach ``target`` relative error of ``A^+ z`` (pixels read), z = A x + 1% noise.

    ``layer``: All-CNN-B conv1 on the astronaut (no padding), or ``"padded"``: a 3x3 stride-2 convolution with
    zero padding 1, 16 -> 96 channels (seeded Gaussian filters, as ``nn.Conv2d`` draws them), on uniform noise.

    Iterations are the fewest that reach ``target`` (bisection on the cap: the error of CG-type iterates falls
    monotonically). Units, as issue 13 counts them: one per iteration (a forward and an adjoint of conv1),
    plus every preconditioner application, window estimate and setup converted by its median time alone in
    this run (``counted``); ``measured`` is the median wall time of the whole solve at that cap (3 runs) over
    the unit, vector updates and the start's residual included (noisier: other processes share the machine).
    Both leave out the preconditioner's setup, which is built once per layer, input size and dtype and cached,
    like the window factorisation (what every image after the first costs); ``first`` adds it to ``measured``.
    """
    if layer == "conv1":
        conv, x, op, y = conv1_problem(size)
        z = y - conv.bias.detach().reshape(1, -1, 1, 1)
        title = f"conv1 at {size}x{size}"
    else:
        torch.manual_seed(0)
        padded = torch.nn.Conv2d(16, 96, 3, stride=2, padding=1).double()
        op = ConvOperator.from_conv(padded, (size, size))
        x = torch.rand(1, 16, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        z = op.forward(x)
        title = f"3x3 stride-2 conv, zero padding 1, 16 -> 96 channels, at {size}x{size}"
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=z.dtype)
    z = z + 0.01 * z.norm() / noise.norm() * noise
    covered = op.coverage() > 0
    reference = lsqr(op, z, atol=1e-14, btol=1e-14, maxiter=20_000).x
    unit = median_seconds(lambda: op.adjoint(op.forward(x)))
    start = time.perf_counter()
    window = WindowInverse(op, window_block(op) or (1, 1), z)
    window_setup = (time.perf_counter() - start) / unit
    x0 = window.apply(z)
    window_apply = median_seconds(lambda: window.apply(z), repeat=3) / unit
    print(
        f"\n{title}, response + 1% noise (off the range), float64, {torch.get_num_threads()} "
        f"thread(s); 1 unit = forward + adjoint = {unit * 1e3:.1f} ms; target: relative error {target:g} of A^+ z "
        f"on the pixels read; window factorisation {window_setup:.0f} units, window estimate {window_apply:.1f} units"
    )
    print(
        f"  {'solver':<52} {'iterations':>10} {'setup':>6} {'per it.':>7} {'counted':>8} {'measured':>8} "
        f"{'first':>6}  error"
    )
    cover = op.coverage()
    scale = torch.where(covered, (cover[covered].mean() / cover.clamp(min=1)).sqrt(), 1.0)

    def row(label: str, run: Callable[[int], LsqrResult], setup: float, per_iteration: float, warm: bool) -> None:
        def error(k: int) -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = run(k)
            return float((result.x - reference)[..., covered].norm() / reference[..., covered].norm())

        low, high = 0, 16
        while error(high) > target:
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if error(middle) <= target else (middle, high)
        final = error(high)
        start_units = window_apply if warm else 0.0
        measured = median_seconds(lambda: error(high), repeat=3) / unit + start_units
        counted = high * per_iteration + start_units
        columns = (
            f"{high:>10d} {setup:>6.1f} {per_iteration:>7.2f} {counted:>8.1f} {measured:>8.1f} {measured + setup:>6.0f}"
        )
        print(f"  {label:<52} {columns}  {final:.1e}")

    row(
        "LSQR, window start + coverage (default before)",
        lambda k: lsqr(op, z, atol=1e-14, btol=1e-14, maxiter=k, x0=x0, preconditioner=lambda v: v * scale),
        0.0,
        1.0,
        True,
    )
    for depth, corner, single in ((4, 4, False), (4, 4, True), (4, 6, True)):
        setup = median_seconds(lambda d=depth, c=corner, s=single: BorderPreconditioner(op, z, d, c, s), repeat=3)
        setup /= unit
        border = BorderPreconditioner(op, z, depth, corner, single)
        apply = median_seconds(lambda m=border: m(z.new_ones(1, *op.in_shape))) / unit
        for warm in (False, True):
            row(
                f"PCGLS border {depth}/{corner} {'float32' if single else 'float64'}, "
                f"{'window' if warm else 'zero'} start"
                + (" (the default)" if (depth, corner, single, warm) == (4, 4, True, True) else ""),
                lambda k, m=border, w=warm: pcgls(op, z, m, tol=0.0, maxiter=k, x0=x0 if w else None),
                setup,
                1.0 + apply,
                warm,
            )


def _svd_window_pinv(op: ConvOperator, block: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """The factorisation :class:`WindowInverse` made before the QR: dense matrix by columns, SVD, explicit A_w^+."""
    matrix = window_operator(op, block).to_dense(torch.float64, max_entries=10**8)
    read = matrix.abs().sum(0) > 0
    u, singular, vh = torch.linalg.svd(matrix[:, read], full_matrices=False)
    kept = singular > max(matrix.shape) * torch.finfo(torch.float64).eps * float(singular[0])
    pinv = torch.zeros(matrix.shape[1], matrix.shape[0], dtype=torch.float64)
    pinv[read] = (vh[kept].T / singular[kept]) @ u[:, kept].T
    return pinv, float(singular[0] / singular[-1])


def window_factorisation(size: int) -> None:
    """conv1's window factorisation: the SVD of before and the QR of now, one run each, in units."""
    _, x, op, _ = conv1_problem(size)
    unit = median_seconds(lambda: op.adjoint(op.forward(x)))
    block = window_block(op)
    if block is None:
        raise SystemExit("conv1 has no window block at this size")
    start = time.perf_counter()
    _, svd_condition = _svd_window_pinv(op, block)
    svd_seconds = time.perf_counter() - start
    qr_max_condition = windows.QR_MAX_CONDITION
    start = time.perf_counter()
    inverse = WindowInverse(op, block, x)
    qr_seconds = time.perf_counter() - start
    windows.QR_MAX_CONDITION = 0.0  # the SVD fallback, for its apply
    fallback = WindowInverse(op, block, x)
    windows.QR_MAX_CONDITION = qr_max_condition
    z = op.forward(x)
    covered = op.coverage() > 0
    error = float((inverse.apply(z) - x)[..., covered].norm() / x[..., covered].norm())
    gap = float((inverse.apply(z) - fallback.apply(z)).norm() / fallback.apply(z).norm())
    apply, svd_apply = median_seconds(lambda: inverse.apply(z)), median_seconds(lambda: fallback.apply(z))
    print(
        f"\nconv1 window factorisation ({block[0]}x{block[1]} block) at {size}x{size}, float64, "
        f"{torch.get_num_threads()} thread(s); 1 unit = forward + adjoint = {unit * 1e3:.1f} ms"
    )
    print(f"  before: dense matrix + SVD + explicit A_w^+: {svd_seconds:.2f} s = {svd_seconds / unit:.0f} units")
    print(
        f"  now: placed matrix + Householder QR + 2 Lanczos ({inverse.factorization}): {qr_seconds:.2f} s = "
        f"{qr_seconds / unit:.0f} units -> {svd_seconds / qr_seconds:.1f}x less"
    )
    print(f"  condition {inverse.condition:.6g} (SVD: {svd_condition:.6g})")
    print(
        f"  apply: {apply / unit:.1f} units (R^-1 Q^T) vs {svd_apply / unit:.1f} units (explicit A_w^+); "
        f"relative error on y = A x (pixels read) {error:.1e}; QR vs SVD estimates differ by {gap:.1e}"
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
        cold = SolveOptions(atol=atol, warm_start=False)
        ours, info = conv_pinv(conv, y, (size, size), "lsqr", options=cold, return_info=True)
    our_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        _, warm = conv_pinv(conv, y, (size, size), "lsqr", options=SolveOptions(atol=atol), return_info=True)
    warm_seconds = time.perf_counter() - start
    gap = np.linalg.norm(ours.flatten().numpy() - reference[0]) / np.linalg.norm(reference[0])
    print(
        f"\nconv1 at {size}x{size}: scipy.sparse.linalg.lsqr on the explicit matrix ({matrix.nnz:,} non-zeros, "
        f"built in {build:.2f} s): {scipy_seconds:.2f} s, {reference[2]} iterations"
    )
    print(
        f"  invertnet lsqr (matrix-free, from zero): {our_seconds:.2f} s, {info.iterations} iterations -> "
        f"{scipy_seconds / our_seconds:.1f}x faster (solutions differ by {gap:.1e} relative)"
    )
    print(
        f"  invertnet lsqr from the window estimate: {warm_seconds:.2f} s including the window factorisation, "
        f"{warm.iterations} iterations -> {scipy_seconds / warm_seconds:.1f}x faster"
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["fft", "scipy", "conv1", "window", "offrange", "padded"], help="one part")
    parser.add_argument("--size", type=int, default=224, help="input size of the offrange part (default 224)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    print_machine()
    only = arguments.only
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if only in (None, "fft"):
        fft_apply()
    if only in (None, "scipy"):
        against_scipy(64, 1e-10)
    if only in (None, "window"):
        window_factorisation(224)
    if only in (None, "conv1"):
        conv1_lsqr(224, 1e-10)
    if only in (None, "offrange"):
        offrange(arguments.size)
    if only in (None, "padded"):
        offrange(arguments.size, "padded")


if __name__ == "__main__":
    main()
