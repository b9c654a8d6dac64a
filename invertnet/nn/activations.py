r"""CReLU, its variants and their inverses.

CReLU (Shang et al., ICML 2016) keeps both phases of a linear response:

.. math::

    \rho(z) = \big(\max(0, z),\ \max(0, -z)\big)

concatenated along the channel axis, so a tensor with ``C`` channels becomes one with ``2C``.
Its inverse on valid outputs is exact, :math:`z = \rho_+ - \rho_-`. The scheme allows another
inner activation; with leaky ReLU of slope :math:`a`,

.. math::

    \rho_a(z) = \big(\sigma_a(z),\ \sigma_a(-z)\big), \qquad
    \sigma_a(t) = \max(t, 0) + a \min(t, 0),

and :math:`\rho_{a,+} - \rho_{a,-} = (1 + a) z`, so :math:`z = (\rho_{a,+} - \rho_{a,-}) / (1 + a)`
for every :math:`a \neq -1`.

ReLU loses the negative part and AVR (:math:`|z|`) loses the sign: both are the paper's baselines
and are not invertible. The proportional module (:class:`Proportional`) sits in between: ReLU on
``m`` of every ``n`` channels, the identity on the rest; its linear channels invert exactly, its
ReLU channels keep their positive part and lose the rest (:func:`invert_proportional` says where).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from invertnet._checks import require_tensor
from invertnet.errors import ArgumentTypeError, InvalidCReLUOutputError, OptionError, ShapeError

__all__ = [
    "AVR",
    "CReLU",
    "Proportional",
    "avr",
    "crelu",
    "invert_crelu",
    "invert_proportional",
    "leaky_relu_inverse",
    "proportional",
]

#: Entries whose size is below ``CRELU_TOLERANCE_ULPS * eps(dtype) * max|h|`` count as zero in
#: the validity check of :func:`invert_crelu`.
CRELU_TOLERANCE_ULPS = 64.0


def _check_dim(dim: object, x: torch.Tensor, fn: str) -> int:
    """``dim`` as a non-negative axis of ``x``; refuse anything outside ``[-ndim, ndim)`` instead of wrapping it."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ArgumentTypeError(f"{fn}: expected an int dim, got {type(dim).__name__} {dim!r}")
    ndim = max(x.ndim, 1)
    if not -ndim <= dim < ndim:
        raise ShapeError(
            f"{fn}: expected dim in [{-ndim}, {ndim}) for a tensor of shape {tuple(x.shape)}, got dim={dim}; "
            "pass the channel axis (1 for (N, C, H, W))"
        )
    return dim % ndim


