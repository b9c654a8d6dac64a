r"""The other side: a proven *upper* bound on :math:`\sigma_{\min}` from an explicit vector.

For any :math:`x \ne 0`, :math:`\sigma_{\min}(M A) = \min_z \|M A z\| / \|z\| \le \|M A x\| / \|x\|`, and
:math:`A - M A x x^T / \|x\|^2` annihilates :math:`x`: an exactly rank-deficient operator lies within that distance.
An iterative estimate (a LOBPCG Ritz value) is such a quotient up to rounding; :func:`vector_upper_bound` makes it a
proof by bounding the rounding. With :math:`\hat y = \mathrm{fl}(A x)` computed in float64 (each output a sum of at
most :math:`T` products, :math:`T` the patch size), :math:`|\hat y - A x| \le \gamma_T\, |A|\,|x|` entry by entry
(Higham 2002, Ch. 3, in any order of summation), so

.. math::

    \sigma_{\min}(M A) \le \frac{\|M \hat y\| + \gamma_T \|M |A| |x|\|}{\|x\|},

each norm computed and inflated (deflated, for :math:`\|x\|`) for its own sums. Both products are formed as
patches times filters (``unfold`` and a matrix product: inner products, whatever the convolution backend would
choose). Together with a lower bound
(:mod:`~invertnet.pinv.proofs.banded`, :mod:`~invertnet.pinv.proofs.local`) it brackets :math:`\sigma_{\min}`
between two proven numbers.
"""

from __future__ import annotations

import math

import torch

from invertnet.linalg.verified import UNIT_ROUNDOFF, deflate, gamma, inflate
from invertnet.operators import ConvOperator

__all__ = ["vector_upper_bound"]


def _norm_upper(v: torch.Tensor) -> float:
    """An upper bound on the exact 2-norm of a float64 tensor: the inflated sum of squares, then the square root."""
    return math.sqrt(float(inflate(v.square().sum(), v.numel()))) * (1 + 4 * UNIT_ROUNDOFF)


def _products(op: ConvOperator, filters: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:math:`A x` with ``filters`` (the groups' patch matrices): every output a patch's inner product with a filter."""
    patches = op.patches(x)  # (1, C kh kw, L), channel-major
    grouped = patches.reshape(op.groups, -1, patches.shape[-1])  # (g, C/g kh kw, L)
    return (filters @ grouped).reshape(1, *op.out_shape)


def vector_upper_bound(op: ConvOperator, x: torch.Tensor, known: torch.Tensor | None = None) -> float:
    r"""A proven upper bound on :math:`\sigma_{\min}(M A)`: :math:`\|M A x\| / \|x\|` with its rounding bounded.

    Parameters
    ----------
    op : ConvOperator
        :math:`A`, any stride, dilation, groups and padding.
    x : torch.Tensor
        The vector, ``op.in_shape`` or ``(op.in_dim,)``; the bound holds for its float64 value (a rounded singular
        vector proves as much as the exact one, up to its rounding).
    known : torch.Tensor, optional
        The rows kept, :math:`M` (boolean, ``op.out_shape``); all by default.

    Returns
    -------
    float
        :math:`\beta \ge \sigma_{\min}(M A)`, proven; ``inf`` for a zero vector.

    Examples
    --------
    >>> op = ConvOperator(torch.randn(6, 2, 3, 3, dtype=torch.float64), (7, 7), padding=1)
    >>> _, values, vh = torch.linalg.svd(op.placed_matrix(), full_matrices=False)
    >>> bound = vector_upper_bound(op, vh[-1])  # the computed smallest right singular vector
    >>> float(values[-1]) <= bound <= float(values[-1]) * (1 + 1e-12)
    True
    """
    x = x.detach().to(device=op.weight.device, dtype=torch.float64).reshape(1, *op.in_shape)
    length = math.sqrt(max(float(deflate(x.square().sum(), op.in_dim)), 0.0)) * (1 - 4 * UNIT_ROUNDOFF)
    if not length > 0:
        return math.inf
    filters = op.patch_matrices(x).detach()  # (g, C_out/g, C/g kh kw), float64 on x's device
    rows = (
        torch.ones((), dtype=torch.float64, device=x.device)
        if known is None
        else known.reshape(1, *op.out_shape).to(x.device, torch.float64)
    )
    image = _products(op, filters, x) * rows
    magnitude = _products(op, filters.abs(), x.abs()) * rows  # |A| |x|, computed: inflated below for its own sums
    terms = 4 * op.patch_size  # the products in one output, with room for copies of a padded pixel
    spread = inflate(magnitude, terms)
    rounding = gamma(terms) * _norm_upper(spread)
    return (_norm_upper(image) + rounding) / length * (1 + 4 * UNIT_ROUNDOFF)
