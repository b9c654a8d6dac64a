r"""The transpose of an operator as an operator: :math:`A^T` (forward) and :math:`A` (adjoint).

Least squares with :math:`A^T` finds coefficients on the rows of :math:`A`: for :math:`x` in the row
space, :math:`\nu = (A^T)^+ x` is the minimum-norm :math:`\nu` with :math:`A^T \nu = x` (e.g. the Lagrange
multipliers of a minimum-norm solution).
"""

from __future__ import annotations

import torch

from invertnet.operators.base import LinearOperator

__all__ = ["TransposedOperator"]


class TransposedOperator(LinearOperator):
    """:math:`A^T`: ``(N, *op.out_shape) -> (N, *op.in_shape)``.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import MatrixOperator, TransposedOperator
    >>> TransposedOperator(MatrixOperator(torch.tensor([[1.0, 2.0]]))).forward(torch.tensor([[3.0]]))
    tensor([[3., 6.]])
    """

    def __init__(self, op: LinearOperator) -> None:
        self.op = op
        self.in_shape = op.out_shape
        self.out_shape = op.in_shape

    def __repr__(self) -> str:
        return f"TransposedOperator({self.op!r})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)
