r"""The ``"patch"`` route: the pseudo-inverse of the im2col patch matrix (the paper's reading).

With :math:`A = (I_L \otimes P) S` (:mod:`invertnet.operators.conv`), every receptive field is estimated as
:math:`\hat p = P^+ z` and the fields are folded back with overlap averaging,

.. math::

    \hat x = (S^T S)^{-1} S^T (I_L \otimes P^+) z, \qquad S^T S = \mathrm{diag}(\text{coverage}).

- **Exact** when every group's :math:`P_k` has full column rank and every pixel is read: then
  :math:`\hat p = S x` and :math:`\hat x = x`.
- **The operator's pseudo-inverse** for a 1x1 kernel (any padding: each field reads one pixel, so the
  system decouples per pixel and the average of a pixel's copies, :math:`\frac1c \sum P^+ z`, is its
  least-squares fit of minimum norm), and when the receptive fields do not overlap and no field mixes padding
  with pixels (each pixel read at most once, zero padding, e.g. kernel = stride):
  then :math:`S` restricted to the non-empty fields has orthonormal rows, and
  :math:`(B S)^+ = S^+ B^+ = S^T B^+` for :math:`B = I \otimes P` (Greville's product rule), which is the
  formula above with coverage in :math:`\{0, 1\}`. Fields made only of padding are zero rows of :math:`A`,
  which :math:`A^+` ignores, and so does the fold.
- Otherwise, and in particular for wide :math:`P_k` (fewer filters than patch entries, e.g. All-CNN-B conv1:
  96 filters, 363 entries), it is *not* :math:`A^+` and can lose a lot: overlapping fields share pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from invertnet.linalg.verified import abs_gram_norm, gamma, gram_lower_bound
from invertnet.operators import ConvOperator
from invertnet.pinv.base import (
    ConvLayer,
    Cost,
    Route,
    RouteResult,
    SolveOptions,
    dense_svd_flops,
    pinv_rtol,
)

__all__ = ["PatchRoute", "fields_are_disjoint", "full_column_rank", "patch_is_exact", "patch_pinv"]


def _patch_pinvs(layer: ConvLayer, like: torch.Tensor, rtol: float | None) -> torch.Tensor:
    """The groups' :math:`P_k^+`, cached per layer, dtype, device and cutoff."""

    def build() -> torch.Tensor:
        matrices = layer.op.patch_matrices(like)
        inverse: torch.Tensor = torch.linalg.pinv(
            matrices, rtol=pinv_rtol(tuple(matrices.shape), like.dtype) if rtol is None else rtol
        )
        return inverse

    return layer.cached(("patch", like.dtype, like.device, rtol), build)


def _apply(layer: ConvLayer, z: torch.Tensor, rtol: float | None) -> torch.Tensor:
    op = layer.op
    columns = op.apply_patch_matrices(z.flatten(2), _patch_pinvs(layer, z, rtol))
    coverage = layer.coverage().to(device=z.device, dtype=z.dtype)
    return op.patches_adjoint(columns) / coverage.clamp(min=1)


def full_column_rank(layer: ConvLayer) -> bool:
    r"""Whether every group's patch matrix :math:`P_k` has full column rank, proven (cached).

    A verified Cholesky factorisation of each :math:`P_k^T P_k` (:func:`invertnet.linalg.verified.gram_lower_bound`)
    bounds
    :math:`\sigma_{\min}(P_k)` from below; a positive bound proves the rank. A numerical rank (an SVD cut) would
    be an estimate.
    """

    def decide() -> bool:
        matrices = layer.op.patch_matrices().detach().to(torch.float64)
        if matrices.shape[1] < matrices.shape[2]:
            return False
        bounds = gram_lower_bound(matrices.mT @ matrices, gamma(matrices.shape[1]) * abs_gram_norm(matrices))
        return bool((bounds > 0).all())

    return layer.cached(("patch-rank-proven",), decide)


def _disjoint_reason(layer: ConvLayer) -> str | None:
    """Why the fields overlap or mix padding with pixels, or ``None`` when they are disjoint and whole."""

    def decide() -> str | None:
        op = layer.op
        if op.kernel_size == (1, 1):
            return None  # each field reads one pixel: the system decouples per pixel, and averaging is its fit
        if op.pad.mode != "zeros" and any(op.pad.pads):
            return f"{op.pad.mode} padding reads pixels twice"
        if float(layer.coverage().max()) > 1:
            return f"receptive fields overlap (kernel {op.kernel_size}, dilation {op.dilation}, stride {op.stride})"
        ones = torch.ones(1, *op.in_shape, dtype=torch.float64)
        filled = op.patches(ones).sum(1)
        whole = (filled == 0) | (filled == op.in_shape[0] * op.kernel_size[0] * op.kernel_size[1])
        if not bool(whole.all()):
            return "receptive fields at the border mix padding with pixels"
        return None

    return layer.cached(("patch-disjoint", layer.op.in_shape), decide)


