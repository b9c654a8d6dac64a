r"""Matrix-free least squares for linear operators: batched LSQR (Paige & Saunders, 1982).

From :math:`x_0 = 0`, LSQR's iterates stay in the Krylov space of :math:`A^T A` started at
:math:`A^T b`, which lies in the row space of :math:`A`; so it converges to the
**minimum-norm** least-squares solution :math:`A^+ b`. Each sample of a batch carries its own
scalars and stops on its own test; an iteration costs one :math:`A` and one :math:`A^T` for the
whole batch.

Right preconditioning (:math:`\min_y \|A M y - b\|`, :math:`x = M y`, with :math:`M` symmetric
positive definite) speeds convergence but changes which solution is reached when :math:`A` has a
null space: it returns *a* least-squares solution, which is :math:`A^+ b` whenever :math:`A` is
injective (the solution is then unique).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from invertnet.operators import LinearOperator

__all__ = ["ConvergenceWarning", "LsqrResult", "lsqr"]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at its iteration cap before meeting its tolerance."""


@dataclass(frozen=True)
class LsqrResult:
    r"""Solution and convergence record of :func:`lsqr`.

    Attributes
    ----------
    x : torch.Tensor
        ``(N, *in_shape)``.
    iterations : int
        Iterations run (the slowest sample's).
    sample_iterations : torch.Tensor
        Per sample, the iterations it ran before it stopped (its solution is frozen from then on).
    residual : torch.Tensor
        Per sample, :math:`\|A x - b\| / \|b\|`, computed exactly after the last iteration.
    normal_residual : torch.Tensor
        Per sample, LSQR's estimate of :math:`\|A^T r\| / (\|A\| \|r\|)` (small at a least-squares solution).
    converged : torch.Tensor
        Per sample, whether the stopping test was met.
    """

    x: torch.Tensor
    iterations: int
    sample_iterations: torch.Tensor
    residual: torch.Tensor
    normal_residual: torch.Tensor
    converged: torch.Tensor


def _norm(t: torch.Tensor) -> torch.Tensor:
    norm: torch.Tensor = t.flatten(1).norm(dim=1)  # Tensor.norm has no return annotation in torch
    return norm


