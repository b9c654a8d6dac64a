r"""Joint inversion of a network prefix: match the features of every layer at once.

Inverting one layer at a time throws away what later layers know (behind a CReLU input the
unknowns are half the channels, but a linear pseudo-inverse treats all of them as free). Joint
inversion fits the features of the whole prefix in two phases:

1. **L-BFGS** (:class:`~invertnet.lbfgs.BatchLBFGS`, one run per image with a weak-Wolfe line
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

   with :math:`J` applied matrix-free (``torch.func.jvp`` / ``torch.func.vjp``), the inner problem
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
from invertnet.lbfgs import BatchLBFGS
from invertnet.operators import LinearOperator
from invertnet.solvers import lsqr

__all__ = ["JOINT_STARTS", "LBFGS_ROUND", "JointOptions", "JointResult", "match_features"]


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
        estimate is computed with LSQR capped, :data:`invertnet.reconstruct.LAYERS_PROBE_ITERATIONS`). Measured on
        All-CNN-B at 224x224 from conv2, L-BFGS gets 34 dB from the flat start and 21 dB from the
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


def _gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences along H and W (zero at the far border), stacked on a new axis 1."""
    dh = torch.zeros_like(x)
    dw = torch.zeros_like(x)
    dh[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dw[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([dh, dw], dim=1)


class _Linearisation(LinearOperator):
    r""":math:`\delta \mapsto J \delta` at a fixed point (the activation pattern frozen), flattened per sample.

    ``value`` is :math:`f(x)`, a by-product of the vector-Jacobian product's forward pass.
    ``torch.func.linearize`` would apply :math:`J` for a third of a ``torch.func.jvp`` but costs a fixed
    0.3-0.4 s to trace (7 passes of All-CNN-B conv2 at 224, about 100 at 64): more than the inexact
    steps' 5-40 products save.
    """

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
        self.f, self.x = f, x
        pair = vjp(f, x)
        value: torch.Tensor = pair[0]
        self._vjp = pair[1]
        self.value = value
        self._feature_shape = tuple(value.shape[1:])
        self.in_shape = tuple(x.shape[1:])
        self.out_shape = (math.prod(self._feature_shape),)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        jv: torch.Tensor = jvp(self.f, (self.x,), (v,))[1]
        return jv.flatten(1)

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._vjp(u.reshape(u.shape[0], *self._feature_shape))[0]
        return out


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
    tol, tv, box, min_gain = options.tol, options.tv, options.box, options.min_gain
    y = y.detach()
    n = y.shape[0]
    x = x0.detach().clone()
    if box is not None:
        x = x.clamp(*box)
    y_norm = y.flatten(1).norm(dim=1).clamp(min=torch.finfo(y.dtype).tiny)
    device = y.device

    def objective(x: torch.Tensor, index: torch.Tensor, prior: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image of ``index`` at ``x``: relative residual, and its square plus the prior."""
        residual = (f(x) - y[index]).flatten(1).norm(dim=1) / y_norm[index]
        value = residual**2
        if prior > 0:
            tv_x = _gradient(x).pow(2).sum(dim=1).add(1e-6).sqrt().flatten(1).sum(dim=1)
            value = value + prior * tv_x / y_norm[index] ** 2
        return residual, value

    everyone = torch.arange(n, device=device)
    with torch.no_grad():
        residual = objective(x, everyone)[0]
    history = [[float(r)] for r in residual]
    reports = 0

    def report(index: torch.Tensor) -> None:
        nonlocal reports
        for i in index.tolist():
            history[i].append(float(residual[i]))
        most = max(len(h) for h in history) - 1
        if most > reports:
            reports = most
            if progress is not None:
                progress(reports, float(residual.max()))

    def unmet(index: torch.Tensor) -> torch.Tensor:
        return residual[index] > tol

    # Phase 1: L-BFGS, per image, on its objective with the prior.
    budget = torch.full((n,), options.lbfgs_evaluations, dtype=torch.long, device=device)
    if lbfgs is not None:
        budget = torch.where(lbfgs.to(device), budget, 0)
    budget = torch.where(unmet(everyone), budget, 0)

    def lbfgs_objective(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            variable = x.detach().requires_grad_(True)
            value = objective(variable, index, tv)[1]
            (gradient,) = torch.autograd.grad(value.sum(), variable)
        return value.detach(), gradient

    running = budget > 0
    evaluations = torch.zeros(n, dtype=torch.long, device=device)
    last = torch.full((n,), float("inf"), dtype=x.dtype, device=device)
    with torch.no_grad():
        solver = BatchLBFGS(lbfgs_objective, x, budget) if bool(running.any()) else None
        round_start = evaluations.clone() if solver is None else solver.evaluations.clone()
        while solver is not None and bool(running.any()):
            index = running.nonzero().flatten()
            moved = solver.step(index)[index]
            spent = solver.evaluations[index]
            ended = ~moved | (spent - round_start[index] >= LBFGS_ROUND) | (spent >= budget[index])
            index, moved = index[ended], moved[ended]
            if index.numel() == 0:
                continue
            candidate = solver.iterate[index]
            if box is not None:
                candidate = candidate.clamp(*box)
            residual[index], current = objective(candidate, index, tv)
            x[index] = candidate
            report(index)
            stalled = (solver.evaluations[index] - round_start[index] <= 1) | (current > (1 - min_gain) * last[index])
            stop = ~moved | stalled | (solver.evaluations[index] >= budget[index]) | ~unmet(index)
            last[index] = current
            round_start[index] = solver.evaluations[index]
            running[index[stop]] = False
        if solver is not None:
            evaluations = solver.evaluations

    # Phase 2: inexact Gauss-Newton, per image, with its activation pattern fixed at its current estimate.
    iterations = torch.zeros(n, dtype=torch.long, device=device)
    inner = torch.zeros(n, dtype=torch.long, device=device)
    eta = torch.full((n,), options.inner_tol, dtype=x.dtype, device=device)
    eps = torch.finfo(x.dtype).eps
    running = unmet(everyone) & (options.max_steps > 0)
    with torch.no_grad():
        while bool(running.any()):
            index = running.nonzero().flatten()
            op = _Linearisation(f, x[index])
            solution = lsqr(
                op,
                (y[index] - op.value).flatten(1),
                atol=eps,
                btol=eps,
                maxiter=options.inner_maxiter,
                normal_tol=eta[index],
                warn=False,
            )
            del op
            inner[index] += solution.sample_iterations
            iterations[index] += 1
            before = residual[index].clone()
            step = torch.ones_like(before)
            searching = torch.ones_like(before, dtype=torch.bool)
            better = torch.zeros_like(searching)
            for _ in range(LINE_SEARCH_HALVINGS + 1):
                rows = searching.nonzero().flatten()
                if rows.numel() == 0:
                    break
                who = index[rows]
                candidate = x[who] + step[rows].reshape(-1, *([1] * (x.ndim - 1))) * solution.x[rows]
                if box is not None:
                    candidate = candidate.clamp(*box)
                trial = objective(candidate, who)[0]
                improved = trial <= before[rows]
                x[who[improved]] = candidate[improved]
                residual[who[improved]] = trial[improved]
                better[rows] = improved
                searching[rows] = ~improved
                step[rows] = torch.where(improved, step[rows], step[rows] / 2)
            report(index)
            eta[index] = _forcing(eta[index], residual[index] / before, residual[index], tol, options.inner_tol)
            stalled = ~better | (residual[index] > (1 - min_gain) * before)
            stop = stalled | (iterations[index] >= options.max_steps) | ~unmet(index)
            running[index[stop]] = False
    return JointResult(x, evaluations, iterations, inner, residual, ~unmet(everyone), history)
