r"""The ``"fft"`` route: :math:`A^+` exactly through the 2-D DFT (Sedghi, Gupta, Long, ICLR 2019).

With circular (or no) padding and a stride that divides the input, the DFT (after a space-to-depth by the
stride) turns the layer into one small matrix :math:`M(f)` per frequency (:mod:`invertnet.linalg.spectral`):
:math:`A^+` is the per-frequency pseudo-inverse, with singular values cut relative to the *global* largest.
One SVD per frequency, computed once per layer and cached; the memory is three complex
:math:`H' W' \times C_{out} \times C_{in} s^2` arrays, which ``"auto"`` weighs against the other routes.
"""

from __future__ import annotations

import torch

from invertnet.linalg.spectral import CirculantFactorization, circulant_reason
from invertnet.pinv.base import (
    ConvLayer,
    Cost,
    Route,
    RouteResult,
    SolveOptions,
    dense_svd_flops,
    pinv_rtol,
)
from invertnet.pinv.proofs import dft_proof

__all__ = ["FFTRoute", "factorization"]


def factorization(layer: ConvLayer, like: torch.Tensor) -> CirculantFactorization:
    """The layer's per-frequency SVD, cached per layer, input size, dtype and device."""
    key = ("fft", layer.op.in_shape, like.dtype, like.device)
    return layer.cached(key, lambda: CirculantFactorization(layer.op, like))


def _frequency_shape(layer: ConvLayer) -> tuple[int, int, int]:
    """Frequencies, and the rows and columns of each :math:`M(f)`."""
    op = layer.op
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    return (h // sh) * (w // sw), op.out_shape[0], op.in_shape[0] * sh * sw


class FFTRoute(Route):
    """Per-frequency pseudo-inverses of a layer the DFT diagonalises."""

    name = "fft"
    summary = "the operator's Moore-Penrose pseudo-inverse through the 2-D DFT (circular or no padding)"
    closed_form = True
    because = "the 2-D DFT diagonalises the layer, so per-frequency pseudo-inverses give A^+"

    def why_not(self, layer: ConvLayer, options: SolveOptions) -> str | None:
        return circulant_reason(layer.op)

    def pinv_reason(self, layer: ConvLayer) -> str | None:
        return None

    def cost(self, layer: ConvLayer, options: SolveOptions) -> Cost:
        frequencies, p, q = _frequency_shape(layer)
        # complex SVD ~ 4x the real one; u, vh and the pseudo-inverses kept in complex128
        return Cost(4 * frequencies * dense_svd_flops(p, q), 3 * 16 * frequencies * p * q)

    def solve(self, layer: ConvLayer, z: torch.Tensor, options: SolveOptions) -> RouteResult:
        op = layer.op
        factors = factorization(layer, z)
        cut = pinv_rtol((op.out_dim, op.in_dim), z.dtype) if options.rtol is None else options.rtol
        _, p, q = _frequency_shape(layer)
        kept = p >= q and bool((factors.s > cut * factors.s.max()).all())  # nothing cut: A^+ is a left inverse
        injective = kept and layer.cached(("dft-proof", op.in_shape), lambda: dft_proof(op)[0].injective is True)
        return RouteResult(factors.pinv(z, cut), injective, proof="dft" if injective else "")
