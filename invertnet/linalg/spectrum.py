r"""Singular values of convolution layers: how stably a layer can be undone.

:math:`\|A^+(y - y')\| \le \|y - y'\| / \sigma_{\min}`.

- exact spectra for layers the 2-D DFT diagonalises (circular or no padding; :mod:`invertnet.linalg.spectral`);
- exact spectra of small layers from their dense matrix (:func:`dense_singular_values`);
- otherwise :math:`\sigma_{\max}` and :math:`\sigma_{\min}` by Lanczos (scipy's ``eigsh`` on :math:`A^T A` as a
  ``LinearOperator``), or :math:`\sigma_{\min}` by Lanczos on :math:`(A^T A)^{-1}` through the Cholesky factor of
  the Gram matrix (:func:`sigma_min_cholesky`) where that costs less.

Which layers of a model can be inverted at all, and the per-layer report, are in :mod:`invertnet.analysis.injectivity`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh, lobpcg
from scipy.sparse.linalg import LinearOperator as ScipyOperator
from torch import nn

from invertnet.linalg.spectral import circulant_reason, circulant_singular_values
from invertnet.operators import ConvOperator, LinearOperator

__all__ = [
    "DENSE_SPECTRUM_ENTRIES",
    "GRAM_MAX_UNKNOWNS",
    "LobpcgResult",
    "cholesky_pays",
    "conv_singular_values",
    "dense_singular_values",
    "sigma_max",
    "sigma_min",
    "sigma_min_cholesky",
    "sigma_min_lobpcg",
]

#: Largest matrix (entries) whose singular values :func:`dense_singular_values` computes: 2**23 entries
#: (64 MiB in float64), seconds of ``svdvals`` on one thread (4096 x 1536: about 3 s).
DENSE_SPECTRUM_ENTRIES = 2**23

#: Largest layer (unknowns) whose Gram matrix :func:`sigma_min_cholesky` factors: 12,288 (1.1 GiB in float64,
#: factored in place; about 13 s of Cholesky on one thread).
GRAM_MAX_UNKNOWNS = 12_288

#: Steps of the block LOBPCG that :func:`sigma_max` and :func:`sigma_min` fall back to where ARPACK raises (each one
#: application of :math:`A^T A` to 4 vectors).
LOBPCG_FALLBACK_STEPS = 1000

#: Lanczos steps :func:`cholesky_pays` expects :func:`sigma_min` to take (All-CNN-B's conv4 and conv7 at 64 px
#: took 700-1,400), each one forward and one adjoint.
LANCZOS_STEPS_GUESS = 1000


def conv_singular_values(conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> torch.Tensor:
    """Every singular value of a layer the DFT diagonalises, descending (``min(m, n)`` values, float64).

    Raises
    ------
    ValueError
        For layers it does not diagonalise (the message says why); use :func:`sigma_min` / :func:`sigma_max`.

    Examples
    --------
    >>> import torch
    >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    >>> conv_singular_values(conv, (8, 8)).shape
    torch.Size([128])
    """
    op = conv if isinstance(conv, ConvOperator) else ConvOperator.from_conv(conv, input_size)
    reason = circulant_reason(op)
    if reason is not None:
        raise ValueError(
            f"conv_singular_values: expected a layer the 2-D DFT diagonalises, but {reason}; "
            "use sigma_min / sigma_max for this layer"
        )
    return circulant_singular_values(op, torch.zeros((), dtype=torch.float64))


def dense_singular_values(op: ConvOperator, max_entries: int = DENSE_SPECTRUM_ENTRIES) -> torch.Tensor:
    """Every singular value of a small convolution, descending (``min(m, n)`` values, float64), exactly.

    ``svdvals`` of the matrix placed from the patch rows (:meth:`ConvOperator.placed_matrix`), any padding.

    Raises
    ------
    TooLargeError
        Above ``max_entries`` matrix entries; use :func:`sigma_min` / :func:`sigma_max`.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(6, 2, 3, 3, dtype=torch.float64), (7, 7), padding=1)
    >>> dense_singular_values(op).shape
    torch.Size([98])
    """
    values: torch.Tensor = torch.linalg.svdvals(op.placed_matrix(torch.float64, max_entries=max_entries))
    return values


def _gram_eigenvalue(
    op: LinearOperator, which: Literal["SA", "LA"], tol: float, maxiter: int | None, shift: float | None = None
) -> tuple[float, bool]:
    """An extreme eigenvalue of :math:`A^T A` (or of ``shift * I - A^T A``) by Lanczos (ARPACK), and convergence."""
    n = op.in_dim

    def gram(v: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).reshape(1, *op.in_shape)
        g = op.adjoint(op.forward(x)).reshape(-1).numpy()
        return g if shift is None else shift * v - g

    if n <= 40:
        dense = op.to_dense()
        eigenvalues = torch.linalg.eigvalsh(
            dense.T @ dense if shift is None else shift * torch.eye(n) - dense.T @ dense
        )
        return float(eigenvalues.min() if which == "SA" else eigenvalues.max()), True
    operator = ScipyOperator((n, n), matvec=gram, rmatvec=gram, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        values = eigsh(
            operator,
            k=1,
            which=which,
            tol=tol,
            maxiter=maxiter or max(1000, n),
            v0=v0,
            return_eigenvectors=False,
            ncv=min(n - 1, 40),
        )
        return float(values[0]), True
    except ArpackNoConvergence as err:
        return (float(err.eigenvalues[0]) if len(err.eigenvalues) else math.nan), False
    except ArpackError:  # error -9, "starting vector is zero": e.g. a layer whose every tap reads padding
        return _lobpcg_eigenvalue(operator, v0, which, tol, LOBPCG_FALLBACK_STEPS)


def _lobpcg_eigenvalue(
    operator: ScipyOperator, v0: np.ndarray, which: Literal["SA", "LA"], tol: float, maxiter: int
) -> tuple[float, bool]:
    r"""An extreme eigenvalue of :math:`G` by LOBPCG, where ARPACK stops, and whether it converged.

    Converged when :math:`\|G x - \theta x\| \le` ``tol`` :math:`|\theta|` for the unit Ritz vector :math:`x`: an
    eigenvalue of :math:`G` lies within that residual norm of :math:`\theta`.
    """
    n = v0.shape[0]
    block = np.random.default_rng(1).standard_normal((n, min(4, n // 3 or 1)))  # a block converges faster
    block[:, 0] = v0
    scale = abs(float(v0 @ operator.matvec(v0))) / float(v0 @ v0) or 1.0  # the residual tolerance is absolute
    with warnings.catch_warnings():  # its own "exited at iteration" warnings: convergence is returned instead
        warnings.simplefilter("ignore", UserWarning)
        values, vectors = lobpcg(operator, block, tol=tol * scale, maxiter=maxiter, largest=which == "LA")
    pick = int(np.argmax(values) if which == "LA" else np.argmin(values))
    theta, vector = float(values[pick]), vectors[:, pick] / np.linalg.norm(vectors[:, pick])
    residual = float(np.linalg.norm(operator.matvec(vector) - theta * vector))
    return theta, residual <= tol * max(abs(theta), scale)


def sigma_max(op: LinearOperator, *, tol: float = 1e-10, maxiter: int | None = None) -> float:
    r"""Largest singular value, :math:`\sqrt{\lambda_{\max}(A^T A)}`, by Lanczos (float64, matrix-free)."""
    value, _ = _gram_eigenvalue(op, "LA", tol, maxiter)
    return math.sqrt(max(value, 0.0))


def sigma_min(
    op: LinearOperator,
    *,
    tol: float = 1e-8,
    maxiter: int | None = None,
    largest: float | None = None,
    injective: bool = False,
) -> tuple[float, bool]:
    r"""Smallest singular value :math:`\sqrt{\lambda_{\min}(A^T A)}` by Lanczos, and whether it converged.

    Zero when the operator has fewer responses than unknowns. ``maxiter`` caps ARPACK's restarts
    (default ``max(1000, n)``); without convergence the best estimate so far comes with ``False``.

    Parameters
    ----------
    op : LinearOperator
    tol : float, default 1e-8
        ARPACK's relative tolerance on :math:`\lambda_{\min}`.
    maxiter : int, optional
    largest : float, optional
        :math:`\sigma_{\max}` when the caller has it (from :func:`sigma_max`): saves a Lanczos run.
    injective : bool, default False
        The caller has proved the operator injective (e.g. a window certificate, see
        :func:`invertnet.pinv.lsqr.injectivity_certificate`): it has no null space to miss, so Lanczos runs on
        :math:`A^T A` (smallest eigenvalue, to ``tol``); otherwise on :math:`c I - A^T A` (largest, to
        ``tol * 1e-3``), which keeps a null space. One run either way, besides :math:`\sigma_{\max}`.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(6, 2, 3, 3, dtype=torch.float64), (7, 7), padding=1)
    >>> value, converged = sigma_min(op)
    >>> converged
    True
    """
    if op.out_dim < op.in_dim:
        return 0.0, True
    if isinstance(op, ConvOperator) and bool((op.coverage() == 0).any()):
        return 0.0, True  # pixels no receptive field reads: zero columns of A
    if injective:
        direct, converged = _gram_eigenvalue(op, "SA", tol, maxiter)
        return math.sqrt(max(direct, 0.0)), converged
    # Lanczos on A^T A alone can miss a null space (a null vector is orthogonal to the range of A^T A, so
    # only the start vector carries it and restarts filter it out). On c I - A^T A, c >= lambda_max, the
    # null space is the largest eigenvalue and every iterate keeps it; its Ritz value bounds lambda_min
    # from above, to ARPACK's tolerance times c (one run: it converges in as many steps as the run on A^T A).
    top, top_converged = (largest**2, True) if largest is not None else _gram_eigenvalue(op, "LA", tol, maxiter)
    shift = top * (1 + 1e-8)
    flipped, flipped_converged = _gram_eigenvalue(op, "LA", tol * 1e-3, maxiter, shift=shift)
    return math.sqrt(max(shift - flipped, 0.0)), top_converged and flipped_converged


def cholesky_pays(op: LinearOperator) -> bool:
    r"""Whether :func:`sigma_min_cholesky` applies to ``op`` and should cost less than :func:`sigma_min`.

    It applies to zero-padded convolutions of at most :data:`GRAM_MAX_UNKNOWNS` unknowns; it pays when the
    Cholesky factorisation (:math:`n^3 / 3` flops, at about twice the rate of a convolution's flops) costs less
    than :data:`LANCZOS_STEPS_GUESS` forward and adjoint applications.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> cholesky_pays(ConvOperator(torch.randn(256, 128, 3, 3), (4, 4), padding=1))  # many channels, few pixels
    True
    >>> cholesky_pays(ConvOperator(torch.randn(96, 3, 11, 11), (64, 64), stride=4))  # the reverse
    False
    """
    if not isinstance(op, ConvOperator) or op.pad.mode != "zeros" or op.in_dim > GRAM_MAX_UNKNOWNS:
        return False
    forward_flops = 2 * op.out_dim * op.patch_size
    return op.in_dim**3 / 3 <= 2 * LANCZOS_STEPS_GUESS * 2 * forward_flops


def sigma_min_cholesky(op: ConvOperator, *, tol: float = 1e-12) -> float | None:
    r"""Smallest singular value from the Cholesky factor of the Gram matrix, or ``None`` when it has none.

    :math:`A^T A = L L^T` (:meth:`ConvOperator.gram_matrix`, float64); Lanczos (ARPACK, relative tolerance
    ``tol``) finds the largest eigenvalue :math:`\mu` of :math:`(A^T A)^{-1} = L^{-T} L^{-1}`, applied by two
    triangular solves, and :math:`\sigma_{\min} = \mu^{-1/2}`. The smallest eigenvalue of :math:`A^T A` is the
    largest of its inverse and the most separated there, so Lanczos needs tens of steps where it needs
    hundreds on :math:`A^T A`. Rounding: :math:`\sigma_{\min}` to about :math:`\epsilon \kappa(A)^2` relative.

    ``None`` when :math:`A^T A` is not positive definite in float64 (``A`` rank deficient or nearly so):
    :func:`sigma_min` then keeps the null space in view.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(6, 2, 3, 3, dtype=torch.float64), (7, 7), padding=1)
    >>> exact = float(torch.linalg.svdvals(op.placed_matrix())[-1])
    >>> abs(sigma_min_cholesky(op) - exact) < 1e-10 * exact
    True
    """
    n, device = op.in_dim, op.weight.device
    # the unknowns in (H, W, C) order, the Gram matrix's natural layout (same eigenvalues), factored in place
    factor = op.gram_matrix(torch.float64, device, channels_last=True)
    info = torch.zeros((), dtype=torch.int32, device=device)
    torch.linalg.cholesky_ex(factor, out=(factor, info))
    if int(info) != 0:
        return None
    if n <= 40:
        return float(torch.linalg.svdvals(op.placed_matrix(torch.float64, device))[-1])

    def inverse(v: np.ndarray) -> np.ndarray:
        b = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).reshape(n, 1).to(device)
        half = torch.linalg.solve_triangular(factor, b, upper=False)
        solution: np.ndarray = torch.linalg.solve_triangular(factor.mT, half, upper=True).reshape(-1).cpu().numpy()
        return solution

    operator = ScipyOperator((n, n), matvec=inverse, rmatvec=inverse, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        values = eigsh(operator, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False, ncv=min(n - 1, 20))
    except ArpackNoConvergence:
        return None
    largest = float(values[0])
    return 1.0 / math.sqrt(largest)


@dataclass(frozen=True)
class LobpcgResult:
    r"""A LOBPCG estimate of :math:`\sigma_{\min}`: a Ritz value, so an upper bound (never a proof).

    Attributes
    ----------
    sigma_min : float
    converged : bool
        The smallest Ritz value settled (see :func:`sigma_min_lobpcg`).
    iterations, applications : int
        LOBPCG steps, and applications of :math:`A^T A` to one vector.
    vector : torch.Tensor
        The Ritz vector of ``sigma_min``, ``(n,)`` float64, unit length (to prove the upper bound:
        :func:`~invertnet.pinv.proofs.upper.vector_upper_bound`).
    """

    sigma_min: float
    converged: bool
    iterations: int
    applications: int
    vector: torch.Tensor


def sigma_min_lobpcg(
    op: LinearOperator,
    *,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    block: int = 4,
    maxiter: int = 300,
    rtol: float = 1e-9,
    single: bool = True,
    progress: Callable[[str], None] | None = None,
) -> LobpcgResult:
    r""":math:`\sigma_{\min}` by block LOBPCG on :math:`A^T A` (Knyazev 2001), optionally preconditioned.

    ``block`` vectors; each step takes the Rayleigh-Ritz pairs of :math:`A^T A` on the span of the block, its
    (preconditioned) residuals and the previous step (orthonormalised by a QR factorisation, the previous step
    dropped when it has become dependent). With a preconditioner :math:`T \approx (A^T A)^{-1}` (for strided
    convolutions with zero padding or none, :class:`~invertnet.linalg.preconditioners.BorderPreconditioner`) it needs
    tens of steps where plain LOBPCG or Lanczos need hundreds: All-CNN-B ReLU conv4 at 224 px (69,984 unknowns)
    reached 6 digits after 49 preconditioned steps of 4 vectors, against about 150 unpreconditioned.

    Converged when the smallest Ritz value changed by at most ``rtol`` (relative) over five steps and its residual
    :math:`\|A^T A x - \lambda x\| \le 10^{-4} \lambda`; capped at ``maxiter`` steps in all (an estimate that
    stops says so: ``converged=False``). With ``single`` (default) the steps first apply :math:`A^T A` in float32
    (a float32 convolution runs 3-14x faster than a float64 one on CPU) until the Ritz value settles to 1e-5, then
    polish in float64 from that block: the float64 steps are few. ``progress`` hears every 20 steps. The value is
    a Ritz value of the float64 operator: an upper bound on :math:`\sigma_{\min}` (up to rounding), never a proof.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(24, 2, 3, 3, dtype=torch.float64), (12, 12), padding=1)
    >>> result = sigma_min_lobpcg(op)
    >>> exact = float(torch.linalg.svdvals(op.placed_matrix())[-1])
    >>> result.converged, abs(result.sigma_min - exact) < 1e-7 * exact
    (True, True)
    """
    n = op.in_dim
    k = min(block, max(1, n // 3))
    applications = [0]
    # phase 1 applies A^T A in float32 (a float32 convolution runs 3-14x faster than a float64 one on CPU) until
    # the Ritz value settles to float32's accuracy; phase 2 polishes in float64 from that block
    phases = [(torch.float32, 1e-5, 1e-3), (torch.float64, rtol, 1e-4)] if single else [(torch.float64, rtol, 1e-4)]
    dtype = phases[0][0]

    def gram(v: torch.Tensor) -> torch.Tensor:  # (n, j) columns
        applications[0] += v.shape[1]
        images = v.T.reshape(-1, *op.in_shape).to(dtype)
        out: torch.Tensor = op.adjoint(op.forward(images)).reshape(v.shape[1], n).T.to(torch.float64)
        return out

    def precondition(r: torch.Tensor) -> torch.Tensor:
        if preconditioner is None:
            return r
        out: torch.Tensor = preconditioner(r.T.reshape(-1, *op.in_shape)).reshape(r.shape[1], n).T
        return out

    generator = torch.Generator().manual_seed(0)
    x = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=generator)).Q
    converged = False
    step = 0
    values = torch.full((1,), math.nan, dtype=torch.float64)
    for dtype, settle, residual_share in phases:
        ax = gram(x)
        values, c = torch.linalg.eigh(x.T @ ax)
        x, ax = x @ c, ax @ c
        p = ap = None
        history: list[float] = []
        converged = False
        while step < maxiter:
            residual = ax - x * values
            smallest = float(values[0])
            history.append(smallest)
            small_residual = float(residual[:, 0].norm()) <= residual_share * max(smallest, 0.0)
            recent = history[-6:]
            if small_residual and len(recent) == 6 and max(recent) - min(recent) <= settle * abs(recent[-1]):
                converged = True
                break
            step += 1
            w = precondition(residual)
            w = w - x @ (x.T @ w)
            aw = gram(w)
            basis, image = [x, w], [ax, aw]
            if p is not None and ap is not None:
                basis.append(p)
                image.append(ap)
            s_raw, as_raw = torch.cat(basis, 1), torch.cat(image, 1)
            q, r = torch.linalg.qr(s_raw)
            diagonal = r.diagonal().abs()
            if float(diagonal.min()) <= 1e-10 * float(diagonal.max()) and p is not None:
                s_raw, as_raw = s_raw[:, : 2 * k], as_raw[:, : 2 * k]  # the previous step became dependent: drop it
                q, r = torch.linalg.qr(s_raw)
            aq = torch.linalg.solve_triangular(r, as_raw, upper=True, left=False)
            h = q.T @ aq
            values_all, c_all = torch.linalg.eigh((h + h.T) / 2)
            values, c = values_all[:k], c_all[:, :k]
            x_new, ax_new = q @ c, aq @ c
            p, ap = q[:, k:] @ c[k:], aq[:, k:] @ c[k:]
            x, ax = x_new, ax_new
            if progress is not None and step % 20 == 0:
                sigma = math.sqrt(max(float(values[0]), 0.0))
                progress(f"LOBPCG ({'float32' if dtype == torch.float32 else 'float64'}): {step} steps, ~{sigma:.8g}")
    return LobpcgResult(math.sqrt(max(float(values[0]), 0.0)), converged, step, applications[0], x[:, 0].clone())