def _scale(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return t * s.reshape(-1, *([1] * (t.ndim - 1)))


def lsqr(
    op: LinearOperator,
    b: torch.Tensor,
    *,
    atol: float = 1e-10,
    btol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x0: torch.Tensor | None = None,
    normal_tol: float | torch.Tensor = 0.0,
    warn: bool = True,
) -> LsqrResult:
    r"""Solve :math:`\min_x \|A x - b\|_2` for each sample of ``b``, matrix-free.

    Parameters
    ----------
    op : LinearOperator
    b : torch.Tensor
        ``(N, *op.out_shape)``.
    atol, btol : float
        Stop a sample when :math:`\|r\| \le b_{tol} \|b\| + a_{tol} \|A\| \|x\|` (consistent systems)
        or :math:`\|A^T r\| \le a_{tol} \|A\| \|r\|` (inconsistent ones), as scipy's ``lsqr``.
    maxiter : int, optional
        Iteration cap; default ``min(max(4 n, 1000), 20000)`` (in exact arithmetic LSQR needs at most
        ``n``; rounding slows it on ill-conditioned operators).
    preconditioner : callable, optional
        A symmetric positive definite :math:`M`, applied to input-shaped tensors (right preconditioning).
    x0 : torch.Tensor, optional
        Starting point, ``(N, *op.in_shape)``. LSQR then solves for the correction,
        :math:`x = x_0 + \arg\min_d \|A d - (b - A x_0)\|`, and reaches :math:`A^+ b` when :math:`x_0` lies in
        the row space of :math:`A` (e.g. when :math:`A` is injective); the tolerances stay relative to
        :math:`\|b\|`, so a start that already solves the system costs no iteration.
    normal_tol : float or torch.Tensor, default 0
        Also stop a sample when :math:`\|A^T r_k\| \le \eta \, \|A^T r_0\|` (:math:`\eta` = ``normal_tol``,
        a float or one value per sample): the inexact-Newton test of a Gauss-Newton step
        (:math:`r_0 = b - A x_0`; the preconditioned :math:`M A^T r` with a preconditioner).
    warn : bool, default True
        Raise a :class:`ConvergenceWarning` when a sample hits the cap unconverged.

    Returns
    -------
    LsqrResult

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(4, 2, 3, 3, dtype=torch.float64), (8, 8))
    >>> b = torch.randn(1, *op.out_shape, dtype=torch.float64)
    >>> result = lsqr(op, b)
    >>> bool(result.converged.all())
    True
    """
    m = preconditioner or (lambda t: t)
    maxiter = maxiter if maxiter is not None else min(max(4 * op.in_dim, 1000), 20_000)
    tiny = torch.finfo(b.dtype).tiny
    n = b.shape[0]

    bnorm = _norm(b)
    u = b.clone() if x0 is None else b - op.forward(x0)
    beta = _norm(u)
    u = _scale(u, 1 / beta.clamp(min=tiny))
    v = m(op.adjoint(u))
    alpha = _norm(v)
    v = _scale(v, 1 / alpha.clamp(min=tiny))
    w = v.clone()
    y = torch.zeros_like(v)
    phibar, rhobar = beta.clone(), alpha.clone()
    anorm2 = torch.zeros_like(beta)
    x0norm = torch.zeros_like(beta) if x0 is None else _norm(x0)
    ynorm = x0norm.clone()
    normal0 = alpha * beta
    eta = torch.as_tensor(normal_tol, dtype=b.dtype, device=b.device)
    done = (bnorm == 0) | (alpha == 0) | (beta <= btol * bnorm)
    test2 = torch.zeros_like(beta)
    iterations = 0
    sample_iterations = torch.zeros(n, dtype=torch.long, device=b.device)
    while not bool(done.all()) and iterations < maxiter:
        iterations += 1
        u = op.forward(m(v)) - _scale(u, alpha)
        beta = _norm(u)
        u = _scale(u, 1 / beta.clamp(min=tiny))
        anorm2 = anorm2 + alpha**2 + beta**2
        v = m(op.adjoint(u)) - _scale(v, beta)
        alpha = _norm(v)
        v = _scale(v, 1 / alpha.clamp(min=tiny))
        rho = torch.sqrt(rhobar**2 + beta**2).clamp(min=tiny)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        active = ~done
        sample_iterations = sample_iterations + active.long()
        y = torch.where(active.reshape(-1, *([1] * (y.ndim - 1))), y + _scale(w, phi / rho), y)
        w = v - _scale(w, theta / rho)
        anorm = anorm2.sqrt()
        ynorm = _norm(y) + x0norm
        rnorm = phibar.abs()
        test1 = rnorm / bnorm.clamp(min=tiny)
        test2 = (alpha * c.abs()) * rnorm / (anorm * rnorm).clamp(min=tiny)
        stop = (test1 <= btol + atol * anorm * ynorm / bnorm.clamp(min=tiny)) | (test2 <= atol) | (alpha == 0)
        stop = stop | (alpha * c.abs() * rnorm <= eta * normal0)
        done = done | stop
    x = m(y) if x0 is None else x0 + m(y)
    residual = _norm(op.forward(x) - b) / bnorm.clamp(min=tiny)
    if warn and not bool(done.all()):
        warnings.warn(
            f"lsqr: {int((~done).sum())} of {n} samples did not converge in {maxiter} iterations (relative residual "
            f"up to {float(residual.max()):.3g}); raise maxiter or loosen atol/btol",
            ConvergenceWarning,
            stacklevel=2,
        )
    return LsqrResult(x, iterations, sample_iterations, residual, test2, done)
