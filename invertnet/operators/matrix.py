r"""A dense matrix as a linear operator: the linear part of ``nn.Linear``.

For a weight :math:`W` of shape ``(m, n)``,

- forward: :math:`A x = W x` on batches ``(N, *in_shape) -> (N, m)`` (the bias is *not* added:
  subtract it from responses first);
- adjoint: :math:`A^T y = W^T y`, ``(N, m) -> (N, *in_shape)``.

``in_shape`` defaults to ``(n,)``; another shape with ``n`` entries (e.g. ``(C, H, W)``) reads each
sample flattened, as ``nn.Flatten`` followed by ``nn.Linear`` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from invertnet.errors import ShapeError
from invertnet.operators.base import LinearOperator

__all__ = ["MatrixOperator"]


class MatrixOperator(LinearOperator):
    """A dense matrix :math:`W` (``m x n``) acting on batches: ``(N, *in_shape) -> (N, m)``.

    Parameters
    ----------
    weight : torch.Tensor
        The matrix, shape ``(m, n)``. The operator computes in the dtype and on the device of its
        input; the weight is cast to them.
    in_shape : tuple of int, optional
        Shape of one input sample, with ``n`` entries; default ``(n,)``.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import MatrixOperator, dottest
    >>> op = MatrixOperator.from_linear(torch.nn.Linear(5, 3))
    >>> op.in_shape, op.out_shape
    ((5,), (3,))
    >>> _ = dottest(op)
    """

    def __init__(self, weight: torch.Tensor, in_shape: tuple[int, ...] | None = None) -> None:
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ShapeError(f"MatrixOperator: expected a weight of shape (m, n), got {got}; pass a 2-D matrix")
        m, n = weight.shape
        shape = (n,) if in_shape is None else tuple(int(s) for s in in_shape)
        if math.prod(shape) != n:
            raise ShapeError(
                f"MatrixOperator: expected an in_shape with {n} entries (the weight's columns), got {shape} "
                f"({math.prod(shape)} entries); pass the shape of one input sample"
            )
        self.weight = weight.detach()
        self.in_shape = shape
        self.out_shape = (m,)

    @classmethod
    def from_linear(cls, linear: nn.Linear, in_shape: tuple[int, ...] | None = None) -> MatrixOperator:
        """The operator of an ``nn.Linear`` (its bias is left out)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"MatrixOperator.from_linear: expected an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, in_shape)

    def __repr__(self) -> str:
        return f"MatrixOperator(in_shape={self.in_shape}, out_shape={self.out_shape})"

    def _weight(self, like: torch.Tensor) -> torch.Tensor:
        return self.weight.to(device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x, self.in_shape, "forward")
        return x.reshape(x.shape[0], -1) @ self._weight(x).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, self.out_shape, "adjoint")
        return (y @ self._weight(y)).reshape(y.shape[0], *self.in_shape)
