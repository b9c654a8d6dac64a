r"""Inverses of the linear and affine layers: convolutions (by the routes of :mod:`invertnet.pinv`), BatchNorm."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from invertnet.errors import UnsupportedLayerError
from invertnet.inverses.registry import InversionContext, StepResult, register_inverse, require_eval
from invertnet.pinv import SolveInfo, conv_pinv
from invertnet.trace import LayerRecord

__all__: list[str] = ["linear_step"]


def linear_step(info: SolveInfo, lossy: str) -> StepResult:
    """Wrap a ``conv_pinv`` result; ``lossy`` says what a non-exact step of this layer type loses."""
    if info.exact:
        note = ""
    elif not info.pseudo_inverse:
        note = f"{lossy}; {info.method} is not the operator's pseudo-inverse here ({info.reason})"
    else:
        note = f"{lossy}; {info.method}: the minimum-norm least-squares solution"
    if info.start == "window":
        note += f"{'; ' if note else ''}started from the window estimate, {info.iterations} iterations after it"
    if not info.converged:
        note += f"; not converged after {info.iterations} iterations (relative residual {info.residual:.2g})"
    return StepResult(torch.empty(0), info.method, info.exact, info.closed_form, note)


@register_inverse(nn.Conv2d)
def _invert_conv(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.Conv2d):
        raise UnsupportedLayerError(f"expected an nn.Conv2d, got {type(module).__name__}")
    h, w = record.input.shape[-2:]
    options = replace(ctx.options, warn=False)
    estimate, info = conv_pinv(module, y, (h, w), ctx.method, options=options, return_info=True)
    step = linear_step(info, "not proven injective: a null-space component may be lost")
    return StepResult(estimate, step.route, step.exact, step.closed_form, step.note)


@register_inverse(nn.BatchNorm2d)
def _invert_batchnorm(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.BatchNorm2d):
        raise UnsupportedLayerError(f"expected a BatchNorm2d, got {type(module).__name__}")
    require_eval(module, record.name)
    if module.running_mean is None or module.running_var is None:
        raise UnsupportedLayerError(
            f"expected BatchNorm2d {record.name!r} with running statistics, got track_running_stats=False "
            "(it normalises each batch by itself, which cannot be undone); rebuild it with running statistics"
        )
    shape = (1, -1, 1, 1)
    std = (module.running_var.to(y) + module.eps).sqrt().reshape(shape)
    mean = module.running_mean.to(y).reshape(shape)
    if not module.affine:
        return StepResult(y * std + mean, "affine", True)
    gamma = module.weight.detach().to(y).reshape(shape)
    beta = module.bias.detach().to(y).reshape(shape)
    zero = gamma == 0
    x = torch.where(zero, mean, (y - beta) / torch.where(zero, 1.0, gamma) * std + mean)
    lost = int(zero.sum())
    return StepResult(
        x, "affine", lost == 0, note=f"{lost} channels with zero scale: set to the running mean" if lost else ""
    )
