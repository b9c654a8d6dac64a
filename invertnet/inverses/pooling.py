r"""Inverses of pooling: max-pooling with the forward pass's switches (or a guess), averaging by its pseudo-inverse."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from invertnet.errors import UnsupportedLayerError
from invertnet.inverses.linear import linear_step
from invertnet.inverses.registry import InversionContext, StepResult, register_inverse
from invertnet.operators import ConvOperator
from invertnet.pinv import conv_pinv
from invertnet.trace import LayerRecord

__all__: list[str] = []


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
        flat = y.new_zeros(y.shape[0], c, h * w)
        flat.scatter_reduce_(
            2, switches.flatten(2).expand(y.shape[0], -1, -1), y.flatten(2), "mean", include_self=False
        )
        return StepResult(
            flat.reshape(-1, c, h, w),
            "switches",
            False,
            note="non-maximal values lost; unpooled with the forward pass's switches (Zeiler & Fergus)",
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
