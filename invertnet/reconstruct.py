r"""Layer-by-layer reconstruction of an input from any layer of a model.

The paper's algorithm (Shang et al. 2016, Sec. 3): take the features :math:`f(x)` of the
chosen layer and walk back down the chain of modules that produced them, inverting each one:
undo CReLU (:math:`z = \rho_+ - \rho_-`), apply the pseudo-inverse of the convolution, and so
on to the image. Every module type has an entry in a registry (:func:`register_inverse`);
a new layer type joins by registering its inverse, and a new convolution solver joins
:func:`~invertnet.pinv.conv_pinv` without touching the walk.

What each inverse keeps:

======================  =======================================================  =======
module                  inverse                                                  exact
======================  =======================================================  =======
Conv2d                  :func:`~invertnet.pinv.conv_pinv` with ``method``        if the route is exact for the layer
CReLU (any slope)       :func:`~invertnet.activations.invert_crelu`              yes
LeakyReLU (slope > 0)   :math:`y` if :math:`y \ge 0` else :math:`y / a`          yes
BatchNorm2d (eval)      the affine map undone                                    yes (non-zero scales)
Dropout, Identity       identity (eval mode)                                     yes
ReLU                    identity: the negative part is lost (paper's baseline)   no
AVR                     identity: the sign is lost                               no
MaxPool2d               unpool with the forward pass's switches (Zeiler &        no
                        Fergus 2014); ``maxpool="guess"``: spread without them
AvgPool2d               pseudo-inverse of the averaging operator                 no
======================  =======================================================  =======
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from invertnet.activations import AVR, CReLU, Proportional, invert_crelu, invert_proportional, leaky_relu_inverse
from invertnet.errors import UnsupportedLayerError
from invertnet.joint import JointResult, invert_jointly
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.operators import ConvOperator
from invertnet.pinv import CONV_METHODS, conv_pinv, patch_is_exact
from invertnet.spectrum import ruled_out_by_count
from invertnet.trace import LayerRecord, trace

__all__ = [
    "JOINT_STARTS",
    "MAXPOOL_MODES",
    "RECONSTRUCTION_METHODS",
    "InversionContext",
    "LayerStep",
    "Reconstruction",
    "reconstruct",
    "register_inverse",
    "supported_layers",
]

MAXPOOL_MODES = ("switches", "guess")

#: Methods of :func:`reconstruct`: every convolution route, and the joint inversion of the prefix.
RECONSTRUCTION_METHODS = (*CONV_METHODS, "joint")
#: Starts of ``method="joint"`` (see :func:`reconstruct`).
JOINT_STARTS = ("auto", "layers", "flat")
#: ``joint_start="auto"`` starts from the layer-by-layer estimate when its relative feature residual
#: is at most this (the pattern is then right and Gauss-Newton finishes in a step or two).
LAYERS_START_TOL = 1e-6


@dataclass(frozen=True)
class InversionContext:
    """Settings handed to every layer inverse.

    The convolution ``method``, the max-pool mode, the singular value cutoff, LSQR's tolerance and
    iteration cap, and whether the layer is the top one (whose output are the true features, so
    CReLU outputs are checked).
    """

    method: str
    maxpool: str
    rtol: float | None
    atol: float
    maxiter: int
    top: bool


@dataclass
class StepResult:
    """What a layer inverse returns: the input estimate, the route taken, exactness and a note."""

    estimate: torch.Tensor
    route: str
    exact: bool
    note: str = ""


@dataclass
class LayerStep:
    r"""One inverted layer.

    Attributes
    ----------
    name, kind : str
        Qualified module name and class name.
    route : str
        How it was inverted (``"invert_crelu"``, ``"patch"``, ``"switches"``, ...).
    exact : bool
        Whether this inverse returns the layer's input exactly when given its exact output.
    estimate : torch.Tensor
        Estimate of the layer's input.
    relative_error : torch.Tensor
        Per image, :math:`\|\hat u - u\| / \|u\|` against the layer's true input :math:`u`.
    note : str
        What is lost, when something is.
    """

    name: str
    kind: str
    route: str
    exact: bool
    estimate: torch.Tensor
    relative_error: torch.Tensor
    note: str = ""


@dataclass
class Reconstruction:
    r"""The result of :func:`reconstruct`.

    Attributes
    ----------
    image : torch.Tensor
        The input estimate, ``(N, C, H, W)``.
    input : torch.Tensor
        The input it estimates (in the model's dtype and device).
    features : torch.Tensor
        The output of ``layer`` that was inverted.
    layer, method : str
    steps : list of LayerStep
        From the chosen layer down to the input.
    psnr, ssim, relative_error : torch.Tensor
        Per image, against ``input``, with ``data_range`` (SSIM as Wang et al. 2004).
    feature_residual : torch.Tensor
        Per image, :math:`\|f(\hat x) - f(x)\| / \|f(x)\|` through the prefix up to ``layer``.
    data_range : float
    joint : JointResult or None
        Steps, inner iterations and residual history of ``method="joint"``.
    note : str
        Said when the dimension count shows that the features have many preimages.
    """

    image: torch.Tensor
    input: torch.Tensor
    features: torch.Tensor
    layer: str
    method: str
    steps: list[LayerStep] = field(default_factory=list)
    psnr: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    ssim: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    relative_error: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    feature_residual: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    data_range: float = 1.0
    joint: JointResult | None = None
    note: str = ""

    @property
    def exact(self) -> bool:
        """Whether every step is exact (the reconstruction is exact up to rounding)."""
        return all(step.exact for step in self.steps)


LayerInverse = Callable[[nn.Module, LayerRecord, torch.Tensor, InversionContext], StepResult]
_INVERSES: dict[type[nn.Module], LayerInverse] = {}


def register_inverse(*types: type[nn.Module]) -> Callable[[LayerInverse], LayerInverse]:
    """Register ``fn(module, record, y, ctx) -> StepResult`` as the inverse of modules of ``types``.

    Examples
    --------
    >>> import torch
    >>> class Double(torch.nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> @register_inverse(Double)
    ... def _invert_double(module, record, y, ctx):
    ...     return StepResult(y / 2, "halve", exact=True)
    """

    def decorate(fn: LayerInverse) -> LayerInverse:
        for t in types:
            _INVERSES[t] = fn
        return fn

    return decorate


def supported_layers() -> list[str]:
    """Class names of the modules :func:`reconstruct` can invert."""
    return sorted(t.__name__ for t in _INVERSES)


def _inverse_for(module: nn.Module) -> LayerInverse:
    for cls in type(module).__mro__:
        if cls in _INVERSES:
            return _INVERSES[cls]
    raise UnsupportedLayerError(
        f"expected a layer invertnet can invert ({', '.join(supported_layers())}), got {type(module).__name__}; "
        "reconstruct from a layer below it, or register an inverse with invertnet.register_inverse"
    )


def _require_eval(module: nn.Module, name: str) -> None:
    if module.training:
        raise ValueError(
            f"expected {type(module).__name__} {name!r} in eval mode (in training mode it depends on the batch or "
            "on chance), got training mode; call model.eval() before reconstructing"
        )


@register_inverse(nn.Conv2d)
def _invert_conv(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    input_size = tuple(record.input.shape[-2:])
    estimate, info = conv_pinv(
        module,
        y,
        input_size,
        ctx.method,
        rtol=ctx.rtol,
        atol=ctx.atol,
        maxiter=ctx.maxiter,
        warn=False,
        return_info=True,
    )
    if info.method == "patch":
        exact = patch_is_exact(module, input_size)
        note = "" if exact else "patch reading of a layer it cannot invert: not the operator's pseudo-inverse"
    elif info.method == "window":
        exact = False
        note = "window: pseudo-inverse of blocks of outputs; exact on the layer's range, a local fit off it"
    else:
        exact = False
        note = f"{info.method}: the operator's minimum-norm least-squares solution (exact where it is injective)"
        if info.start == "window":
            note += f"; started from the window estimate, {info.iterations} iterations after it"
        if not info.converged:
            note += f"; not converged after {info.iterations} iterations (relative residual {info.residual:.2g})"
    return StepResult(estimate, info.method, exact, note)


@register_inverse(CReLU)
def _invert_crelu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    assert isinstance(module, CReLU)
    return StepResult(
        invert_crelu(y, module.dim, check=ctx.top, negative_slope=module.negative_slope), "invert_crelu", True
    )


@register_inverse(nn.LeakyReLU)
def _invert_leaky(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    slope = float(module.negative_slope)
    if slope > 0:
        return StepResult(leaky_relu_inverse(y, slope), "leaky_relu_inverse", True)
    return StepResult(y, "identity", False, f"LeakyReLU with slope {slope} is not bijective: negative part lost")


@register_inverse(nn.ReLU)
def _invert_relu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return StepResult(y, "identity", False, "ReLU: negative part lost (the paper's ReLU baseline)")


@register_inverse(Proportional)
def _invert_proportional(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    assert isinstance(module, Proportional)
    z, known = invert_proportional(y, module.m, module.n, module.dim)
    lost = 1 - float(known.double().mean())
    if lost == 0:
        return StepResult(z, "invert_proportional", True)
    note = f"Proportional({module.m} of {module.n}): negative part of the ReLU channels lost ({lost:.1%} of entries)"
    return StepResult(z, "invert_proportional", False, note)


@register_inverse(AVR)
def _invert_avr(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return StepResult(y, "identity", False, "AVR: sign lost")


@register_inverse(nn.Identity, nn.Dropout, nn.Dropout2d)
def _invert_identity(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    _require_eval(module, record.name)
    return StepResult(y, "identity", True)


@register_inverse(nn.BatchNorm2d)
def _invert_batchnorm(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    assert isinstance(module, nn.BatchNorm2d)
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
        x, "affine", lost == 0, f"{lost} channels with zero scale: set to the running mean" if lost else ""
    )


@register_inverse(nn.MaxPool2d)
def _invert_maxpool(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    assert isinstance(module, nn.MaxPool2d)
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
            "non-maximal values lost; unpooled with the forward pass's switches (Zeiler & Fergus)",
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
        "a guess: without switches each maximum is spread over its window",
    )


@register_inverse(nn.AvgPool2d)
def _invert_avgpool(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    assert isinstance(module, nn.AvgPool2d)
    padded = module.padding not in (0, (0, 0))
    if module.ceil_mode or module.divisor_override is not None or (padded and not module.count_include_pad):
        raise UnsupportedLayerError(
            f"expected AvgPool2d {record.name!r} to be a plain average (no ceil_mode, no divisor_override, "
            "count_include_pad=True when padded), got a variant whose weights depend on position; "
            "reconstruct from a layer below it"
        )
    op = ConvOperator.from_pool(module, record.input.shape[1], tuple(record.input.shape[-2:]), y)
    return StepResult(
        conv_pinv(op, y, op.in_shape[1:], ctx.method, rtol=ctx.rtol, atol=ctx.atol, maxiter=ctx.maxiter, warn=False),
        ctx.method,
        False,
        "averaging loses detail within each window",
    )


def _feature_residual(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Per image, :math:`\|f(x) - y\| / \|y\|` (features of any shape)."""
    with torch.no_grad():
        return (f(x) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1).clamp(min=torch.finfo(y.dtype).tiny)


def reconstruct(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    method: str = "auto",
    *,
    maxpool: str = "switches",
    data_range: float = 1.0,
    rtol: float | None = None,
    atol: float = 1e-10,
    maxiter: int = 1000,
    tv: float = 0.0,
    box: tuple[float, float] | None = None,
    joint_tol: float = 1e-10,
    joint_start: str = "auto",
    lbfgs_evaluations: int = 500,
    max_steps: int = 30,
    progress: Callable[[int, float], None] | None = None,
) -> Reconstruction:
    r"""Reconstruct ``image`` from the features of ``layer``, inverting one layer at a time.

    Parameters
    ----------
    model : nn.Module
        ``nn.Sequential`` or any module whose forward is a chain of named submodules, in eval mode
        where it has BatchNorm or Dropout. Computation runs in its dtype and on its device: use
        ``model.double()`` for exactness checks.
    image : torch.Tensor
        ``(N, C, H, W)``.
    layer : str
        Qualified module name; a container (``"conv3"``) means its output.
    method : str, default "auto"
        A convolution route of :data:`invertnet.pinv.CONV_METHODS` (``"patch"`` is the paper's reading;
        ``"auto"`` the exact closed form that applies, else matrix-free LSQR), or ``"joint"``: match the features of
        the whole prefix (:func:`invertnet.joint.invert_jointly`), from the start ``joint_start`` picks.
    maxpool : {"switches", "guess"}
        Unpool max-pooling with the switches recorded in the forward pass, or spread each maximum
        over its window (a guess: without switches the positions are lost).
    data_range : float, default 1.0
        Span of valid pixel values, for PSNR and SSIM.
    rtol : float, optional
        Singular value cutoff of the pseudo-inverses.
    atol, maxiter : float, int
        LSQR's tolerance and iteration cap per layer. A layer that stops unconverged says so in its
        step's note (no warning is raised); nearly singular layers can need far more iterations than
        they are worth.
    tv, box, joint_tol, lbfgs_evaluations, max_steps, progress
        ``"joint"`` only: total-variation weight of the L-BFGS phase (``tv=0.01, box=(0.0, 1.0)``
        is what the CLI uses on [0, 1] images), box constraint, relative feature residual to stop
        at, caps of the L-BFGS and Gauss-Newton phases, and a ``progress(round, residual)`` callback.
    joint_start : {"auto", "layers", "flat"}
        ``"joint"`` only: start from the ``"auto"`` layer-by-layer estimate (``"layers"``), from a
        flat image at the middle of the box (or of ``[0, data_range]``; ``"flat"``), or (``"auto"``)
        from the layer-by-layer estimate when it already matches the features to relative
        :data:`LAYERS_START_TOL` (then Gauss-Newton alone finishes) and from the flat image
        otherwise. Measured on All-CNN-B at
        224x224 from conv2, L-BFGS gets 34 dB from the flat start and 21 dB from the
        layer-by-layer one, whose activation pattern is further from the truth although its
        feature residual is lower.

    Returns
    -------
    Reconstruction

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU, reconstruct
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU()).double()
    >>> x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    >>> result = reconstruct(net, x, "1")
    >>> bool(result.exact), float(result.relative_error) < 1e-10
    (True, True)
    """
    if method not in RECONSTRUCTION_METHODS:
        raise ValueError(f"reconstruct: expected method in {sorted(RECONSTRUCTION_METHODS)}, got {method!r}")
    if maxpool not in MAXPOOL_MODES:
        raise ValueError(f"reconstruct: expected maxpool in {MAXPOOL_MODES}, got {maxpool!r}")
    if tv < 0:
        raise ValueError(f"reconstruct: expected a non-negative tv weight, got {tv}; use 0 for no prior")
    if joint_start not in JOINT_STARTS:
        raise ValueError(f"reconstruct: expected joint_start in {JOINT_STARTS}, got {joint_start!r}")
    recorded = trace(model, image, layer)
    layer_method = "auto" if method == "joint" else method
    inverses = [(record, _inverse_for(record.module)) for record in recorded.records]
    y = recorded.features
    steps: list[LayerStep] = []
    with torch.no_grad():
        for i, (record, inverse) in enumerate(reversed(inverses)):
            ctx = InversionContext(layer_method, maxpool, rtol, atol, maxiter, top=i == 0)
            result = inverse(record.module, record, y, ctx)
            y = result.estimate
            err = relative_error(y, record.input) if y.ndim == 4 else torch.full((y.shape[0],), float("nan"))
            steps.append(
                LayerStep(record.name, type(record.module).__name__, result.route, result.exact, y, err, result.note)
            )

    def prefix(x: torch.Tensor) -> torch.Tensor:
        for record in recorded.records:
            x = record.module(x)
        return x

    joint = None
    many = ruled_out_by_count(recorded.records)
    note = (
        f"the features have many preimages ({many} has fewer responses than unknowns): this is one of them"
        if many
        else ""
    )
    if method == "joint":
        start = y
        close = bool((_feature_residual(prefix, y, recorded.features) <= LAYERS_START_TOL).all())
        if joint_start == "flat" or (joint_start == "auto" and not close):
            middle = sum(box) / 2 if box is not None else data_range / 2
            start = torch.full_like(y, middle)
        joint = invert_jointly(
            prefix,
            recorded.features,
            start,
            tol=joint_tol,
            # from a start whose pattern is right, Gauss-Newton alone finishes
            lbfgs_evaluations=0 if joint_start == "auto" and close else lbfgs_evaluations,
            max_steps=max_steps,
            tv=tv,
            box=box,
            progress=progress,
        )
        y = joint.image
    original = recorded.records[0].input
    return Reconstruction(
        image=y,
        input=original,
        features=recorded.features,
        layer=layer,
        method=method,
        steps=steps,
        psnr=psnr(y, original, data_range),
        ssim=ssim(y, original, data_range)
        if min(original.shape[-2:]) >= 11
        else torch.full_like(steps[-1].relative_error, float("nan")),
        relative_error=relative_error(y, original),
        feature_residual=_feature_residual(prefix, y, recorded.features),
        data_range=data_range,
        joint=joint,
        note=note,
    )