class PatchRoute(Route):
    r""":math:`\hat x = (S^T S)^{-1} S^T (I \otimes P^+) z` (see the module docstring)."""

    name = "patch"
    summary = "pseudo-inverse of the patch matrix, overlap-averaged (the paper's reading)"
    closed_form = True
    because = (
        "each receptive field reads its own pixels (a 1x1 kernel, or disjoint fields), so the patch "
        "pseudo-inverse is A^+"
    )

    def why_not(self, layer: ConvLayer, options: SolveOptions) -> str | None:
        return None

    def pinv_reason(self, layer: ConvLayer) -> str | None:
        return _disjoint_reason(layer)

    def cost(self, layer: ConvLayer, options: SolveOptions) -> Cost:
        op = layer.op
        rows = op.out_shape[0] // op.groups
        setup = op.groups * dense_svd_flops(rows, op.patch_size)
        columns = op.out_shape[1] * op.out_shape[2] * op.in_shape[0] * op.kernel_size[0] * op.kernel_size[1]
        return Cost(setup + layer.forward_flops, 8 * (op.groups * rows * op.patch_size + columns))

    def solve(self, layer: ConvLayer, z: torch.Tensor, options: SolveOptions) -> RouteResult:
        exact = full_column_rank(layer) and layer.reads_every_pixel()
        return RouteResult(_apply(layer, z, options.rtol), exact, proof="patch" if exact else "")


def patch_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    *,
    rtol: float | None = None,
) -> torch.Tensor:
    r"""Invert a convolution through the pseudo-inverse of its patch matrix (the paper's reading).

    Parameters
    ----------
    conv : nn.Conv2d or ConvOperator
        The layer (any stride, padding, padding mode, dilation, groups, kernel shape).
    y : torch.Tensor
        Its output, shape ``(N, C_out, H_out, W_out)``, bias included.
    input_size : (int, int)
        Height and width of the layer's input.
    rtol : float, optional
        Singular values of :math:`P_k` below ``rtol * sigma_max(P_k)`` are cut; default
        ``max(m, n) * eps(dtype)``.

    Returns
    -------
    torch.Tensor
        Input estimate of shape ``(N, C_in, H, W)``, in ``y``'s dtype and on its device. Pixels that
        no receptive field reads (e.g. stride larger than the kernel) are 0.

    Notes
    -----
    :math:`\hat x = (S^T S)^{-1} S^T (I_L \otimes P^+)(y - b)`. Exact (up to rounding) on every pixel some
    receptive field reads whenever each :math:`P_k` has full column rank; the operator's pseudo-inverse
    :math:`A^+` when the fields are disjoint (:func:`fields_are_disjoint`); otherwise neither (use
    :func:`~invertnet.pinv.conv_pinv`). The :math:`P_k^+` are computed once per weight, dtype, device and
    cutoff, and cached.

    Examples
    --------
    >>> import torch
    >>> from invertnet import patch_pinv
    >>> conv = torch.nn.Conv2d(3, 27, 3, padding=1).double()  # 27 filters >= 3*3*3 entries
    >>> x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    >>> torch.allclose(patch_pinv(conv, conv(x), (16, 16)), x)
    True
    """
    layer = ConvLayer(conv, input_size)
    return _apply(layer, layer.response(y), rtol)


def patch_is_exact(conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> bool:
    """Whether :func:`patch_pinv` recovers every input pixel: full column rank patch matrices, every pixel read.

    Examples
    --------
    >>> import torch
    >>> patch_is_exact(torch.nn.Conv2d(3, 27, 3, padding=1), (8, 8)), patch_is_exact(torch.nn.Conv2d(3, 8, 3), (8, 8))
    (True, False)
    """
    layer = ConvLayer(conv, input_size)
    return full_column_rank(layer) and layer.reads_every_pixel()


def fields_are_disjoint(conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> bool:
    """Whether the receptive fields are disjoint and whole, so that :func:`patch_pinv` *is* :math:`A^+`.

    Examples
    --------
    >>> import torch
    >>> fields_are_disjoint(torch.nn.Conv2d(192, 96, 1), (54, 54))
    True
    >>> fields_are_disjoint(torch.nn.Conv2d(3, 8, 3), (8, 8))
    False
    """
    return _disjoint_reason(ConvLayer(conv, input_size)) is None