def _inner(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return F.relu(x) if negative_slope == 0.0 else F.leaky_relu(x, negative_slope)


def crelu(x: torch.Tensor, dim: int = 1, negative_slope: float = 0.0) -> torch.Tensor:
    r"""Concatenated ReLU: :math:`\rho(z) = (\max(0, z), \max(0, -z))` along ``dim``.

    Parameters
    ----------
    x : torch.Tensor
        Pre-activation response ``z``.
    dim : int, default 1
        Axis along which the two phases are concatenated (the channel axis of (N, C, H, W)).
    negative_slope : float, default 0.0
        Slope ``a`` of the inner activation; ``0`` is CReLU, ``a > 0`` is the leaky-ReLU
        variant :math:`(\sigma_a(z), \sigma_a(-z))`.

    Returns
    -------
    torch.Tensor
        Tensor with twice the size of ``x`` along ``dim``.

    Examples
    --------
    >>> import torch
    >>> from invertnet import crelu
    >>> crelu(torch.tensor([[1.0, -2.0]]), dim=1)
    tensor([[1., 0., 0., 2.]])
    """
    x = require_tensor(x, "crelu input")
    dim = _check_dim(dim, x, "crelu")
    return torch.cat([_inner(x, negative_slope), _inner(-x, negative_slope)], dim=dim)


def invert_crelu(
    h: torch.Tensor,
    dim: int = 1,
    check: bool = True,
    *,
    negative_slope: float = 0.0,
    atol: float | None = None,
) -> torch.Tensor:
    r"""Recover the pre-activation response from a CReLU output: :math:`z = \rho_+ - \rho_-`.

    Parameters
    ----------
    h : torch.Tensor
        Output of :func:`crelu` (the positive phase first, then the negative one, along ``dim``).
    dim : int, default 1
        Axis along which the phases were concatenated.
    check : bool, default True
        Verify that ``h`` is a valid output before inverting: even size along ``dim``, finite,
        and equal to :math:`\rho_a(z)` for the recovered ``z`` up to ``atol``. For plain CReLU
        this means no negative entry and never both halves non-zero at one position.
        Switch it off for estimates that are not exact CReLU outputs (inside a reconstruction).
    negative_slope : float, default 0.0
        Slope ``a`` of the inner activation used in the forward pass.
    atol : float, optional
        Absolute tolerance of the check. Default: ``64 * eps(dtype) * max|h|``, which accepts
        rounding errors of the forward pass but nothing larger.

    Returns
    -------
    torch.Tensor
        ``z`` with half the size of ``h`` along ``dim``; exact (no rounding) for ``a = 0``.

    Raises
    ------
    InvalidCReLUOutputError
        With ``check=True``, if ``h`` cannot be a CReLU output; the message says which rule
        failed and at which index.

    Notes
    -----
    :math:`\rho_{a,+}(z) - \rho_{a,-}(z) = (1 + a) z` for every real ``z``, hence the inverse
    :math:`z = (\rho_{a,+} - \rho_{a,-}) / (1 + a)`.

    Examples
    --------
    >>> import torch
    >>> from invertnet import crelu, invert_crelu
    >>> z = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    >>> torch.equal(invert_crelu(crelu(z)), z)
    True
    """
    h = require_tensor(h, "invert_crelu input")
    if negative_slope == -1.0:
        raise OptionError(
            "invert_crelu: expected negative_slope != -1, got -1, which makes the two phases equal (not invertible); "
            "pass the slope the forward pass used"
        )
    dim = _check_dim(dim, h, "invert_crelu")
    if atol is not None and not 0 <= atol < float("inf"):
        raise OptionError(f"invert_crelu: expected a finite atol >= 0, got {atol!r}; leave it None for the default")
    size = h.shape[dim] if h.ndim else 0
    if size % 2:
        raise InvalidCReLUOutputError(
            f"invert_crelu: expected an even size along dim={dim} (positive and negative phase), "
            f"got shape {tuple(h.shape)}; pass the dim along which CReLU concatenated"
        )
    pos, neg = torch.split(h, size // 2, dim=dim)
    z = pos - neg if negative_slope == 0.0 else (pos - neg) / (1.0 + negative_slope)
    if check:
        _check_crelu_output(h, pos, neg, z, dim, negative_slope, atol)
    return z


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _check_crelu_output(
    h: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    z: torch.Tensor,
    dim: int,
    negative_slope: float,
    atol: float | None,
) -> None:
    finite = torch.isfinite(h)
    if not bool(finite.all()):
        bad = _first_index(~finite)
        raise InvalidCReLUOutputError(
            f"invert_crelu: expected finite values, got {h[bad].item()} at index {bad} "
            f"({int((~finite).sum())} non-finite entries); the forward pass overflowed or the input had NaN/Inf"
        )
    if atol is None:
        scale = float(h.abs().max()) if h.numel() else 0.0
        atol = CRELU_TOLERANCE_ULPS * torch.finfo(h.dtype).eps * scale if h.is_floating_point() else 0.0
    if negative_slope == 0.0:
        negative = h < -atol
        if bool(negative.any()):
            bad = _first_index(negative)
            raise InvalidCReLUOutputError(
                f"invert_crelu: expected non-negative values (CReLU outputs are max(0, .)), got {h[bad].item():.3g} "
                f"at index {bad} ({int(negative.sum())} negative entries); for a leaky inner activation "
                "pass negative_slope"
            )
        both = torch.minimum(pos, neg) > atol
        if bool(both.any()):
            bad = _first_index(both)
            raise InvalidCReLUOutputError(
                f"invert_crelu: expected at most one non-zero phase per position, got both halves non-zero at "
                f"index {bad} of each half along dim={dim} (positive {pos[bad].item():.3g}, negative "
                f"{neg[bad].item():.3g}; {int(both.sum())} positions, tolerance {atol:.3g}); "
                "is this a CReLU output, concatenated along this dim?"
            )
        return
    mismatch = (crelu(z, dim, negative_slope) - h).abs() > atol
    if bool(mismatch.any()):
        bad = _first_index(mismatch)
        raise InvalidCReLUOutputError(
            f"invert_crelu: expected the output of the leaky CReLU with negative_slope={negative_slope}, "
            f"got a value {h[bad].item():.3g} at index {bad} that no input produces "
            f"({int(mismatch.sum())} entries beyond tolerance {atol:.3g}); check negative_slope and dim"
        )


def leaky_relu_inverse(y: torch.Tensor, negative_slope: float) -> torch.Tensor:
    r"""Exact inverse of leaky ReLU for ``negative_slope > 0``: :math:`x = y` if :math:`y \ge 0`, else :math:`y / a`.

    Examples
    --------
    >>> import torch
    >>> leaky_relu_inverse(torch.nn.functional.leaky_relu(torch.tensor([-2.0, 3.0]), 0.5), 0.5)
    tensor([-2.,  3.])
    """
    y = require_tensor(y, "leaky_relu_inverse input")
    if not negative_slope > 0.0:
        raise OptionError(
            f"leaky_relu_inverse: expected negative_slope > 0 (bijective), got {negative_slope}; "
            "with slope 0 (ReLU) the negative part is lost"
        )
    return torch.where(y >= 0, y, y / negative_slope)


def avr(x: torch.Tensor) -> torch.Tensor:
    """Absolute value rectification :math:`|z|` (the paper's AVR baseline; loses the sign)."""
    return x.abs()


class CReLU(nn.Module):
    r"""Concatenated ReLU module, :math:`\rho(z) = (\sigma_a(z), \sigma_a(-z))` along ``dim``.

    Parameters
    ----------
    dim : int, default 1
        Concatenation axis.
    negative_slope : float, default 0.0
        Slope of the inner activation (0: CReLU; > 0: the leaky-ReLU variant, still exactly invertible).

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> CReLU()(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 6, 8, 8])
    """

    def __init__(self, dim: int = 1, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return crelu(x, self.dim, self.negative_slope)

    def inverse(self, h: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Exact inverse on valid outputs; see :func:`invert_crelu`."""
        return invert_crelu(h, self.dim, check, negative_slope=self.negative_slope)

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.negative_slope else ""
        return f"dim={self.dim}{slope}"


class AVR(nn.Module):
    """Absolute value rectification module, ``|z|`` (baseline; not invertible)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avr(x)


def _rectified_channels(x: torch.Tensor, m: int, n: int, dim: int) -> torch.Tensor:
    """Boolean mask broadcastable to ``x``: the channels ``c`` with ``c mod n < m``."""
    _check_proportion(m, n, "proportional")
    x = require_tensor(x, "proportional input")
    dim = _check_dim(dim, x, "proportional")
    shape = [1] * x.ndim
    shape[dim] = x.shape[dim]
    return (torch.arange(x.shape[dim], device=x.device) % n < m).reshape(shape)


def proportional(x: torch.Tensor, m: int, n: int, dim: int = 1) -> torch.Tensor:
    r"""ReLU on ``m`` of every ``n`` channels (those with :math:`c \bmod n < m`), the identity on the rest.

    Examples
    --------
    >>> import torch
    >>> proportional(torch.tensor([[-1.0, -2.0, -3.0, -4.0]]), 1, 2)
    tensor([[ 0., -2.,  0., -4.]])
    """
    return torch.where(_rectified_channels(x, m, n, dim), F.relu(x), x)


def invert_proportional(h: torch.Tensor, m: int, n: int, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Undo :func:`proportional` where it can be undone; say where it cannot.

    Returns ``(z, known)``: :math:`z = h` (the linear channels are the pre-activation itself, and on
    the rectified channels :math:`h > 0` means :math:`z = h`), and the boolean mask ``known`` of the
    entries recovered exactly. Where a rectified channel is 0, :math:`z \le 0` is all that is left:
    the estimate puts 0 there (the minimum-norm choice) and ``known`` is False.

    Examples
    --------
    >>> import torch
    >>> z, known = invert_proportional(torch.tensor([[0.0, -2.0, 3.0, 0.0]]), 1, 2)
    >>> z.tolist(), known.tolist()
    ([[0.0, -2.0, 3.0, 0.0]], [[False, True, True, True]])
    """
    rectified = _rectified_channels(h, m, n, dim)
    return h.clone(), ~rectified | (h > 0)


def _check_proportion(m: int, n: int, fn: str) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (m, n)):
        raise ArgumentTypeError(f"{fn}: expected int m and n (ReLU on m of every n channels), got m={m!r}, n={n!r}")
    if not 0 <= m <= n or n < 1:
        raise OptionError(
            f"{fn}: expected 0 <= m <= n and n >= 1, got m={m}, n={n}; ReLU acts on m of every n channels"
        )


class Proportional(nn.Module):
    """ReLU on ``m`` of every ``n`` channels, linear on the others (see :func:`proportional`).

    ``m = n`` is ReLU, ``m = 0`` the identity. Inverse: :func:`invert_proportional`.
    """

    def __init__(self, m: int, n: int, dim: int = 1) -> None:
        super().__init__()
        _check_proportion(m, n, "Proportional")
        self.m, self.n, self.dim = m, n, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return proportional(x, self.m, self.n, self.dim)

    def extra_repr(self) -> str:
        return f"m={self.m}, n={self.n}, dim={self.dim}"
