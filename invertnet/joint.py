r"""Joint inversion of a network prefix: match the features of every layer at once.

Inverting one layer at a time throws away what later layers know (behind a CReLU input the
unknowns are half the channels, but a linear pseudo-inverse treats all of them as free). A
CReLU/ReLU network is piecewise linear: with the activation pattern (and max-pooling switches)
of the current estimate fixed, :math:`f(x) = J_s x + c_s` exactly. Damped Gauss-Newton:

.. math::

    \delta_k = \arg\min_\delta \|J_{s_k} \delta - (y - f(x_k))\|^2 + \lambda \|W_k^{1/2} \nabla(x_k + \delta)\|^2,
    \qquad x_{k+1} = \Pi_{[lo, hi]}(x_k + \alpha_k \delta_k),

with :math:`J` applied matrix-free (``torch.func.jvp`` / ``torch.func.vjp``), the inner problem solved
by LSQR, :math:`\alpha_k` halved until the objective decreases, and the activation pattern updated
at every step. The optional total-variation prior (:math:`\lambda > 0`) enters by iteratively
reweighted least squares, :math:`W_k = 1 / \sqrt{|\nabla x_k|^2 + \epsilon^2}`. Where the features
determine the input (an injective prefix), the fixed point is the input itself, recovered to
rounding; where they do not, the result is *one* of many preimages, and the prior picks a natural
one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import jvp, vjp

from invertnet.operators import LinearOperator
from invertnet.solvers import lsqr

__all__ = ["JointResult", "invert_jointly"]


@dataclass
class JointResult:
    r"""The outcome of :func:`invert_jointly`.

    Attributes
    ----------
    image : torch.Tensor
        The input estimate.
    iterations : int
        Gauss-Newton steps taken.
    inner_iterations : int
        LSQR iterations over all steps (each one Jacobian-vector and one vector-Jacobian product).
    residual : torch.Tensor
        Per image, the relative feature residual :math:`\|f(\hat x) - y\| / \|y\|`.
    converged : bool
        Whether every image met ``tol``.
    history : list of float
        The largest relative feature residual before each step, and after the last.
    """

    image: torch.Tensor
    iterations: int
    inner_iterations: int
    residual: torch.Tensor
    converged: bool
    history: list[float] = field(default_factory=list)


def _gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences along H and W (zero at the far border), stacked on a new axis 1."""
    dh = torch.zeros_like(x)
    dw = torch.zeros_like(x)
    dh[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dw[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([dh, dw], dim=1)


def _gradient_adjoint(g: torch.Tensor) -> torch.Tensor:
    dh, dw = g[:, 0], g[:, 1]
    out = torch.zeros_like(dh)
    out[..., 1:, :] += dh[..., :-1, :]
    out[..., :-1, :] -= dh[..., :-1, :]
    out[..., :, 1:] += dw[..., :, :-1]
    out[..., :, :-1] -= dw[..., :, :-1]
    return out


class _Linearisation(LinearOperator):
    r""":math:`\delta \mapsto (J \delta, \sqrt{\lambda W} \nabla \delta)` at a fixed point, flattened per sample."""

    def __init__(
        self,
        f: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        out_shape: tuple[int, ...],
        weights: torch.Tensor | None,
    ) -> None:
        self.f, self.x, self.weights = f, x, weights
        self._features = math.prod(out_shape)
        self._feature_shape = out_shape
        prior = 0 if weights is None else 2 * x[0].numel()
        self.in_shape = tuple(x.shape[1:])
        self.out_shape = (self._features + prior,)
        _, self._vjp = vjp(f, x)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        _, jv = jvp(self.f, (self.x,), (v,))
        parts = [jv.flatten(1)]
        if self.weights is not None:
            parts.append((self.weights * _gradient(v)).flatten(1))
        return torch.cat(parts, dim=1)

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        n = u.shape[0]
        features = u[:, : self._features].reshape(n, *self._feature_shape)
        (out,) = self._vjp(features)
        if self.weights is not None:
            prior = u[:, self._features :].reshape(n, 2, *self.in_shape)
            out = out + _gradient_adjoint(self.weights * prior)
        return out


def invert_jointly(
    f: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    x0: torch.Tensor,
    *,
    tol: float = 1e-10,
    max_steps: int = 30,
    inner_atol: float = 1e-6,
    inner_maxiter: int = 300,
    tv: float = 0.0,
    box: tuple[float, float] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> JointResult:
    r"""Find :math:`x` with :math:`f(x) = y` by damped Gauss-Newton on the pattern-fixed linearisation.

    Parameters
    ----------
    f : callable
        The prefix, ``(N, C, H, W) -> features``; piecewise linear for exact recovery (CReLU, ReLU,
        leaky ReLU, pooling, affine layers), any differentiable map otherwise.
    y : torch.Tensor
        Target features.
    x0 : torch.Tensor
        Start (e.g. the best layer-by-layer estimate).
    tol : float, default 1e-10
        Stop when every image's relative feature residual :math:`\|f(x) - y\| / \|y\|` is at most ``tol``.
    max_steps : int, default 30
        Gauss-Newton steps at most.
    inner_atol, inner_maxiter : float, int
        LSQR's tolerance and cap for each step (inexact steps; the outer loop corrects them).
    tv : float, default 0.0
        Weight of the total-variation prior (IRLS). Use it when the prefix is not injective.
    box : (float, float), optional
        Keep the estimate in ``[lo, hi]`` (e.g. ``(0, 1)`` for images).
    progress : callable, optional
        Called as ``progress(step, residual)`` after every step (the CLI draws its bar with it).

    Returns
    -------
    JointResult

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 2), CReLU(), torch.nn.Conv2d(16, 20, 2)).double()
    >>> x = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    >>> with torch.no_grad():
    ...     result = invert_jointly(net, net(x), torch.zeros_like(x) + 0.5)
    >>> result.converged, float((result.image - x).norm() / x.norm()) < 1e-8
    (True, True)
    """
    y = y.detach()
    x = x0.detach().clone()
    if box is not None:
        x = x.clamp(*box)
    y_norm = y.flatten(1).norm(dim=1).clamp(min=torch.finfo(y.dtype).tiny)

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = f(x)
        residual = (features - y).flatten(1).norm(dim=1) / y_norm
        value = residual**2
        if tv > 0:
            value = value + tv * _gradient(x).pow(2).sum(dim=1).add(1e-6).sqrt().flatten(1).sum(dim=1) / y_norm**2
        return residual, value

    with torch.no_grad():
        residual, value = objective(x)
        history = [float(residual.max())]
        inner_total = 0
        steps = 0
        while steps < max_steps and float(residual.max()) > tol:
            weights = None
            if tv > 0:
                magnitude = _gradient(x).pow(2).sum(dim=1, keepdim=True).add(1e-6).sqrt()
                weights = (tv / magnitude).sqrt().expand(-1, 2, *x.shape[1:])
            op = _Linearisation(f, x, tuple(y.shape[1:]), weights)
            rhs = [(y - f(x)).flatten(1)]
            if weights is not None:
                rhs.append(-(weights * _gradient(x)).flatten(1))
            solution = lsqr(
                op, torch.cat(rhs, dim=1), atol=inner_atol, btol=inner_atol, maxiter=inner_maxiter, warn=False
            )
            inner_total += solution.iterations
            step = 1.0
            while True:
                candidate = x + step * solution.x
                if box is not None:
                    candidate = candidate.clamp(*box)
                new_residual, new_value = objective(candidate)
                better = new_value <= value
                if bool(better.all()) or step < 1 / 64:
                    break
                step /= 2
            keep = better.reshape(-1, *([1] * (x.ndim - 1)))
            x = torch.where(keep, candidate, x)
            residual = torch.where(better, new_residual, residual)
            value = torch.where(better, new_value, value)
            steps += 1
            history.append(float(residual.max()))
            if progress is not None:
                progress(steps, history[-1])
            if not bool(better.any()):
                break
    return JointResult(x, steps, inner_total, residual, bool((residual <= tol).all()), history)
