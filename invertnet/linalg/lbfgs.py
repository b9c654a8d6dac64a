r"""Batched L-BFGS: one independent quasi-Newton run per sample, evaluated together.

Each sample :math:`i` minimises its own :math:`\phi_i(x_i)`; the batch only shares the calls to the
objective. A step of sample :math:`i` is the two-loop recursion (Nocedal & Wright, *Numerical
Optimization*, Alg. 7.4) on its own last ``history`` pairs :math:`(s, y)`, with initial scaling
:math:`s^T y / y^T y`:

.. math::

    d_i = -H_i \nabla\phi_i(x_i), \qquad x_i \leftarrow x_i + t_i d_i,

and :math:`t_i` from a bracketing line search for the weak Wolfe conditions (Lewis & Overton, 2013):
:math:`\phi_i(x_i + t d_i) \le \phi_i(x_i) + c_1 t \nabla\phi_i^T d_i` and
:math:`\nabla\phi_i(x_i + t d_i)^T d_i \ge c_2 \nabla\phi_i^T d_i`, which keeps :math:`s^T y > 0`.
Every scalar is per sample, and a sample is evaluated only while it searches: a batch gives each
sample the iterates it would have alone, and samples stop on their own (``step`` takes who moves).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["BatchLBFGS"]

#: Sufficient decrease and curvature constants of the weak Wolfe line search.
C1, C2 = 1e-4, 0.9
#: Trial steps of one line search at most.
MAX_TRIALS = 25

Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=1)


class BatchLBFGS:
    r"""Per-sample L-BFGS state of a batch, advanced one iteration at a time.

    Parameters
    ----------
    objective : callable
        ``objective(x, index) -> (values, gradients)``: for the samples ``index`` (a long tensor) at
        ``x`` (``(len(index), *shape)``), their objective values ``(len(index),)`` and gradients.
    x0 : torch.Tensor
        ``(N, *shape)`` start.
    budget : torch.Tensor
        ``(N,)`` objective evaluations each sample may use (the first one is spent at ``x0``; a sample
        with budget 0 is never evaluated).
    history : int, default 20
        Pairs :math:`(s, y)` kept per sample.

    Attributes
    ----------
    x, value, gradient : torch.Tensor
        Current iterate, objective and gradient per sample.
    evaluations : torch.Tensor
        ``(N,)`` objective evaluations used per sample.

    Examples
    --------
    >>> import torch
    >>> target = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)
    >>> def objective(x, index):
    ...     return (x - target[index]).pow(2).sum(1), 2 * (x - target[index])
    >>> solver = BatchLBFGS(objective, torch.zeros(2, 2, dtype=torch.float64), torch.tensor([50, 50]))
    >>> for _ in range(5):
    ...     moved = solver.step(torch.arange(2))
    >>> bool(torch.allclose(solver.x, target))
    True
    """

    def __init__(self, objective: Objective, x0: torch.Tensor, budget: torch.Tensor, history: int = 20) -> None:
        self.objective = objective
        self.shape = tuple(x0.shape[1:])
        n = x0.shape[0]
        self.x = x0.detach().flatten(1).clone()
        self.value = torch.zeros(n, dtype=x0.dtype, device=x0.device)
        self.gradient = torch.zeros_like(self.x)
        self.budget = budget.to(x0.device)
        self.evaluations = torch.zeros(n, dtype=torch.long, device=x0.device)
        self.memory = history
        self.s = torch.zeros(history, *self.x.shape, dtype=x0.dtype, device=x0.device)
        self.y = torch.zeros_like(self.s)
        self.rho = torch.zeros(history, n, dtype=x0.dtype, device=x0.device)
        self.pairs = torch.zeros(n, dtype=torch.long, device=x0.device)
        self.scaling = torch.ones(n, dtype=x0.dtype, device=x0.device)
        start = (self.budget > 0).nonzero().flatten()
        if start.numel():
            self.value[start], self.gradient[start] = self._evaluate(self.x[start], start)

    def _evaluate(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.evaluations[index] += 1
        value, gradient = self.objective(x.reshape(-1, *self.shape), index)
        return value.detach(), gradient.detach().flatten(1)

    def _direction(self, index: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion for the samples ``index``, each on its own pairs."""
        q = -self.gradient[index]
        pairs = self.pairs[index]
        alphas = []
        for k in range(1, int(pairs.max().clamp(max=self.memory)) + 1):  # newest first
            slot, valid = (pairs - k) % self.memory, pairs >= k
            s, y, rho = self.s[slot, index], self.y[slot, index], self.rho[slot, index]
            alpha = torch.where(valid, rho * _dot(s, q), 0.0)
            q = q - alpha[:, None] * y
            alphas.append((slot, valid, alpha))
        d = q * self.scaling[index][:, None]
        for slot, valid, alpha in reversed(alphas):
            s, y, rho = self.s[slot, index], self.y[slot, index], self.rho[slot, index]
            beta = torch.where(valid, rho * _dot(y, d), 0.0)
            d = d + (alpha - beta)[:, None] * s
        return d

    def step(self, index: torch.Tensor) -> torch.Tensor:
        r"""One L-BFGS iteration for the samples ``index``; per sample, whether it moved.

        A sample does not move when its line search finds no sufficient decrease within
        :data:`MAX_TRIALS` trials or its budget (a local minimum, or rounding): it keeps its iterate.
        """
        index = index[self.evaluations[index] < self.budget[index]]
        moved = torch.zeros(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        if index.numel() == 0:
            return moved
        d = self._direction(index)
        x0, f0, g0 = self.x[index], self.value[index], self.gradient[index]
        slope = _dot(g0, d)
        first = self.pairs[index] == 0
        t = torch.where(first, (1 / g0.abs().sum(dim=1)).clamp(max=1.0), torch.ones_like(f0))
        lo, hi = torch.zeros_like(t), torch.full_like(t, float("inf"))
        best_t = torch.zeros_like(t)
        best_f, best_g = f0.clone(), g0.clone()
        searching = slope < 0  # not a descent direction (rounding at a minimum): no step
        trials = torch.zeros_like(self.evaluations[index])
        while True:
            searching = searching & (self.evaluations[index] < self.budget[index]) & (trials < MAX_TRIALS)
            rows = searching.nonzero().flatten()
            if rows.numel() == 0:
                break
            trials[rows] += 1
            tr = t[rows]
            f, g = self._evaluate(x0[rows] + tr[:, None] * d[rows], index[rows])
            armijo = f <= f0[rows] + C1 * tr * slope[rows]
            curvature = _dot(g, d[rows]) >= C2 * slope[rows]
            accept = armijo & curvature
            better = (armijo & (f < best_f[rows])) | accept  # a Wolfe point ends the search and is taken
            best_t[rows] = torch.where(better, tr, best_t[rows])
            best_f[rows] = torch.where(better, f, best_f[rows])
            best_g[rows] = torch.where(better[:, None], g, best_g[rows])
            hi[rows] = torch.where(~armijo, tr, hi[rows])
            lo[rows] = torch.where(armijo & ~curvature, tr, lo[rows])
            t[rows] = torch.where(torch.isinf(hi[rows]), 2 * tr, (lo[rows] + hi[rows]) / 2)
            searching[rows] = ~accept
        went = best_t > 0
        rows = went.nonzero().flatten()
        moved[index[rows]] = True
        if rows.numel() == 0:
            return moved
        who = index[rows]
        x_new = x0[rows] + best_t[rows][:, None] * d[rows]
        s, y = x_new - x0[rows], best_g[rows] - g0[rows]
        ys = _dot(s, y)
        keep = ys > 1e-10
        slot = self.pairs[who] % self.memory
        kept = who[keep]
        self.s[slot[keep], kept] = s[keep]
        self.y[slot[keep], kept] = y[keep]
        self.rho[slot[keep], kept] = 1 / ys[keep]
        self.scaling[kept] = ys[keep] / _dot(y[keep], y[keep])
        self.pairs[kept] += 1
        self.x[who], self.value[who], self.gradient[who] = x_new, best_f[rows], best_g[rows]
        return moved

    @property
    def iterate(self) -> torch.Tensor:
        """The current iterate, ``(N, *shape)``."""
        return self.x.reshape(-1, *self.shape)
