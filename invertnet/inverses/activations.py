r"""Inverses of activations: exact where the activation is bijective, the lost part said where it is not."""

from __future__ import annotations

import torch
from torch import nn

from invertnet.capture.chain import LayerRecord
from invertnet.errors import UnsupportedLayerError
from invertnet.inverses.registry import InversionContext, StepResult, register_inverse, require_eval
from invertnet.nn.activations import AVR, CReLU, Proportional, invert_crelu, invert_proportional, leaky_relu_inverse

__all__: list[str] = []


@register_inverse(CReLU)
def _invert_crelu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, CReLU):
        raise UnsupportedLayerError(f"expected a CReLU, got {type(module).__name__}")
    z = invert_crelu(y, module.dim, check=ctx.top, negative_slope=module.negative_slope)
    return StepResult(z, "invert_crelu", True, closed_form=True)


@register_inverse(nn.LeakyReLU)
def _invert_leaky(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    slope = float(getattr(module, "negative_slope", 0.0))
    if slope > 0:
        return StepResult(leaky_relu_inverse(y, slope), "leaky_relu_inverse", True, closed_form=True)
    return StepResult(
        y,
        "identity",
        False,
        closed_form=True,
        note=f"LeakyReLU with slope {slope} is not bijective: negative part lost",
    )


@register_inverse(Proportional)
def _invert_proportional(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, Proportional):
        raise UnsupportedLayerError(f"expected a Proportional, got {type(module).__name__}")
    z, known = invert_proportional(y, module.m, module.n, module.dim)
    lost = 1 - float(known.double().mean())
    if lost == 0:
        return StepResult(z, "invert_proportional", True, closed_form=True)
    note = f"Proportional({module.m} of {module.n}): negative part of the ReLU channels lost ({lost:.1%} of entries)"
    return StepResult(z, "invert_proportional", False, closed_form=True, note=note)


@register_inverse(AVR)
def _invert_avr(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return StepResult(y, "identity", False, closed_form=True, note="AVR: sign lost")


@register_inverse(nn.Identity, nn.Dropout, nn.Dropout2d)
def _invert_identity(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    require_eval(module, record.name)
    return StepResult(y, "identity", True, closed_form=True, constraints=ctx.constraints)
