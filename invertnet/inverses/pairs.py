r"""Inverses of two nodes at once: a linear layer read through the CReLU below it, as an absolute value equation.

When a ``Conv2d`` (1x1, stride 1, no padding, one group) or a ``Linear`` reads the output of a (leaky) CReLU and
nothing else reads that output, the pair computes :math:`A z + B|z| + b` of the CReLU's input :math:`z`
(:mod:`invertnet.linalg.absolute_value`): one small system per pixel, with half the unknowns of the linear reading. The
walk (:mod:`invertnet.reconstruction.walk`) asks :func:`crelu_pair_inverse` before inverting the layer alone:

- when every :math:`A + B D` (:math:`|D_{ii}| \le 1`) is proven to have full column rank
  (:func:`~invertnet.linalg.absolute_value.absolute_value_uniqueness`), the equation has one solution; generalized
  Newton finds it and the step is ``exact`` once it reproduces the output to rounding;
- otherwise the pair is left to the layer-by-layer reading, and the note says why: on random or generic weights
  the equation of one pixel has several solutions (measured on All-CNN-B conv2: from the linear reading's start
  generalized Newton reached none of them, and from within 1% of the truth it reached a wrong one in 20% of the
  pixels), so only the layers below can tell them apart (the default's completion solves the equation jointly
  with them).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from invertnet.linalg.absolute_value import (
    Uniqueness,
    absolute_value_uniqueness,
    crelu_split,
    solve_absolute_value,
)
from invertnet.nn.activations import CReLU

__all__ = ["PairStep", "crelu_pair_inverse", "pair_uniqueness"]

_UNIQUENESS: weakref.WeakKeyDictionary[nn.Module, tuple[object, Uniqueness]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PairStep:
    """The CReLU's input recovered through the layer that reads it.

    Attributes
    ----------
    z : torch.Tensor
        The estimate of the CReLU's input.
    exact : bool
        Unique (proven) and consistent for every image.
    note : str
        The proof, the residual and the Newton steps.
    """

    z: torch.Tensor
    exact: bool
    note: str


def _matrices(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(W, bias)`` with ``W`` as a matrix (out, 2c) when the layer acts on each pixel alone, else None."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    if (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.padding in ((0, 0), "valid")
        and layer.groups == 1
    ):
        return layer.weight.detach()[:, :, 0, 0], None if layer.bias is None else layer.bias.detach()
    return None


def pair_uniqueness(layer: nn.Module, crelu: CReLU, ndim: int = 4) -> Uniqueness | None:
    """Whether ``layer`` after ``crelu`` has a unique preimage for every output (cached per weight version).

    ``None`` when the pair is not per-pixel: a spatial kernel, a stride, padding or groups, or a CReLU that does
    not concatenate along the axis the layer reads (channels of an ``ndim``-dimensional input).
    """
    matrices = _matrices(layer)
    if matrices is None or (isinstance(layer, nn.Linear) and ndim != 2) or crelu.dim % ndim != 1:
        return None
    weight = matrices[0]
    version = (weight.data_ptr(), getattr(layer.weight, "_version", 0), crelu.negative_slope)
    cached = _UNIQUENESS.get(layer)
    if cached is None or cached[0] != version:
        a, b = crelu_split(weight, crelu.negative_slope)
        cached = (version, absolute_value_uniqueness(a, b))
        _UNIQUENESS[layer] = cached
    return cached[1]


def crelu_pair_inverse(layer: nn.Module, crelu: CReLU, y: torch.Tensor) -> PairStep | tuple[None, str]:
    r"""Recover the input ``z`` of ``crelu`` from the output ``y`` of ``layer`` (which reads ``crelu(z)``).

    Returns a :class:`PairStep` when the pair's equation is proven to have one solution, else ``(None, why)``.
    """
    matrices = _matrices(layer)
    uniqueness = pair_uniqueness(layer, crelu, y.ndim)
    if matrices is None or uniqueness is None:
        return None, "the layer is not per-pixel (a spatial kernel, stride, padding or groups)"
    if not uniqueness.unique:
        return None, f"its absolute value equation is not proven to have one solution ({uniqueness.proof})"
    weight, bias = matrices
    a, b = crelu_split(weight.to(y), crelu.negative_slope)
    c = y if bias is None else y - bias.to(y).reshape(1, -1, *([1] * (y.ndim - 2)))
    moved = c.movedim(1, -1)
    result = solve_absolute_value(a, b, moved.reshape(-1, moved.shape[-1]))
    z = result.z.reshape(*moved.shape[:-1], a.shape[1]).movedim(-1, 1)
    residual = float(result.residual.max())
    exact = bool(result.consistent.all())
    note = (
        f"absolute value equation A z + B|z| = y - b per pixel, unique: {uniqueness.proof}; generalized Newton, "
        f"{int(result.iterations.max())} steps at most, relative residual {residual:.2g}"
    )
    if not exact:
        note += f"; {int((~result.consistent).sum())} of {result.consistent.numel()} systems not solved to rounding"
    return PairStep(z, exact, note)
