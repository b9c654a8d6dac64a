r"""The inverse of every layer type, in a registry that the walks of :mod:`invertnet.reconstruct` read.

An inverse takes the module, its record from the forward pass (:class:`~invertnet.trace.LayerRecord`: its
input, output shape), an estimate of its output and the settings, and returns a :class:`StepResult`: the
estimate of its input, the route, whether the step is ``exact`` (returns the layer's input from its exact
output) and ``closed_form`` (computed without iteration), and what is lost.

======================  =======================================================  ===================================
module                  inverse                                                  exact
======================  =======================================================  ===================================
Conv2d                  :func:`~invertnet.pinv.conv_pinv` with ``method``        when the route proves it (SolveInfo)
CReLU (any slope)       :func:`~invertnet.activations.invert_crelu`              yes
LeakyReLU (slope > 0)   :math:`y` if :math:`y \ge 0` else :math:`y / a`          yes
BatchNorm2d (eval)      the affine map undone                                    yes (non-zero scales)
Dropout, Identity       identity (eval mode)                                     yes
ReLU                    identity: the negative part is lost (paper's baseline)   no
AVR                     identity: the sign is lost                               no
Proportional            ``invert_proportional``                                  where no ReLU channel is negative
MaxPool2d               unpool with the forward pass's switches (Zeiler &        no
                        Fergus 2014); ``maxpool="guess"``: spread without them
AvgPool2d               :func:`~invertnet.pinv.conv_pinv` of the averaging       when the route proves it
======================  =======================================================  ===================================

Adding an inverse::

    @register_inverse(MyModule)
    def _invert_my_module(module, record, y, ctx):
        return StepResult(estimate, "my_route", exact=True, closed_form=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from invertnet.activations import AVR, CReLU, Proportional, invert_crelu, invert_proportional, leaky_relu_inverse
from invertnet.errors import OptionError, TrainingModeError, UnsupportedLayerError
from invertnet.operators import ConvOperator
from invertnet.pinv import SolveInfo, SolveOptions, conv_pinv
from invertnet.trace import LayerRecord

__all__ = [
    "MAXPOOL_MODES",
    "InversionContext",
    "LayerInverse",
    "StepResult",
    "inverse_for",
    "register_inverse",
    "supported_layers",
]

#: How max-pooling is undone: with the forward pass's switches, or by a guess without them.
MAXPOOL_MODES = ("switches", "guess")


@dataclass(frozen=True)
class InversionContext:
    """Settings handed to every layer inverse.

    Attributes
    ----------
    method : str
        The convolution route (``"auto"`` or a name of :data:`invertnet.pinv.ROUTES`).
    maxpool : str
        One of :data:`MAXPOOL_MODES`.
    options : SolveOptions
        Cutoffs and tolerances of the convolution routes.
    top : bool
        Whether the layer is the top one, whose output are the true features (CReLU outputs are then checked).
    """

    method: str
    maxpool: str
    options: SolveOptions
    top: bool


@dataclass(frozen=True)
class StepResult:
    """What a layer inverse returns.

    Attributes
    ----------
    estimate : torch.Tensor
        The estimate of the layer's input.
    route : str
        How it was inverted (``"invert_crelu"``, ``"patch"``, ``"switches"``, ...).
    exact : bool
        The step returns the layer's input from its exact output (proven for this layer).
    closed_form : bool, default True
        Computed without iteration.
    note : str
        What is lost, or how the route was chosen.
    """

    estimate: torch.Tensor
    route: str
    exact: bool
    closed_form: bool = True
    note: str = ""


LayerInverse = Callable[[nn.Module, LayerRecord, torch.Tensor, InversionContext], StepResult]
_INVERSES: dict[type[nn.Module], LayerInverse] = {}


def register_inverse(*types: type[nn.Module], replace: bool = False) -> Callable[[LayerInverse], LayerInverse]:
    """Register ``fn(module, record, y, ctx) -> StepResult`` as the inverse of modules of ``types``.

    Parameters
    ----------
    *types : type
        Module classes (subclasses inherit the inverse unless they have their own).
    replace : bool, default False
        Replace an inverse that is already registered for one of ``types``; without it that is refused.

    Examples
    --------
    >>> import torch
    >>> class Double(torch.nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> @register_inverse(Double)
    ... def _invert_double(module, record, y, ctx):
    ...     return StepResult(y / 2, "halve", exact=True)
    >>> "Double" in supported_layers()
    True
    """
    taken = [t.__name__ for t in types if t in _INVERSES]
    if taken and not replace:
        raise OptionError(
            f"register_inverse: expected module types without an inverse, got {', '.join(taken)}, which have one; "
            "pass replace=True to replace it"
        )

    def decorate(fn: LayerInverse) -> LayerInverse:
        for t in types:
            _INVERSES[t] = fn
        return fn

    return decorate


def supported_layers() -> list[str]:
    """Class names of the modules the walks can invert."""
    return sorted(t.__name__ for t in _INVERSES)


def inverse_for(module: nn.Module, name: str = "") -> LayerInverse:
    """The registered inverse of ``module`` (by its class or the nearest base class that has one)."""
    for cls in type(module).__mro__:
        if cls in _INVERSES:
            return _INVERSES[cls]
    where = f" {name!r}" if name else ""
    raise UnsupportedLayerError(
        f"expected a layer invertnet can invert ({', '.join(supported_layers())}), got {type(module).__name__}"
        f"{where}; reconstruct from a layer below it, or register an inverse with invertnet.register_inverse"
    )


def _require_eval(module: nn.Module, name: str) -> None:
    if module.training:
        raise TrainingModeError(
            f"expected {type(module).__name__} {name!r} in eval mode (in training mode it depends on the batch or "
            "on chance), got training mode; call model.eval() before reconstructing"
        )


def _linear_step(info: SolveInfo, lossy: str) -> StepResult:
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
    step = _linear_step(info, "not proven injective: a null-space component may be lost")
    return StepResult(estimate, step.route, step.exact, step.closed_form, step.note)


@register_inverse(CReLU)
def _invert_crelu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, CReLU):
        raise UnsupportedLayerError(f"expected a CReLU, got {type(module).__name__}")
    z = invert_crelu(y, module.dim, check=ctx.top, negative_slope=module.negative_slope)
    return StepResult(z, "invert_crelu", True)


@register_inverse(nn.LeakyReLU)
def _invert_leaky(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    slope = float(getattr(module, "negative_slope", 0.0))
    if slope > 0:
        return StepResult(leaky_relu_inverse(y, slope), "leaky_relu_inverse", True)
    return StepResult(y, "identity", False, note=f"LeakyReLU with slope {slope} is not bijective: negative part lost")


@register_inverse(nn.ReLU)
def _invert_relu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return StepResult(y, "identity", False, note="ReLU: negative part lost (the paper's ReLU baseline)")


@register_inverse(Proportional)
def _invert_proportional(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, Proportional):
        raise UnsupportedLayerError(f"expected a Proportional, got {type(module).__name__}")
    z, known = invert_proportional(y, module.m, module.n, module.dim)
    lost = 1 - float(known.double().mean())
    if lost == 0:
        return StepResult(z, "invert_proportional", True)
    note = f"Proportional({module.m} of {module.n}): negative part of the ReLU channels lost ({lost:.1%} of entries)"
    return StepResult(z, "invert_proportional", False, note=note)


@register_inverse(AVR)
def _invert_avr(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return StepResult(y, "identity", False, note="AVR: sign lost")


@register_inverse(nn.Identity, nn.Dropout, nn.Dropout2d)
def _invert_identity(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    _require_eval(module, record.name)
    return StepResult(y, "identity", True)


@register_inverse(nn.BatchNorm2d)
def _invert_batchnorm(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.BatchNorm2d):
        raise UnsupportedLayerError(f"expected a BatchNorm2d, got {type(module).__name__}")
    _require_eval(module, record.name)
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
    step = _linear_step(info, "averaging loses detail within each window")
    return StepResult(estimate, step.route, step.exact, step.closed_form, step.note)
