r"""Inverses of pooling: max-pooling with the forward pass's switches (or a guess), averaging by its pseudo-inverse.

With ``relu="active_set"`` max-pooling with switches also hands down what its output says of its input: the
value at each switch (an equation), and the window's maximum as an upper bound on every other pixel it reads.

Adaptive pooling is separable along height and width: its average by the separable closed form, its maximum by the
switches.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from invertnet.activeset import Constraints
from invertnet.capture.chain import LayerRecord
from invertnet.errors import UnsupportedLayerError
from invertnet.inverses.linear import linear_step
from invertnet.inverses.registry import InversionContext, StepResult, register_inverse
from invertnet.operators import ConvOperator
from invertnet.pinv import conv_pinv

__all__: list[str] = ["window_minimum"]


def window_minimum(module: nn.MaxPool2d, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    r"""Per input pixel, the smallest maximum :math:`y_w` of the pooling windows :math:`w` that contain it.

    A bound on the pooled input: :math:`x_p \le \min_{w \ni p} y_w`; :math:`+\infty` where no window reads
    :math:`p`. ``(N, C, *size)`` from ``y`` of shape ``(N, C, H', W')``; no ``ceil_mode``.
    """
    h, w = size
    pixels = torch.arange(1, h * w + 1, dtype=torch.float64, device=y.device).reshape(1, 1, h, w)
    read = F.unfold(pixels, module.kernel_size, module.dilation, module.padding, module.stride)  # 0: padding
    index = (read.long() - 1).squeeze(0)  # (k, L); -1 where a window reaches into the padding
    index = torch.where(index < 0, h * w, index)  # a spare slot for the padding
    n, c = y.shape[:2]
    values = y.flatten(2).unsqueeze(2).expand(n, c, index.shape[0], -1)
    bound = torch.full((n, c, h * w + 1), torch.inf, dtype=y.dtype, device=y.device)
    bound.scatter_reduce_(2, index.flatten().expand(n, c, -1), values.flatten(2), "amin")
    return bound[..., : h * w].reshape(n, c, h, w)


@register_inverse(nn.MaxPool2d)
def _invert_maxpool(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.MaxPool2d):
        raise UnsupportedLayerError(f"expected a MaxPool2d, got {type(module).__name__}")
    c, h, w = record.input.shape[1:]
    if ctx.maxpool == "switches":
        _, switches = F.max_pool2d(
            record.input,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.ceil_mode,
            return_indices=True,
        )
        index = switches.flatten(2).expand(y.shape[0], -1, -1)
        flat = y.new_zeros(y.shape[0], c, h * w)
        flat.scatter_reduce_(2, index, y.flatten(2), "mean", include_self=False)
        estimate = flat.reshape(-1, c, h, w)
        note = "non-maximal values lost; unpooled with the forward pass's switches (Zeiler & Fergus)"
        if ctx.relu != "active_set" or module.ceil_mode or not ctx.exact:
            return StepResult(estimate, "switches", False, closed_form=True, note=note)
        known = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, index, True).reshape(estimate.shape)
        upper = torch.maximum(window_minimum(module, y, (h, w)), estimate)
        lower = torch.where(known, estimate, -torch.inf)
        note += "; the switches (equations) and window maxima (bounds) handed to the layer below"
        return StepResult(
            estimate, "switches", False, closed_form=True, note=note, constraints=Constraints(lower, upper)
        )
    if module.ceil_mode:
        raise UnsupportedLayerError(
            f"expected MaxPool2d {record.name!r} without ceil_mode for maxpool='guess', got ceil_mode=True; "
            "use maxpool='switches'"
        )
    op = ConvOperator.from_pool(module, c, (h, w), y)
    spread = op.patches_adjoint(y.flatten(2).repeat_interleave(op.kernel_size[0] * op.kernel_size[1], dim=1))
    return StepResult(
        spread / op.coverage(y.device, y.dtype).clamp(min=1),
        "guess",
        False,
        closed_form=True,
        note="a guess: without switches each maximum is spread over its window",
    )


@register_inverse(nn.AvgPool2d)
def _invert_avgpool(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.AvgPool2d):
        raise UnsupportedLayerError(f"expected an AvgPool2d, got {type(module).__name__}")
    padded = module.padding not in (0, (0, 0))
    if module.ceil_mode or module.divisor_override is not None or (padded and not module.count_include_pad):
        raise UnsupportedLayerError(
            f"expected AvgPool2d {record.name!r} to be a plain average (no ceil_mode, no divisor_override, "
            "count_include_pad=True when padded), got a variant whose weights depend on position; "
            "reconstruct from a layer below it"
        )
    h, w = record.input.shape[-2:]
    op = ConvOperator.from_pool(module, record.input.shape[1], (h, w), y)
    options = replace(ctx.options, warn=False)
    estimate, info = conv_pinv(op, y, (h, w), ctx.method, options=options, return_info=True)
    step = linear_step(info, "averaging loses detail within each window")
    return StepResult(estimate, step.route, step.exact, step.closed_form, step.note)


# ---------------------------------------------------------------------------------------------------------------------
# adaptive pooling: separable bins


def adaptive_bins(size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
    r"""The ``(size_out, size_in)`` 0/1 matrix of adaptive pooling's bins along one axis.

    Bin :math:`i` covers :math:`[\lfloor i n / m \rfloor, \lceil (i + 1) n / m \rceil)` (PyTorch's rule), so bins
    overlap when :math:`m` does not divide :math:`n`, and repeat pixels when :math:`m > n`.

    Examples
    --------
    >>> import torch
    >>> adaptive_bins(5, 3, torch.zeros(0))
    tensor([[1., 1., 0., 0., 0.],
            [0., 1., 1., 1., 0.],
            [0., 0., 0., 1., 1.]])
    """
    i = torch.arange(size_out, device=like.device)
    start = torch.div(i * size_in, size_out, rounding_mode="floor")
    end = -torch.div(-(i + 1) * size_in, size_out, rounding_mode="floor")
    r = torch.arange(size_in, device=like.device)
    return ((r >= start[:, None]) & (r < end[:, None])).to(like.dtype)


def _output_size(module: nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d, h: int, w: int) -> tuple[int, int]:
    size = module.output_size
    oh, ow = size if isinstance(size, tuple) else (size, size)
    return (h if oh is None else int(oh)), (w if ow is None else int(ow))


@register_inverse(nn.AdaptiveAvgPool2d)
def _invert_adaptive_avgpool(
    module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext
) -> StepResult:
    r"""Adaptive average pooling by its separable pseudo-inverse, for every output size.

    It is :math:`Y = P_h X P_w^T` per channel (:math:`P` the bins scaled to averages), so
    :math:`A = P_h \otimes P_w` and :math:`A^+ = P_h^+ \otimes P_w^+`: the closed form :math:`X = P_h^+ Y (P_w^+)^T`
    is the operator's pseudo-inverse for every output size (even, uneven, larger than the input). It is exact when
    both :math:`P` have full column rank. When the bins tile the input (the output size divides it) it equals
    :class:`~torch.nn.AvgPool2d`'s pseudo-inverse: each average spread over its bin.
    """
    if not isinstance(module, nn.AdaptiveAvgPool2d):
        raise UnsupportedLayerError(f"expected an AdaptiveAvgPool2d, got {type(module).__name__}")
    h, w = record.input.shape[-2:]
    oh, ow = _output_size(module, h, w)
    work = y.new_zeros(0, dtype=torch.float64)
    factors = []
    for n_in, n_out in ((h, oh), (w, ow)):
        bins = adaptive_bins(n_in, n_out, work)
        p = bins / bins.sum(dim=1, keepdim=True)
        factors.append((torch.linalg.pinv(p), int(torch.linalg.matrix_rank(p)) == n_in))
    (ph, exact_h), (pw, exact_w) = factors
    x = ph.to(y) @ y @ pw.to(y).mT
    if exact_h and exact_w:
        return StepResult(
            x, "separable_pinv", True, closed_form=True, note="every bin determines its pixels (full column rank)"
        )
    return StepResult(
        x,
        "separable_pinv",
        False,
        closed_form=True,
        note=f"averaging {h}x{w} into {oh}x{ow} bins loses detail within each bin; separable pseudo-inverse "
        "P_h^+ Y P_w^+T: the minimum-norm least-squares solution",
    )


@register_inverse(nn.AdaptiveMaxPool2d)
def _invert_adaptive_maxpool(
    module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext
) -> StepResult:
    """Unpool with the forward pass's switches (any output size), or spread each maximum over its bin (``"guess"``)."""
    if not isinstance(module, nn.AdaptiveMaxPool2d):
        raise UnsupportedLayerError(f"expected an AdaptiveMaxPool2d, got {type(module).__name__}")
    c, h, w = record.input.shape[-3:]
    oh, ow = _output_size(module, h, w)
    bh, bw = adaptive_bins(h, oh, y), adaptive_bins(w, ow, y)
    single = bool((bh.sum(dim=1) == 1).all() and (bw.sum(dim=1) == 1).all())  # every bin one pixel: a copy
    if ctx.maxpool == "switches":
        _, switches = F.adaptive_max_pool2d(record.input, (oh, ow), return_indices=True)
        flat = y.new_zeros(y.shape[0], c, h * w)
        flat.scatter_reduce_(
            2, switches.flatten(2).expand(y.shape[0], -1, -1), y.flatten(2), "mean", include_self=False
        )
        note = "" if single else "non-maximal values lost; unpooled with the forward pass's switches (Zeiler & Fergus)"
        return StepResult(flat.reshape(-1, c, h, w), "switches", single, closed_form=True, note=note)
    spread = bh.mT @ y @ bw
    coverage = bh.sum(dim=0)[:, None] * bw.sum(dim=0)[None, :]
    return StepResult(
        spread / coverage.clamp(min=1),
        "guess",
        single,
        closed_form=True,
        note="" if single else "a guess: without switches each maximum is spread over its bin",
    )
