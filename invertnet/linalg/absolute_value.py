r"""Generalized absolute value equations :math:`A z + B |z| = c`: the linear layer behind a CReLU, solved for ``z``.

A linear layer :math:`W = [P\; N]` that reads a CReLU output :math:`\rho(z) = (\sigma_a(z), \sigma_a(-z))`
(:math:`\sigma_a` the leaky ReLU of slope :math:`a`; :math:`a = 0` for CReLU) computes

.. math::

    W \rho(z) = A z + B |z|, \qquad A = \tfrac{1 + a}{2} (P - N), \quad B = \tfrac{1 - a}{2} (P + N),

a generalized absolute value equation (GAVE) in the pre-activation :math:`z`, with half the unknowns of the
:math:`(\rho_+, \rho_-)` reading that a linear pseudo-inverse treats as free. On a sign pattern
:math:`s = \mathrm{sign}(z)` it is linear, :math:`(A + B D_s) z = c` with :math:`D_s = \mathrm{diag}(s)`.

**Solver** (:func:`solve_absolute_value`, batched over systems that share :math:`A` and :math:`B`, e.g. the pixels of a
1x1 convolution):
Mangasarian's generalized Newton method, :math:`z_{k+1} = (A + B D(z_k))^{+} c`, which is the semismooth Newton
step for :math:`F(z) = A z + B|z| - c` with the generalized Jacobian :math:`A + B D(z)`. A step that does not
lower :math:`\|F\|` is halved (:math:`A + B D(z)` times the step is :math:`-F(z)`, a descent direction for
:math:`\tfrac12\|F\|^2`). When the pattern repeats, the iterate solves its pattern's linear system and the method
has terminated (finite termination, Mangasarian 2009).

**What is proven**, per system:

- *consistent*: the solution reproduces the right-hand side to rounding, :math:`\|A \hat z + B|\hat z| - c\|
  \le \tau \|c\|` (checked by evaluating :math:`F`, i.e. a forward pass);
- *unique*: every :math:`A + B D` with :math:`D` diagonal, :math:`|D_{ii}| \le 1`, has full column rank, so two
  solutions :math:`z, w` (for which :math:`|z| - |w| = D (z - w)` with such a :math:`D`) coincide. Sufficient
  conditions, for an explicit left inverse :math:`L` of :math:`A` (:math:`L A = I + E`):
  :math:`\rho(|E| + |L B|) < 1` (then :math:`I + E + L B D` is nonsingular, as
  :math:`\rho(X) \le \rho(|X|)`; the spectral radius is bounded from above by the Collatz-Wielandt quotient of a
  positive vector, a rigorous bound), or :math:`\sigma_{\min}(A) > \|B\|_2` (Weyl). With
  :math:`\|H\|_2 < 1` for :math:`H = |E| + |LB|` (Schur test :math:`\|H\|_2 \le \sqrt{\|H\|_1 \|H\|_\infty}`)
  also :math:`\sigma_{\min}(A + B D) \ge (1 - \|H\|_2) / \|L\|_2`, which bounds the error of a consistent solution.
  For square systems this is the contraction of :math:`z \mapsto A^{-1}(c - B|z|)` when :math:`\|A^{-1}B\| < 1`, and
  Rohn's condition :math:`\rho(|A^{-1} B|) < 1`.

Only *unique* makes a step ``exact``. A square system whose pieces all have full rank can still have several
solutions (for some :math:`c`): *consistent* alone says that the estimate is one of them.

References
----------
O. L. Mangasarian, "A generalized Newton method for absolute value equations", Optim. Lett. 3 (2009).
J. Rohn, "A theorem of the alternatives for the equation Ax + B|x| = b", Linear Multilinear Algebra 52 (2004).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from invertnet._checks import consistency_tol
from invertnet.errors import ShapeError

__all__ = [
    "AbsoluteValueResult",
    "Uniqueness",
    "absolute_value_uniqueness",
    "crelu_split",
    "solve_absolute_value",
]

#: Step halvings of the safeguarded Newton step before a system is declared stalled.
HALVINGS = 12
#: Systems with at most this many unknowns that Newton leaves unsolved are settled by enumerating their sign
#: patterns (:math:`2^n` linear solves): a solution is then found whenever one exists.
ENUMERATE_MAX = 10
#: Systems solved together at most (the batch of pattern matrices is ``chunk x m x n``).
_CHUNK_ENTRIES = 2**24


def crelu_split(weight: torch.Tensor, negative_slope: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`A, B` of a weight :math:`W = [P\; N]` whose input is a (leaky) CReLU output along dimension 1.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out, 2 c, ...)``: the first ``c`` input channels read :math:`\sigma_a(z)`, the last ``c`` read
        :math:`\sigma_a(-z)`.
    negative_slope : float, default 0
        The slope :math:`a` of the CReLU's inner activation.

    Returns
    -------
    A, B : torch.Tensor
        ``(out, c, ...)`` each, :math:`A = \tfrac{1 + a}{2}(P - N)`, :math:`B = \tfrac{1 - a}{2}(P + N)`.

    Examples
    --------
    >>> import torch
    >>> W = torch.tensor([[1.0, 3.0]])                 # P = 1, N = 3
    >>> crelu_split(W)
    (tensor([[-1.]]), tensor([[2.]]))
    >>> z = torch.tensor([-2.0])
    >>> float(W @ torch.cat([z.relu(), (-z).relu()])), float(-1 * z + 2 * z.abs())
    (6.0, 6.0)
    """
    if weight.ndim < 2 or weight.shape[1] % 2:
        raise ShapeError(
            f"crelu_split: expected a weight (out, 2c, ...) with an even number of input channels (a CReLU's "
            f"output), got shape {tuple(weight.shape)}"
        )
    c = weight.shape[1] // 2
    p, n = weight[:, :c], weight[:, c:]
    return (1 + negative_slope) / 2 * (p - n), (1 - negative_slope) / 2 * (p + n)


