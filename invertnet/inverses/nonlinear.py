r"""Inverses of pointwise nonlinearities beyond CReLU and LeakyReLU: bijective, clipping, and non-injective ones.

Three kinds, one policy for what cannot be an output:

- **bijective** (PReLU with positive slopes, ELU and CELU, Softplus, Tanh, Sigmoid): the inverse in a numerically
  careful form (``log1p``, ``expm1``, ``atanh``); ``exact``. The inverse of a saturating function amplifies the
  rounding of :math:`y` by :math:`1 / f'(x)` (about :math:`e^{2|x|}/4` for Tanh), so near saturation the recovered
  input is only as good as that factor allows. Entries *at* the boundary of the range (``tanh(x)`` rounded to 1,
  ``elu(x)`` rounded to :math:`-\alpha`, ``softplus(x)`` underflowed to 0) have lost their input: the estimate is an
  input just beyond the point where the output rounds to it, and the step is not exact.
- **clipping** (ReLU, ReLU6, Hardtanh): entries strictly inside the clip levels are equations (:math:`z = y`); an entry
  at a clip level only says the input was beyond it, an inequality. With ``relu="active_set"`` (the default) both are
  handed to the layer below, which solves them (:mod:`invertnet.activeset`); with ``relu="identity"`` a clipped entry
  is set to its level (the paper's ReLU baseline). ``exact`` on its own when nothing in the batch is clipped.
- **not injective** (SiLU, GELU in both forms, Mish, Hardswish): each has one minimum at :math:`x^*`; the inverse is
  taken on the branch :math:`x \ge x^*` that contains every positive value (safeguarded Newton to float rounding, or a
  closed form for Hardswish). Values in :math:`(f(x^*), 0)` also have a preimage on the other branch, which is lost;
  the note counts them. Never ``exact``.

Values outside the closure of the range (``|y| > 1`` for Tanh, ``y < -alpha`` for ELU, below the minimum for SiLU,
...) cannot be the layer's output. At the top layer (``ctx.top``: ``y`` are the true features) they are refused with
:class:`~invertnet.errors.OutOfRangeError`; below it ``y`` is an estimate, and they are clamped into the range, the
note saying how many.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from invertnet._checks import consistency_tol
from invertnet.activeset import Constraints, clip_levels
from invertnet.capture.chain import LayerRecord
from invertnet.errors import OutOfRangeError, UnsupportedLayerError
from invertnet.inverses.registry import InversionContext, StepResult, register_inverse

__all__ = ["upper_branch_inverse"]

_Fn = Callable[[torch.Tensor], torch.Tensor]


def _share(mask: torch.Tensor) -> str:
    """``"k of n entries (p%)"`` for a boolean mask."""
    k, n = int(mask.sum()), mask.numel()
    return f"{k} of {n} entries ({k / max(n, 1):.2%})"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _guard(
    y: torch.Tensor,
    lo: float,
    hi: float,
    record: LayerRecord,
    ctx: InversionContext,
    what: str,
    slack: float = 0.0,
) -> tuple[torch.Tensor, str]:
    """Refuse (top layer) or clamp (below it) entries of ``y`` outside ``[lo - slack, hi + slack]``; the note."""
    outside = (y < lo - slack) | (y > hi + slack) | y.isnan()
    note = ""
    if bool(outside.any()):
        kind = type(record.module).__name__
        if ctx.top:
            raise OutOfRangeError(
                f"expected the output of {kind} {record.name!r} in {what}, got {_share(outside)} outside it "
                f"(min {float(y.nan_to_num(0).min()):.6g}, max {float(y.nan_to_num(0).max()):.6g}); pass the "
                "layer's true output (below the top layer out-of-range estimates are clamped into the range)"
            )
        note = f"{_share(outside)} outside {what} clamped into it"
    return y.nan_to_num(lo).clamp(lo, hi), note


def _below(value: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` below ``value``."""
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)))


def _above(value: float, dtype: torch.dtype) -> float:
    """The smallest number of ``dtype`` above ``value``."""
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(math.inf, dtype=dtype)))


def _saturated_note(mask: torch.Tensor, where: str) -> str:
    if not bool(mask.any()):
        return ""
    return (
        f"{_share(mask)} saturated at {where}: their input is only known to lie beyond the point where the output "
        "rounds to it (set to an input just beyond that point)"
    )


