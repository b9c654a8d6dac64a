r"""Joint inversion of a network prefix: match the features of every layer at once.

Inverting one layer at a time throws away what later layers know (behind a CReLU input the
unknowns are half the channels, but a linear pseudo-inverse treats all of them as free). Joint
inversion fits the features of the whole prefix in two phases:

1. **L-BFGS** (:class:`~invertnet.linalg.lbfgs.BatchLBFGS`, one run per image with a weak-Wolfe line
   search) from the start it is given, on

   .. math::

       \min_x \; \frac{\|f(x) - y\|^2}{\|y\|^2} + \lambda \, \frac{\mathrm{TV}_\epsilon(x)}{\|y\|^2},
       \qquad \mathrm{TV}_\epsilon(x) = \sum_p \sqrt{|\nabla x|_p^2 + \epsilon^2}.

   It finds the basin; the total-variation prior (:math:`\lambda` = ``tv``) steers it to a
   natural image where the features leave freedom, and away from the wrong activation patterns
   at the borders, where few receptive fields constrain the pixels. Measured on All-CNN-B from
   conv2 at 224x224 (a flat grey start, 2 cores, box [0, 1]): 34 dB without the prior, 40.6 dB
   in 6 s with ``tv=0.01``.
2. **Damped Gauss-Newton** on the pattern-fixed linearisation, without the prior. A CReLU/ReLU
   network is piecewise linear: with the activation pattern (and max-pooling switches) of the
   current estimate fixed, :math:`f(x) = J_s x + c_s` exactly, so once the pattern is right one
   step solves the problem:

   .. math::

       \delta_k = \arg\min_\delta \|J_{s_k} \delta - (y - f(x_k))\|^2 \;\text{(minimum norm)},
       \qquad x_{k+1} = \Pi_{[lo, hi]}(x_k + \alpha_k \delta_k),

   with :math:`J` applied matrix-free (``torch.func.vjp``, and the vjp of the vjp for :math:`J`), the inner problem
   solved by LSQR from zero (so the step has no component the features cannot see, and the
   prior's choice there stays) only as far as the Eisenstat-Walker forcing term asks (inexact
   Gauss-Newton; see :func:`match_features`), and :math:`\alpha_k` halved until the misfit decreases.

Each image of a batch is its own problem: it stops as soon as its relative feature residual is at most ``tol``
(:class:`JointOptions`; :func:`invertnet.invert_jointly` applies this to a model and a named layer). Where the
features determine the input (an injective prefix), the fixed point is the input itself, recovered
to rounding; where they do not, the result is *one* of many preimages. Neither phase can cross
every kink of a piecewise-linear map: a start in the wrong basin ends in a local minimum, and the
reported residual says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import jvp, vjp

from invertnet.errors import OptionError
from invertnet.linalg.lbfgs import BatchLBFGS
from invertnet.linalg.solvers import lsqr
from invertnet.operators import LinearOperator
from invertnet.reconstruction.priors import Prior, TotalVariation

__all__ = [
    "JOINT_STARTS",
    "LBFGS_ROUND",
    "FeatureProblem",
    "FeatureTarget",
    "JointOptions",
    "JointResult",
    "MatchState",
    "gauss_newton_phase",
    "lbfgs_phase",
    "match_features",
]


#: Starts of the joint inversion of a model (see :class:`JointOptions`).
JOINT_STARTS = ("auto", "layers", "flat")


@dataclass(frozen=True)
class JointOptions:
    r"""Settings of the joint inversion.

    Attributes
    ----------
    tol : float, default 1e-10
        An image stops when its relative feature residual :math:`\|f(x) - y\| / \|y\|` is at most ``tol``.
    start : {"auto", "layers", "flat"}
        For :func:`invertnet.invert_jointly` (a model and a layer): start from the layer-by-layer estimate
        (``"layers"``), from a flat image at the middle of the box or of ``[0, data_range]`` (``"flat"``), or
        (``"auto"``), per image, from the layer-by-layer estimate when it already matches the features to
        relative ``1e-6`` (Gauss-Newton alone then finishes) and from the flat image otherwise (that
        estimate is computed with LSQR capped, :data:`invertnet.reconstruction.api.LAYERS_PROBE_ITERATIONS`). Measured
        on All-CNN-B at 224x224 from conv2, L-BFGS gets 34 dB from the flat start and 21 dB from the
        layer-by-layer one, whose activation pattern is further from the truth although its feature
        residual is lower.
    lbfgs_evaluations : int, default 500
        Objective evaluations of the L-BFGS phase per image at most (0 skips it). It also ends when
        L-BFGS stops making progress.
    max_steps : int, default 30
        Gauss-Newton steps per image at most (0 skips the phase).
    inner_tol : float, default 0.03
        Largest forcing term :math:`\eta` of the inexact Gauss-Newton steps (Eisenstat & Walker 1996):
        each step's LSQR stops once :math:`\|J^T (r - J \delta)\| \le \eta_k \|J^T r\|`.
    inner_maxiter : int, default 300
        LSQR iterations per Gauss-Newton step at most.
    tv : float, default 0.0
        Weight of the total-variation prior of the L-BFGS phase (``0.01`` suits images in [0, 1] with a box).
    box : (float, float), optional
        Keep the estimate in ``[lo, hi]`` (e.g. ``(0, 1)`` for images): the start, the end of every L-BFGS
        round and every Gauss-Newton step are projected onto it.
    min_gain : float, default 0.005
        An image ends a phase when an L-BFGS round (or a Gauss-Newton step) lowers its objective (its
        relative feature residual) by less than this fraction.
    """

    tol: float = 1e-10
    start: str = "auto"
    lbfgs_evaluations: int = 500
    max_steps: int = 30
    inner_tol: float = 0.03
    inner_maxiter: int = 300
    tv: float = 0.0
    box: tuple[float, float] | None = None
    min_gain: float = 0.005

    def __post_init__(self) -> None:
        if self.start not in JOINT_STARTS:
            raise OptionError(f"JointOptions: expected start in {JOINT_STARTS}, got {self.start!r}")
        if self.tv < 0:
            raise OptionError(f"JointOptions: expected a non-negative tv weight, got {self.tv}; use 0 for no prior")
        if self.box is not None and not self.box[0] < self.box[1]:
            raise OptionError(f"JointOptions: expected a box (lo, hi) with lo < hi, got {self.box}")
        for name in ("lbfgs_evaluations", "max_steps", "inner_maxiter"):
            if getattr(self, name) < 0:
                raise OptionError(f"JointOptions: expected {name} >= 0, got {getattr(self, name)}")
        if not self.tol >= 0:
            raise OptionError(f"JointOptions: expected tol >= 0, got {self.tol}")
        if not 0 < self.inner_tol < 1:
            raise OptionError(f"JointOptions: expected 0 < inner_tol < 1, got {self.inner_tol}; 0.03 is the default")


@dataclass
class JointResult:
    r"""The outcome of :func:`match_features`, per image.

    Attributes
    ----------
    image : torch.Tensor
        The input estimates, ``(N, ...)``.
    evaluations : torch.Tensor
        ``(N,)`` L-BFGS objective evaluations (each one forward and one backward pass of the prefix).
    iterations : torch.Tensor
        ``(N,)`` Gauss-Newton steps taken (each linearises the prefix once: one forward pass).
    inner_iterations : torch.Tensor
        ``(N,)`` LSQR iterations over all Gauss-Newton steps (each one Jacobian-vector and one
        vector-Jacobian product of the linearisation).
    residual : torch.Tensor
        ``(N,)`` relative feature residuals :math:`\|f(\hat x) - y\| / \|y\|`.
    converged : torch.Tensor
        ``(N,)`` whether each image met ``tol``.
    history : list of list of float
        Per image, its relative feature residual at the start, after every L-BFGS round and after every
        Gauss-Newton step.
    """

    image: torch.Tensor
    evaluations: torch.Tensor
    iterations: torch.Tensor
    inner_iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    history: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureTarget:
    r"""What a prefix must output, per entry: :math:`\ell \le f(x) \le u` (:math:`\ell = u` where the value is known).

    Equal bounds are equations (the features themselves, or a value an exact step recovered); unequal ones are
    the inequalities a clipping activation or max-pooling leaves on its input (see :class:`~invertnet.activeset.
    Constraints`).

    Attributes
    ----------
    lower, upper : torch.Tensor
        ``(N, ...)``, the shape of the prefix's output; ``-inf`` / ``inf`` where a side is free.
    scale : torch.Tensor
        ``(N,)``: the norm residuals are relative to (the features' norm for equations; for bounds, the norm of
        the finite bound nearest each entry's reading).

    Examples
    --------
    >>> import torch
    >>> target = FeatureTarget.equal(torch.tensor([[3.0, 4.0]]))
    >>> target.misfit(torch.tensor([[3.0, 5.0]])), target.scale
    (tensor([[0., 1.]]), tensor([5.]))
    """

    lower: torch.Tensor
    upper: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def equal(cls, y: torch.Tensor) -> FeatureTarget:
        """The equations ``f(x) = y``."""
        y = y.detach()
        return cls(y, y, y.flatten(1).norm(dim=1).clamp(min=torch.finfo(y.dtype).tiny))

    @classmethod
    def between(cls, lower: torch.Tensor, upper: torch.Tensor) -> FeatureTarget:
        """The box ``lower <= f(x) <= upper``; the scale is that of the finite bounds (the value a reading gives)."""
        reference = torch.where(lower.isfinite(), lower, torch.where(upper.isfinite(), upper, 0.0))
        scale = reference.flatten(1).norm(dim=1).clamp(min=torch.finfo(lower.dtype).tiny)
        return cls(lower.detach(), upper.detach(), scale)

    def select(self, index: torch.Tensor) -> FeatureTarget:
        """The target of the images ``index``."""
        return FeatureTarget(self.lower[index], self.upper[index], self.scale[index])

    def misfit(self, value: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        r"""How far ``value`` is outside the target, entry by entry (0 inside): differentiable, 1 on equations."""
        lower = self.lower if index is None else self.lower[index]
        upper = self.upper if index is None else self.upper[index]
        known = lower == upper
        outside = (value - upper).clamp(min=0) - (lower - value).clamp(min=0)
        return torch.where(known, value - lower, outside)

    def to(self, dtype: torch.dtype) -> FeatureTarget:
        """The same target in ``dtype``."""
        return FeatureTarget(self.lower.to(dtype), self.upper.to(dtype), self.scale.to(dtype))

    def shifted(self, shift: torch.Tensor) -> FeatureTarget:
        """The target moved by ``shift`` (both bounds; the scale stays): a Bregman iteration's target."""
        return FeatureTarget(self.lower + shift, self.upper + shift, self.scale)


#: ``FeatureProblem(box_penalty=True)``: the weight of the squared box violation (RMS, as a fraction of the box's
#: width) against the squared relative misfit: a violation of 0.1% of the width costs what a misfit of 1% does.
BOX_WEIGHT = 100.0


@dataclass
class FeatureProblem:
    r"""Find :math:`x` in a box with :math:`f(x)` on target; a prior chooses among the preimages.

    Attributes
    ----------
    f : callable
        The prefix, ``(n, ...) -> (n, ...)`` on any subset of the images.
    target : FeatureTarget
    prior : callable, optional
        ``prior(x) -> (n,)`` (see :mod:`invertnet.reconstruction.priors`).
    box : (float, float), optional
        Keep every estimate in ``[lo, hi]``.
    free : torch.Tensor, optional
        ``(N, ...)`` booleans, the entries of ``x`` that may move (default all); the others keep their start.
    box_penalty : bool, default False
        How the box is kept. ``False``: iterates are projected on it (at the end of every L-BFGS round and every
        Gauss-Newton step). ``True``: its violation is part of the misfit, weighted by :data:`BOX_WEIGHT`
        (:math:`\|x - \Pi(x)\|^2 / (n w^2)`, :math:`w` the box's width), so L-BFGS and Gauss-Newton see it
        (a projection after an unconstrained step undoes the step's work); the caller projects at the end.
    """

    f: Callable[[torch.Tensor], torch.Tensor]
    target: FeatureTarget
    prior: Prior | None = None
    box: tuple[float, float] | None = None
    free: torch.Tensor | None = None
    box_penalty: bool = False

    def misfit(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The target's misfit at ``x`` (the images ``index``)."""
        return self.target.misfit(self.f(x), index)

    def _box_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """With ``box_penalty``: the weighted violation of the box, ``(n, numel)``; else None."""
        if not self.box_penalty or self.box is None:
            return None
        lo, hi = self.box
        violation = (x - x.clamp(lo, hi)).flatten(1)
        return violation * math.sqrt(BOX_WEIGHT / violation.shape[1]) / (hi - lo)

    def stacked(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``(n, k)``: the misfit relative to the target's scale, then (with ``box_penalty``) the weighted violation."""
        rows = self.misfit(x, index).flatten(1) / self.target.scale[index, None]
        box = self._box_rows(x)
        return rows if box is None else torch.cat([rows, box], dim=1)

    def objective(self, x: torch.Tensor, index: torch.Tensor, weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image of ``index`` at ``x``: the relative misfit, and the squared stacked misfit plus the prior."""
        scale = self.target.scale[index]
        residual = self.misfit(x, index).flatten(1).norm(dim=1) / scale
        value = residual**2
        box = self._box_rows(x)
        if box is not None:
            value = value + box.pow(2).sum(dim=1)
        if weight > 0 and self.prior is not None:
            value = value + weight * self.prior(x) / scale**2
        return residual, value

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` projected on the box (without ``box_penalty``; with it, the caller projects at the end)."""
        return x if self.box is None or self.box_penalty else x.clamp(*self.box)

    def mask(self, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``v`` with the entries that may not move set to 0."""
        return v if self.free is None else v * self.free[index]


@dataclass
class MatchState:
    """The per-image state of a feature match, advanced by the phases (each image stops on its own)."""

    x: torch.Tensor
    residual: torch.Tensor
    history: list[list[float]]
    evaluations: torch.Tensor
    iterations: torch.Tensor
    inner_iterations: torch.Tensor

    @classmethod
    def start(cls, problem: FeatureProblem, x0: torch.Tensor) -> MatchState:
        """Project ``x0`` on the box and evaluate it."""
        x = problem.project(x0.detach().clone())
        n = x.shape[0]
        everyone = torch.arange(n, device=x.device)
        with torch.no_grad():
            residual = problem.objective(x, everyone)[0]
        zeros = torch.zeros(n, dtype=torch.long, device=x.device)
        return cls(x, residual, [[float(r)] for r in residual], zeros, zeros.clone(), zeros.clone())

    def record(self, index: torch.Tensor) -> None:
        """Append the current residuals of ``index`` to their histories."""
        for i in index.tolist():
            self.history[i].append(float(self.residual[i]))


def _reporter(state: MatchState, progress: Callable[[int, float], None] | None) -> Callable[[torch.Tensor], None]:
    reports = max(len(h) for h in state.history) - 1

    def report(index: torch.Tensor) -> None:
        nonlocal reports
        state.record(index)
        most = max(len(h) for h in state.history) - 1
        if most > reports:
            reports = most
            if progress is not None:
                progress(reports, float(state.residual.max()))

    return report


def lbfgs_phase(
    problem: FeatureProblem,
    state: MatchState,
    budget: torch.Tensor,
    *,
    weight: float = 0.0,
    tol: float = 0.0,
    min_gain: float = 0.005,
    restart: bool = False,
    report: Callable[[torch.Tensor], None] | None = None,
) -> None:
    r"""L-BFGS on the misfit plus ``weight`` times the prior, per image, in rounds of :data:`LBFGS_ROUND` evaluations.

    At the end of every round an image's iterate is projected on the box and kept in ``state``. An image stops
    when its budget is spent, its residual is at most ``tol``, a round gains less than ``min_gain`` of its
    objective, or its line search fails (with ``restart``, a failed search or a projection that moved the iterate
    restarts L-BFGS from the kept point instead, while the round still gains).

    Parameters
    ----------
    budget : torch.Tensor
        ``(N,)`` objective evaluations per image (0: the image does not run).
    """
    report = report or state.record
    n = state.x.shape[0]
    device = state.x.device
    running = (budget > 0) & (state.residual > tol)
    phase_start = state.evaluations.clone()

    def objective(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            variable = x.detach().requires_grad_(True)
            value = problem.objective(variable, index, weight)[1]
            (gradient,) = torch.autograd.grad(value.sum(), variable)
        return value.detach(), problem.mask(gradient, index)

    last = torch.full((n,), float("inf"), dtype=state.x.dtype, device=device)
    with torch.no_grad():
        while bool(running.any()):  # one L-BFGS run; a restart begins another from the kept points
            limit = torch.where(running, budget - (state.evaluations - phase_start), 0)
            before = state.evaluations.clone()
            solver = BatchLBFGS(objective, state.x, limit)
            round_start = solver.evaluations.clone()
            again = torch.zeros(n, dtype=torch.bool, device=device)
            while bool((running & ~again).any()):
                index = (running & ~again).nonzero().flatten()
                moved = solver.step(index)[index]
                spent = solver.evaluations[index]
                ended = ~moved | (spent - round_start[index] >= LBFGS_ROUND) | (spent >= limit[index])
                index, moved = index[ended], moved[ended]
                if index.numel() == 0:
                    continue
                candidate = problem.project(solver.iterate[index])
                clamped = (candidate != solver.iterate[index]).flatten(1).any(dim=1)
                state.residual[index], current = problem.objective(candidate, index, weight)
                state.x[index] = candidate
                state.evaluations[index] = before[index] + solver.evaluations[index]
                report(index)
                progress = solver.evaluations[index] - round_start[index]
                stalled = (progress <= 1) | (current > (1 - min_gain) * last[index])
                stop = stalled | (solver.evaluations[index] >= limit[index]) | (state.residual[index] <= tol)
                if not restart:
                    stop = stop | ~moved
                last[index] = current
                round_start[index] = solver.evaluations[index]
                running[index[stop]] = False
                if restart:
                    again[index[~stop & (~moved | clamped)]] = True
            if not bool(again.any()):
                break


class _Linearisation(LinearOperator):
    r""":math:`\delta \mapsto J \delta` at a fixed point (the activation pattern frozen), flattened per sample.

    ``value`` is the misfit at the point, a by-product of the vector-Jacobian product's forward pass.
    :math:`J^T u` is that vector-Jacobian product; :math:`J \delta` is the vector-Jacobian product of the linear map
    :math:`u \mapsto J^T u` itself (its transpose), one double backward pass through reverse-mode formulas. That is
    :math:`J` exactly, and the exact transpose of :meth:`adjoint`: on All-CNN-B's conv2 it equals
    ``torch.func.jvp`` bit for bit and runs 2x (64 px) to 5x (32 px) faster, since forward-mode AD of elementwise
    operations runs Python decompositions (about 1 ms each, whatever the size); through max-pooling it is slower
    (ConvPool-CNN-C's pool3 at 32 px: 98 ms against 86). A network whose backward pass is
    not differentiable (a custom ``autograd.Function`` with a ``once_differentiable`` backward) falls back to
    ``torch.func.jvp``. ``torch.func.linearize`` costs a fixed 0.3-0.4 s to trace.
    """

    def __init__(
        self, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        self.f, self.x, self.mask = f, x, mask
        pair = vjp(f, x)
        value: torch.Tensor = pair[0]
        self._vjp = pair[1]
        self._transpose: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None
        self._double_backward = True
        self.value = value
        self._feature_shape = tuple(value.shape[1:])
        self.in_shape = tuple(x.shape[1:])
        self.out_shape = (math.prod(self._feature_shape),)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            v = v * self.mask
        if self._double_backward and self._transpose is None:
            self._double_backward = self._build_transpose()
        if self._double_backward and self._transpose is not None:
            return self._transpose(v)[0].detach().flatten(1)
        jv: torch.Tensor = jvp(self.f, (self.x,), (v,))[1]
        return jv.flatten(1)

    def _build_transpose(self) -> bool:
        r"""Build the vjp of the vjp and check it against the vjp on one random pair: whether it is :math:`J`.

        A backward pass that autograd cannot differentiate either raises or, for a ``once_differentiable``
        backward under ``torch.func``, silently drops its part of :math:`J`: :math:`\langle T w, u \rangle =
        \langle w, J^T u \rangle` on random :math:`w, u` tells.
        """
        try:
            self._transpose = vjp(lambda u: self._vjp(u)[0], torch.ones_like(self.value))[1]
            generator = torch.Generator(device=self.x.device).manual_seed(0)
            w = torch.randn(self.x.shape, generator=generator, dtype=self.x.dtype, device=self.x.device)
            u = torch.randn(self.value.shape, generator=generator, dtype=self.x.dtype, device=self.x.device)
            tw, jtu = self._transpose(w)[0].detach(), self._vjp(u)[0].detach()
        except RuntimeError:
            return False
        scale = float(tw.norm() * u.norm() + w.norm() * jtu.norm())
        return abs(float((tw * u).sum() - (w * jtu).sum())) <= 1e-8 * scale

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._vjp(u.reshape(u.shape[0], *self._feature_shape))[0]
        return out if self.mask is None else out * self.mask


#: L-BFGS objective evaluations between two residual checks (and progress reports).
LBFGS_ROUND = 25
#: Eisenstat-Walker "choice 2" constants: :math:`\eta_k = \gamma (\|r_k\| / \|r_{k-1}\|)^\alpha`.
FORCING_GAMMA, FORCING_ALPHA = 0.9, 2.0
#: Gauss-Newton step lengths tried, halving from 1, before an image gives up a step.
LINE_SEARCH_HALVINGS = 7


def _forcing(eta: torch.Tensor, ratio: torch.Tensor, residual: torch.Tensor, tol: float, cap: float) -> torch.Tensor:
    r"""The next forcing terms (Eisenstat & Walker 1996, choice 2, with their safeguards).

    :math:`\eta_k = \gamma (\|r_k\|/\|r_{k-1}\|)^2`, not below :math:`\gamma \eta_{k-1}^2` when that exceeds 0.1
    (no sudden oversolving), at most ``cap``, and not below :math:`\mathrm{tol} / (2 \|r_k\|)` (no solving
    past the outer tolerance).
    """
    new = FORCING_GAMMA * ratio**FORCING_ALPHA
    previous = FORCING_GAMMA * eta**FORCING_ALPHA
    new = torch.where(previous > 0.1, torch.maximum(new, previous), new)
    return torch.maximum(new.clamp(max=cap), (0.5 * tol / residual.clamp(min=1e-300)).clamp(max=cap))


def gauss_newton_phase(
    problem: FeatureProblem,
    state: MatchState,
    *,
    max_steps: int,
    tol: float,
    inner_tol: float = 0.03,
    inner_maxiter: int = 300,
    min_gain: float = 0.005,
    report: Callable[[torch.Tensor], None] | None = None,
) -> None:
    r"""Inexact Gauss-Newton on the misfit, per image, with its activation pattern fixed at its current estimate.

    Each step solves :math:`\min_\delta \|J \delta + r\|` (:math:`r` the misfit, :math:`J` its Jacobian: the
    prefix's on equations and on violated bounds, 0 on satisfied bounds) by LSQR from zero, so the step has no
    component the target cannot see (the prior's choice there stays), and only as far as the Eisenstat-Walker
    forcing term asks (at most ``inner_tol``); the step is then halved until the misfit decreases. An image
    stops at ``tol``, after ``max_steps``, or when a step gains less than ``min_gain`` of its residual.
    """
    report = report or state.record
    x = state.x
    n = x.shape[0]
    device = x.device
    eta = torch.full((n,), inner_tol, dtype=x.dtype, device=device)
    eps = torch.finfo(x.dtype).eps
    running = (state.residual > tol) & (max_steps > 0)
    start_steps = state.iterations.clone()
    with torch.no_grad():
        while bool(running.any()):
            index = running.nonzero().flatten()

            def stacked(u: torch.Tensor, index: torch.Tensor = index) -> torch.Tensor:
                return problem.stacked(u, index)

            free = None if problem.free is None else problem.free[index].to(x.dtype)
            op = _Linearisation(stacked, x[index], free)
            solution = lsqr(
                op,
                -op.value.flatten(1),
                atol=eps,
                btol=eps,
                maxiter=inner_maxiter,
                normal_tol=eta[index],
                warn=False,
            )
            # the measure of progress: the misfit, or with a box penalty the misfit and the violation together
            before_value = op.value.flatten(1).norm(dim=1) if problem.box_penalty else state.residual[index].clone()
            del op
            state.inner_iterations[index] += solution.sample_iterations
            state.iterations[index] += 1
            before = state.residual[index].clone()
            step = torch.ones_like(before)
            searching = torch.ones_like(before, dtype=torch.bool)
            better = torch.zeros_like(searching)
            after_value = before_value.clone()
            for _ in range(LINE_SEARCH_HALVINGS + 1):
                rows = searching.nonzero().flatten()
                if rows.numel() == 0:
                    break
                who = index[rows]
                candidate = problem.project(x[who] + step[rows].reshape(-1, *([1] * (x.ndim - 1))) * solution.x[rows])
                trial, trial_value = problem.objective(candidate, who)
                measure = trial_value.sqrt() if problem.box_penalty else trial
                improved = measure <= before_value[rows]
                x[who[improved]] = candidate[improved]
                state.residual[who[improved]] = trial[improved]
                after_value[rows[improved]] = measure[improved]
                better[rows] = improved
                searching[rows] = ~improved
                step[rows] = torch.where(improved, step[rows], step[rows] / 2)
            report(index)
            residual = state.residual[index]
            eta[index] = _forcing(eta[index], residual / before, residual, tol, inner_tol)
            stalled = ~better | (after_value > (1 - min_gain) * before_value)
            stop = stalled | (state.iterations[index] - start_steps[index] >= max_steps) | (residual <= tol)
            running[index[stop]] = False


def match_features(
    f: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    x0: torch.Tensor,
    options: JointOptions | None = None,
    progress: Callable[[int, float], None] | None = None,
    *,
    lbfgs: torch.Tensor | None = None,
) -> JointResult:
    r"""Find :math:`x` with :math:`f(x) = y`, per image: L-BFGS on the feature misfit, then pattern-fixed Gauss-Newton.

    The images of a batch are independent problems solved together: every count, tolerance and stop is
    per image, and an image that has stopped is no longer evaluated (its estimate is frozen). A batch
    gives each image the result it gets alone (up to the rounding of batched kernels).

    Parameters
    ----------
    f : callable
        The prefix, ``(N, C, H, W) -> features``, applied to any subset of the images; piecewise linear
        for exact recovery (CReLU, ReLU, leaky ReLU, pooling, affine layers), any differentiable map
        otherwise.
    y : torch.Tensor
        Target features, ``(N, ...)``.
    x0 : torch.Tensor
        Start (e.g. a flat grey image, or the best layer-by-layer estimate), ``(N, ...)``.
    options : JointOptions, optional
        Tolerance, caps of both phases, prior and box (see :class:`JointOptions`).
    progress : callable, optional
        Called as ``progress(round, residual)`` whenever some image ends an L-BFGS round of
        :data:`LBFGS_ROUND` evaluations or a Gauss-Newton step (``round``: the most any image has ended;
        ``residual``: the largest current one). The CLI draws its bar with it.
    lbfgs : torch.Tensor, optional
        ``(N,)`` booleans: the images that run the L-BFGS phase (default: all; the others go straight to
        Gauss-Newton).

    Returns
    -------
    JointResult

    Notes
    -----
    Gauss-Newton step :math:`k` of an image solves :math:`\min_\delta \|J_k \delta - r_k\|` by LSQR from
    zero (the minimum-norm step: nothing the features cannot see), inexactly: it stops once
    :math:`\|J_k^T (r_k - J_k \delta)\| \le \eta_k \|J_k^T r_k\|`, with the forcing term :math:`\eta_k` of
    Eisenstat & Walker (1996) from the last residual ratio, capped at ``inner_tol``. Far from the solution
    the activation pattern changes from step to step and a loose step is all the linearisation is good
    for (measured on All-CNN-B from conv2 at 224: 300 LSQR iterations per step gain less per step than
    15); near it, :math:`\eta_k` shrinks with the residual and the steps converge fast. The step is then
    halved until the misfit decreases.

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 2), CReLU(), torch.nn.Conv2d(16, 20, 2)).double()
    >>> x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    >>> with torch.no_grad():
    ...     result = match_features(net, net(x), torch.zeros_like(x) + 0.5)
    >>> result.converged.tolist(), float((result.image - x).norm() / x.norm()) < 1e-8
    ([True, True], True)
    """
    options = options or JointOptions()
    problem = FeatureProblem(f, FeatureTarget.equal(y), TotalVariation() if options.tv > 0 else None, options.box)
    state = MatchState.start(problem, x0)
    report = _reporter(state, progress)
    n = y.shape[0]
    budget = torch.full((n,), options.lbfgs_evaluations, dtype=torch.long, device=y.device)
    if lbfgs is not None:
        budget = torch.where(lbfgs.to(y.device), budget, 0)
    lbfgs_phase(problem, state, budget, weight=options.tv, tol=options.tol, min_gain=options.min_gain, report=report)
    gauss_newton_phase(
        problem,
        state,
        max_steps=options.max_steps,
        tol=options.tol,
        inner_tol=options.inner_tol,
        inner_maxiter=options.inner_maxiter,
        min_gain=options.min_gain,
        report=report,
    )
    converged = state.residual <= options.tol
    return JointResult(
        state.x,
        state.evaluations,
        state.iterations,
        state.inner_iterations,
        state.residual,
        converged,
        state.history,
    )