@dataclass(frozen=True)
class Uniqueness:
    r"""Whether :math:`A z + B|z| = c` has at most one solution for every :math:`c`, and the proof.

    Attributes
    ----------
    unique : bool
        Proven: every :math:`A + B D` (:math:`|D_{ii}| \le 1`) has full column rank.
    proof : str
        The sufficient condition that held, with its value, or why none did.
    lower_bound : float
        A proven lower bound on :math:`\min_D \sigma_{\min}(A + B D)` (0 when none): a consistent solution with
        residual :math:`r` is within :math:`\|r\| / \text{lower\_bound}` of the true one.
    """

    unique: bool
    proof: str
    lower_bound: float = 0.0


def _collatz_wielandt(h: torch.Tensor, steps: int = 200) -> float:
    r"""A rigorous upper bound on the spectral radius of a nonnegative square matrix ``h``.

    For any positive :math:`v`, :math:`\rho(H) \le \max_i (H v)_i / v_i` (Collatz-Wielandt). Power iteration on
    :math:`H + \epsilon` (positive, so its iterates stay positive) chooses :math:`v`.
    """
    n = h.shape[0]
    shifted = h + 1e-12 * float(h.max().clamp(min=1e-300))
    v = torch.ones(n, dtype=h.dtype, device=h.device)
    for _ in range(steps):
        w = shifted @ v
        v = w / w.max()
    v = v.clamp(min=1e-300)
    ratio = (h @ v) / v
    return float(ratio.max()) * (1 + 4 * n * torch.finfo(h.dtype).eps)