def _saturate(
    x: torch.Tensor, mask: torch.Tensor, f: nn.Module | _Fn, start: torch.Tensor, target: float
) -> torch.Tensor:
    """Set ``x`` to an input just beyond the first one, stepping outwards from ``start``, whose output is ``target``."""
    if not bool(mask.any()):
        return x
    point = start.to(x).reshape(())
    with torch.no_grad():
        for _ in range(400):
            if float(f(point.clone())) == target:
                break
            point = point + torch.sign(point) * (0.01 * point.abs() + 1e-3)
    # 5% further: kernels differ on denormals (a scalar sigmoid may flush what a vectorised one keeps)
    return torch.where(mask, point + torch.sign(point) * 0.05 * point.abs(), x)


# ---------------------------------------------------------------------------------------------------------------------
# bijective


@register_inverse(nn.PReLU)
def _invert_prelu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    if not isinstance(module, nn.PReLU):
        raise UnsupportedLayerError(f"expected a PReLU, got {type(module).__name__}")
    slope = module.weight.detach().to(y)
    if slope.numel() > 1:  # one slope per channel, the input's second dimension
        slope = slope.reshape(-1, *([1] * (y.ndim - 2))) if y.ndim >= 2 else slope
    slope = slope.expand_as(y)
    positive = slope > 0
    x = torch.where((y >= 0) | ~positive, y, y / torch.where(positive, slope, 1.0))
    if bool(positive.all()):
        return StepResult(x, "prelu_inverse", True, closed_form=True)
    bad = int((module.weight <= 0).sum())
    zero = (slope == 0) & (y == 0)  # slope 0: the input was <= 0
    folded = (slope < 0) & (y >= 0)  # slope < 0: y = x and y = a x' both non-negative
    note = (
        f"PReLU with {bad} of {module.weight.numel()} slopes <= 0 is not bijective there: the negative part is lost "
        f"({_share(zero | folded)} in those channels may come from a negative input; set to y, as for ReLU)"
    )
    return StepResult(x, "prelu_inverse", False, closed_form=True, note=note)


def _exp_family(
    module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext, scale: float
) -> StepResult:
    r"""ELU (``scale = 1``) and CELU (``scale = alpha``), range :math:`(-\alpha, \infty)`.

    :math:`x = y` for :math:`y > 0`, else :math:`s \log(1 + y / \alpha)` (``log1p``).
    """
    alpha = float(getattr(module, "alpha", 1.0))
    kind = type(module).__name__
    if alpha < 0 and kind == "CELU":  # alpha (e^{x/alpha} - 1) increases from -inf: a bijection of R
        x = torch.where(y > 0, y, scale * torch.log1p(y / alpha))
        return StepResult(x, "log1p", True, closed_form=True)
    if alpha <= 0:
        raise UnsupportedLayerError(
            f"expected {kind} {record.name!r} with alpha > 0 (bijective), got alpha={alpha}; its negative branch "
            "then overlaps the positive one: reconstruct from a layer below it"
        )
    y, note = _guard(y, -alpha, math.inf, record, ctx, f"(-{alpha:g}, inf)")
    u = (y / alpha).clamp(min=_above(-1.0, y.dtype))  # y = -alpha: saturated (the input went below ~ -37 alpha)
    x = torch.where(y > 0, y, scale * torch.log1p(u))
    saturated = y == -alpha
    x = _saturate(x, saturated, module, scale * torch.log1p(x.new_tensor(_above(-1.0, y.dtype))), -alpha)
    note = _join(note, _saturated_note(saturated, f"-alpha = {-alpha:g}"))
    return StepResult(x, "log1p", not note, closed_form=True, note=note)


@register_inverse(nn.ELU)
def _invert_elu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return _exp_family(module, record, y, ctx, 1.0)


