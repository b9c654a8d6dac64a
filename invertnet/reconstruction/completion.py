r"""The default's completion: a feature-consistent input, with a natural-image prior on what the features leave free.

Where the layer-by-layer walk cannot prove its way down to the image (:mod:`invertnet.reconstruction.walk`), it hands
over a *frontier*: the deepest node whose preimages it knows, as a value (equal bounds, proven by exact steps) or as the
box a clipping activation or max-pooling leaves on its input. The completion finds an input :math:`x` in the box
:math:`[\ell, u]^n` of valid pixels whose prefix :math:`f` reaches that target, and lets a prior choose among the
many such inputs:

.. math::

    \min_{x \in [\ell, u]^n} \; R(x) \quad \text{subject to} \quad f(x) \in [t_-, t_+],

by a penalty continuation: L-BFGS on :math:`\|m(x)\|^2 / s^2 + \lambda_k R(x) / s^2` (:math:`m` the misfit to the
target, :math:`s` its scale) with :math:`\lambda_k` falling through ``stages``, each stage warm-started from the last
(the prior picks the basin and the natural preimage; the weight falls so that the features win), then Gauss-Newton
with the activation pattern fixed and without the prior (minimum-norm steps: nothing the target cannot see moves,
so the prior's choice in the free directions stays). The L-BFGS stages can run in float32 on a float32 copy of the
prefix (``single``); Gauss-Newton and every reported number are in the working precision.

Determined entries stay: where the walk proved every input entry a layer reads (``free`` is then the complement),
the completion moves only the free ones, and a start that already meets the target only has its free entries
filled by the prior (the features cannot see them). Each image reports its start, its residual history and why
it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from invertnet._checks import consistency_tol
from invertnet.errors import OptionError
from invertnet.linalg.lbfgs import BatchLBFGS
from invertnet.reconstruction.joint import FeatureProblem, FeatureTarget, MatchState, gauss_newton_phase, lbfgs_phase
from invertnet.reconstruction.priors import Prior, TotalVariation

__all__ = ["CompletionOptions", "CompletionResult", "complete", "consistency_tol"]


@dataclass(frozen=True)
class CompletionOptions:
    r"""Settings of the completion (:func:`complete`; the default of :func:`invertnet.reconstruct`).

    Attributes
    ----------
    prior : callable or None, default TotalVariation()
        A differentiable ``prior(x) -> (N,)`` (see :mod:`invertnet.reconstruction.priors`); ``None`` for none.
    weight : float, default 0.01
        The prior's weight in the first stage, relative to the squared norm of the target (as ``--tv``).
    box : (float, float), optional
        Valid input values; :func:`invertnet.reconstruct` passes ``(0, data_range)`` for images.
    evaluations : int, default 500
        L-BFGS evaluations per image over all stages (split evenly).
    rounds : int, default 1
        Bregman rounds of L-BFGS (the evaluations split evenly): each adds the misfit left back to the target.
    max_steps : int, default 10
        Gauss-Newton steps per image and cycle at most.
    cycles : int, default 1
        L-BFGS then Gauss-Newton, repeated while Gauss-Newton stalls above ``tol`` (a stall means a wrong
        activation pattern, which L-BFGS's curved path can leave where pattern-fixed steps cannot).
    inner_maxiter : int, default 300
        LSQR iterations per Gauss-Newton step at most.
    tol : float, optional
        Relative residual at which the target is met; default :func:`consistency_tol` of the working dtype.
    single : bool, default True
        Run the L-BFGS stages in float32 when the working dtype is float64 (about twice as fast on a CPU).
    fill_evaluations : int, default 100
        L-BFGS evaluations of the prior alone on the free entries, when the start already meets the target.
    """

    prior: Prior | None = field(default_factory=TotalVariation)
    weight: float = 0.01
    box: tuple[float, float] | None = None
    evaluations: int = 500
    rounds: int = 1
    max_steps: int = 10
    cycles: int = 1
    inner_maxiter: int = 300
    tol: float | None = None
    single: bool = True
    fill_evaluations: int = 100

    def __post_init__(self) -> None:
        if self.prior is not None and not callable(self.prior):
            raise OptionError(
                f"CompletionOptions: expected a callable prior(x) -> (N,) or None, got {type(self.prior).__name__}; "
                "see invertnet.reconstruction.priors"
            )
        if not self.weight >= 0:
            raise OptionError(
                f"CompletionOptions: expected a non-negative weight, got {self.weight}; 0.01 is the default"
            )
        if self.box is not None and not self.box[0] < self.box[1]:
            raise OptionError(f"CompletionOptions: expected a box (lo, hi) with lo < hi, got {self.box}")
        if self.rounds < 1:
            raise OptionError(f"CompletionOptions: expected rounds >= 1, got {self.rounds}")
        if self.cycles < 1:
            raise OptionError(f"CompletionOptions: expected cycles >= 1, got {self.cycles}")
        for name in ("evaluations", "max_steps", "inner_maxiter", "fill_evaluations"):
            if getattr(self, name) < 0:
                raise OptionError(f"CompletionOptions: expected {name} >= 0, got {getattr(self, name)}")
        if self.tol is not None and not self.tol >= 0:
            raise OptionError(f"CompletionOptions: expected tol >= 0, got {self.tol}")


@dataclass
class CompletionResult:
    """What the completion did, per image.

    Attributes
    ----------
    image : torch.Tensor
        The completed inputs.
    residual : torch.Tensor
        ``(N,)`` relative misfit to the target at the end.
    converged : torch.Tensor
        ``(N,)`` whether the target is met to ``tol``.
    start : list of str
        Per image, where it started (``"walk"``: the walk's estimate projected on the box; ``"flat"``).
    stopped : list of str
        Per image, why it stopped.
    evaluations, steps, inner_iterations : torch.Tensor
        ``(N,)`` L-BFGS evaluations, Gauss-Newton steps and their LSQR iterations.
    history : list of list of float
        Per image, the relative misfit at the start, after each L-BFGS round and after each Gauss-Newton step.
    """

    image: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    start: list[str]
    stopped: list[str]
    evaluations: torch.Tensor
    steps: torch.Tensor
    inner_iterations: torch.Tensor
    history: list[list[float]]


#: A candidate start other than the first (flat) one competes only where its relative misfit is at most this: an
#: estimate off the target sits in another activation basin, and L-BFGS does not leave it (measured on All-CNN-B
#: conv2 at 64 px: 31.9 dB from the walk's estimate, misfit 0.44, against 34.8 dB from the flat image).
START_TOL = 1e-6


def _pick_start(
    problem: FeatureProblem, starts: Mapping[str, torch.Tensor], weight: float
) -> tuple[torch.Tensor, list[str]]:
    """Per image, the candidate start with the lowest objective (misfit plus prior), projected on the box.

    The first candidate always competes; the others only where they meet the target to :data:`START_TOL`.
    """
    names = list(starts)
    box = problem.box
    candidates = [starts[name].detach() if box is None else starts[name].detach().clamp(*box) for name in names]
    n = candidates[0].shape[0]
    everyone = torch.arange(n, device=candidates[0].device)
    with torch.no_grad():
        scored = [problem.objective(c, everyone, weight) for c in candidates]
    values = torch.stack([value for _, value in scored])
    for k, (residual, _) in enumerate(scored[1:], start=1):
        values[k] = torch.where(residual <= START_TOL, values[k], torch.inf)
    values = torch.nan_to_num(values, nan=float("inf"))
    best = values.argmin(dim=0)
    x = torch.stack(candidates)[best, everyone]
    return x, [names[int(k)] for k in best]


def _fill(prior: Prior, x: torch.Tensor, free: torch.Tensor, box: tuple[float, float] | None, evaluations: int) -> int:
    """Minimise the prior over the ``free`` entries of ``x`` (in place), the others fixed; the evaluations spent."""
    if evaluations == 0 or not bool(free.any()):
        return 0
    mask = free.to(x.dtype).expand_as(x)

    def objective(u: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            variable = u.detach().requires_grad_(True)
            value = prior(variable)
            (gradient,) = torch.autograd.grad(value.sum(), variable)
        return value.detach(), gradient * mask[index]

    n = x.shape[0]
    with torch.no_grad():
        solver = BatchLBFGS(objective, x, torch.full((n,), evaluations, device=x.device))
        everyone = torch.arange(n, device=x.device)
        while bool(solver.step(everyone).any()):
            pass
        filled = solver.iterate if box is None else solver.iterate.clamp(*box)
        x.copy_(torch.where(mask > 0, filled, x))
    return int(solver.evaluations.max())


def _bregman(
    problem: FeatureProblem,
    state: MatchState,
    todo: torch.Tensor,
    options: CompletionOptions,
    tol: float,
    f_single: Callable[[torch.Tensor], torch.Tensor] | None,
    reporter: Callable[[MatchState], Callable[[torch.Tensor], None]],
) -> None:
    r"""The L-BFGS rounds: misfit plus prior with the target moved by the misfit left so far (Bregman iteration).

    Round :math:`k` minimises :math:`\|m(f(x)) - e_k\|^2 / s^2 + w R(x) / s^2` (the target shifted by :math:`e_k`),
    then :math:`e_{k+1} = e_k - m(f(x_k))`. Adding the misfit back drives it to zero with a fixed weight
    :math:`w`: the limit is the prior's choice among the inputs that meet the target (Osher et al. 2005), where
    lowering :math:`w` would only trade the prior away. In float32 on ``f_single`` when given.
    """
    dtype = state.x.dtype
    work, stage = problem, state
    if f_single is not None:
        work = FeatureProblem(
            f_single, problem.target.to(torch.float32), problem.prior, problem.box, problem.free, box_penalty=True
        )
        stage = MatchState(
            state.x.float(), state.residual.float(), state.history, state.evaluations, state.iterations,
            state.inner_iterations,
        )  # fmt: skip
    base = work.target
    shift = torch.zeros_like(base.lower)
    n = state.x.shape[0]
    everyone = torch.arange(n, device=state.x.device)
    running = todo.clone()
    each = max(1, options.evaluations // options.rounds)
    for _ in range(options.rounds):
        work.target = base.shifted(shift)
        budget = torch.where(running, each, 0).to(state.evaluations)
        lbfgs_phase(work, stage, budget, weight=options.weight, min_gain=0.001, restart=True, report=reporter(stage))
        work.target = base
        with torch.no_grad():
            misfit = base.misfit(work.f(stage.x))
            residual = misfit.flatten(1).norm(dim=1) / base.scale
        stage.residual.copy_(residual)
        shift = torch.where(running.reshape(-1, *([1] * (shift.ndim - 1))), shift - misfit, shift)
        running &= residual > tol
        if not bool(running.any()):
            break
    if stage is not state:
        state.x.copy_(stage.x.to(dtype))
        with torch.no_grad():
            state.residual.copy_(problem.objective(state.x, everyone)[0])


def complete(
    f: Callable[[torch.Tensor], torch.Tensor],
    target: FeatureTarget,
    starts: Mapping[str, torch.Tensor],
    options: CompletionOptions | None = None,
    *,
    free: torch.Tensor | None = None,
    f_single: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> CompletionResult:
    r"""Complete an input: the prior's choice among the inputs whose prefix ``f`` meets ``target``, per image.

    Parameters
    ----------
    f : callable
        The prefix from the input to the frontier, ``(n, ...) -> (n, ...)`` on any subset of the images.
    target : FeatureTarget
        What ``f`` must output (values or bounds).
    starts : mapping of str to torch.Tensor
        Candidate starts by name (e.g. ``{"walk": ..., "flat": ...}``); each image starts from the one with the
        lowest objective.
    options : CompletionOptions, optional
    free : torch.Tensor, optional
        Boolean mask (broadcastable to the input) of the entries that may move; the others are determined and
        keep the value of the start (all of them must then start from the same candidate, the walk's).
    f_single : callable, optional
        The same prefix in float32, for the L-BFGS stages when ``options.single``.
    progress : callable, optional
        ``progress(round, residual)`` after every L-BFGS round and Gauss-Newton step.

    Returns
    -------
    CompletionResult

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), CReLU(), torch.nn.Conv2d(16, 24, 3)).double()
    >>> x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    >>> with torch.no_grad():
    ...     result = complete(net, FeatureTarget.equal(net(x)), {"flat": torch.full_like(x, 0.5)},
    ...                       CompletionOptions(box=(0.0, 1.0), single=False))
    >>> result.start, bool(result.residual[0] < 1e-4), result.stopped[0].split(":")[0]
    (['flat'], True, 'step cap')
    """
    options = options or CompletionOptions()
    if not starts:
        raise OptionError("complete: expected at least one start, got none; pass {'flat': a flat image}")
    dtype = next(iter(starts.values())).dtype
    tol = consistency_tol(dtype) if options.tol is None else options.tol
    expanded = None
    if free is not None:
        like = next(iter(starts.values()))
        expanded = free.to(torch.bool).expand_as(like).to(like.device)
    problem = FeatureProblem(f, target, options.prior, options.box, expanded, box_penalty=True)
    if expanded is not None and "walk" in starts:  # determined entries keep the walk's values
        x0 = starts["walk"].detach() if options.box is None else starts["walk"].detach().clamp(*options.box)
        chosen = ["walk"] * expanded.shape[0]
    else:
        x0, chosen = _pick_start(problem, starts, options.weight)
    state = MatchState.start(problem, x0)
    n = x0.shape[0]
    met_at_start = state.residual <= tol
    rounds = 0

    def reporter(on: MatchState) -> Callable[[torch.Tensor], None]:
        def report(index: torch.Tensor) -> None:
            nonlocal rounds
            on.record(index)
            rounds += 1
            if progress is not None:
                progress(rounds, float(on.residual.max()))

        return report

    report = reporter(state)

    stopped = [""] * n
    if bool(met_at_start.any()) and expanded is not None and options.prior is not None:
        index = met_at_start.nonzero().flatten()
        filled = state.x[index].clone()
        spent = _fill(options.prior, filled, expanded[index], options.box, options.fill_evaluations)
        state.x[index] = filled
        state.evaluations[index] += spent
        with torch.no_grad():
            state.residual[index] = problem.objective(filled, index)[0]
    for i in met_at_start.nonzero().flatten().tolist():
        fill = " (free entries filled by the prior)" if expanded is not None and options.prior is not None else ""
        stopped[i] = f"met the target at the start{fill}: residual {float(state.residual[i]):.2g}"

    single = f_single if options.single and dtype == torch.float64 else None
    todo = ~met_at_start
    capped = torch.zeros_like(todo)
    for _ in range(options.cycles):  # a stalled Gauss-Newton is handed back to L-BFGS, which crosses kinks
        todo &= state.residual > tol
        if not bool(todo.any()):
            break
        steps_before = state.iterations.clone()
        if options.evaluations > 0:
            _bregman(problem, state, todo, options, tol, single, reporter)
        gauss_newton_phase(
            problem,
            state,
            max_steps=options.max_steps,
            tol=tol,
            inner_maxiter=options.inner_maxiter,
            report=report,
        )
        capped = todo & (state.iterations - steps_before >= options.max_steps)
        todo &= ~capped
    if options.box is not None:  # the box was a penalty: the last iterates may lie just outside it
        everyone = torch.arange(n, device=state.x.device)
        with torch.no_grad():
            state.x.clamp_(*options.box)
            state.residual.copy_(problem.objective(state.x, everyone)[0])
        for i, h in enumerate(state.history):
            if h[-1] != float(state.residual[i]):
                h.append(float(state.residual[i]))
    converged = state.residual <= tol
    for i in range(n):
        if stopped[i]:
            continue
        r = float(state.residual[i])
        if bool(converged[i]):
            stopped[i] = f"met the target: residual {r:.2g} <= {tol:g}"
        elif bool(capped[i]):
            stopped[i] = f"step cap: {options.max_steps} Gauss-Newton steps in a cycle, residual {r:.2g}"
        else:
            stopped[i] = (
                f"stalled at residual {r:.2g}: Gauss-Newton steps with the activation pattern fixed no longer lower "
                "it (some unit is on the other side of its kink than in the input)"
            )
    return CompletionResult(
        state.x,
        state.residual,
        converged,
        chosen,
        stopped,
        state.evaluations,
        state.iterations,
        state.inner_iterations,
        state.history,
    )