def absolute_value_uniqueness(A: torch.Tensor, B: torch.Tensor) -> Uniqueness:
    r"""Prove (or fail to prove) that :math:`A z + B |z| = c` has at most one solution for every ``c``.

    ``A, B`` are ``(m, n)`` with :math:`m \ge n`; computed in float64. See the module docstring for the two
    sufficient conditions tried: :math:`\rho(|L A - I| + |L B|) < 1` with :math:`L = A^+`, then
    :math:`\sigma_{\min}(A) > \|B\|_2`, each with a margin for the rounding of the products.

    Examples
    --------
    >>> import torch
    >>> A = torch.eye(3, dtype=torch.float64) * 2
    >>> absolute_value_uniqueness(A, 0.5 * torch.ones(3, 3, dtype=torch.float64)).unique
    True
    >>> absolute_value_uniqueness(torch.eye(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64)).unique
    False
    """
    a, b = A.detach().double().cpu(), B.detach().double().cpu()
    m, n = a.shape
    if m < n:
        return Uniqueness(False, f"fewer equations ({m}) than unknowns ({n})")
    eps = torch.finfo(torch.float64).eps
    singular = torch.linalg.svdvals(a)
    if float(singular[-1]) <= max(m, n) * eps * float(singular[0]):
        return Uniqueness(False, f"A = ((1+a)/2)(P - N) is rank deficient (sigma_min {float(singular[-1]):.3g})")
    left = torch.linalg.pinv(a)
    error = (left @ a - torch.eye(n, dtype=torch.float64)).abs()
    h = error + (left @ b).abs()
    # rounding of the two products: each entry is off by at most ~ m eps sum_k |L_ik| (|A_kj| + |B_kj|)
    h = h + 2 * m * eps * (left.abs() @ (a.abs() + b.abs()))
    radius = _collatz_wielandt(h)
    schur = math.sqrt(float(h.sum(0).max()) * float(h.sum(1).max()))
    left_norm = math.sqrt(float(left.abs().sum(0).max()) * float(left.abs().sum(1).max()))
    if radius < 1:
        bound = (1 - schur) / left_norm if schur < 1 else 0.0
        proof = f"rho(|A^+ A - I| + |A^+ B|) <= {radius:.3g} < 1 (Collatz-Wielandt bound)"
        return Uniqueness(True, proof, bound)
    norm_b = float(torch.linalg.matrix_norm(b, 2))
    margin = 2 * max(m, n) * eps * (float(singular[0]) + norm_b)
    gap = float(singular[-1]) - norm_b - margin
    if gap > 0:
        return Uniqueness(True, f"sigma_min(A) {float(singular[-1]):.3g} > ||B||_2 {norm_b:.3g} (Weyl)", gap)
    return Uniqueness(
        False,
        f"not proven: rho(|A^+ A - I| + |A^+ B|) <= {radius:.3g} and sigma_min(A) {float(singular[-1]):.3g} <= "
        f"||B||_2 {norm_b:.3g}",
    )


@dataclass(frozen=True)
class AbsoluteValueResult:
    r"""Solutions of :math:`A z + B|z| = c` and what is known about them, per system.

    Attributes
    ----------
    z : torch.Tensor
        ``(K, n)``.
    residual : torch.Tensor
        ``(K,)`` relative residuals :math:`\|A z + B|z| - c\| / \|c\|` (0 where :math:`c = 0` is solved exactly).
    consistent : torch.Tensor
        ``(K,)`` bool: ``residual`` at most :func:`~invertnet._checks.consistency_tol`.
    iterations : torch.Tensor
        ``(K,)`` Newton steps taken.
    stalled : torch.Tensor
        ``(K,)`` bool: stopped because no halving of the step lowered the residual (or the cap was reached) before
        it was consistent.
    """

    z: torch.Tensor
    residual: torch.Tensor
    consistent: torch.Tensor
    iterations: torch.Tensor
    stalled: torch.Tensor


def _residual(A: torch.Tensor, B: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return z @ A.mT + z.abs() @ B.mT - c


def _pattern_solve(A: torch.Tensor, B: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""Per row of ``s``, the least-squares solution of :math:`(A + B D_s) z = c` (``solve`` when square)."""
    m, n = A.shape
    out = torch.empty(s.shape[0], n, dtype=c.dtype, device=c.device)
    chunk = max(1, _CHUNK_ENTRIES // (m * n))
    for start in range(0, s.shape[0], chunk):
        rows = slice(start, start + chunk)
        matrices = A + B * s[rows, None, :]
        rhs = c[rows].unsqueeze(-1)
        if m == n:
            solution, info = torch.linalg.solve_ex(matrices, rhs)
            bad = info != 0
            if bool(bad.any()):  # a singular piece: its minimum-norm least-squares solution
                solution[bad] = torch.linalg.pinv(matrices[bad]) @ rhs[bad]
        else:
            solution = torch.linalg.pinv(matrices) @ rhs
        out[rows] = solution.squeeze(-1)
    return out


def _enumerate(
    A: torch.Tensor, B: torch.Tensor, c: torch.Tensor, z: torch.Tensor, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Every sign pattern's solution for each row of ``c``; per row the consistent one nearest ``z``.

    Returns the solutions and their residuals (``z`` and its residual where no pattern is consistent).
    """
    n = A.shape[1]
    patterns = torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=c.dtype, device=c.device)] * n)
    patterns = patterns.reshape(-1, n)
    best, best_residual = z.clone(), _residual(A, B, z, c).norm(dim=1)
    best_distance = torch.full_like(best_residual, float("inf"))
    scale = c.norm(dim=1)
    for s in patterns:
        candidate = _pattern_solve(A, B, s.expand(c.shape[0], n), c)
        residual = _residual(A, B, candidate, c).norm(dim=1)
        distance = (candidate - z).norm(dim=1)
        take = (residual <= tol * scale) & (distance < best_distance)
        best[take], best_residual[take], best_distance[take] = candidate[take], residual[take], distance[take]
    return best, best_residual


