r"""The ``"dense"`` route: :math:`A^+` from the materialised matrix and its SVD, for tiny layers.

The reference every other route is tested against; ``"auto"`` takes it only when the matrix is small.
"""

from __future__ import annotations

import torch

from invertnet.errors import TooLargeError
from invertnet.pinv.base import (
    ConvLayer,
    Cost,
    Route,
    RouteResult,
    SolveOptions,
    dense_svd_flops,
    pinv_rtol,
)
from invertnet.verified import svd_lower_bound

__all__ = ["DenseRoute"]


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
        return Cost(dense_svd_flops(m, n) if m * n <= options.max_entries else float("inf"), 3 * 8 * m * n)

    def solve(self, layer: ConvLayer, z: torch.Tensor, options: SolveOptions) -> RouteResult:
        op = layer.op
        entries = op.in_dim * op.out_dim
        if entries > options.max_entries:
            raise TooLargeError(
                f"method 'dense': expected a matrix of at most max_entries={options.max_entries:,} entries, got "
                f"{entries:,} for this layer; use method='lsqr' (any size) or 'auto'"
            )

        matrix = op.to_dense(dtype=z.dtype, device=z.device, max_entries=options.max_entries)
        cut = pinv_rtol(tuple(matrix.shape), z.dtype) if options.rtol is None else options.rtol
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
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
