r"""Convolutions with circular boundaries, diagonalised by the 2-D DFT (Sedghi, Gupta, Long, ICLR 2019).

A stride-:math:`s` convolution on an :math:`H \times W` input, after a space-to-depth that turns
each :math:`s_h \times s_w` block into channels (``C_in s_h s_w`` channels on an
:math:`H' \times W' = H/s_h \times W/s_w` grid), is a stride-1 cross-correlation on that grid:

.. math::

    y_o[i, j] = \sum_{c, a, b} w_{o c a b}\,
      \tilde x_{(c, m_a \bmod s_h, n_b \bmod s_w)}[i + \lfloor m_a / s_h \rfloor, j + \lfloor n_b / s_w \rfloor],
    \quad m_a = d_h a - p_{top}, \; n_b = d_w b - p_{left}.

With circular indices the DFT turns it into one ``C_out x C_in s_h s_w`` matrix per frequency,

.. math::

    M(f) = \sum_{a, b} w_{\cdot\cdot ab}\,
           e^{2\pi i (f_u \lfloor m_a/s_h \rfloor / H' + f_v \lfloor n_b/s_w \rfloor / W')}
    \quad\text{(placed in the columns of its phase class)},

and, the DFT being unitary, the singular values of the whole operator are the union of those of
the :math:`M(f)`, and :math:`A^+ = \mathcal F^{-1} \operatorname{blockdiag}(M(f)^+) \mathcal F`, exactly.
This holds when padding is circular (or absent) and the output grid is :math:`H' \times W'`.
For any other layer whose stride divides the input, the same symbol is its *circulant approximation*
(its spectrum is a cheap preview of the layer's).
"""

from __future__ import annotations

import math

import torch

from invertnet.errors import ShapeError
from invertnet.operators import ConvOperator

__all__ = [
    "CirculantFactorization",
    "circulant_reason",
    "circulant_singular_values",
    "dense_weight",
    "depth_to_space",
    "space_to_depth",
    "symbol",
    "symbol_singular_values",
]


def space_to_depth(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C*sh*sw, H/sh, W/sw)``, channel index ``c*sh*sw + r*sw + q`` for offset (r, q)."""
    n, c, h, w = x.shape
    sh, sw = stride
    return x.reshape(n, c, h // sh, sh, w // sw, sw).permute(0, 1, 3, 5, 2, 4).reshape(n, c * sh * sw, h // sh, w // sw)


def depth_to_space(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`space_to_depth`."""
    n, css, hh, ww = x.shape
    sh, sw = stride
    c = css // (sh * sw)
    return x.reshape(n, c, sh, sw, hh, ww).permute(0, 1, 4, 2, 5, 3).reshape(n, c, hh * sh, ww * sw)