@register_inverse(nn.CELU)
def _invert_celu(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return _exp_family(module, record, y, ctx, float(getattr(module, "alpha", 1.0)))


@register_inverse(nn.Softplus)
def _invert_softplus(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    r"""Softplus :math:`y = \log(1 + e^{\beta x}) / \beta`, linear (:math:`y = x`) where :math:`\beta x > t`.

    Inverse :math:`x = y + \log(-\mathrm{expm1}(-\beta y)) / \beta` (stable for every :math:`y > 0`), and
    :math:`x = y` where :math:`\beta y > t`. torch's switch is not continuous: just below the threshold
    :math:`\beta y` reaches :math:`t + \log(1 + e^{-t})`, so outputs in that sliver (width ``2e-9 / beta`` for
    ``t = 20``) have a preimage on both sides; they are taken as linear and counted.
    """
    if not isinstance(module, nn.Softplus):
        raise UnsupportedLayerError(f"expected a Softplus, got {type(module).__name__}")
    beta, threshold = float(module.beta), float(module.threshold)
    if beta <= 0:
        raise UnsupportedLayerError(
            f"expected Softplus {record.name!r} with beta > 0, got beta={beta}; rebuild it with a positive beta"
        )
    y, note = _guard(y, 0.0, math.inf, record, ctx, "(0, inf)")
    saturated = y == 0  # exp(beta x) underflowed
    t = beta * y.clamp(min=torch.finfo(y.dtype).tiny)
    x = torch.where(t > threshold, y, y + torch.log(-torch.expm1(-t)) / beta)
    x = _saturate(x, saturated, module, x.new_tensor(math.log(torch.finfo(y.dtype).tiny) / beta), 0.0)
    top = threshold + math.log1p(math.exp(-threshold))
    both = (t > threshold) & (t <= top)
    if bool(both.any()):
        note = _join(
            note,
            f"{_share(both)} in the sliver just above the threshold where torch's switch to the linear region "
            "gives two preimages (taken as linear)",
        )
    note = _join(note, _saturated_note(saturated, "0"))
    return StepResult(x, "softplus_inverse", not note, closed_form=True, note=note)


@register_inverse(nn.Tanh)
def _invert_tanh(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    y, note = _guard(y, -1.0, 1.0, record, ctx, "(-1, 1)")
    edge = _below(1.0, y.dtype)
    x = torch.atanh(y.clamp(-edge, edge))
    x = _saturate(x, y == 1, torch.tanh, torch.atanh(x.new_tensor(edge)), 1.0)
    x = _saturate(x, y == -1, torch.tanh, torch.atanh(x.new_tensor(-edge)), -1.0)
    note = _join(note, _saturated_note(y.abs() == 1, "+-1"))
    return StepResult(x, "atanh", not note, closed_form=True, note=note)


@register_inverse(nn.Sigmoid)
def _invert_sigmoid(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    y, note = _guard(y, 0.0, 1.0, record, ctx, "(0, 1)")
    u = y.clamp(torch.finfo(y.dtype).tiny, _below(1.0, y.dtype))
    x = torch.log(u) - torch.log1p(-u)
    for level, edge in ((0.0, torch.finfo(y.dtype).tiny), (1.0, _below(1.0, y.dtype))):
        x = _saturate(x, y == level, torch.sigmoid, torch.logit(x.new_tensor(edge)), level)
    note = _join(note, _saturated_note((y == 0) | (y == 1), "0 or 1"))
    return StepResult(x, "logit", not note, closed_form=True, note=note)


# ---------------------------------------------------------------------------------------------------------------------
# clipping


@register_inverse(nn.ReLU, nn.Hardtanh, nn.ReLU6)
def _invert_clip(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    r"""ReLU, ReLU6, Hardtanh: :math:`y = \mathrm{clip}(z, \ell, u)`, inside the levels :math:`z = y`; at a level lost.

    ``relu="active_set"``: an entry at a level is an inequality on :math:`z` (:math:`z \le \ell` or :math:`z \ge u`),
    handed with the equations to the layer below (:mod:`invertnet.activeset`), which solves them; the estimate here
    is provisional until it does. ``relu="identity"``: the output is returned as it is (the paper's baseline for ReLU;
    a clipped entry is set to its level).
    """
    lo, hi = clip_levels(module)
    y, note = _guard(y, lo, math.inf if hi is None else hi, record, ctx, _levels(lo, hi))
    if not ctx.top:  # an estimate, exact only to rounding: entries within rounding of a level are at it
        y = snap_to_levels(y, lo, hi)
    clipped = (y == lo) | (y == hi) if hi is not None else y == lo
    if ctx.relu == "active_set" and ctx.constraints is not None:
        note = _join(note, "the constraints from above carried through the clip to the layer below")
        return StepResult(y, "active_set", False, False, note, constraints=ctx.constraints.clip_preimage(lo, hi))
    if not bool(clipped.any()):
        return StepResult(y, "identity", not note, closed_form=True, note=note)
    if ctx.relu == "active_set" and not ctx.exact:
        note = _join(
            note, "the estimate from above is not exact, so its clipped entries are no facts: identity reading"
        )
    elif ctx.relu == "active_set":
        handed = f"{_share(clipped)} at a clip level: inequalities handed with the equations to the layer below"
        constraints = Constraints.equations(y).clip_preimage(lo, hi)
        return StepResult(y, "active_set", False, False, _join(note, handed), constraints=constraints)
    lost = (
        "negative part lost (the paper's ReLU baseline)"
        if hi is None
        else f"{_share(clipped)} at a clip level ({lo:g} or {hi:g}): their input is only known to be beyond it "
        "(set to the clip level)"
    )
    return StepResult(y, "identity", False, closed_form=True, note=_join(note, lost))


def snap_to_levels(y: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor:
    r"""Entries of an estimate within rounding of a clip level, set to the level.

    A clip's output recovered by exact steps is exact only to rounding: an entry the activation clipped comes back
    as :math:`\pm 10^{-12}` rather than :math:`\ell`, and read as an equation it would pin the pre-activation to that
    value instead of bounding it. Within :func:`~invertnet._checks.consistency_tol` times the largest entry of its
    image, an entry counts as clipped.
    """
    scale = y.flatten(1).abs().amax(dim=1).reshape(-1, *([1] * (y.ndim - 1))) if y.ndim > 1 else y.abs().amax()
    tol = consistency_tol(y.dtype) * scale
    y = torch.where((y - lo).abs() <= tol, torch.full_like(y, lo), y)
    return y if hi is None else torch.where((y - hi).abs() <= tol, torch.full_like(y, hi), y)


def _levels(lo: float, hi: float | None) -> str:
    return f"[{lo:g}, inf)" if hi is None else f"[{lo:g}, {hi:g}]"


# ---------------------------------------------------------------------------------------------------------------------
# not injective


def upper_branch_inverse(
    f: _Fn, df: _Fn, y: torch.Tensor, x_min: float, maxiter: int = 200
) -> tuple[torch.Tensor, int, bool]:
    r"""Solve :math:`f(x) = y` on the branch :math:`x \ge x^*` where ``f`` increases, entry by entry.

    Safeguarded Newton: each entry keeps a bracket :math:`[lo, hi]` with :math:`f(lo) \le y \le f(hi)` and falls
    back to bisection when a Newton step leaves it, so it converges from anywhere (quadratically away from the
    minimum). Requires :math:`f(\max(y, 0) + 1) \ge y`, true for SiLU, GELU and Mish (:math:`x - f(x) < 0.32`).
    Entries with :math:`y \le f(x^*)` return :math:`x^*`.

    Returns
    -------
    x : torch.Tensor
    iterations : int
    converged : bool
        Every entry's last step (or bracket) is within two ulps.

    Examples
    --------
    >>> import torch
    >>> silu_prime = lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))
    >>> y = torch.nn.functional.silu(torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64))
    >>> upper_branch_inverse(torch.nn.functional.silu, silu_prime, y, -1.2784645)[0]
    tensor([-1.0000,  0.5000,  3.0000], dtype=torch.float64)
    """
    eps = torch.finfo(y.dtype).eps
    lo = torch.full_like(y, x_min)
    hi = y.clamp(min=0) + 1
    x = y.clamp(min=x_min)
    done = torch.zeros_like(y, dtype=torch.bool)
    iterations = 0
    for iterations in range(1, maxiter + 1):  # noqa: B007  # the count is returned
        r = f(x) - y
        lo = torch.where(r < 0, x, lo)
        hi = torch.where(r > 0, x, hi)
        new = x - r / df(x)
        new = torch.where((new > lo) & (new < hi), new, 0.5 * (lo + hi))
        new = torch.where(r == 0, x, new)
        tiny = 2 * eps * torch.maximum(lo.abs(), hi.abs())
        done = (r == 0) | ((new - x).abs() <= 2 * eps * x.abs()) | (hi - lo <= tiny)
        x = new
        if bool(done.all()):
            break
    return x, iterations, bool(done.all())


def _silu_prime(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _gelu_prime(x: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * torch.erfc(-x / math.sqrt(2))
    return cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _gelu_tanh_prime(x: torch.Tensor) -> torch.Tensor:
    k, c = math.sqrt(2 / math.pi), 0.044715
    t = torch.tanh(k * (x + c * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x)


def _mish_prime(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(F.softplus(x))
    return t + x * (1 - t * t) * torch.sigmoid(x)


def _branches(module: nn.Module) -> tuple[str, _Fn, _Fn]:
    """Name, forward and derivative of a non-injective activation."""
    if isinstance(module, nn.SiLU):
        return "silu", F.silu, _silu_prime
    if isinstance(module, nn.Mish):
        return "mish", F.mish, _mish_prime
    if isinstance(module, nn.GELU):
        if module.approximate == "tanh":
            return "gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), _gelu_tanh_prime
        return "gelu", F.gelu, _gelu_prime
    raise UnsupportedLayerError(f"expected a SiLU, GELU or Mish, got {type(module).__name__}")


@cache
def _minimiser(name: str) -> float:
    """:math:`x^*` where the derivative changes sign, by bisection in float64 on ``[-3, 0]``."""
    df = {"silu": _silu_prime, "mish": _mish_prime, "gelu": _gelu_prime, "gelu_tanh": _gelu_tanh_prime}[name]
    lo, hi = -3.0, 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if float(df(torch.tensor(mid, dtype=torch.float64))) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _branch_note(kind: str, x_min: float, f_min: float, ambiguous: torch.Tensor, clamped: torch.Tensor) -> str:
    note = (
        f"{kind} is not injective: inverted on the branch x >= {x_min:.6g} (its minimiser); the branch below is lost, "
        f"{_share(ambiguous)} lie where the branches overlap ({f_min:.6g} < y < 0) and may be on the wrong one"
    )
    if bool(clamped.any()):
        note += f"; {_share(clamped)} at or below the minimum {f_min:.6g} set to the minimiser"
    return note


@register_inverse(nn.SiLU, nn.GELU, nn.Mish)
def _invert_smooth_gate(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    name, f, df = _branches(module)
    kind = type(module).__name__
    x_min = _minimiser(name)
    f_min = float(f(torch.tensor(x_min, dtype=y.dtype)))
    slack = 16 * torch.finfo(y.dtype).eps * max(1.0, abs(f_min))  # rounding of f near its flat minimum
    y, clamp_note = _guard(y, f_min, math.inf, record, ctx, f"[{f_min:.6g}, inf)", slack)
    clamped = y <= f_min
    x, iterations, converged = upper_branch_inverse(f, df, y, x_min)
    x = torch.where(clamped, x_min, x)
    note = _join(clamp_note, _branch_note(kind, x_min, f_min, (y < 0) & ~clamped, clamped))
    if not converged:
        note += f"; Newton not converged to rounding after {iterations} iterations"
    return StepResult(x, "upper_branch_newton", False, closed_form=False, note=note)


@register_inverse(nn.Hardswish)
def _invert_hardswish(module: nn.Module, record: LayerRecord, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    r"""Hardswish :math:`x (x + 3) / 6` on :math:`[-3, 3]`, 0 below, :math:`x` above; minimum :math:`-3/8` at -1.5.

    On the branch :math:`x \ge -1.5`: :math:`x = 12 y / (3 + \sqrt{9 + 24 y})` (the root of
    :math:`x^2 + 3x - 6y`, written without cancellation) for :math:`y < 3`, else :math:`x = y`.
    """
    x_min, f_min = -1.5, -0.375
    y, clamp_note = _guard(y, f_min, math.inf, record, ctx, "[-0.375, inf)")
    clamped = y == f_min
    x = torch.where(y >= 3, y, 12 * y / (3 + torch.sqrt((9 + 24 * y).clamp(min=0))))
    x = torch.where(clamped, x_min, x)
    note = _join(clamp_note, _branch_note("Hardswish", x_min, f_min, (y < 0) & ~clamped, clamped))
    zeros = y == 0
    if bool(zeros.any()):
        note += f"; {_share(zeros)} are 0, the output of x = 0 and of every x <= -3 (set to 0)"
    return StepResult(x, "upper_branch", False, closed_form=True, note=note)
