r"""Moore-Penrose pseudo-inverses of convolution layers.

Two readings of a layer's weight (see :mod:`invertnet.operators.conv` for :math:`A = P S`):

``"patch"`` — the paper's reading: invert the patch matrix. Every receptive field is estimated
as :math:`\hat p = P^+ y` and the fields are folded back with overlap averaging,

.. math::

    \hat x = (S^T S)^{-1} S^T \hat p, \qquad S^T S = \mathrm{diag}(\text{coverage}).

When every group's :math:`P_k` has full column rank (at least as many filters as patch entries)
:math:`\hat p = S x` and :math:`\hat x = x` exactly on every pixel a receptive field reads.
When :math:`P_k` is wide (fewer filters than patch entries, e.g. All-CNN-B conv1: 96 filters,
363 entries) this is **not** the operator's pseudo-inverse :math:`A^+` and can lose a lot: it
ignores that overlapping fields share pixels.

``"dense"`` — the operator's own :math:`A^+ y`, the minimum-norm least-squares solution, from the
materialised matrix; tiny sizes only.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn

from invertnet._checks import pair, require_4d
from invertnet.errors import ShapeError
from invertnet.operators import DENSE_MAX_ENTRIES, ConvOperator

__all__ = ["CONV_METHODS", "SolveInfo", "conv_pinv", "patch_pinv", "pinv_rtol"]


@dataclass(frozen=True)
class SolveInfo:
    r"""How a pseudo-inverse was computed.

    Attributes
    ----------
    method : str
        The route taken (``"patch"``, ``"dense"``, ...).
    exact : bool
        Whether the route gives the result in closed form (no iteration).
    iterations : int
        Iterations of an iterative solver (0 for closed forms).
    residual : float
        Relative residual :math:`\max_i \|A \hat x_i - y_i\| / \|y_i\|` over the batch.
    converged : bool
        Whether the solver met its tolerance (always True for closed forms).
    """

    method: str
    exact: bool
    iterations: int
    residual: float
    converged: bool


def pinv_rtol(shape: tuple[int, ...], dtype: torch.dtype) -> float:
    """The cutoff we pass to ``torch.linalg.pinv``: ``max(m, n) * eps(dtype)`` (torch's default, made explicit)."""
    return max(shape[-2:]) * torch.finfo(dtype).eps


def _operator(conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> ConvOperator:
    if isinstance(conv, ConvOperator):
        if conv.in_shape[1:] != pair(input_size, "input_size"):
            raise ShapeError(
                f"expected input_size {conv.in_shape[1:]} for this operator, got {tuple(input_size)}; "
                "build the operator for this size"
            )
        return conv
    if isinstance(conv, nn.Conv2d):
        return ConvOperator.from_conv(conv, input_size)
    raise TypeError(f"expected an nn.Conv2d or a ConvOperator, got {type(conv).__name__}")


def _linear_response(conv: nn.Conv2d | ConvOperator, op: ConvOperator, y: object) -> torch.Tensor:
    """Check ``y`` against the operator and subtract the bias: the response :math:`A x`."""
    y = require_4d(y, "y")
    if tuple(y.shape[1:]) != op.out_shape:
        raise ShapeError(
            f"y: expected shape (N, {', '.join(map(str, op.out_shape))}) for input size {op.in_shape[1:]}, got "
            f"{tuple(y.shape)}; pass the input_size the layer was applied to"
        )
    if not y.is_floating_point():
        raise TypeError(f"y: expected a floating-point tensor, got {y.dtype}; convert with y.double()")
    if isinstance(conv, nn.Conv2d) and conv.bias is not None:
        y = y - conv.bias.detach().to(y).reshape(1, -1, 1, 1)
    return y


_PATCH_PINV_CACHE: weakref.WeakKeyDictionary[
    nn.Module | ConvOperator, dict[tuple, tuple[tuple[int, int], torch.Tensor]]
] = weakref.WeakKeyDictionary()


def _patch_pinvs(
    conv: nn.Conv2d | ConvOperator, op: ConvOperator, like: torch.Tensor, rtol: float | None
) -> torch.Tensor:
    """The groups' :math:`P_k^+`, cached per layer, dtype, device and cutoff (refreshed when the weight changes)."""
    key = (like.dtype, like.device, rtol)
    entries = _PATCH_PINV_CACHE.setdefault(conv, {})
    version = (conv.weight.data_ptr(), conv.weight._version)
    if key in entries and entries[key][0] == version:
        return entries[key][1]
    matrices = op.patch_matrices(like)
    cut = pinv_rtol(tuple(matrices.shape), like.dtype) if rtol is None else rtol
    pinvs = torch.linalg.pinv(matrices, rtol=cut)
    entries[key] = (version, pinvs)
    return pinvs


def patch_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    *,
    rtol: float | None = None,
) -> torch.Tensor:
    r"""Invert a convolution through the pseudo-inverse of its patch matrix (the paper's reading).

    Parameters
    ----------
    conv : nn.Conv2d or ConvOperator
        The layer (any stride, padding, padding mode, dilation, groups, kernel shape).
    y : torch.Tensor
        Its output, shape ``(N, C_out, H_out, W_out)``, bias included.
    input_size : (int, int)
        Height and width of the layer's input.
    rtol : float, optional
        Singular values of :math:`P_k` below ``rtol * sigma_max(P_k)`` are cut; default
        ``max(m, n) * eps(dtype)``.

    Returns
    -------
    torch.Tensor
        Input estimate of shape ``(N, C_in, H, W)``, in ``y``'s dtype and on its device. Pixels that
        no receptive field reads (e.g. stride larger than the kernel) are 0.

    Notes
    -----
    :math:`\hat x = (S^T S)^{-1} S^T (I_L \otimes P^+)(y - b)`. Exact (up to rounding) on every
    pixel some receptive field reads whenever each :math:`P_k` has full column rank. When the
    fields do not overlap (stride = kernel, no padding) it equals :math:`A^+ y` for any
    :math:`P`. Otherwise, and in particular for wide :math:`P_k`, it is *not* the operator's
    pseudo-inverse; use :func:`conv_pinv` for that. The :math:`P_k^+` are computed once per
    weight, dtype, device and cutoff and cached (recomputed when the weight changes in place).

    Examples
    --------
    >>> import torch
    >>> from invertnet import patch_pinv
    >>> conv = torch.nn.Conv2d(3, 27, 3, padding=1).double()  # 27 filters >= 3*3*3 entries
    >>> x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    >>> torch.allclose(patch_pinv(conv, conv(x), (16, 16)), x)
    True
    """
    op = _operator(conv, input_size)
    z = _linear_response(conv, op, y)
    columns = op.apply_patch_matrices(z.flatten(2), _patch_pinvs(conv, op, z, rtol))
    coverage = op.coverage(device=z.device, dtype=z.dtype)
    return op.patches_adjoint(columns) / coverage.clamp(min=1)


def _dense_pinv(op: ConvOperator, z: torch.Tensor, rtol: float | None, max_entries: int) -> torch.Tensor:
    matrix = op.to_dense(dtype=z.dtype, device=z.device, max_entries=max_entries)
    cut = pinv_rtol(tuple(matrix.shape), z.dtype) if rtol is None else rtol
    return (torch.linalg.pinv(matrix, rtol=cut) @ z.reshape(z.shape[0], -1).T).T.reshape(-1, *op.in_shape)


#: Inversion routes of :func:`conv_pinv`: name -> (what it computes, whether it is a closed form).
CONV_METHODS: dict[str, tuple[str, bool]] = {
    "patch": ("pseudo-inverse of the patch matrix, overlap-averaged (the paper's reading)", True),
    "dense": ("the operator's Moore-Penrose pseudo-inverse from its dense matrix (tiny sizes)", True),
}


@overload
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = ...,
    *,
    rtol: float | None = ...,
    max_entries: int = ...,
    return_info: Literal[False] = ...,
) -> torch.Tensor: ...
@overload
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = ...,
    *,
    rtol: float | None = ...,
    max_entries: int = ...,
    return_info: Literal[True],
) -> tuple[torch.Tensor, SolveInfo]: ...
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = "patch",
    *,
    rtol: float | None = None,
    max_entries: int = DENSE_MAX_ENTRIES,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    r"""Invert a convolution layer by one of the routes in :data:`CONV_METHODS`.

    Parameters
    ----------
    conv : nn.Conv2d or ConvOperator
    y : torch.Tensor
        The layer's output, ``(N, C_out, H_out, W_out)``, bias included.
    input_size : (int, int)
    method : str, default "patch"
        ``"patch"``: :func:`patch_pinv`. ``"dense"``: :math:`A^+ (y - b)` with :math:`A^+` from
        ``torch.linalg.pinv`` of the dense matrix (refused above ``max_entries``).
    rtol : float, optional
        Singular value cutoff relative to the largest; default ``max(m, n) * eps(dtype)``.
    max_entries : int
        Size limit of the dense matrix.
    return_info : bool, default False
        Also return a :class:`SolveInfo`.

    Returns
    -------
    torch.Tensor or (torch.Tensor, SolveInfo)

    Examples
    --------
    >>> import torch
    >>> from invertnet import conv_pinv
    >>> conv = torch.nn.Conv2d(2, 3, 3, stride=2).double()
    >>> x_hat, info = conv_pinv(conv, conv(torch.rand(1, 2, 7, 7, dtype=torch.float64)), (7, 7),
    ...                         method="dense", return_info=True)
    >>> info.method
    'dense'
    """
    if method not in CONV_METHODS:
        raise ValueError(f"conv_pinv: expected method in {sorted(CONV_METHODS)}, got {method!r}")
    op = _operator(conv, input_size)
    if method == "patch":
        x_hat = patch_pinv(conv, y, input_size, rtol=rtol)
        z = _linear_response(conv, op, y)
    else:
        z = _linear_response(conv, op, y)
        x_hat = _dense_pinv(op, z, rtol, max_entries)
    if not return_info:
        return x_hat
    residual = (op.forward(x_hat) - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1).clamp(
        min=torch.finfo(z.dtype).tiny
    )
    return x_hat, SolveInfo(method, CONV_METHODS[method][1], 0, float(residual.detach().max()), True)