def solve_absolute_value(
    A: torch.Tensor,
    B: torch.Tensor,
    c: torch.Tensor,
    z0: torch.Tensor | None = None,
    *,
    tol: float | None = None,
    maxiter: int = 50,
) -> AbsoluteValueResult:
    r"""Solve :math:`A z + B|z| = c` for every row of ``c`` (``K`` systems sharing ``A`` and ``B``).

    Generalized Newton, safeguarded (see the module docstring); every system stops on its own. A system of at
    most :data:`ENUMERATE_MAX` unknowns that Newton leaves unsolved is settled by enumerating its sign patterns
    (the consistent solution nearest Newton's last iterate), so on such sizes a solution is found whenever one
    exists.

    Parameters
    ----------
    A, B : torch.Tensor
        ``(m, n)``, :math:`m \ge n` for a determined system.
    c : torch.Tensor
        ``(K, m)`` right-hand sides.
    z0 : torch.Tensor, optional
        ``(K, n)`` starts (e.g. the linear reading's :math:`\rho_+ - \rho_-`); default the solution of
        :math:`A z = c` in the least-squares sense.
    tol : float, optional
        Relative residual of a consistent solution; default :func:`~invertnet._checks.consistency_tol` of the dtype.
    maxiter : int, default 50
        Newton steps per system at most.

    Returns
    -------
    AbsoluteValueResult

    Examples
    --------
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> A = torch.randn(6, 6, dtype=torch.float64) + 4 * torch.eye(6, dtype=torch.float64)
    >>> B = 0.3 * torch.randn(6, 6, dtype=torch.float64)
    >>> z = torch.randn(5, 6, dtype=torch.float64)
    >>> result = solve_absolute_value(A, B, z @ A.T + z.abs() @ B.T)
    >>> bool(result.consistent.all()), float((result.z - z).abs().max()) < 1e-12
    (True, True)
    """
    if A.ndim != 2 or A.shape != B.shape or c.ndim != 2 or c.shape[1] != A.shape[0]:
        raise ShapeError(
            f"solve_absolute_value: expected A and B of one shape (m, n) and c of shape (K, m), got "
            f"{tuple(A.shape)}, {tuple(B.shape)} and {tuple(c.shape)}"
        )
    A, B = A.to(c), B.to(c)
    tol = consistency_tol(c.dtype) if tol is None else tol
    k = c.shape[0]
    scale = c.norm(dim=1)
    z = (
        _pattern_solve(A, torch.zeros_like(B), torch.ones(k, A.shape[1], dtype=c.dtype, device=c.device), c)
        if (z0 is None)
        else z0.detach().to(c).clone()
    )
    residual = _residual(A, B, z, c).norm(dim=1)
    done = residual <= tol * scale
    stalled = torch.zeros(k, dtype=torch.bool, device=c.device)
    iterations = torch.zeros(k, dtype=torch.long, device=c.device)
    for _ in range(maxiter):
        active = (~done & ~stalled).nonzero().flatten()
        if active.numel() == 0:
            break
        iterations[active] += 1
        za, ca = z[active], c[active]
        signs = torch.where(za >= 0, 1.0, -1.0).to(c.dtype)
        newton = _pattern_solve(A, B, signs, ca)
        step = newton - za
        before = residual[active]
        t = torch.ones(active.numel(), dtype=c.dtype, device=c.device)
        searching = torch.ones(active.numel(), dtype=torch.bool, device=c.device)
        for _ in range(HALVINGS + 1):
            rows = searching.nonzero().flatten()
            if rows.numel() == 0:
                break
            trial = za[rows] + t[rows, None] * step[rows]
            r = _residual(A, B, trial, ca[rows]).norm(dim=1)
            better = r < before[rows]
            who = active[rows[better]]
            z[who], residual[who] = trial[better], r[better]
            searching[rows[better]] = False
            t[rows[~better]] /= 2
        stalled[active[searching]] = True
        done = residual <= tol * scale
    left = (residual > tol * scale).nonzero().flatten()
    if left.numel() and A.shape[1] <= ENUMERATE_MAX:
        z[left], residual[left] = _enumerate(A, B, c[left], z[left], tol)
    consistent = residual <= tol * scale
    relative = residual / scale.clamp(min=torch.finfo(c.dtype).tiny)
    return AbsoluteValueResult(z, relative, consistent, iterations, stalled & ~consistent)
