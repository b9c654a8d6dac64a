r"""Proven lower bounds on smallest singular values, computed in floating point.

A computed singular value is an estimate: rounding moves it, and an iterative one (Lanczos) can miss the bottom
of the spectrum altogether. A *proof* is a number :math:`\beta` with :math:`\sigma_{\min}(B) \ge \beta` that
holds whatever the rounding did. Two are computed here, both in float64 under the standard model of IEEE 754
arithmetic (round to nearest, no underflow into the terms that matter; every operation
:math:`\mathrm{fl}(a \circ b) = (a \circ b)(1 + \delta)`, :math:`|\delta| \le u = 2^{-53}`): a sum of
:math:`n` products in any order is within :math:`\gamma_n \sum |\text{terms}|`,
:math:`\gamma_n = n u / (1 - n u)` (Higham 2002, Ch. 3). No directed rounding is needed: the bounds inflate the
computed quantities by such :math:`\gamma` factors (the approach of Rump's verification methods).

1. **Verified Cholesky** (:func:`cholesky_certificate`, :func:`gram_lower_bound`). If floating-point Cholesky
   runs to completion on :math:`\tilde A = \mathrm{fl}(\tilde G - c I)`, its factor satisfies
   :math:`\hat R^T \hat R = \tilde A + \Delta`, :math:`|\Delta| \le \gamma_{n+1} |\hat R^T| |\hat R|`
   (Higham 2002, Thm 10.3), and :math:`\|\hat r_j\|^2 \le \tilde a_{jj} / (1 - \gamma_{n+1})` gives
   :math:`\|\Delta\|_2 \le \frac{\gamma_{n+1}}{1 - \gamma_{n+1}} \operatorname{tr} \tilde A` (Rump 2006). So
   :math:`\lambda_{\min}(\tilde G) \ge c - \frac{\gamma_{n+1}}{1 - \gamma_{n+1}} \operatorname{tr}\tilde A -
   u \max_i |\tilde a_{ii}|`. With :math:`\tilde G = \mathrm{fl}(B^T B)`,
   :math:`\|\tilde G - B^T B\|_2 \le \gamma_m \| |B|^T |B| \|_2 \le \gamma_m \max_i (|B|^T |B| \mathbf 1)_i`, and
   :math:`\sigma_{\min}(B)^2 = \lambda_{\min}(B^T B) \ge \lambda_{\min}(\tilde G) - \gamma_m \| |B|^T|B| \|_2`.
   Cost: one Gram matrix and one Cholesky per candidate shift. Reach: the margin is about
   :math:`n^2 u \bar\sigma^2`, so it proves :math:`\sigma_{\min}` above about :math:`n u^{1/2} \bar\sigma`.
   A block-banded :math:`\tilde G` (:func:`banded_cholesky_certificate`) is factored a block row at a time,
   keeping only the band: the same theorem with :math:`\gamma_{w+1}`, :math:`w` the longest inner product
   (the band's width), since the entries outside the band are never formed; and :math:`\Delta` is banded too, so
   the trace shrinks to the largest trace of one window of the band.
2. **SVD certificate** (:func:`svd_lower_bound`) for one dense matrix: with :math:`B \approx U \Sigma V^T`
   computed, :math:`Y = \mathrm{fl}(B V)` has nearly orthogonal columns, and
   :math:`\sigma_{\min}(B) \ge (\sigma_{\min}(Y) - \|Y - BV\|_2) / \|V\|_2`; Gershgorin's theorem on the
   column-scaled :math:`Y^T Y` (unit diagonal, off-diagonal entries of order :math:`u`) bounds
   :math:`\sigma_{\min}(Y)` from below, and on :math:`V^T V` bounds :math:`\|V\|_2` from above. Reach: about
   :math:`\sigma_{\min} > n^{3/2} u \sigma_{\max}`; it costs an SVD.

References: N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002 (Thm 10.3);
S. M. Rump, "Verification of positive definiteness", *BIT* 46 (2006) 433-452.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "UNIT_ROUNDOFF",
    "abs_gram_norm",
    "banded_cholesky_certificate",
    "cholesky_certificate",
    "deflate",
    "gamma",
    "gram_lower_bound",
    "inflate",
    "lambda_min_estimate",
    "svd_lower_bound",
    "verified_factor",
]

#: Unit roundoff of IEEE binary64, :math:`u = 2^{-53}`.
UNIT_ROUNDOFF = 2.0**-53

#: The smallest positive subnormal binary64 number (Rump's underflow term).
_ETA = 2.0**-1074

#: Shifts tried below an estimate of :math:`\lambda_{\min}` by :func:`gram_lower_bound`, as fractions of it.
SHIFT_FRACTIONS = (0.98, 0.5, 0.1, 0.01)


def gamma(n: int) -> float:
    r""":math:`\gamma_n = n u / (1 - n u)`: the relative error of a sum of :math:`n` terms in float64.

    Examples
    --------
    >>> gamma(1) > 2.0**-53
    True
    """
    nu = n * UNIT_ROUNDOFF
    if nu >= 0.5:
        raise ValueError(f"gamma: expected n u < 1/2, got n = {n}")
    return nu / (1.0 - nu)


def inflate(x: torch.Tensor, terms: int) -> torch.Tensor:
    r"""An upper bound on the exact value of a computed sum of ``terms`` non-negative terms (float64).

    A computed sum :math:`\hat s` of non-negative terms satisfies :math:`s \le \hat s / (1 - \gamma_k)`; this
    returns :math:`\hat s (1 + 2 \gamma_{k+2})`, which is larger (and covers the rounding of the product itself).
    """
    return x * (1.0 + 2.0 * gamma(terms + 2))


def deflate(x: torch.Tensor, terms: int) -> torch.Tensor:
    r"""A lower bound on the exact value of a computed sum of ``terms`` non-negative terms (float64).

    :math:`s \ge \hat s / (1 + \gamma_k)`; this returns :math:`\hat s (1 - 2 \gamma_{k+2})`, which is smaller.
    """
    return x * (1.0 - 2.0 * gamma(terms + 2))


def abs_gram_norm(matrix: torch.Tensor) -> torch.Tensor:
    r"""Upper bounds on :math:`\| |B|^T |B| \|_2` for a batch ``(..., m, n)`` (float64), one per matrix.

    :math:`|B|^T |B|` is symmetric and non-negative, so its 2-norm is at most its largest row sum,
    :math:`\max_i (|B|^T (|B| \mathbf 1))_i`, computed here and inflated for the rounding of both sums.
    """
    m, n = matrix.shape[-2:]
    a = matrix.abs()
    rows = (a @ torch.ones(n, 1, dtype=a.dtype, device=a.device)).clamp(min=0)
    sums = a.mT @ rows
    return inflate(inflate(sums.squeeze(-1).amax(-1), n), m)


def cholesky_certificate(
    gram: torch.Tensor, tau: torch.Tensor, gram_error: torch.Tensor, *, overwrite: bool = False
) -> torch.Tensor:
    r"""Proven lower bounds on :math:`\lambda_{\min}(G)` from a computed Gram matrix: ``tau - gram_error`` or ``-inf``.

    Parameters
    ----------
    gram : torch.Tensor
        The computed :math:`\tilde G`, ``(..., n, n)`` float64; only its lower triangle is read (as Cholesky does):
        the matrix meant is that triangle made symmetric.
    tau : torch.Tensor
        ``(...)``, the shifts to prove, :math:`\lambda_{\min}(\tilde G) \ge \tau \ge 0`.
    gram_error : torch.Tensor
        ``(...)``, upper bounds on :math:`\|\tilde G - G\|_2` for the exact :math:`G` (e.g.
        :math:`\gamma_m` :func:`abs_gram_norm` for :math:`\tilde G = \mathrm{fl}(B^T B)`).

    Returns
    -------
    torch.Tensor
        ``(...)``: :math:`\tau - \|\tilde G - G\|` where the verified Cholesky of :math:`\tilde G - c I` ran to
        completion (see the module docstring; :math:`c = \tau` plus the rounding margin), ``-inf`` elsewhere.

    Examples
    --------
    >>> b = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    >>> g = b.T @ b
    >>> bound = cholesky_certificate(g, torch.tensor(0.99), gamma(3) * abs_gram_norm(b))
    >>> 0.98 < float(bound) <= 1.0
    True
    >>> float(cholesky_certificate(g, torch.tensor(1.01), torch.tensor(0.0)))  # above lambda_min: not proven
    -inf
    """
    return _certify(gram, tau, gram_error, overwrite)[0]


def verified_factor(
    gram: torch.Tensor, tau: float, gram_error: float, *, overwrite: bool = False
) -> tuple[float, torch.Tensor | None, float, float]:
    r""":func:`cholesky_certificate` for one matrix, keeping the factor (for shift-and-invert Lanczos).

    Returns
    -------
    (float, torch.Tensor or None, float, float)
        The bound (``-inf`` if not proven); the lower Cholesky factor :math:`L` of :math:`\tilde G / s - c I`
        (``None`` if not proven); the scale :math:`s` (a power of two) and the shift :math:`c`, so that
        :math:`\lambda(\tilde G) = s (c + \lambda(L L^T))`.
    """
    bound, factor, scale, shift = _certify(gram, torch.tensor(float(tau)), torch.tensor(float(gram_error)), overwrite)
    value = float(bound)
    return value, (factor if math.isfinite(value) else None), float(scale), float(shift)


def _certify(
    gram: torch.Tensor, tau: torch.Tensor, gram_error: torch.Tensor, overwrite: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = gram.shape[-1]
    tau = torch.as_tensor(tau, dtype=torch.float64, device=gram.device).expand(gram.shape[:-2])
    gram_error = torch.as_tensor(gram_error, dtype=torch.float64, device=gram.device).expand(gram.shape[:-2])
    diagonal = gram.diagonal(dim1=-2, dim2=-1)
    largest = diagonal.amax(-1)
    usable = (diagonal.amin(-1) > 0) & torch.isfinite(largest) & (tau >= 0)
    # scale by a power of two (exact) so that the largest diagonal entry lies in [1, 2)
    scale = torch.exp2(torch.floor(torch.log2(torch.where(usable, largest, 1.0))))
    scaled = gram.div_(scale[..., None, None]) if overwrite else gram / scale[..., None, None]
    trace = inflate(scaled.diagonal(dim1=-2, dim2=-1).sum(-1), n)
    g = gamma(n + 1)
    margin = (g / (1 - g)) * trace * (1 + 4 * UNIT_ROUNDOFF) + 2 * UNIT_ROUNDOFF * (largest / scale)
    margin = margin + 4 * n * (n + 4) * _ETA
    shift = (tau / scale + margin) * (1 + 4 * UNIT_ROUNDOFF)
    scaled.diagonal(dim1=-2, dim2=-1).sub_(shift[..., None])
    info = torch.zeros(gram.shape[:-2], dtype=torch.int32, device=gram.device)
    torch.linalg.cholesky_ex(scaled, out=(scaled, info))
    proven = usable & (info == 0)
    bound = torch.where(proven, tau - gram_error, torch.full_like(tau, -math.inf))
    return bound, scaled, scale, shift


def _scaled_margin(diagonal: torch.Tensor, terms: int, window_trace: torch.Tensor | None = None) -> tuple[float, float]:
    """The power-of-two scale and Rump's margin (the module docstring) for a matrix with this computed diagonal.

    ``window_trace``, an upper bound on the largest band window's sum of diagonal entries (unscaled), replaces the
    trace for a banded matrix (:func:`banded_cholesky_certificate`).
    """
    n = diagonal.numel()
    largest = float(diagonal.max())
    scale = 2.0 ** math.floor(math.log2(largest))
    whole = (diagonal / scale).sum() if window_trace is None else window_trace / scale  # exact: a power of two
    trace = float(inflate(whole, n))
    g = gamma(terms + 1)
    margin = (g / (1 - g)) * trace * (1 + 4 * UNIT_ROUNDOFF) + 2 * UNIT_ROUNDOFF * (largest / scale)
    return scale, margin + 4 * n * (n + 4) * _ETA


def banded_cholesky_certificate(
    block: Callable[[int, int], torch.Tensor],
    count: int,
    reach: int,
    tau: float,
    gram_error: float,
    *,
    diagonal_bound: torch.Tensor | None = None,
    ceiling: float = math.inf,
    progress: Callable[[str], None] | None = None,
) -> float:
    r"""A proven lower bound on :math:`\lambda_{\min}(G)` for a block-banded computed Gram matrix, or ``-inf``.

    :func:`cholesky_certificate` for :math:`\tilde G` given by blocks: ``block(i, j)`` (``i >= j``) returns block
    :math:`(i, j)`, float64, for :math:`i - j \le` ``reach``; the blocks outside that band are zero. The Cholesky
    factorisation runs a block row at a time (left-looking) and keeps only the last ``reach`` block rows of the
    factor: memory :math:`O(q^2 b^2)` for block size :math:`b` and ``reach`` :math:`q`, time
    :math:`O(n q^2 b^2)` instead of :math:`n^3 / 3`.

    Rounding: every entry of the factor is an inner product of at most :math:`w = (q + 1) b` nonzero terms
    (Higham 2002, Lemma 8.4, holds in any order of evaluation; the zero blocks are never formed), so
    :math:`|\Delta| \le \gamma' d d^T` with :math:`\gamma' = \gamma_{w+1} / (1 - \gamma_{w+1})` and
    :math:`d_i = \tilde a_{ii}^{1/2}`, as in the module docstring. Both :math:`\hat R^T \hat R` and
    :math:`\tilde A` vanish outside the band, so does :math:`\Delta`: :math:`|\Delta| \le \gamma' (d d^T)
    \circ B` for the band's pattern :math:`B`. For a non-negative symmetric matrix :math:`N` and any positive
    :math:`x`, :math:`\|N\|_2 = \rho(N) \le \max_i (N x)_i / x_i` (Collatz-Wielandt); with :math:`x = d`,
    :math:`\|\Delta\|_2 \le \gamma' \max_i \sum_{j \in B(i)} \tilde a_{jj}`: the trace of the module docstring
    becomes the largest sum of :math:`2 q + 1` consecutive diagonal blocks, :math:`H / (2 q + 1)` times smaller
    for :math:`H` blocks of equal trace. The margin needs the diagonal before the factorisation: the
    diagonal blocks are computed twice (once for the margin, once to factor) and must agree bit for bit, or, with
    ``diagonal_bound``, every diagonal entry factored must lie at or below that bound; otherwise nothing is proven.

    Parameters
    ----------
    block : callable
        ``(i, j) -> (b_i, b_j)`` float64 tensor, lower blocks only (the diagonal blocks' lower triangles are read).
    count : int
        Block rows.
    reach : int
        Block bandwidth :math:`q`.
    tau, gram_error : float
        The shift to prove, :math:`\lambda_{\min}(\tilde G) \ge \tau`, and an upper bound on
        :math:`\|\tilde G - G\|_2`.
    diagonal_bound : torch.Tensor, optional
        ``(n,)`` upper bounds on the diagonal of :math:`\tilde G`, for blocks of equal size (then ``block`` is
        called once per block, in order: block row by block row).
    ceiling : float, optional
        An estimate of :math:`\lambda_{\min}(\tilde G)` from above (a squared Ritz value): when the shift plus
        the rounding margin reaches it, the factorisation would fail, and is not run (``-inf`` at once). Only
        saves time: nothing is proven without a factorisation.
    progress : callable, optional
        Hears a line every tenth block row.

    Returns
    -------
    float
        ``tau - gram_error`` when the factorisation of :math:`\tilde G - c I` ran to completion, else ``-inf``.

    Examples
    --------
    >>> off = torch.ones(11, dtype=torch.float64)
    >>> g = 4 * torch.eye(12, dtype=torch.float64) + torch.diag(off, 1) + torch.diag(off, -1)  # tridiagonal
    >>> blocks = lambda i, j: g[3 * i : 3 * i + 3, 3 * j : 3 * j + 3]
    >>> exact = float(torch.linalg.eigvalsh(g)[0])
    >>> 0.98 * exact - 1e-12 < banded_cholesky_certificate(blocks, 4, 1, 0.98 * exact, 0.0) <= exact
    True
    >>> banded_cholesky_certificate(blocks, 4, 1, 1.01 * exact, 0.0)
    -inf
    """
    if diagonal_bound is None:
        diagonals = [block(i, i).diagonal().clone() for i in range(count)]
    else:
        diagonals = list(diagonal_bound.to(torch.float64).chunk(count))
    diagonal = torch.cat(diagonals)
    if float(diagonal.min()) <= 0 or not math.isfinite(float(diagonal.max())) or tau < 0:
        return -math.inf
    sizes = [d.numel() for d in diagonals]
    width = min(diagonal.numel(), max(sum(sizes[max(0, i - reach) : i + 1]) for i in range(count)))
    # the margin's trace: the largest of the band's windows of 2q + 1 diagonal blocks (the docstring says why)
    sums = torch.stack([d.sum() for d in diagonals])
    windows = [(max(0, i - reach), min(count, i + reach + 1)) for i in range(count)]
    window_trace = max(inflate(sums[lo:hi].sum(), sum(sizes[lo:hi])) for lo, hi in windows)
    scale, margin = _scaled_margin(diagonal, width, window_trace)
    shift = (tau / scale + margin) * (1 + 4 * UNIT_ROUNDOFF)
    if shift * scale >= ceiling:
        return -math.inf  # G - shift I has a negative eigenvalue: the factorisation would fail
    factor: dict[tuple[int, int], torch.Tensor] = {}
    for i in range(count):
        for j in range(max(0, i - reach), i):
            s = block(i, j) / scale
            for k in range(max(0, i - reach), j):
                s -= factor[i, k] @ factor[j, k].mT
            factor[i, j] = torch.linalg.solve_triangular(factor[j, j].mT, s, upper=True, left=False)
        d = block(i, i)
        within = torch.equal(d.diagonal(), diagonals[i]) if diagonal_bound is None else d.diagonal() <= diagonals[i]
        if not bool(torch.as_tensor(within).all()):
            return -math.inf  # not the matrix whose trace the margin used
        d = d / scale
        d.diagonal().sub_(shift)
        for k in range(max(0, i - reach), i):
            d -= factor[i, k] @ factor[i, k].mT
        info = torch.zeros((), dtype=torch.int32, device=d.device)
        torch.linalg.cholesky_ex(d, out=(d, info))
        if int(info) != 0:
            return -math.inf
        factor[i, i] = d.tril_()
        for key in [key for key in factor if key[0] <= i - reach or key[1] <= i - reach]:
            del factor[key]
        if progress is not None and (i + 1) % 10 == 0:
            progress(f"banded Cholesky: block row {i + 1} of {count}")
    return tau - gram_error


def lambda_min_estimate(
    gram: torch.Tensor, steps: int = 30, block: int = 4, dtype: torch.dtype | None = None
) -> torch.Tensor:
    r"""Estimates of :math:`\lambda_{\min}` of a batch of symmetric positive definite matrices ``(..., n, n)``.

    Subspace iteration on :math:`G^{-1}` (``block`` vectors, ``steps`` steps of two triangular solves with the
    Cholesky factor of :math:`G`), then Rayleigh-Ritz on :math:`G`: the smallest Ritz value, an estimate from above.
    ``nan`` where :math:`G` has no Cholesky factor in float64 (numerically singular, or indefinite). These are
    estimates (to choose the shifts :func:`cholesky_certificate` proves), never bounds. ``dtype`` (e.g. float32)
    factors and iterates in a cheaper precision; the Ritz values are computed with ``gram`` itself.
    """
    n = gram.shape[-1]
    work = gram if dtype is None or dtype == gram.dtype else gram.to(dtype)
    factor, info = torch.linalg.cholesky_ex(work)
    k = min(block, n)
    generator = torch.Generator(device=gram.device).manual_seed(0)
    v = torch.randn(*gram.shape[:-2], n, k, dtype=work.dtype, device=gram.device, generator=generator)
    good = info == 0
    safe = torch.where(good[..., None, None], factor, torch.eye(n, dtype=work.dtype, device=gram.device))
    del factor, work
    if n <= 1024:  # small matrices: one explicit inverse, then matrix products (batched solves are slow)
        inverse = torch.cholesky_inverse(safe)
        del safe
        for step in range(steps):
            v = inverse @ v
            v = torch.linalg.qr(v).Q if step % 4 == 3 else v / v.norm(dim=-2, keepdim=True)
    else:
        for _ in range(steps):
            v = torch.linalg.qr(torch.cholesky_solve(v, safe)).Q
    v = torch.linalg.qr(v.to(gram.dtype)).Q
    ritz = torch.linalg.eigvalsh(v.mT @ gram @ v)[..., 0]
    return torch.where(good, ritz, torch.full_like(ritz, math.nan))


def gram_lower_bound(
    gram: torch.Tensor,
    gram_error: torch.Tensor,
    estimate: torch.Tensor | None = None,
    fractions: tuple[float, ...] = SHIFT_FRACTIONS,
) -> torch.Tensor:
    r"""Proven lower bounds on :math:`\lambda_{\min}` of exact Gram matrices, from computed ones (``0`` if none).

    Tries the shifts ``fractions`` (default :data:`SHIFT_FRACTIONS`) of ``estimate`` (default
    :func:`lambda_min_estimate`) in turn with :func:`cholesky_certificate` and keeps the first that is proven,
    per matrix. With accurate estimates (computed singular values) pass fractions closer to 1.

    Parameters
    ----------
    gram : torch.Tensor
        ``(..., n, n)`` float64, the computed :math:`\tilde G`.
    gram_error : torch.Tensor
        ``(...)``, upper bounds on :math:`\|\tilde G - G\|_2`.
    estimate : torch.Tensor, optional
        ``(...)``, estimates of :math:`\lambda_{\min}(\tilde G)`.

    Returns
    -------
    torch.Tensor
        ``(...)``, :math:`\ge 0`: :math:`\lambda_{\min}(G) \ge` the value (``0`` proves nothing).

    Examples
    --------
    >>> b = torch.randn(40, 12, dtype=torch.float64)
    >>> bound = gram_lower_bound(b.T @ b, gamma(40) * abs_gram_norm(b))
    >>> exact = float(torch.linalg.svdvals(b)[-1] ** 2)
    >>> 0.9 * exact < float(bound) <= exact
    True
    """
    batch, n = gram.shape[:-2], gram.shape[-1]
    if estimate is None:
        estimate = lambda_min_estimate(gram)
    flat = gram.reshape(-1, n, n)
    errors = torch.as_tensor(gram_error, dtype=torch.float64, device=gram.device).expand(batch).reshape(-1)
    guesses = torch.nan_to_num(estimate, nan=0.0).clamp(min=0).expand(batch).reshape(-1)
    best = torch.zeros(flat.shape[0], dtype=torch.float64, device=gram.device)
    todo = guesses > errors
    for fraction in fractions:
        if not bool(todo.any()):
            break
        (index,) = todo.nonzero(as_tuple=True)
        bound = cholesky_certificate(flat[index], guesses[index] * fraction, errors[index])
        proven = bound > 0
        best[index] = torch.where(proven, bound, best[index])
        todo[index] = ~proven
    return best.reshape(batch)


def svd_lower_bound(
    matrix: torch.Tensor, svd: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[float, torch.Tensor]:
    r"""A proven lower bound on :math:`\sigma_{\min}` of a dense matrix ``(m, n)``, ``m >= n``, and its singular values.

    The SVD certificate of the module docstring. The lower bound is ``0.0`` when it proves nothing (a rank
    deficient or nearly rank deficient matrix, :math:`\sigma_{\min} \lesssim n^{3/2} u \sigma_{\max}`).
    ``svd`` passes the singular values and :math:`V^T` when the caller has them (float64; any accuracy: the
    bound holds for any :math:`V`, it is tight when :math:`V` is accurate).

    Returns
    -------
    (float, torch.Tensor)
        The bound and the computed singular values (descending, float64).

    Examples
    --------
    >>> b = torch.randn(30, 20, dtype=torch.float64)
    >>> bound, values = svd_lower_bound(b)
    >>> 0.999999 * float(values[-1]) < bound <= float(torch.linalg.svdvals(b)[-1])
    True
    """
    b = matrix.to(torch.float64)
    m, n = b.shape
    if m < n:
        return 0.0, torch.linalg.svdvals(b)
    values, vh = svd if svd is not None else torch.linalg.svd(b, full_matrices=False)[1:]
    v = vh.mT.to(torch.float64)
    # ||fl(B V) - B V||_2 <= gamma_n || |B| |V| ||_2 <= gamma_n sqrt(||B||_1 ||B||_inf) sqrt(||V||_1 ||V||_inf)
    schur_b = math.sqrt(float(inflate(b.abs().sum(0).amax(), m)) * float(inflate(b.abs().sum(1).amax(), n)))
    schur_v = math.sqrt(float(inflate(v.abs().sum(0).amax(), n)) * float(inflate(v.abs().sum(1).amax(), n)))
    product_error = gamma(n) * schur_b * schur_v * (1 + 4 * UNIT_ROUNDOFF)
    y = b @ v
    h = y.mT @ y
    # column norms: ||y_i||^2 lies within [h_ii / (1 + g), h_ii / (1 - g)]
    g = gamma(m)
    diagonal = h.diagonal()
    if float(diagonal.min()) <= 0:
        return 0.0, values
    low = torch.sqrt(diagonal / (1 + g)) * (1 - 4 * UNIT_ROUNDOFF)
    # scaled off-diagonal entries of Y^T Y: |h_ij| / (c_i c_j) + gamma_m (|y_i| . |y_j| <= c_i c_j)
    off = h.abs() / (low[:, None] * low[None, :]) * (1 + 8 * UNIT_ROUNDOFF) + g
    off.fill_diagonal_(0)
    radius = float(inflate(off.sum(1).amax(), n))
    if radius >= 1:
        return 0.0, values
    y_lower = math.sqrt(1 - radius) * float(low.min()) * (1 - 4 * UNIT_ROUNDOFF) - product_error
    # ||V||_2^2 = lambda_max(V^T V) <= max row sum of |V^T V|, computed plus gamma_n || |V|^T |V| ||_inf
    w = v.mT @ v
    v_norm = math.sqrt(float(inflate(w.abs().sum(1).amax(), n)) + gamma(n) * float(abs_gram_norm(v))) * (
        1 + 4 * UNIT_ROUNDOFF
    )
    bound = y_lower / v_norm * (1 - 4 * UNIT_ROUNDOFF)
    return (bound if bound > 0 else 0.0), values
