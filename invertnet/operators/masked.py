r"""An operator with some of its responses kept: :math:`M A`, :math:`M` a 0/1 diagonal.

For an operator :math:`A` and a mask :math:`M = \mathrm{diag}(m)`, :math:`m_i \in \{0, 1\}`,

- forward: :math:`M A x` (the rows of :math:`A` outside the mask give zero);
- adjoint: :math:`A^T M y`.

Least squares on :math:`M A` with the responses :math:`M z` fits only the kept rows:
:math:`\min_x \|M (A x - z)\|`. A mask of shape ``out_shape`` makes one operator; a mask of shape
``(N, *out_shape)`` makes one operator per sample of the batches it is applied to (batch size ``N``),
so a batched solver fits each sample on its own rows.
"""

from __future__ import annotations

import torch

from invertnet._checks import require_tensor
from invertnet.errors import ShapeError
from invertnet.operators.base import LinearOperator

__all__ = ["MaskedOperator"]


class MaskedOperator(LinearOperator):
    """:math:`M A`: the responses of ``op`` where ``mask`` is true, zero elsewhere.

    Parameters
    ----------
    op : LinearOperator
    mask : torch.Tensor
        Boolean, shape ``op.out_shape`` (one operator) or ``(N, *op.out_shape)`` (one per sample).

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import MaskedOperator, MatrixOperator
    >>> op = MaskedOperator(MatrixOperator(torch.eye(3)), torch.tensor([True, False, True]))
    >>> op.forward(torch.tensor([[1.0, 2.0, 3.0]]))
    tensor([[1., 0., 3.]])
    """

    def __init__(self, op: LinearOperator, mask: torch.Tensor) -> None:
        mask = require_tensor(mask, "MaskedOperator: mask")
        if tuple(mask.shape[-len(op.out_shape) :]) != op.out_shape or mask.ndim not in (
            len(op.out_shape),
            len(op.out_shape) + 1,
        ):
            raise ShapeError(
                f"MaskedOperator: expected a mask of shape {op.out_shape} or (N, {', '.join(map(str, op.out_shape))}) "
                f"for {op!r}, got {tuple(mask.shape)}; build the mask from this operator's responses"
            )
        self.op = op
        self.mask = mask.bool()
        self.in_shape = op.in_shape
        self.out_shape = op.out_shape

    def __repr__(self) -> str:
        return f"MaskedOperator({self.op!r}, kept={int(self.mask.sum())} of {self.mask.numel()})"

    def _apply_mask(self, y: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(device=y.device)
        if mask.ndim > len(self.out_shape) and mask.shape[0] != y.shape[0]:
            raise ShapeError(
                f"MaskedOperator: the mask holds {mask.shape[0]} samples, got a batch of {y.shape[0]}; "
                "apply it to batches of the size it was built for"
            )
        return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_mask(self.op.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, self.out_shape, "adjoint")
        return self.op.adjoint(self._apply_mask(y))
