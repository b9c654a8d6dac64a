r"""Invert :math:`h = \mathrm{act}(A x + b)` through the active set: equations where known, then the inequalities.

Method (a primal-dual active set on the minimum-norm problem
:math:`\min \tfrac12 \|x\|^2` s.t. :math:`\ell \le A x + b \le u`, matrix-free):

1. Solve the known rows: :math:`x_0 = (M A)^+ M (z - b)`, the minimum-norm solution of the equations,
   by LSQR on the masked operator (:class:`~invertnet.operators.MaskedOperator`).
2. Repeat: add every inequality row violated by more than ``tol`` (times the data's scale) to the working
   set *as an equation at its bound*; solve the working set by LSQR; compute the multipliers
   :math:`\nu` of :math:`x = A_W^T \nu` (LSQR on the transpose) and release every added row whose
   multiplier has the wrong sign (:math:`\nu_i > 0` at an upper bound, :math:`< 0` at a lower one), adding
   nothing in that round.
3. Stop when nothing changes: the point is feasible and the KKT conditions hold, so it *is* the
   minimum-norm feasible point.
4. Where the loop cannot finish (a working set whose added rows cannot all be met, or ``max_rounds``
   spent), Mangasarian's generalized Newton method takes over from the last point: it minimises the squared
   violation, each step a truncated LSQR solve (``newton_maxiter``) on the equations and violated rows with an
   exact line search, and converges on any consistent system. It finds *a* feasible point, with no claim of
   minimum norm.

Why this method: every step is the masked least-squares solve of step 1 (only :math:`A` and :math:`A^T`
on the batch, each image with its own rows), started from the previous estimate projected on the row
space of the new working set, so LSQR still converges to the minimum-norm solution of that set. Where the
known rows determine the input, step 1 is the input (to LSQR's precision, :math:`10^{-12}` here) and no
round follows. ADMM or dual projected gradients also converge to the minimum-norm feasible point, but
linearly, each step a full solve or a step of unknown length: they would not give the exactness asked of
determined layers. The active-set loop has no proof of termination (it can cycle); step 4 is its safety
net, ``max_rounds`` and ``newton_steps`` cap the phases (the result says ``feasible=False`` when both are
spent).

What is proven, per image:

- ``feasible``: every equation and inequality holds to ``tol`` -- then
  :math:`\mathrm{act}(A \hat x + b) = h` up to that tolerance (the features are matched);
- ``minimum_norm``: the loop stopped with the KKT conditions met (feasible, multipliers of the right
  sign): :math:`\hat x` is the minimum-norm feasible point;
- ``exact``: the known rows determine the input (:func:`~invertnet.activeset.certify`), the solve
  converged and the point is feasible: :math:`\hat x` is the layer's input.

"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from invertnet._checks import require_tensor
from invertnet.activeset.certificate import CERTIFICATE_DENSE_ENTRIES, Certificate, CertificateMethod, certify
from invertnet.activeset.constraints import Constraints
from invertnet.errors import OptionError, ShapeError
from invertnet.linalg.solvers import ConvergenceWarning, lsqr
from invertnet.operators import LinearOperator, MaskedOperator, TransposedOperator

__all__ = ["ActiveSetOptions", "ActiveSetResult", "invert_active_set"]


@dataclass(frozen=True)
class ActiveSetOptions:
    """Settings of :func:`invert_active_set`.

    Attributes
    ----------
    atol : float, default 1e-12
        LSQR's ``atol`` and ``btol`` in every round.
    maxiter : int, optional
        LSQR's iteration cap per round (its default otherwise).
    max_rounds : int, default 50
        Cap on the rounds of each phase (the first solve included); each round is one or two LSQR solves.
    tol : float, default 1e-8
        Feasibility tolerance, relative to the data's scale (the largest finite bound of each image):
        an inequality violated by more is added, and the result is ``feasible`` when nothing is.
    newton_steps : int, default 500
        Cap on the steps of the Newton phase (step 4 of the method).
    newton_maxiter : int, default 50
        LSQR's cap in each Newton step: truncated steps, each followed by an exact line search. Measured on
        undetermined 3x3 layers (8 filters on 3 channels, 12 and 32 px): 11x fewer LSQR iterations in all than
        solving each step to ``atol`` (2.7 and 3.4 thousand against 17.5 and 37.7 thousand), equally feasible.
    certificate : {"auto", "dense", "lanczos", "none"}
        How to decide whether the known rows determine the input (:func:`~invertnet.activeset.certify`).
    dense_max_entries : int
        ``"auto"`` builds the dense matrix up to this many entries.
    warn : bool, default True
        Warn (:class:`~invertnet.linalg.solvers.ConvergenceWarning`) when an image ends unconverged or infeasible.
    """

    atol: float = 1e-12
    maxiter: int | None = None
    max_rounds: int = 50
    tol: float = 1e-8
    newton_steps: int = 500
    newton_maxiter: int = 50
    certificate: CertificateMethod = "auto"
    dense_max_entries: int = CERTIFICATE_DENSE_ENTRIES
    warn: bool = True

    def __post_init__(self) -> None:
        if not self.atol > 0:
            raise OptionError(f"ActiveSetOptions: expected a positive atol, got {self.atol}; try 1e-12")
        if not self.tol > 0:
            raise OptionError(f"ActiveSetOptions: expected a positive tol, got {self.tol}; try 1e-8")
        for name in ("max_rounds", "newton_steps", "newton_maxiter"):
            if getattr(self, name) < 1:
                raise OptionError(f"ActiveSetOptions: expected {name} >= 1, got {getattr(self, name)}")
        if self.certificate not in ("auto", "dense", "lanczos", "none"):
            raise OptionError(
                f"ActiveSetOptions: expected certificate in ('auto', 'dense', 'lanczos', 'none'), "
                f"got {self.certificate!r}"
            )


@dataclass(frozen=True)
class ActiveSetResult:
    r"""The estimate and what is known about it, per image (see the module docstring).

    Attributes
    ----------
    x : torch.Tensor
        ``(N, *op.in_shape)``.
    exact : torch.Tensor
        Bool ``(N,)``: the known rows determine the input and the estimate meets them: :math:`\hat x = x`.
    feasible : torch.Tensor
        Bool ``(N,)``: every equation and inequality holds to ``tol`` times the data's scale.
    minimum_norm : torch.Tensor
        Bool ``(N,)``: the minimum-norm feasible point (KKT conditions met at the last round).
    converged : torch.Tensor
        Bool ``(N,)``: the last LSQR solve converged and no inequality was left to add.
    equation_violation, inequality_violation : torch.Tensor
        ``(N,)``: :math:`\max_i |a_i \hat x + b_i - h_i|` over the known rows, and the largest amount by
        which an inequality is violated (absolute, in units of the pre-activation).
    residual : torch.Tensor
        ``(N,)``: :math:`\|M (A \hat x + b - z)\| / \|M (z - b)\|` over the known rows.
    added : torch.Tensor
        Int ``(N,)``: inequality rows held at their bound at the end (active inequalities).
    known_fraction : torch.Tensor
        ``(N,)``: share of rows that are equations (the active set).
    rounds, iterations : int
        Solves run, and LSQR iterations over all of them.
    certificates : tuple of Certificate
        One per image: whether the known rows determine the input, and how that was decided.
    """

    x: torch.Tensor
    exact: torch.Tensor
    feasible: torch.Tensor
    minimum_norm: torch.Tensor
    converged: torch.Tensor
    equation_violation: torch.Tensor
    inequality_violation: torch.Tensor
    residual: torch.Tensor
    added: torch.Tensor
    known_fraction: torch.Tensor
    rounds: int
    iterations: int
    certificates: tuple[Certificate, ...]


def _bias(bias: object, out_shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    bias = require_tensor(bias, "invert_active_set: bias").detach().to(device=like.device, dtype=like.dtype)
    if bias.ndim == 1 and bias.shape[0] == out_shape[0]:  # per channel (nn.Conv2d) or per row (nn.Linear)
        return bias.reshape(1, -1, *([1] * (len(out_shape) - 1)))
    full = (1, *out_shape)
    fits = bias.ndim <= len(full) and all(
        b in (1, f) for b, f in zip(reversed(bias.shape), reversed(full), strict=False)
    )
    if not fits:
        raise ShapeError(
            f"invert_active_set: expected a bias of shape ({out_shape[0]},) or broadcastable to (N, "
            f"{', '.join(map(str, out_shape))}), got {tuple(bias.shape)}; pass the layer's bias"
        )
    return bias


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def _slope(z: torch.Tensor, az: torch.Tensor, c: Constraints, t: torch.Tensor) -> torch.Tensor:
    """Per sample, the derivative in ``t`` of half the squared violation at ``z + t az``."""
    moved = z + _per_sample(t, z) * az
    excess = (moved - c.upper).clamp(min=0) - (c.lower - moved).clamp(min=0)
    return (excess * az).flatten(1).sum(1)


def _newton(
    op: LinearOperator,
    c: Constraints,
    x: torch.Tensor,
    tol: torch.Tensor,
    todo: torch.Tensor,
    options: ActiveSetOptions,
) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    r"""Mangasarian's generalized Newton method on :math:`\tfrac12 \|(Ax - u)_+\|^2 + \tfrac12 \|(\ell - Ax)_+\|^2`.

    Its minimisers are the feasible points. Each step solves the equations and the violated rows as a least-squares
    system (LSQR on the masked operator), then takes the exact step along it (the violation is a convex piecewise
    quadratic in the step: bisection on its derivative, no operator applications). Converges for any start, in
    finitely many steps on a consistent system (Mangasarian, "A finite Newton method for classification", 2002).
    Returns the point, LSQR iterations, steps, and the images still infeasible.
    """
    iterations = steps = 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    while steps < options.newton_steps:
        z = op.forward(x)
        excess = (z - c.upper).clamp(min=0) - (c.lower - z).clamp(min=0)
        todo = todo & (excess.abs().flatten(1).amax(1) > tol.flatten())
        if not bool(todo.any()):
            break
        steps += 1
        rows = (excess != 0) & _per_sample(todo, excess)
        step = lsqr(
            MaskedOperator(op, rows),
            torch.where(rows, -excess, zero),
            atol=options.atol,
            btol=options.atol,
            maxiter=options.newton_maxiter,
            warn=False,
        )
        iterations += step.iterations
        az = op.forward(step.x)
        low, high = torch.zeros_like(todo, dtype=x.dtype), torch.ones_like(todo, dtype=x.dtype)
        for _ in range(60):  # bracket the minimiser: the slope is negative at 0 along a descent direction
            grow = _slope(z, az, c, high) < 0
            if not bool(grow.any()):
                break
            low, high = torch.where(grow, high, low), torch.where(grow, 2 * high, high)
        for _ in range(60):
            middle = (low + high) / 2
            below = _slope(z, az, c, middle) < 0
            low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        x = x + _per_sample(torch.where(todo, high, 0.0), x) * step.x
    else:
        z = op.forward(x)
        excess = (z - c.upper).clamp(min=0) - (c.lower - z).clamp(min=0)
        todo = todo & (excess.abs().flatten(1).amax(1) > tol.flatten())
    return x, iterations, steps, todo


def invert_active_set(
    op: LinearOperator,
    constraints: Constraints,
    *,
    bias: torch.Tensor | None = None,
    options: ActiveSetOptions | None = None,
) -> ActiveSetResult:
    r"""The input of :math:`h = \mathrm{act}(A x + b)` from the reading of :math:`h` as constraints.

    Parameters
    ----------
    op : LinearOperator
        The linear part :math:`A` (bias apart): :class:`~invertnet.operators.ConvOperator`,
        :class:`~invertnet.operators.MatrixOperator`, ...
    constraints : Constraints
        On the pre-activation :math:`z = A x + b`, shape ``(N, *op.out_shape)``, e.g. from
        :func:`~invertnet.activeset.activation_constraints`.
    bias : torch.Tensor, optional
        :math:`b`, subtracted from the constraints here: of shape ``(C,)`` (a layer's bias, per
        channel or row) or broadcastable to ``(N, *op.out_shape)``. ``None`` when ``constraints``
        already read :math:`A x`.
    options : ActiveSetOptions, optional

    Returns
    -------
    ActiveSetResult
        In the dtype and on the device of ``constraints``.

    Raises
    ------
    ShapeError
        When ``constraints`` or ``bias`` do not fit the operator.

    Notes
    -----
    Equations :math:`a_i x = h_i - b_i` where :math:`h_i` is strictly between the clip levels,
    inequalities :math:`a_i x \le \ell - b_i` (:math:`\ge u - b_i`) where it is at a level. The method
    and what each flag of the result proves are in :mod:`invertnet.activeset.solve`.

    References
    ----------
    Haider, Ehler, Balazs, "Convex geometry of ReLU-layers, injectivity on the ball and local
    reconstruction", ICML 2023. Puthawala et al., "Globally injective ReLU networks", JMLR 2022.

    Examples
    --------
    >>> import torch
    >>> from invertnet.activeset import activation_constraints, invert_active_set
    >>> from invertnet.operators import MatrixOperator
    >>> _ = torch.manual_seed(0)
    >>> linear = torch.nn.Linear(4, 16).double()
    >>> x = torch.randn(2, 4, dtype=torch.float64)
    >>> h = torch.relu(linear(x)).detach()
    >>> result = invert_active_set(MatrixOperator.from_linear(linear), activation_constraints(h), bias=linear.bias)
    >>> result.exact.tolist()
    [True, True]
    >>> float((result.x - x).norm() / x.norm()) < 1e-10
    True
    """
    options = options or ActiveSetOptions()
    if not isinstance(constraints, Constraints):
        raise TypeError(
            f"invert_active_set: expected Constraints, got {type(constraints).__name__}; "
            "build them with activation_constraints(h, lower, upper)"
        )
    if constraints.shape[1:] != op.out_shape or len(constraints.shape) != len(op.out_shape) + 1:
        raise ShapeError(
            f"invert_active_set: expected constraints of shape (N, {', '.join(map(str, op.out_shape))}) for "
            f"{op!r}, got {constraints.shape}; read the output of this layer at this input size"
        )
    c = constraints if bias is None else constraints.shifted(_bias(bias, op.out_shape, constraints.lower))
    known = c.known
    target = c.value
    working = known.clone()
    tol = _per_sample(options.tol * c.scale().clamp(min=torch.finfo(target.dtype).tiny), target)

    n_images = target.shape[0]
    zero = torch.zeros((), dtype=target.dtype, device=target.device)
    x = torch.zeros(n_images, *op.in_shape, dtype=target.dtype, device=target.device)
    nu = torch.zeros_like(target)
    side = torch.zeros_like(target)  # +1: added at the upper bound, -1: at the lower one, 0: not added
    rounds = iterations = 0
    converged = torch.zeros(n_images, dtype=torch.bool, device=target.device)
    dual = torch.ones_like(converged)  # the last multipliers (if any were needed) converged
    while rounds < options.max_rounds:
        rounds += 1
        solved = lsqr(
            MaskedOperator(op, working),
            torch.where(working, target, zero),
            atol=options.atol,
            btol=options.atol,
            maxiter=options.maxiter,
            x0=x,
            warn=False,
        )
        x, iterations = solved.x, iterations + solved.iterations
        z = op.forward(x)
        # an inconsistent working set (added rows not met): the loop could cycle; the Newton phase takes over
        if bool(((side != 0) & ((z - target).abs() > tol) & _per_sample(solved.converged, z)).any()):
            converged = torch.zeros_like(converged)
            break
        over = ~working & (z > c.upper + tol)
        under = ~working & (z < c.lower - tol)
        wrong = torch.zeros_like(working)
        if bool((side != 0).any()):
            # x = A_W^T nu: a row held at its upper bound needs nu <= 0, at its lower bound nu >= 0 (KKT)
            multipliers = lsqr(
                TransposedOperator(MaskedOperator(op, working)),
                x,
                atol=options.atol,
                btol=options.atol,
                maxiter=options.maxiter,
                warn=False,
            )
            nu, iterations = multipliers.x, iterations + multipliers.iterations
            dual = multipliers.converged | ~(side != 0).flatten(1).any(1)
            cut = _per_sample(options.tol * nu.abs().flatten(1).amax(1), nu)
            wrong = side * nu > cut
        # drop before adding: a sample that releases rows adds none this round
        hold = _per_sample(wrong.flatten(1).any(1), wrong)
        over, under = over & ~hold, under & ~hold
        changed = (over | under | wrong).flatten(1).any(1)
        converged = solved.converged & ~changed
        if not bool(changed.any()):
            break
        if bool(wrong.any()):
            # start the next solve in the row space of the new working set: A_W'^T nu restricted to W'
            kept = working & ~wrong
            x = op.adjoint(torch.where(kept, nu, zero))
        side = torch.where(over, 1.0, torch.where(under, -1.0, torch.where(wrong, 0.0, side)))
        target = torch.where(over, c.upper, torch.where(under, c.lower, target))
        working = (working | over | under) & ~wrong
    if not bool(converged.all()):
        x, spent, steps, unmet = _newton(op, c, x, tol, ~converged, options)
        iterations, rounds = iterations + spent, rounds + steps
        dual = dual & converged  # the Newton phase makes no claim of minimum norm
        converged = ~unmet

    z = op.forward(x)
    equation_violation, inequality_violation = c.violation(z)
    scale_tol = tol.flatten()
    feasible = (equation_violation <= scale_tol) & (inequality_violation <= scale_tol)
    value = c.value
    misfit = torch.where(known, z - value, torch.zeros_like(z)).flatten(1).norm(dim=1)
    residual = misfit / value.flatten(1).norm(dim=1).clamp(min=torch.finfo(z.dtype).tiny)
    added = (working & ~known).flatten(1).sum(1)
    certificates = certify(op, known, options.certificate, options.dense_max_entries)
    determined = torch.tensor([cert.determined is True for cert in certificates], device=z.device)
    exact = determined & converged & feasible
    minimum_norm = (converged & feasible & dual) | exact
    if options.warn and not bool((converged & feasible).all()):
        bad = int((~(converged & feasible)).sum())
        warnings.warn(
            f"invert_active_set: {bad} of {z.shape[0]} images ended unconverged or infeasible after {rounds} rounds "
            f"(largest violations: equations {float(equation_violation.max()):.3g}, inequalities "
            f"{float(inequality_violation.max()):.3g}); raise max_rounds or maxiter",
            ConvergenceWarning,
            stacklevel=2,
        )
    return ActiveSetResult(
        x=x,
        exact=exact,
        feasible=feasible,
        minimum_norm=minimum_norm,
        converged=converged,
        equation_violation=equation_violation,
        inequality_violation=inequality_violation,
        residual=residual,
        added=added,
        known_fraction=c.known_fraction,
        rounds=rounds,
        iterations=iterations,
        certificates=certificates,
    )
