r"""Inverses of the linear and affine layers, and of reshapes.

Convolutions (by the routes of :mod:`invertnet.pinv`), BatchNorm, Linear (its pseudo-inverse), LayerNorm and GroupNorm
(the affine part only), Flatten and Unflatten (reshapes).

Below a ReLU (or ReLU6, Hardtanh) read through its active set, Conv2d and Linear receive its equations and
inequalities (:attr:`~invertnet.inverses.InversionContext.constraints`) and solve them
(:func:`~invertnet.activeset.invert_active_set`: masked least squares, then the inequalities); BatchNorm2d carries
them to its input.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace

import torch
from torch import nn

from invertnet.activeset import ActiveSetOptions, ActiveSetResult, Constraints, invert_active_set
from invertnet.errors import ShapeError, UnsupportedLayerError
from invertnet.inverses.registry import InversionContext, StepResult, register_inverse, require_eval
from invertnet.operators import ConvOperator, LinearOperator, MatrixOperator
from invertnet.pinv import ConvLayer, SolveInfo, conv_pinv, pinv_rtol
from invertnet.trace import LayerRecord

__all__: list[str] = ["LinearPinv", "active_set_step", "linear_pinv", "linear_step"]


def linear_step(info: SolveInfo, lossy: str) -> StepResult:
    """Wrap a ``conv_pinv`` result; ``lossy`` says what a non-exact step of this layer type loses."""
    if info.exact:
        note = ""
    elif not info.converged:
        note = f"{lossy}; {info.method} stopped before reaching the operator's pseudo-inverse"
    elif not info.pseudo_inverse:
        note = f"{lossy}; {info.method} is not the operator's pseudo-inverse here ({info.reason})"
    else:
        note = f"{lossy}; {info.method}: the minimum-norm least-squares solution"
    if info.start == "window":
        note += f"{'; ' if note else ''}started from the window estimate, {info.iterations} iterations after it"
    if not info.converged:
        note += f"; not converged after {info.iterations} iterations (relative residual {info.residual:.2g})"
    return StepResult(torch.empty(0), info.method, info.exact, info.closed_form, note)


def _count(flags: torch.Tensor, what: str) -> str:
    k, n = int(flags.sum()), flags.numel()
    return what if n == 1 and k == 1 else f"{what} for {k} of {n} images" if k else ""


def _violations(result: ActiveSetResult) -> str:
    """The constraints an infeasible solve violates, the larger violation first (the one that failed)."""
    both = [
        ("equations", float(result.equation_violation.max())),
        ("inequalities", float(result.inequality_violation.max())),
    ]
    (first, worst), (second, other) = sorted(both, key=lambda kv: -kv[1])
    return f"{first} violated by up to {worst:.2g} ({second} {other:.2g})"


def _active_set_note(result: ActiveSetResult) -> str:
    """What an active-set solve proved, in one line: known share, certificate, feasibility, cost."""
    parts = [f"{float(result.known_fraction.mean()):.1%} of the output entries known (the active set)"]
    reasons = {c.reason for c in result.certificates}
    parts.append(reasons.pop() if len(reasons) == 1 else f"certificates: {', '.join(sorted(reasons))}")
    if not bool(result.exact.all()):
        met = result.feasible & ~result.exact
        parts += [
            _count(met & result.minimum_norm, "the minimum-norm input that reproduces the output (one of many)"),
            _count(met & ~result.minimum_norm, "an input that reproduces the output (one of many)"),
            _count(~result.feasible, f"infeasible: {_violations(result)}"),
        ]
    parts.append(f"{result.rounds} rounds, {result.iterations} LSQR iterations")
    return "; ".join(p for p in parts if p)


def active_set_step(
    op: LinearOperator, constraints: Constraints, bias: torch.Tensor | None, ctx: InversionContext
) -> StepResult:
    r"""Solve the constraints on :math:`A x + b` handed down by a clipping activation (one resolving step).

    ``exact`` when every image is certified (the known rows determine the input), converged and feasible.
    """
    options = ActiveSetOptions(maxiter=ctx.options.maxiter, warn=False)
    result = invert_active_set(op, constraints, bias=bias, options=options)
    return StepResult(result.x, "active_set", bool(result.exact.all()), False, _active_set_note(result), resolves=True)


@register_inverse(nn.Conv2d)
def _invert_conv(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.Conv2d):
        raise UnsupportedLayerError(f"expected an nn.Conv2d, got {type(module).__name__}")
    h, w = record.input.shape[-2:]
    if ctx.constraints is not None:
        bias = None if module.bias is None else module.bias.detach()
        return active_set_step(ConvOperator.from_conv(module, (h, w)), ctx.constraints, bias, ctx)
    options = replace(ctx.options, warn=False)
    estimate, info = conv_pinv(module, y, (h, w), ctx.method, options=options, return_info=True)
    step = linear_step(info, ConvLayer(module, (h, w)).loss() if not info.exact else "")
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
    gamma = module.weight.detach().to(y).reshape(shape) if module.affine else torch.ones_like(std)
    beta = module.bias.detach().to(y).reshape(shape) if module.affine else torch.zeros_like(std)
    zero = gamma == 0
    scale = torch.where(zero, 0.0, std / torch.where(zero, 1.0, gamma))  # x = (y - beta) * scale + mean
    x = torch.where(zero, mean, (y - beta) * scale + mean)
    lost = int(zero.sum())
    note = f"{lost} channels with zero scale: set to the running mean" if lost else ""
    handed = None
    if ctx.constraints is not None:  # the same affine map on the bounds; a negative scale swaps them
        lower, upper = ((b - beta) * scale + mean for b in (ctx.constraints.lower, ctx.constraints.upper))
        swap = scale < 0
        inf = torch.full_like(lower, torch.inf)
        lower, upper = torch.where(swap, upper, lower), torch.where(swap, lower, upper)
        handed = Constraints(torch.where(zero, -inf, lower), torch.where(zero, inf, upper))
    return StepResult(x, "affine", lost == 0, note=note, constraints=handed)


# ---------------------------------------------------------------------------------------------------------------------
# fully connected, normalisation over a sample, reshapes

_LINEAR_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], tuple[object, LinearPinv]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class LinearPinv:
    r"""The Moore-Penrose pseudo-inverse of a weight :math:`W` (out x in), from one SVD in float64.

    Attributes
    ----------
    pinv : torch.Tensor
        :math:`W^+` (in x out), singular values below ``rtol * sigma_max`` cut.
    rank : int
        The number of singular values kept.
    condition : float
        :math:`\sigma_{max} / \sigma_{min}` of the kept ones.
    """

    pinv: torch.Tensor
    rank: int
    condition: float


def linear_pinv(module: nn.Linear, rtol: float | None = None) -> LinearPinv:
    """:math:`W^+` of ``module``, cached per module, ``rtol`` and weight version (rebuilt when the weight changes).

    The cutoff defaults to :func:`~invertnet.pinv.pinv_rtol` of the weight's dtype (``max(m, n) * eps``).
    """
    weight = module.weight
    cut = pinv_rtol(tuple(weight.shape), weight.dtype) if rtol is None else rtol
    entries = _LINEAR_CACHE.setdefault(module, {})
    key = (cut, weight.device)
    version = (weight.data_ptr(), weight._version)
    if key not in entries or entries[key][0] != version:
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        keep = s > cut * s[:1]
        inv = torch.where(keep, 1 / torch.where(keep, s, 1.0), 0.0)
        rank = int(keep.sum())
        condition = float(s[0] / s[rank - 1]) if rank else math.inf
        entries[key] = (version, LinearPinv((vh.mT * inv) @ u.mT, rank, condition))
    return entries[key][1]


@register_inverse(nn.Linear)
def _invert_linear(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    r"""``y = x W^T + b`` on the last dimension: :math:`x = (y - b) (W^+)^T`, the minimum-norm least-squares solution.

    Exact when :math:`W` has full column rank (rank = ``in_features``). An SVD, not ``torch.linalg.lstsq``, whose
    only CUDA driver assumes full rank.
    """
    if not isinstance(module, nn.Linear):
        raise UnsupportedLayerError(f"expected an nn.Linear, got {type(module).__name__}")
    if y.shape[-1] != module.out_features:
        raise ShapeError(
            f"y: expected a last dimension of {module.out_features} (out_features of Linear {record.name!r}), got "
            f"shape {tuple(y.shape)}"
        )
    if ctx.constraints is not None and y.ndim == 2:
        bias = None if module.bias is None else module.bias.detach()
        return active_set_step(MatrixOperator.from_linear(module), ctx.constraints, bias, ctx)
    solved = linear_pinv(module, ctx.options.rtol)
    z = y if module.bias is None else y - module.bias.detach().to(y)
    x = z @ solved.pinv.to(y).mT
    n = module.in_features
    if solved.rank == n:
        return StepResult(x, "linear_pinv", True, note=f"full column rank (condition {solved.condition:.3g})")
    note = (
        f"rank {solved.rank} < in_features {n}: a {n - solved.rank}-dimensional null-space component is lost; "
        "the minimum-norm least-squares solution"
    )
    return StepResult(x, "linear_pinv", False, note=note)


def _unaffine(
    y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, shape: tuple[int, ...]
) -> tuple[torch.Tensor, int]:
    """``(y - beta) / gamma`` with the affine parameters reshaped to ``shape``; zero scales give 0 (and are counted)."""
    if bias is not None:
        y = y - bias.detach().to(y).reshape(shape)
    if weight is None:
        return y, 0
    gamma = weight.detach().to(y).reshape(shape)
    zero = gamma == 0
    return torch.where(zero, 0.0, y / torch.where(zero, 1.0, gamma)), int((weight == 0).sum())


@register_inverse(nn.LayerNorm, nn.GroupNorm)
def _invert_sample_norm(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    r"""LayerNorm and GroupNorm: :math:`y = \gamma (x - \mu) / \sigma + \beta`; only the affine map is undone.

    :math:`\mu, \sigma` of each sample (LayerNorm) or group (GroupNorm) are lost (the forward pass does not keep
    them), so the estimate is the normalised input, right up to a shift and scale per group.
    """
    if isinstance(module, nn.LayerNorm):
        dims = len(module.normalized_shape)
        shape: tuple[int, ...] = tuple(module.normalized_shape)
        what = f"each sample's mean and standard deviation over its last {dims} dimension{'s' if dims > 1 else ''}"
    elif isinstance(module, nn.GroupNorm):
        shape = (module.num_channels, *([1] * (y.ndim - 2)))
        what = f"the mean and standard deviation of each sample's {module.num_groups} channel groups"
    else:
        raise UnsupportedLayerError(f"expected a LayerNorm or GroupNorm, got {type(module).__name__}")
    weight = module.weight if isinstance(module.weight, torch.Tensor) else None
    bias = module.bias if isinstance(module.bias, torch.Tensor) else None
    x, zero = _unaffine(y, weight, bias, shape)
    note = f"not invertible: {what} are lost; the estimate is the normalised input (the affine map undone)"
    if zero:
        note += f"; {zero} entries of the scale are 0: set to 0"
    return StepResult(x, "unaffine", False, note=note)


@register_inverse(nn.Flatten)
def _invert_flatten(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.Flatten):
        raise UnsupportedLayerError(f"expected an nn.Flatten, got {type(module).__name__}")
    ndim = record.input.ndim
    start, end = module.start_dim % ndim, module.end_dim % ndim
    if start == end:  # nothing flattened
        return StepResult(y, "reshape", True)
    return StepResult(
        y.reshape(*y.shape[:start], *record.input.shape[start : end + 1], *y.shape[start + 1 :]), "reshape", True
    )


@register_inverse(nn.Unflatten)
def _invert_unflatten(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.Unflatten):
        raise UnsupportedLayerError(f"expected an nn.Unflatten, got {type(module).__name__}")
    dim = int(module.dim) % record.input.ndim
    return StepResult(y.flatten(dim, dim + len(module.unflattened_size) - 1), "reshape", True)
