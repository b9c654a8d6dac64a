r"""The ``"dense"`` route: :math:`A^+` from the materialised matrix and its SVD, for tiny layers.

The reference every other route is tested against; ``"auto"`` takes it only when the matrix is small.
"""

from __future__ import annotations

import scipy.linalg
import torch

from invertnet.errors import TooLargeError
from invertnet.linalg.verified import svd_lower_bound
from invertnet.pinv.base import (
    ConvLayer,
    Cost,
    Route,
    RouteResult,
    SolveOptions,
    dense_svd_flops,
    pinv_rtol,
)

__all__ = ["DENSE_MAX_FLOPS", "DenseRoute"]

#: The largest SVD the route starts, in its estimated floating-point operations (:func:`dense_svd_flops`):
#: 1e11 is about 20 s on one core at the 5 GFLOP/s LAPACK's SVD ran at on the development machine. Past it the
#: route refuses before building the matrix; raise it (``invertnet.pinv.dense.DENSE_MAX_FLOPS = ...``) to wait.
DENSE_MAX_FLOPS = 1e11


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD, by LAPACK's divide and conquer (gesdd), else by its QR iteration (gesvd, through SciPy).

    MKL's gesdd fails on some matrices of 1x1 convolutions (each singular value repeated once per pixel).
    """
    try:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    except RuntimeError:  # torch.linalg.LinAlgError
        arrays = scipy.linalg.svd(matrix.cpu().numpy(), full_matrices=False, lapack_driver="gesvd")
        u, s, vh = (torch.from_numpy(a).to(matrix) for a in arrays)
    return u, s, vh


class DenseRoute(Route):
    """:math:`A^+ z` with the dense :math:`A` (SVD, singular values below ``rtol * sigma_max`` cut)."""

    name = "dense"
    summary = "the operator's Moore-Penrose pseudo-inverse from its dense matrix (tiny sizes)"
    closed_form = True
    because = "the dense matrix's SVD gives A^+"

    def why_not(self, layer: ConvLayer, options: SolveOptions) -> str | None:
        return None  # any size applies; solve refuses a matrix over max_entries with a TooLargeError

    def pinv_reason(self, layer: ConvLayer) -> str | None:
        return None

    def cost(self, layer: ConvLayer, options: SolveOptions) -> Cost:
        m, n = layer.op.out_dim, layer.op.in_dim
        flops = dense_svd_flops(m, n)
        return Cost(flops if m * n <= options.max_entries and flops <= DENSE_MAX_FLOPS else float("inf"), 3 * 8 * m * n)

    def solve(self, layer: ConvLayer, z: torch.Tensor, options: SolveOptions) -> RouteResult:
        op = layer.op
        entries = op.in_dim * op.out_dim
        if entries > options.max_entries:
            raise TooLargeError(
                f"method 'dense': expected a matrix of at most max_entries={options.max_entries:,} entries, got "
                f"{entries:,} for this layer; use method='lsqr' (any size) or 'auto'"
            )
        flops = dense_svd_flops(op.out_dim, op.in_dim)
        if flops > DENSE_MAX_FLOPS:
            raise TooLargeError(
                f"method 'dense': expected an SVD of at most DENSE_MAX_FLOPS={DENSE_MAX_FLOPS:.2g} flops, got "
                f"{flops:.2g} for this layer's {op.out_dim:,} x {op.in_dim:,} matrix (about {flops / 5e9:.0f} s on one "
                "core at 5 GFLOP/s); use "
                "method='lsqr' (any size) or 'auto', or raise invertnet.pinv.dense.DENSE_MAX_FLOPS to wait for it"
            )

        matrix = op.to_dense(dtype=z.dtype, device=z.device, max_entries=options.max_entries)
        cut = pinv_rtol(tuple(matrix.shape), z.dtype) if options.rtol is None else options.rtol
        u, s, vh = _svd(matrix)
        keep = s > cut * s[0]
        x = ((vh[keep].T / s[keep]) @ (u[:, keep].T @ z.reshape(z.shape[0], -1).T)).T
        exact = int(keep.sum()) == op.in_dim and op.out_dim >= op.in_dim and _proven(layer, matrix, (s, vh))
        return RouteResult(x.reshape(-1, *op.in_shape), exact, proof="dense" if exact else "")


def _proven(layer: ConvLayer, matrix: torch.Tensor, svd: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Whether the SVD certificate proves the layer's matrix of full column rank (float64; cached)."""

    def decide() -> bool:
        if matrix.dtype == torch.float64:
            return svd_lower_bound(matrix, svd)[0] > 0
        return svd_lower_bound(layer.op.placed_matrix(torch.float64, matrix.device, matrix.numel()))[0] > 0

    return layer.cached(("dense-proof", layer.op.in_shape), decide)