def circulant_reason(op: ConvOperator) -> str | None:
    """Why the DFT does *not* diagonalise ``op`` exactly, or ``None`` when it does."""
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    if h % sh or w % sw:
        return f"the stride {op.stride} does not divide the input size {(h, w)}"
    if op.pad.mode != "circular" and any(op.pad.pads):
        return f"padding is {op.pad.mode!r}, not circular"
    if op.out_shape[1:] != (h // sh, w // sw):
        return f"the output grid {op.out_shape[1:]} is not the input grid divided by the stride, {(h // sh, w // sw)}"
    return None


def dense_weight(op: ConvOperator, like: torch.Tensor) -> torch.Tensor:
    """The weight with groups expanded to a block-diagonal ``(C_out, C_in, kh, kw)``."""
    weight = op._weight(like)
    if op.groups == 1:
        return weight
    c_out, c_in_group = weight.shape[:2]
    out_group = c_out // op.groups
    full = weight.new_zeros(c_out, c_in_group * op.groups, *weight.shape[2:])
    for g in range(op.groups):
        rows = slice(g * out_group, (g + 1) * out_group)
        full[rows, g * c_in_group : (g + 1) * c_in_group] = weight[rows]
    return full


def symbol(op: ConvOperator, like: torch.Tensor) -> torch.Tensor:
    """The per-frequency matrices :math:`M(f)`, shape ``(H', W', C_out, C_in*sh*sw)``, complex.

    ``like`` sets the real dtype (float64 -> complex128) and the device. Requires the stride to
    divide the input size; exact for layers where :func:`circulant_reason` is ``None``.
    """
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    if h % sh or w % sw:
        raise ShapeError(f"the stride {op.stride} does not divide the input size {(h, w)}; crop or pad the input")
    weight = dense_weight(op, like)
    c_out, c_in, kh, kw = weight.shape
    hh, ww = h // sh, w // sw
    left, _, top, _ = op.pad.pads
    cdtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
    out = torch.zeros(hh, ww, c_out, c_in, sh, sw, dtype=cdtype, device=like.device)
    fu = torch.arange(hh, device=like.device, dtype=like.dtype).reshape(hh, 1)
    fv = torch.arange(ww, device=like.device, dtype=like.dtype).reshape(1, ww)
    for a in range(kh):
        m = op.dilation[0] * a - top
        for b in range(kw):
            n = op.dilation[1] * b - left
            angle = 2 * math.pi * (fu * (m // sh) / hh + fv * (n // sw) / ww)
            phase = torch.polar(torch.ones_like(angle), angle)
            out[:, :, :, :, m % sh, n % sw] += phase[:, :, None, None] * weight[:, :, a, b].to(cdtype)
    return out.reshape(hh, ww, c_out, c_in * sh * sw)


def circulant_singular_values(op: ConvOperator, like: torch.Tensor) -> torch.Tensor:
    r"""The singular values of every :math:`M(f)`, descending: :class:`CirculantFactorization`'s, without :math:`U, V`.

    :func:`symbol_singular_values` of the layer's :func:`symbol`.

    Examples
    --------
    >>> import torch
    >>> op = ConvOperator(torch.randn(3, 2, 3, 3, dtype=torch.float64), (8, 8), padding=1, padding_mode="circular")
    >>> values = circulant_singular_values(op, torch.zeros((), dtype=torch.float64))
    >>> bool(torch.allclose(values, torch.linalg.svdvals(op.to_dense())))
    True
    """
    return symbol_singular_values(symbol(op, like))


def symbol_singular_values(matrices: torch.Tensor, half: torch.Tensor | None = None) -> torch.Tensor:
    r"""The singular values of every :math:`M(f)` of a symbol ``(H', W', p, q)``, descending, flattened.

    The weights are real, so :math:`M(-f) = \overline{M(f)}` has the same singular values: only the half
    spectrum :math:`0 \le f_v \le W'/2` is decomposed (``svdvals``) and mirrored; ``half`` passes those values
    (``(H', W'//2 + 1, r)``) when the caller has them. When every :math:`\lfloor m_a / s_h \rfloor` and
    :math:`\lfloor n_b / s_w \rfloor` is zero (a 1x1 convolution, or a kernel inside one stride cell) the symbol
    is the same real matrix at every frequency: one ``svdvals``.
    """
    hh, ww = matrices.shape[:2]
    if half is None and bool((matrices == matrices[:1, :1]).all()):  # every phase is exp(0) = 1 exactly
        values = torch.linalg.svdvals(matrices[0, 0].real).repeat(hh * ww)
    else:
        if half is None:
            half = torch.linalg.svdvals(matrices[:, : ww // 2 + 1])  # (H', W'//2 + 1, r)
        u = torch.arange(hh, device=half.device)
        v = torch.arange(ww, device=half.device)
        mirrored = v > ww // 2  # f_v > W'/2: the conjugate of (-f_u, W' - f_v)
        rows = torch.where(mirrored.reshape(1, -1), (-u % hh).reshape(-1, 1), u.reshape(-1, 1))
        cols = torch.where(mirrored, ww - v, v).expand(hh, ww)
        values = half[rows, cols].flatten()
    descending: torch.Tensor = values.sort(descending=True).values
    return descending


class CirculantFactorization:
    r"""The SVD of every :math:`M(f)` of a layer, for exact spectra and :math:`A^+`.

    Parameters
    ----------
    op : ConvOperator
    like : torch.Tensor
        Sets dtype and device.

    Attributes
    ----------
    u, s, vh : torch.Tensor
        ``M(f) = u diag(s) vh`` per frequency; ``s`` has shape ``(H', W', min(C_out, C_in sh sw))``.
    exact : bool
        Whether the factorisation is the layer's own (circular or no padding, output grid
        ``H/sh x W/sw``) or only its circulant approximation.
    """

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    def __init__(self, op: ConvOperator, like: torch.Tensor) -> None:
        self.op = op
        self.exact = circulant_reason(op) is None
        self.u, self.s, self.vh = torch.linalg.svd(symbol(op, like), full_matrices=False)
        self._pinv: dict[float, torch.Tensor] = {}

    def singular_values(self) -> torch.Tensor:
        """All singular values of the operator (or of its circulant approximation), descending, with the zeros.

        The operator has ``min(m, n)`` of them: per frequency ``min(C_out, C_in sh sw)``.
        """
        return self.s.flatten().sort(descending=True).values

    def _apply(self, matrices: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-frequency ``matrices (H', W'//2+1, p, q)`` applied to the DFT of the real ``y (N, q, H', W')``.

        The weights are real, so ``M(-f) = conj(M(f))``: the half spectrum of ``rfft2`` suffices.
        """
        # torch.fft's functions carry no annotations (they return Any): name the types here
        y_hat: torch.Tensor = torch.fft.rfft2(y)
        spectrum = y_hat.permute(2, 3, 1, 0).to(matrices.dtype)  # (H', W'//2+1, q, N)
        product = (matrices @ spectrum).permute(3, 2, 0, 1)
        x: torch.Tensor = torch.fft.irfft2(product, s=tuple(y.shape[-2:]))
        return x.to(y.dtype)

    def pinv(self, y: torch.Tensor, rtol: float) -> torch.Tensor:
        r""":math:`A^+ y`, singular values below ``rtol * sigma_max`` (global) cut; ``y`` is ``(N, C_out, H', W')``."""
        if rtol not in self._pinv:  # the per-frequency pseudo-inverses, built once per cutoff
            half = self.s.shape[1] // 2 + 1
            u, s, vh = self.u[:, :half], self.s[:, :half], self.vh[:, :half]
            keep = s > rtol * self.s.max()
            inverse = torch.where(keep, 1.0 / torch.where(keep, s, 1.0), 0.0).to(u.dtype)
            self._pinv[rtol] = (vh.mH @ (inverse[..., None] * u.mH)).contiguous()
        return depth_to_space(self._apply(self._pinv[rtol], y), self.op.stride)
