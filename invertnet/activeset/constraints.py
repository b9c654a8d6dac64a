r"""What an activation's output says about its pre-activation: equations and inequalities, entry by entry.

For :math:`h = \mathrm{clip}(z, \ell, u)` (ReLU: :math:`\ell = 0`, :math:`u = \infty`; ReLU6: :math:`[0, 6]`;
Hardtanh: :math:`[\ell, u]`), each entry of :math:`h` reads as a box on :math:`z`:

.. math::

    \ell < h_i < u \;\Rightarrow\; z_i = h_i, \qquad
    h_i = \ell \;\Rightarrow\; z_i \le \ell, \qquad
    h_i = u \;\Rightarrow\; z_i \ge u.

:class:`Constraints` keeps that reading as two tensors, ``lower <= z <= upper``: an equation where they
are equal, an inequality where one of them is infinite, no information where both are. It needs no
operator, so a walk can hand it from one layer to the next (e.g. the known entries of a layer's input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from invertnet._checks import require_tensor
from invertnet.errors import (
    DTypeError,
    InvalidActivationOutputError,
    OptionError,
    ShapeError,
    UnsupportedLayerError,
)

__all__ = ["Constraints", "activation_constraints", "clip_levels"]


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


@dataclass(frozen=True)
class Constraints:
    r"""Box constraints :math:`\ell_i \le z_i \le u_i` on a batch of responses ``z``.

    Attributes
    ----------
    lower, upper : torch.Tensor
        Same shape ``(N, ...)``, floating point; ``-inf`` / ``+inf`` where a side is unbounded.
        ``lower == upper`` marks an equation (the value is known).

    Examples
    --------
    >>> import torch
    >>> c = activation_constraints(torch.tensor([[0.0, 2.0, 6.0]]), upper=6.0)
    >>> c.known.tolist(), c.lower.tolist(), c.upper.tolist()
    ([[False, True, False]], [[-inf, 2.0, 6.0]], [[0.0, 2.0, inf]])
    """

    lower: torch.Tensor
    upper: torch.Tensor

    def __post_init__(self) -> None:
        lower = require_tensor(self.lower, "Constraints: lower")
        upper = require_tensor(self.upper, "Constraints: upper")
        if lower.shape != upper.shape or lower.ndim < 1:
            raise ShapeError(
                f"Constraints: expected lower and upper of one shape (N, ...), got {tuple(lower.shape)} and "
                f"{tuple(upper.shape)}; build both from the same batch of responses"
            )
        if not (lower.is_floating_point() and upper.is_floating_point()):
            raise DTypeError(
                f"Constraints: expected floating-point bounds, got {lower.dtype} and {upper.dtype}; "
                "convert with .double()"
            )
        bad = ~(lower <= upper)
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise OptionError(
                f"Constraints: expected lower <= upper everywhere, got lower {lower[index].item():.3g} and upper "
                f"{upper[index].item():.3g} at index {index} ({int(bad.sum())} entries, NaN included); "
                "an empty box has no solution"
            )

    @classmethod
    def equations(cls, value: torch.Tensor, known: torch.Tensor | None = None) -> Constraints:
        """``z == value`` where ``known`` (everywhere by default), no information elsewhere."""
        value = require_tensor(value, "Constraints.equations: value")
        if known is None:
            return cls(value, value)
        known = require_tensor(known, "Constraints.equations: known").to(device=value.device, dtype=torch.bool)
        if known.shape != value.shape:
            raise ShapeError(
                f"Constraints.equations: expected a mask of shape {tuple(value.shape)}, got {tuple(known.shape)}"
            )
        inf = torch.full_like(value, torch.inf)
        return cls(torch.where(known, value, -inf), torch.where(known, value, inf))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(N, ...)`` of the responses."""
        return tuple(self.lower.shape)

    @property
    def known(self) -> torch.Tensor:
        """Boolean mask of the equations, ``lower == upper``."""
        return self.lower == self.upper

    @property
    def value(self) -> torch.Tensor:
        """The known values, zero elsewhere."""
        return torch.where(self.known, self.lower, torch.zeros_like(self.lower))

    @property
    def inequalities(self) -> torch.Tensor:
        """Boolean mask of the inequalities: not known, and bounded on one side."""
        return ~self.known & (self.lower.isfinite() | self.upper.isfinite())

    @property
    def known_fraction(self) -> torch.Tensor:
        """Share of known entries per sample, ``(N,)``."""
        return _per_sample(self.known).to(self.lower.dtype).mean(1)

    def shifted(self, offset: torch.Tensor | float) -> Constraints:
        """The constraints on ``z - offset`` (e.g. on :math:`A x` from those on :math:`A x + b`)."""
        return Constraints(self.lower - offset, self.upper - offset)

    def clip_preimage(self, lower: float = 0.0, upper: float | None = None) -> Constraints:
        r"""The constraints on :math:`z` that these constraints on :math:`h = \mathrm{clip}(z, \ell, u)` say.

        A bound strictly inside the levels bounds :math:`z` alike; a lower bound at or below :math:`\ell` says
        nothing (:math:`-\infty`), an upper bound at or below it says :math:`z \le \ell`, and symmetrically at
        :math:`u`. On equations :math:`h = v` this is the reading of :func:`activation_constraints`.

        Examples
        --------
        >>> import torch
        >>> c = Constraints(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.0, 3.0, 2.0]])).clip_preimage()
        >>> c.lower.tolist(), c.upper.tolist()
        ([[-inf, -inf, 2.0]], [[0.0, 3.0, 2.0]])
        """
        inf = torch.full_like(self.lower, torch.inf)
        hi = math.inf if upper is None else upper
        low = torch.where(self.lower <= lower, -inf, self.lower.clamp(max=hi))
        high = torch.where(self.upper >= hi, inf, self.upper.clamp(min=lower))
        return Constraints(low, high)

    def scale(self) -> torch.Tensor:
        """Per sample, the largest finite bound in absolute value (the data's scale), ``(N,)``."""
        bounds = torch.cat([_per_sample(self.lower), _per_sample(self.upper)], dim=1).abs()
        finite = torch.where(bounds.isfinite(), bounds, torch.zeros_like(bounds))
        return finite.amax(1) if finite.shape[1] else finite.sum(1)

    def violation(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Largest violation per sample of the equations, :math:`\max |z_i - v_i|`, and of the inequalities.

        Both ``(N,)``, absolute (in the units of ``z``).
        """
        if tuple(z.shape) != self.shape:
            raise ShapeError(f"Constraints.violation: expected z of shape {self.shape}, got {tuple(z.shape)}")
        known, zero = self.known, torch.zeros_like(z)
        equations = torch.where(known, (z - self.lower).abs(), zero)
        beyond = torch.maximum((z - self.upper).clamp(min=0), (self.lower - z).clamp(min=0))
        inequalities = torch.where(known, zero, beyond)
        return _per_sample(equations).amax(1), _per_sample(inequalities).amax(1)


def clip_levels(module: nn.Module) -> tuple[float, float | None]:
    """The clip levels ``(lower, upper)`` of ``nn.ReLU`` (``(0, None)``), ``nn.ReLU6`` and ``nn.Hardtanh``.

    Examples
    --------
    >>> import torch
    >>> clip_levels(torch.nn.ReLU6())
    (0.0, 6.0)
    """
    if isinstance(module, nn.ReLU):
        return 0.0, None
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return float(module.min_val), float(module.max_val)
    raise UnsupportedLayerError(
        f"clip_levels: expected nn.ReLU, nn.ReLU6 or nn.Hardtanh, got {type(module).__name__}; "
        "bijective activations (LeakyReLU, PReLU) invert entry by entry"
    )


def _where(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def activation_constraints(
    h: torch.Tensor, lower: float = 0.0, upper: float | None = None, *, atol: float = 0.0
) -> Constraints:
    r"""Read an activation output :math:`h = \mathrm{clip}(z, \ell, u)` as constraints on its pre-activation.

    Parameters
    ----------
    h : torch.Tensor
        The output, ``(N, ...)``, floating point.
    lower, upper : float
        Clip levels: ReLU ``(0, None)``, ReLU6 ``(0, 6)``, Hardtanh ``(min_val, max_val)``
        (:func:`clip_levels` reads them off a module).
    atol : float, default 0
        Entries within ``atol`` of a clip level read as *at* the level (inequalities), and entries
        beyond a level by at most ``atol`` are accepted. ``0`` suits exact outputs: ``max(0, z)``
        returns exactly ``0.0`` (and ``clamp`` exactly its level) wherever it clips.

    Returns
    -------
    Constraints
        ``z_i = h_i`` strictly between the levels, ``z_i <= lower`` at the lower level, ``z_i >= upper``
        at the upper one.

    Raises
    ------
    InvalidActivationOutputError
        For NaN or infinite entries, entries below ``lower`` (e.g. negative entries of a ReLU output) or
        above ``upper``; the message gives the first offending value and its index.
    OptionError
        For levels with ``lower >= upper`` or a negative ``atol``.
    DTypeError
        For an integer tensor.

    Examples
    --------
    >>> import torch
    >>> c = activation_constraints(torch.relu(torch.tensor([[-1.0, 0.5]])))
    >>> c.known.tolist(), c.upper.tolist()
    ([[False, True]], [[0.0, 0.5]])
    """
    h = require_tensor(h, "activation_constraints: h")
    if not h.is_floating_point():
        raise DTypeError(
            f"activation_constraints: expected a floating-point tensor, got {h.dtype}; convert with h.double()"
        )
    if h.ndim < 1:
        raise ShapeError(f"activation_constraints: expected a batch (N, ...), got a tensor of shape {tuple(h.shape)}")
    if upper is not None and not lower < upper:
        raise OptionError(f"activation_constraints: expected lower < upper, got lower={lower} and upper={upper}")
    if not atol >= 0:
        raise OptionError(f"activation_constraints: expected atol >= 0, got {atol}; try 0 for exact outputs")
    kind = (
        "max(0, z)"
        if lower == 0 and upper is None
        else f"clip(z, {lower:g}, {upper if upper is None else f'{upper:g}'})"
    )
    finite = h.isfinite()
    if not bool(finite.all()):
        index = _where(~finite)
        raise InvalidActivationOutputError(
            f"activation_constraints: expected finite values, got {h[index].item()} at index {index} "
            f"({int((~finite).sum())} non-finite entries); the forward pass overflowed or the input had NaN/Inf"
        )
    below = h < lower - atol
    if bool(below.any()):
        index = _where(below)
        raise InvalidActivationOutputError(
            f"activation_constraints: expected values >= {lower:g} (outputs of {kind}), got {h[index].item():.3g} at "
            f"index {index} ({int(below.sum())} entries below); pass the activation's output, not its input, "
            "or the right clip levels (atol absorbs rounding)"
        )
    if upper is not None:
        above = h > upper + atol
        if bool(above.any()):
            index = _where(above)
            raise InvalidActivationOutputError(
                f"activation_constraints: expected values <= {upper:g} (outputs of {kind}), got {h[index].item():.3g} "
                f"at index {index} ({int(above.sum())} entries above); pass the activation's output, or the right "
                "clip levels (ReLU6: upper=6; ReLU: upper=None)"
            )
    snapped = torch.where(h <= lower + atol, lower, h)
    if upper is not None:
        snapped = torch.where(h >= upper - atol, upper, snapped)
    return Constraints.equations(snapped).clip_preimage(lower, upper)
