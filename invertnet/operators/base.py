r"""The linear operator base class and the dot test.

A subclass implements only :meth:`LinearOperator.forward` (:math:`A x`) and
:meth:`LinearOperator.adjoint` (:math:`A^T y`) on batches of shape ``(N, *in_shape)`` and
``(N, *out_shape)``; the base class adds shape checks, the dense matrix for tiny sizes,
and the dot test :math:`\langle A x, y \rangle = \langle x, A^T y \rangle`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from invertnet._checks import require_tensor
from invertnet.errors import AdjointMismatchError, ArgumentTypeError, OptionError, ShapeError, TooLargeError

__all__ = ["DENSE_MAX_ENTRIES", "LinearOperator", "dottest"]

#: Largest dense matrix (in entries) that :meth:`LinearOperator.to_dense` builds: 2**27 entries
#: is 1 GiB in float64.
DENSE_MAX_ENTRIES = 2**27


def check_dense_size(m: int, n: int, dtype: torch.dtype, max_entries: int, fn: str) -> None:
    """Raise :class:`TooLargeError` when an ``m x n`` dense matrix has more than ``max_entries`` entries."""
    if m * n > max_entries:
        gib = m * n * torch.finfo(dtype).bits / 8 / 2**30
        raise TooLargeError(
            f"{fn}: the matrix would be {m} x {n} ({gib:.1f} GiB in {dtype}), over the limit of "
            f"{max_entries} entries; use a smaller input size or a matrix-free method"
        )


class LinearOperator(ABC):
    r"""A linear map between batched tensors, :math:`A: \mathbb{R}^{n} \to \mathbb{R}^{m}`.

    Attributes
    ----------
    in_shape, out_shape : tuple of int
        Shapes of one sample, without the batch axis.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply :math:`A` to a batch of shape ``(N, *in_shape)``."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply :math:`A^T` to a batch of shape ``(N, *out_shape)``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def in_dim(self) -> int:
        """Number of unknowns :math:`n` per sample."""
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        """Number of responses :math:`m` per sample."""
        return math.prod(self.out_shape)

    def _check(self, x: object, shape: tuple[int, ...], what: str) -> torch.Tensor:
        x = require_tensor(x, what)
        if tuple(x.shape[1:]) != shape or x.ndim != len(shape) + 1:
            raise ShapeError(
                f"{type(self).__name__}.{what}: expected shape (N, {', '.join(map(str, shape))}), "
                f"got {tuple(x.shape)}; build the operator for this input size"
            )
        return x

    def to_dense(
        self,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        max_entries: int = DENSE_MAX_ENTRIES,
    ) -> torch.Tensor:
        """The matrix of the operator, of shape ``(out_dim, in_dim)``, built column by column.

        Raises
        ------
        TooLargeError
            If the matrix has more than ``max_entries`` entries; the message gives the size it
            would need.
        """
        m, n = self.out_dim, self.in_dim
        check_dense_size(m, n, dtype, max_entries, "to_dense")
        eye = torch.eye(n, dtype=dtype, device=device)
        columns = [self.forward(chunk.reshape(-1, *self.in_shape)).reshape(-1, m) for chunk in torch.split(eye, 4096)]
        return torch.cat(columns).T.contiguous()


def _require_operator(op: object, fn: str) -> LinearOperator:
    """``op`` if it is a :class:`LinearOperator`; otherwise say how to get one."""
    if not isinstance(op, LinearOperator):
        hint = (
            "wrap it with ConvOperator.from_conv(conv, input_size)"
            if isinstance(op, torch.nn.Conv2d)
            else "build one with ConvOperator(...) or subclass LinearOperator"
        )
        raise ArgumentTypeError(f"{fn}: expected a LinearOperator, got {type(op).__name__}; {hint}")
    return op


def dottest(
    op: LinearOperator,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    batch: int = 2,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""Check the adjoint: :math:`\langle A x, y \rangle = \langle x, A^T y \rangle` for random ``x``, ``y``.

    Parameters
    ----------
    op : LinearOperator
        The operator to test.
    dtype, device : optional
        Where to draw the random vectors; float64 by default.
    batch : int, default 2
        Batch size of the random vectors.
    rtol : float, optional
        Allowed difference relative to the Cauchy-Schwarz bound of both sides,
        ``|lhs - rhs| / max(||A x|| ||y||, ||x|| ||A^T y||)``: 1e-12 in float64, 1e-4 in float32 by default.
        (Rounding scales with that bound; ``|<A x, y>|`` itself can cancel to far below it, and a wrong
        adjoint errs by a share of the bound.)
    generator : torch.Generator, optional
        Source of the random vectors (a CPU generator; the vectors are moved to ``device``).

    Returns
    -------
    (float, float)
        :math:`\langle A x, y \rangle` and :math:`\langle x, A^T y \rangle`.

    Raises
    ------
    AdjointMismatchError
        Showing both numbers, when they differ by more than ``rtol``.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator, dottest
    >>> op = ConvOperator.from_conv(torch.nn.Conv2d(3, 4, 3, stride=2), (9, 9))
    >>> lhs, rhs = dottest(op)
    """
    op = _require_operator(op, "dottest")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise OptionError(f"dottest: expected a batch size >= 1, got {batch!r}")
    if rtol is not None and not 0 <= rtol < float("inf"):
        raise OptionError(f"dottest: expected a finite rtol >= 0, got {rtol!r}; leave it None for the dtype's default")
    if rtol is None:
        rtol = 1e-12 if dtype == torch.float64 else 1e-4
    x = torch.randn(batch, *op.in_shape, dtype=dtype, generator=generator).to(device)
    y = torch.randn(batch, *op.out_shape, dtype=dtype, generator=generator).to(device)
    ax, aty = op.forward(x).flatten(), op.adjoint(y).flatten()
    lhs, rhs = float(torch.vdot(ax, y.flatten())), float(torch.vdot(x.flatten(), aty))
    bound = max(float(ax.norm() * y.norm()), float(x.norm() * aty.norm()))
    scale = max(bound, torch.finfo(dtype).tiny)
    if abs(lhs - rhs) > rtol * scale:
        raise AdjointMismatchError(
            f"dottest: expected <A x, y> == <x, A^T y> to relative {rtol:g}, got {lhs!r} and {rhs!r} "
            f"(relative difference {abs(lhs - rhs) / scale:.3g}) for {op!r}; the adjoint is wrong"
        )
    return lhs, rhs
