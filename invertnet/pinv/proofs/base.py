r"""What every proof shares: the :class:`Proof` it returns, the count, zero columns, and exact helper operators.

A proof about :math:`M A` (:math:`A` a layer's operator, :math:`M` the 0/1 diagonal of the rows that are known;
:math:`M = I` for the layer itself) either

- proves it injective with a number: :math:`\sigma_{\min}(M A) \ge \beta > 0` (``injective=True``), or
- proves it is not: fewer rows than unknowns (the count), or an unknown that no row reads (a zero column):
  :math:`\sigma_{\min}(M A) = 0` (``injective=False``), or
- proves nothing (``injective=None``, the reason says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from invertnet.linalg.verified import abs_gram_norm, gamma, inflate
from invertnet.operators import ConvOperator

__all__ = ["Proof", "abs_operator", "conv_gram_error", "count_proof", "pixel_sources", "zero_column_proof"]


@dataclass(frozen=True)
class Proof:
    r"""What is proven about the smallest singular value of :math:`M A`.

    Attributes
    ----------
    injective : bool or None
        ``True``: :math:`\sigma_{\min}(M A) \ge` :attr:`lower_bound` :math:`> 0`, proven; ``False``: proven
        :math:`\sigma_{\min}(M A) = 0` (count, zero column) or shown numerically singular (the reason says which);
        ``None``: nothing proven.
    lower_bound : float
        :math:`\sigma_{\min}(M A) \ge` this, proven (``0.0`` when nothing positive is proven).
    name : str
        The proof: ``"count"``, ``"zero column"``, ``"patch"``, ``"window"``, ``"dense"``, ``"gram"``, ``"banded"``,
        ``"dft"``, ``"singular"`` (shown numerically singular, not proven) or ``""`` (none).
    reason : str
        One sentence.
    """

    injective: bool | None
    lower_bound: float
    name: str
    reason: str

    @staticmethod
    def none(reason: str) -> Proof:
        """Nothing proven."""
        return Proof(None, 0.0, "", reason)


def count_proof(rows: int, unknowns: int) -> Proof | None:
    """Fewer rows than unknowns: rank deficient (``injective=False``); ``None`` when the count passes.

    Examples
    --------
    >>> count_proof(3, 4).injective, count_proof(4, 4)
    (False, None)
    """
    if rows < unknowns:
        return Proof(False, 0.0, "count", f"{rows} rows for {unknowns} unknowns: rank deficient by count")
    return None


def abs_operator(op: ConvOperator) -> ConvOperator:
    """The same convolution with the filters' absolute values, :math:`|A|` entry by entry (float64)."""
    return ConvOperator(
        op.weight.detach().abs().to(torch.float64),
        op.input_size,
        op.stride,
        op.pad.pads,
        op.dilation,
        op.groups,
        op.pad.mode,
    )


def _mask_like(op: ConvOperator, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(1, *op.out_shape, dtype=torch.float64, device=device)
    return mask.reshape(1, *op.out_shape).to(device=device, dtype=torch.float64)


def zero_column_proof(op: ConvOperator, mask: torch.Tensor | None = None) -> Proof | None:
    r"""Unknowns no (known) row reads: zero columns of :math:`M A`, so it is rank deficient; ``None`` if there are none.

    Column :math:`j` of :math:`M A` is zero when :math:`(|A|^T m)_j = 0` (every term of the sum is non-negative,
    so a zero sum means every entry is zero; the converse may fail when copies of a pixel cancel, which then
    proves nothing here).

    Examples
    --------
    >>> op = ConvOperator(torch.ones(4, 1, 2, 2, dtype=torch.float64), (5, 5), stride=3)
    >>> zero_column_proof(op).reason
    '9 of 25 unknowns are read by no row: zero columns'
    """
    device = op.weight.device
    column_sums = abs_operator(op).adjoint(_mask_like(op, mask, device))
    unread = int((column_sums == 0).sum())
    if not unread:
        return None
    rows = "no known row" if mask is not None else "no row"
    return Proof(False, 0.0, "zero column", f"{unread} of {op.in_dim} unknowns are read by {rows}: zero columns")


def conv_gram_error(op: ConvOperator, mask: torch.Tensor | None = None, terms: int | None = None) -> float:
    r"""An upper bound on :math:`\|\tilde G - G\|_2` for a computed Gram :math:`\tilde G` of :math:`M A`.

    Every entry of :math:`G = A^T M A` is a sum of products of filter taps; computed in any order it is within
    :math:`\gamma_T \sum |\text{products}| = \gamma_T (|A|^T M |A|)_{ij}` (``terms`` :math:`= T`, default
    ``C_out + kh^2 + kw^2 + 8``, the deepest sum of :meth:`ConvOperator.gram_matrix` and of
    :func:`~invertnet.pinv.proofs.whole.masked_gram`). And :math:`\| |A|^T M |A| \|_2 \le \max_i (|A|^T M |A|
    \mathbf 1)_i`, computed with the absolute filters and inflated.
    """
    device = op.weight.device
    absolute = abs_operator(op)
    ones = torch.ones(1, *op.in_shape, dtype=torch.float64, device=device)
    rows = absolute.forward(ones) * _mask_like(op, mask, device)
    sums = absolute.adjoint(rows)
    kh, kw = op.kernel_size
    depth = terms if terms is not None else op.out_shape[0] + kh * kh + kw * kw + 8
    spread = max(op.patch_size, op.out_shape[0] // op.groups) * kh * kw * 4  # terms of the two non-negative sums
    return gamma(depth) * float(inflate(inflate(sums.amax(), spread), spread))


def dense_gram_error(matrix: torch.Tensor) -> torch.Tensor:
    r""":math:`\gamma_m \| |B|^T |B| \|_2` bounds for ``fl(B^T B)`` of a batch ``(..., m, n)``."""
    return gamma(matrix.shape[-2]) * abs_gram_norm(matrix)


def pixel_sources(op: ConvOperator, device: torch.device | str | None = None) -> torch.Tensor:
    """The padded input grid's pixel numbers, ``(C_in, Hp, Wp)`` long: ``1..n`` (row-major), ``0`` for zero padding.

    Reflect, replicate and circular padding copy pixels: a copy carries its source's number.
    """
    numbers = torch.arange(1, op.in_dim + 1, dtype=torch.float64, device=device).reshape(1, *op.in_shape)
    return op.pad(numbers)[0].round().long()


def finite_or_zero(value: float) -> float:
    """``value`` when finite and positive, else ``0.0`` (a bound that proves nothing)."""
    return value if math.isfinite(value) and value > 0 else 0.0
