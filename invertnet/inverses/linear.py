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
from invertnet.capture.chain import LayerRecord
from invertnet.errors import ShapeError, UnsupportedLayerError
from invertnet.inverses.registry import InversionContext, StepResult, register_inverse, require_eval
from invertnet.linalg.solvers import lsqr
from invertnet.operators import ConvOperator, LinearOperator, MatrixOperator
from invertnet.pinv import ConvLayer, SolveInfo, conv_pinv, pinv_rtol
from invertnet.pinv.patch import full_column_rank
from invertnet.pinv.window import window_inverse

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
    if info.solver == "pcgls":
        note += f"{'; ' if note else ''}solved by CGLS with the circulant + border preconditioner"
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


#: ``regularise``: the Tikhonov weight of a damped step, relative to a bound on the operator's norm.
DAMPING = 1e-2
#: ``regularise``: LSQR's cap on a damped step.
DAMPED_MAXITER = 200


class _Damped(LinearOperator):
    r""":math:`x \mapsto (A x, \lambda x)`: least squares on it is Tikhonov damping.

    :math:`\min_x \|A x - z\|^2 + \lambda^2 \|x\|^2`.
    """

    def __init__(self, op: LinearOperator, damp: float) -> None:
        self.op, self.damp = op, damp
        self.in_shape = op.in_shape
        self.out_shape = (op.out_dim + op.in_dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.op.forward(x).flatten(1), self.damp * x.flatten(1)], dim=1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        m = self.op.out_dim
        top = self.op.adjoint(y[:, :m].reshape(-1, *self.op.out_shape))
        return top + self.damp * y[:, m:].reshape(-1, *self.op.in_shape)


def norm_bound(op: ConvOperator) -> float:
    r"""An upper bound on :math:`\|A\|_2` of a convolution from its weights (Schur test).

    :math:`\|A\|_\infty` is the largest absolute row sum, one filter's; every tap of every filter reads an input
    pixel at most once, so an absolute column sum is at most :math:`\sum_{o, taps} |w_{o, c}|` over the filters
    that read channel :math:`c`; then :math:`\|A\|_2 \le \sqrt{\|A\|_1 \|A\|_\infty}`.
    """
    weight = op.weight.detach().abs().double()
    rows = float(weight.flatten(1).sum(dim=1).max())
    per_group = weight.shape[0] // op.groups
    columns = max(float(weight[g * per_group : (g + 1) * per_group].sum(dim=(0, 2, 3)).max()) for g in range(op.groups))
    return math.sqrt(rows * columns)


def _damped_conv(module: nn.Conv2d, y: torch.Tensor, size: tuple[int, int], ctx: InversionContext) -> StepResult:
    """A convolution whose output is not exact: Tikhonov-damped least squares, so its error is not amplified."""
    op = ConvOperator.from_conv(module, size)
    z = y if module.bias is None else y - module.bias.detach().to(y).reshape(1, -1, 1, 1)
    damp = DAMPING * norm_bound(op)
    rhs = torch.cat([z.flatten(1), z.new_zeros(z.shape[0], op.in_dim)], dim=1)
    cap = DAMPED_MAXITER if ctx.options.maxiter is None else min(ctx.options.maxiter, DAMPED_MAXITER)
    solution = lsqr(_Damped(op, damp), rhs, atol=1e-8, btol=1e-8, maxiter=cap, warn=False)
    note = (
        f"the output is not exact: Tikhonov-damped least squares (lambda = {DAMPING:g} x a bound on ||A||, "
        f"{solution.iterations} LSQR iterations), so its error is not amplified by small singular values"
    )
    return StepResult(solution.x, "damped", False, False, note)


#: ``probe``: LSQR's cap on a convolution that no certificate can prove injective.
PROBE_MAXITER = 30


def _certified(layer: ConvLayer, like: torch.Tensor) -> bool:
    """Whether a certificate proves the layer injective on the pixels it reads (window or patch; cached)."""
    return window_inverse(layer, like) is not None or full_column_rank(layer)


def _determined_pixels(layer: ConvLayer, like: torch.Tensor) -> torch.Tensor | None:
    """The pixels a convolution determines when it is injective on the pixels it reads but leaves some unread."""
    if layer.reads_every_pixel() or not _certified(layer, like):
        return None
    return (layer.coverage() > 0).to(like.device).reshape(1, 1, *layer.op.in_shape[1:])


@register_inverse(nn.Conv2d)
def _invert_conv(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.Conv2d):
        raise UnsupportedLayerError(f"expected an nn.Conv2d, got {type(module).__name__}")
    h, w = record.input.shape[-2:]
    if ctx.constraints is not None:
        bias = None if module.bias is None else module.bias.detach()
        return active_set_step(ConvOperator.from_conv(module, (h, w)), ctx.constraints, bias, ctx)
    if ctx.regularise:
        return _damped_conv(module, y, (h, w), ctx)
    options = replace(ctx.options, warn=False)
    layer = ConvLayer(module, (h, w))
    if ctx.probe and not _certified(layer, y):  # no proof can come of a full solve: an estimate is enough
        cap = PROBE_MAXITER if options.maxiter is None else min(options.maxiter, PROBE_MAXITER)
        options = replace(options, maxiter=cap)
    estimate, info = conv_pinv(module, y, (h, w), ctx.method, options=options, return_info=True)
    step = linear_step(info, layer.loss() if not info.exact else "")
    determined = None if info.exact or not info.converged else _determined_pixels(layer, y)
    if determined is not None:
        step = replace(step, note=_join_notes(step.note, "every pixel it reads is determined (injective on them)"))
    return StepResult(estimate, step.route, step.exact, step.closed_form, step.note, determined=determined)


def _join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


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
    return StepResult(x, "affine", lost == 0, closed_form=True, note=note, constraints=handed)


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
        return StepResult(
            x, "linear_pinv", True, closed_form=True, note=f"full column rank (condition {solved.condition:.3g})"
        )
    note = (
        f"rank {solved.rank} < in_features {n}: a {n - solved.rank}-dimensional null-space component is lost; "
        "the minimum-norm least-squares solution"
    )
    return StepResult(x, "linear_pinv", False, closed_form=True, note=note)


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
    return StepResult(x, "unaffine", False, closed_form=True, note=note)


@register_inverse(nn.Flatten)
def _invert_flatten(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.Flatten):
        raise UnsupportedLayerError(f"expected an nn.Flatten, got {type(module).__name__}")
    ndim = record.input.ndim
    start, end = module.start_dim % ndim, module.end_dim % ndim
    if start == end:  # nothing flattened
        return StepResult(y, "reshape", True, closed_form=True)
    return StepResult(
        y.reshape(*y.shape[:start], *record.input.shape[start : end + 1], *y.shape[start + 1 :]),
        "reshape",
        True,
        closed_form=True,
    )


@register_inverse(nn.Unflatten)
def _invert_unflatten(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.Unflatten):
        raise UnsupportedLayerError(f"expected an nn.Unflatten, got {type(module).__name__}")
    dim = int(module.dim) % record.input.ndim
    return StepResult(y.flatten(dim, dim + len(module.unflattened_size) - 1), "reshape", True, closed_form=True)
