r"""Matrix-free least squares for linear operators: batched LSQR (Paige & Saunders, 1982) and preconditioned CGLS.

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

__all__ = ["ConvergenceWarning", "LsqrResult", "lsqr", "pcgls"]


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


def _column(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample values ``(N,)`` shaped to broadcast against ``t`` ``(N, ...)``."""
    return s.reshape(-1, *([1] * (t.ndim - 1)))


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
    u = u / _column(beta.clamp(min=tiny), u)
    v = m(op.adjoint(u))
    alpha = _norm(v)
    v = v / _column(alpha.clamp(min=tiny), v)
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
        # fused updates (one pass over each vector; fresh tensors for u, v, in place on y, w, ours alone)
        u = torch.addcmul(op.forward(m(v)), u, _column(-alpha, u))
        beta = _norm(u)
        u.mul_(_column(1 / beta.clamp(min=tiny), u))
        anorm2 = anorm2 + alpha**2 + beta**2
        v = torch.addcmul(m(op.adjoint(u)), v, _column(-beta, v))
        alpha = _norm(v)
        v.mul_(_column(1 / alpha.clamp(min=tiny), v))
        rho = torch.sqrt(rhobar**2 + beta**2).clamp(min=tiny)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        active = ~done
        sample_iterations = sample_iterations + active.long()
        y.addcmul_(w, _column(torch.where(active, phi / rho, 0.0), y))  # finished samples stay put
        w.mul_(_column(-theta / rho, w)).add_(v)
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


def pcgls(
    op: LinearOperator,
    b: torch.Tensor,
    preconditioner: Callable[[torch.Tensor], torch.Tensor],
    *,
    tol: float = 1e-10,
    maxiter: int | None = None,
    x0: torch.Tensor | None = None,
    warn: bool = True,
) -> LsqrResult:
    r"""Solve :math:`\min_x \|A x - b\|_2` by conjugate gradients on :math:`A^T A x = A^T b`, preconditioned.

    CGLS with a symmetric positive definite :math:`M \approx (A^T A)^{-1}` (Bjorck, *Numerical Methods for
    Least Squares Problems*, 1996, section 7.4): with :math:`r = b - A x`, :math:`s = A^T r`,

    .. math::

        \alpha_k = \frac{\langle s_k, M s_k \rangle}{\|A p_k\|^2},\quad
        x_{k+1} = x_k + \alpha_k p_k,\quad r_{k+1} = r_k - \alpha_k A p_k,\quad
        p_{k+1} = M s_{k+1} + \frac{\langle s_{k+1}, M s_{k+1} \rangle}{\langle s_k, M s_k \rangle} p_k,

    from :math:`p_0 = M s_0`. Unlike right-preconditioned LSQR (:func:`lsqr`), :math:`M` need not be diagonal or
    have a known square root. The error in the :math:`A^T A` norm falls at least as
    :math:`2 ((\sqrt\kappa - 1) / (\sqrt\kappa + 1))^k`, :math:`\kappa` the condition number of :math:`M A^T A`
    on the space where :math:`M` is positive definite. The iterates stay in :math:`x_0` plus the range of
    :math:`M`: the limit is the least-squares solution there, :math:`A^+ b` when :math:`A` is injective on it.

    Parameters
    ----------
    op : LinearOperator
    b : torch.Tensor
        ``(N, *op.out_shape)``.
    preconditioner : callable
        :math:`M`, applied to input-shaped tensors ``(N, *op.in_shape)``; symmetric positive (semi-)definite.
    tol : float, default 1e-10
        Stop a sample when :math:`\langle s_k, M s_k \rangle^{1/2} \le` ``tol`` :math:`\langle A^T b, M A^T b
        \rangle^{1/2}`: the preconditioned normal residual relative to that of :math:`x = 0`, so a start that
        already solves the problem costs no iteration.
    maxiter : int, optional
        Iteration cap; default ``min(max(4 n, 1000), 20000)`` as :func:`lsqr`.
    x0 : torch.Tensor, optional
        Starting point, ``(N, *op.in_shape)``.
    warn : bool, default True
        Raise a :class:`ConvergenceWarning` when a sample hits the cap unconverged.

    Returns
    -------
    LsqrResult
        ``normal_residual`` holds the final :math:`\langle s, M s \rangle^{1/2} / \langle A^T b, M A^T b \rangle^{1/2}`.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(4, 2, 3, 3, dtype=torch.float64), (8, 8))
    >>> b = torch.randn(1, *op.out_shape, dtype=torch.float64)
    >>> result = pcgls(op, b, lambda v: v)  # M = I: plain CGLS
    >>> bool(torch.allclose(result.x, lsqr(op, b).x))
    True
    """
    maxiter = maxiter if maxiter is not None else min(max(4 * op.in_dim, 1000), 20_000)
    tiny = torch.finfo(b.dtype).tiny
    n = b.shape[0]
    x = torch.zeros(n, *op.in_shape, dtype=b.dtype, device=b.device) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - op.forward(x0)
    s = op.adjoint(r)
    z = preconditioner(s)
    p = z.clone()
    gamma = (s * z).flatten(1).sum(1)
    if x0 is None:
        gamma0 = gamma.clone()
    else:
        normal = op.adjoint(b)
        gamma0 = (normal * preconditioner(normal)).flatten(1).sum(1)
    done = gamma <= tol**2 * gamma0
    iterations = 0
    sample_iterations = torch.zeros(n, dtype=torch.long, device=b.device)
    while not bool(done.all()) and iterations < maxiter:
        iterations += 1
        active = ~done
        q = op.forward(p)
        alpha = torch.where(active, gamma / _norm(q).square().clamp(min=tiny), 0.0)
        x.addcmul_(p, _column(alpha, x))  # x and r are ours alone: updated in place
        r.addcmul_(q, _column(-alpha, r))
        s = op.adjoint(r)
        z = preconditioner(s)
        gamma_next = (s * z).flatten(1).sum(1)
        p = torch.addcmul(z, p, _column(gamma_next / gamma.clamp(min=tiny), p))
        gamma = torch.where(active, gamma_next, gamma)
        sample_iterations = sample_iterations + active.long()
        done = done | (gamma <= tol**2 * gamma0)
    residual = _norm(op.forward(x) - b) / _norm(b).clamp(min=tiny)
    if warn and not bool(done.all()):
        warnings.warn(
            f"pcgls: {int((~done).sum())} of {n} samples did not converge in {maxiter} iterations (relative residual "
            f"up to {float(residual.max()):.3g}); raise maxiter or loosen tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    normal = (gamma.clamp(min=0) / gamma0.clamp(min=tiny)).sqrt()
    return LsqrResult(x, iterations, sample_iterations, residual, normal, done)
