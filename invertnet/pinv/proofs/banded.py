r"""A verified Cholesky proof for layers too large to factor whole: :math:`A^T A` is block banded by image rows.

For a zero-padded convolution, pixels of image rows :math:`r, r'` share an output only when
:math:`|r - r'| \le d_h (k_h - 1) = q`, so with the unknowns ordered ``(H, W, C)`` the Gram matrix is block
banded: :math:`H` blocks a side of :math:`b = W C` unknowns, bandwidth :math:`q`
(:meth:`~invertnet.operators.ConvOperator.gram_rows`). Its Cholesky factor keeps that band, so the verified
factorisation of :math:`G - \tau I` (:func:`~invertnet.linalg.verified.banded_cholesky_certificate`) costs about
:math:`H (q^2 + 2 q + 1/3) b^3` flops and :math:`O(q^2 b^2)` memory instead of :math:`n^3 / 3` and :math:`n^2`:
All-CNN-B's conv7 at 224 px (50,176 unknowns, :math:`b = 3{,}584`, :math:`q = 2`) in about :math:`5 \cdot 10^{12}`
flops, a few minutes on one core, where the dense Gram matrix would take 20 GB.

The known rows of a layer (:math:`M A`, ReLU's equations) keep the band: :math:`A^T M A` is summed output row by
output row into the blocks it touches (:class:`MaskedGramRows`, one pass, :math:`q + 1` block rows held at a time).

The shift comes from an estimate of :math:`\sigma_{\min}` (a LOBPCG Ritz value, an upper bound): the proof tries
:math:`\tau = 0.9999\, \hat\sigma^2`, then :math:`0.98\, \hat\sigma^2` and :math:`0.5\, \hat\sigma^2`
(:data:`SHIFT_FRACTIONS`), skipping a shift whose rounding margin would carry it above :math:`\hat\sigma^2` (its
factorisation would fail): with the window margin of
:func:`~invertnet.linalg.verified.banded_cholesky_certificate` the first succeeds on well-conditioned layers, and
the proven bound lies within :math:`10^{-4}` of a converged estimate. Without an
estimate it proves the weakest claim, that :math:`G` is positive definite at all (:math:`\tau` twice the Gram
matrix's rounding error): the layer is injective, with a small bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from invertnet.linalg.verified import UNIT_ROUNDOFF, banded_cholesky_certificate, gamma, inflate
from invertnet.operators import ConvOperator
from invertnet.pinv.proofs.base import Proof, abs_operator, conv_gram_error, count_proof

__all__ = ["BANDED_MAX_FLOPS", "SHIFT_FRACTIONS", "MaskedGramRows", "banded_flops", "banded_proof"]

#: :func:`banded_proof` refuses layers whose factorisation would take more floating-point operations than this
#: (about five minutes at 35 Gflop/s, one core of the development machine).
BANDED_MAX_FLOPS = 1e13

#: Fractions of the estimate of :math:`\sigma_{\min}^2` tried as the shift to prove (``0``: the weakest claim).
SHIFT_FRACTIONS = (0.9999, 0.98, 0.5)


def banded_flops(op: ConvOperator) -> float:
    r"""Floating-point operations of the banded factorisation: :math:`H (q^2 + 2 q + 1/3)\, b^3` (``inf`` if none).

    ``inf`` for padding other than zeros (copies of a pixel break the band).

    Examples
    --------
    >>> import torch
    >>> op = ConvOperator(torch.randn(384, 256, 3, 3), (14, 14), padding=1)  # All-CNN-B conv7 at 224 px
    >>> f"{banded_flops(op):.2g}"
    '5.4e+12'
    """
    if op.pad.mode != "zeros":
        return math.inf
    c, h, w = op.in_shape
    q = min(h - 1, op.dilation[0] * (op.kernel_size[0] - 1))
    return h * (q * q + 2 * q + 1 / 3) * float(w * c) ** 3


class MaskedGramRows:
    r""":math:`A^T M A` of a zero-padded convolution by blocks of image rows, summed in one pass.

    Output row :math:`i` reads the input rows :math:`r_a = i s_h - p_h + a d_h`; its outputs' terms
    :math:`P^T \mathrm{diag}(m_o) P` (``(C k_h k_w)^2`` each, :math:`P` the patch matrix) are added into the blocks
    :math:`(r_a, r_{a'})`, :math:`r_a \ge r_{a'}`. Block row :math:`i` is complete once every output row that reads
    input row :math:`i` is summed; :meth:`block` sums what it needs and forgets the block rows above.

    Examples
    --------
    >>> op = ConvOperator(torch.randn(5, 2, 3, 3, dtype=torch.float64), (6, 5), padding=1)
    >>> known = torch.rand(op.out_shape) < 0.8
    >>> a = op.placed_matrix()[known.reshape(-1)]
    >>> dense = (a.T @ a).reshape(2, 6, 5, 2, 6, 5).permute(1, 2, 0, 4, 5, 3).reshape(6, 10, 6, 10)
    >>> rows = MaskedGramRows(op, known)
    >>> all(torch.allclose(rows.block(i, j), dense[i, :, j]) for i in range(6) for j in range(max(0, i - 2), i + 1))
    True
    """

    def __init__(self, op: ConvOperator, known: torch.Tensor) -> None:
        c, self.height, w = op.in_shape
        self.op, self.channels = op, c
        self.size = w * c
        self.reach = min(self.height - 1, op.dilation[0] * (op.kernel_size[0] - 1))
        device = op.weight.device
        matrices = op.patch_matrices(torch.zeros((), dtype=torch.float64, device=device))  # (g, m, k)
        groups, m, k = matrices.shape
        patch = torch.zeros(groups * m, groups * k, dtype=torch.float64, device=device)
        for g in range(groups):
            patch[g * m : (g + 1) * m, g * k : (g + 1) * k] = matrices[g]
        self.patch = patch  # (C_out, C kh kw), the columns channel-major as unfold's
        self.known = known.reshape(op.out_shape).to(device=device, dtype=torch.float64)
        kh, kw = op.kernel_size
        left, _, top, _ = op.pad.pads
        (sh, sw), (dh, dw) = op.stride, op.dilation
        out_w = op.out_shape[2]
        columns = torch.arange(out_w, device=device)[:, None] * sw - left + torch.arange(kw, device=device) * dw
        inside = (columns >= 0) & (columns < w)
        place = columns[:, None, :] * c + torch.arange(c, device=device)[None, :, None]  # (W_out, C, kw)
        self.place = torch.where(inside[:, None, :], place, self.size).reshape(out_w, c * kw)
        self.sources = [
            [(a, i * sh - top + a * dh) for a in range(kh) if 0 <= i * sh - top + a * dh < self.height]
            for i in range(op.out_shape[1])
        ]
        self.summed = 0  # output rows added so far
        self.blocks: dict[tuple[int, int], torch.Tensor] = {}

    def _add_output_row(self, i: int) -> None:
        c, (kh, kw) = self.channels, self.op.kernel_size
        flat_size = (self.size + 1) ** 2
        for start in range(0, self.place.shape[0], 8):
            part = slice(start, start + 8)
            rows = self.known[:, i, part].T  # (L, C_out)
            terms = torch.einsum("mk,lm,mj->lkj", self.patch, rows, self.patch)
            terms = terms.reshape(-1, c, kh, kw, c, kh, kw)
            place = self.place[part]
            flat = place[:, :, None] * (self.size + 1) + place[:, None, :]
            for a, r in self.sources[i]:
                for a2, r2 in self.sources[i]:
                    if r < r2:
                        continue
                    target = self.blocks.get((r, r2))
                    if target is None:
                        target = self.blocks[r, r2] = self.patch.new_zeros(flat_size)
                    values = terms[:, :, a, :, :, a2, :]  # (L, C, kw, C, kw): the order of ``place``
                    target.index_add_(0, flat.reshape(-1), values.reshape(-1))

    def block(self, r: int, r2: int) -> torch.Tensor:
        r"""Block :math:`(r, r')`, :math:`r \ge r'`, of :math:`A^T M A` (``(W C, W C)``); rows are asked in order."""
        sh, top = self.op.stride[0], self.op.pad.pads[2]
        last = min(self.op.out_shape[1] - 1, (r + top) // sh)  # the last output row that reads input row r
        while self.summed <= last:
            self._add_output_row(self.summed)
            self.summed += 1
        for key in [key for key in self.blocks if key[0] < r]:
            del self.blocks[key]
        found = self.blocks.get((r, r2))
        if found is None:
            return self.patch.new_zeros(self.size, self.size)
        return found.reshape(self.size + 1, self.size + 1)[: self.size, : self.size]


def _diagonal_bound(op: ConvOperator, known: torch.Tensor, terms: int) -> torch.Tensor:
    r"""Upper bounds on the computed diagonal of :math:`A^T M A`, ``(H W C)`` in the blocks' order.

    :math:`(A^T M A)_{jj} = ((A \circ A)^T m)_j`, a sum of non-negative terms: computed with the squared filters and
    inflated for that sum, then by :math:`1 + \gamma_T` for the rounding of the Gram's own sums.
    """
    squared = abs_operator(op)
    squared = ConvOperator(
        squared.weight.square(), op.input_size, op.stride, op.pad.pads, op.dilation, op.groups, op.pad.mode
    )
    kh, kw = op.kernel_size
    spread = max(op.patch_size, op.out_shape[0] // op.groups) * kh * kw * 4
    mask = known.reshape(1, *op.out_shape).to(device=op.weight.device, dtype=torch.float64)
    sums = inflate(inflate(squared.adjoint(mask)[0], spread), spread) * (1 + 2 * gamma(terms))
    return sums.permute(1, 2, 0).reshape(-1)


def banded_proof(
    op: ConvOperator,
    estimate: float | None = None,
    known: torch.Tensor | None = None,
    *,
    fractions: tuple[float, ...] = SHIFT_FRACTIONS,
    max_flops: float = BANDED_MAX_FLOPS,
    progress: Callable[[str], None] | None = None,
) -> Proof:
    r"""Prove :math:`\sigma_{\min}(M A) \ge \beta` by a verified block-banded Cholesky factorisation of :math:`A^T M A`.

    Parameters
    ----------
    op : ConvOperator
        Zero padding (or none); any stride, dilation and groups.
    estimate : float, optional
        An estimate of :math:`\sigma_{\min}` (e.g. :func:`~invertnet.linalg.spectrum.sigma_min_lobpcg`); the
        shifts tried are ``fractions`` of its square. Without it, the weakest claim: positive definite at all.
    fractions : tuple of float, default :data:`SHIFT_FRACTIONS`
        Tried in turn, each a factorisation; ``0`` stands for the weakest claim (for an estimate that may lie far
        above :math:`\sigma_{\min}`, e.g. one that did not converge: ``(0.5, 0)``).
    known : torch.Tensor, optional
        The rows known (boolean, ``op.out_shape``); all by default.
    max_flops : float
        Refuse (``injective=None``, the reason says so) when :func:`banded_flops` exceeds it.
    progress : callable, optional

    Returns
    -------
    Proof
        ``"banded"`` with the bound; ``"count"``; or ``injective=None`` with the reason (other padding, over the
        budget, no shift proven).

    Examples
    --------
    >>> op = ConvOperator(torch.randn(12, 4, 3, 3, dtype=torch.float64), (9, 8), padding=1)
    >>> exact = float(torch.linalg.svdvals(op.placed_matrix())[-1])
    >>> proof = banded_proof(op, exact)
    >>> proof.name, 0.98 * exact < proof.lower_bound <= exact
    ('banded', True)
    >>> known = torch.rand(op.out_shape) < 0.7
    >>> weak = banded_proof(op, known=known)  # no estimate: positive definite, a small bound
    >>> weak.name, 0 < weak.lower_bound <= float(torch.linalg.svdvals(op.placed_matrix()[known.reshape(-1)])[-1])
    ('banded', True)
    """
    n = op.in_dim
    rows_known = op.out_dim if known is None else int(known.sum())
    if (counted := count_proof(rows_known, n)) is not None:
        return counted
    flops = banded_flops(op)
    if not math.isfinite(flops):
        return Proof.none(f"banded: padding {op.pad.mode!r} copies pixels, so A^T A is not banded by image rows")
    if flops > max_flops:
        return Proof.none(f"banded: the factorisation would take {flops:.2g} flops, above the budget {max_flops:.2g}")
    if estimate is not None and not estimate > 0:
        return Proof.none("banded: no positive estimate of sigma_min to place the shift")
    kh, kw = op.kernel_size
    terms = op.out_shape[0] + 4 * kh * kw + 8
    mask = None if known is None else known.reshape(op.out_shape).bool()
    error = conv_gram_error(op, mask, terms=terms)
    # a fraction 0 (and no estimate) stands for the weakest claim: tau twice the rounding error
    shifts = [fraction * estimate**2 or 2 * error for fraction in fractions] if estimate is not None else [2 * error]
    for tau in shifts:
        if tau <= error:
            break
        if mask is None:
            rows = op.gram_rows(device=op.weight.device, max_entries=2**31)
            block, height, reach, size, bound = rows.block, rows.height, rows.reach, rows.size, None
        else:
            masked = MaskedGramRows(op, mask)
            block, height, reach, size = masked.block, masked.height, masked.reach, masked.size
            bound = _diagonal_bound(op, mask, terms)
        ceiling = estimate**2 if estimate is not None else math.inf
        found = banded_cholesky_certificate(
            block, height, reach, tau, error, diagonal_bound=bound, ceiling=ceiling, progress=progress
        )
        if found > 0:
            value = math.sqrt(found) * (1 - 4 * UNIT_ROUNDOFF)
            reason = (
                f"banded: a verified Cholesky factorisation of A^T {'' if mask is None else 'M '}A - {tau:.4g} I by "
                f"{height} blocks of {size} unknowns (bandwidth {reach}): sigma_min >= {value:.4g}, proven"
            )
            return Proof(True, value, "banded", reason)
    what = f"below the estimate {estimate:.4g}^2" if estimate is not None else "(positive definiteness)"
    return Proof.none(f"banded: no shift {what} could be proven")
