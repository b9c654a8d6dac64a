r"""The ``"window"`` route: the pseudo-inverse of a block of outputs, applied block by block.

The patch reading grown from one output to a block (:mod:`invertnet.pinv.windows`): when a block's matrix
:math:`A_w` has full column rank, the tiled estimate returns :math:`x` exactly from :math:`y = A x + b` on
every pixel the layer reads. Off the layer's range it is a local least-squares fit, *not* :math:`A^+ y`;
it lies in the row space of :math:`A`, so ``"lsqr"`` starts from it and still converges to :math:`A^+ y`.
"""

from __future__ import annotations

import torch

from invertnet.errors import RouteError
from invertnet.pinv.base import ConvLayer, Cost, Route, RouteResult, SolveOptions
from invertnet.pinv.windows import WindowInverse, window_block

__all__ = ["WindowRoute", "window_inverse"]


def window_inverse(layer: ConvLayer, like: torch.Tensor) -> WindowInverse | None:
    """The layer's window pseudo-inverse if a block of outputs determines its window, else None (cached)."""

    def build() -> WindowInverse | None:
        block = window_block(layer.op)
        if block is None:
            return None
        inverse = WindowInverse(layer.op, block, like)
        return inverse if inverse.injective else None

    return layer.cached(("window", layer.op.in_shape, like.dtype, like.device), build)


class WindowRoute(Route):
    """Tile the output grid with blocks, invert each with :math:`A_w^+`, average the windows."""

    name = "window"
    summary = "pseudo-inverse of a block of outputs, block by block (exact on the operator's range)"
    closed_form = True
    because = ""

    def why_not(self, layer: ConvLayer, options: SolveOptions) -> str | None:
        op = layer.op
        block = window_block(op)
        if block is None:
            return (
                "it needs a block of outputs that determines the pixels it reads, but "
                f"no block within the size limit has as many equations as unknowns ({op.out_shape[0]} "
                f"filters for {op.in_shape[0]} input channels at stride {op.stride})"
            )
        if window_inverse(layer, torch.zeros((), dtype=torch.float64)) is None:
            return (
                "it needs a block of outputs that determines the pixels it reads, but "
                f"the {block[0]}x{block[1]} block's matrix is rank deficient"
            )
        return None

    def pinv_reason(self, layer: ConvLayer) -> str | None:
        return "blocks are fitted one by one: exact on the layer's range, a local fit off it"

    def cost(self, layer: ConvLayer, options: SolveOptions) -> Cost:
        block = window_block(layer.op)
        if block is None:
            return Cost(float("inf"), 0)
        op = layer.op
        span = [op.stride[i] * (block[i] - 1) + op.dilation[i] * (op.kernel_size[i] - 1) + 1 for i in range(2)]
        rows, unknowns = op.out_shape[0] * block[0] * block[1], op.in_shape[0] * span[0] * span[1]
        householder_qr = 2.0 * rows * unknowns**2 - 2.0 * unknowns**3 / 3  # the SVD only for ill-conditioned blocks
        return Cost(householder_qr + 3.0 * op.out_dim * unknowns, 8 * rows * unknowns)

    def solve(self, layer: ConvLayer, z: torch.Tensor, options: SolveOptions) -> RouteResult:
        inverse = window_inverse(layer, z)
        if inverse is None:
            raise RouteError(f"method 'window' does not apply: {self.why_not(layer, options)}")
        exact = layer.reads_every_pixel()
        return RouteResult(inverse.apply(z), exact, proof="window" if exact else "")
