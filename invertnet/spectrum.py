r"""Singular values of convolution layers: how stably a layer can be undone.

:math:`\|A^+(y - y')\| \le \|y - y'\| / \sigma_{\min}`.

- exact spectra for layers the 2-D DFT diagonalises (circular or no padding; :mod:`invertnet.spectral`);
- otherwise :math:`\sigma_{\max}` and :math:`\sigma_{\min}` by Lanczos (scipy's ``eigsh`` on :math:`A^T A` as a
  ``LinearOperator``).

Which layers of a model can be inverted at all, and the per-layer report, are in :mod:`invertnet.injectivity`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from scipy.sparse.linalg import LinearOperator as ScipyOperator
from torch import nn

from invertnet.operators import ConvOperator, LinearOperator
from invertnet.spectral import CirculantFactorization, circulant_reason

__all__ = ["conv_singular_values", "sigma_max", "sigma_min"]


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
    return CirculantFactorization(op, torch.zeros((), dtype=torch.float64)).singular_values()


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


def sigma_max(op: LinearOperator, *, tol: float = 1e-10, maxiter: int | None = None) -> float:
    r"""Largest singular value, :math:`\sqrt{\lambda_{\max}(A^T A)}`, by Lanczos (float64, matrix-free)."""
    value, _ = _gram_eigenvalue(op, "LA", tol, maxiter)
    return math.sqrt(max(value, 0.0))


def sigma_min(op: LinearOperator, *, tol: float = 1e-8, maxiter: int | None = None) -> tuple[float, bool]:
    r"""Smallest singular value :math:`\sqrt{\lambda_{\min}(A^T A)}` by Lanczos, and whether it converged.

    Zero when the operator has fewer responses than unknowns. ``maxiter`` caps ARPACK's restarts
    (default ``max(1000, n)``); without convergence the best estimate so far comes with ``False``.

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
    # Lanczos on A^T A alone can miss a null space (a null vector is orthogonal to the range of A^T A, so
    # only the start vector carries it and restarts filter it out). On c I - A^T A, c >= lambda_max, the
    # null space is the largest eigenvalue and every iterate keeps it. Both Ritz values bound lambda_min
    # from above: take the smaller.
    direct, converged = _gram_eigenvalue(op, "SA", tol, maxiter)
    top, top_converged = _gram_eigenvalue(op, "LA", tol, maxiter)
    shift = top * (1 + 1e-8)
    flipped, flipped_converged = _gram_eigenvalue(op, "LA", tol * 1e-3, maxiter, shift=shift)
    value = min(direct, shift - flipped)
    return math.sqrt(max(value, 0.0)), converged and top_converged and flipped_converged
