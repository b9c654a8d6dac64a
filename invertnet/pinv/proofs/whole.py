r"""Proofs about the whole operator at once: its dense matrix, its Gram matrix, or its DFT.

- :func:`dense_proof`: the (masked) dense matrix, for small layers: a verified Cholesky of its Gram matrix shifted
  just below the computed :math:`\sigma_{\min}^2`, or the SVD certificate
  (:func:`~invertnet.linalg.verified.svd_lower_bound`) where the Gram's rounding margin is too wide; tight (within
  0.01% or :math:`n^{3/2} u \sigma_{\max}`).
- :func:`gram_proof`: a verified Cholesky factorisation of :math:`G - \tau I`, :math:`G = A^T M A`
  (:func:`~invertnet.linalg.verified.verified_factor`), with :math:`\tau` just below an estimate of
  :math:`\lambda_{\min}(G)` found with a float32 factor, and the estimate itself refined by shift-and-invert
  Lanczos on the float64 factor: :math:`\sigma_{\min}` to many digits and a proven bound within about 1% of it,
  for one float32 and one float64 factorisation. Up to :data:`GRAM_MAX_UNKNOWNS` unknowns.
- :func:`dft_proof`: layers the 2-D DFT diagonalises (:mod:`invertnet.linalg.spectral`) have the singular values of
  their per-frequency matrices :math:`M(f)`; each is verified (real embedding, Gram, Cholesky), with the
  rounding of the computed phases bounded.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from scipy.sparse.linalg import LinearOperator as ScipyOperator

from invertnet.errors import RouteError, TooLargeError
from invertnet.linalg.spectral import circulant_reason, dense_weight, symbol, symbol_singular_values
from invertnet.linalg.verified import UNIT_ROUNDOFF, gamma, gram_lower_bound, svd_lower_bound, verified_factor
from invertnet.operators import ConvOperator, LinearOperator
from invertnet.pinv.proofs.base import Proof, conv_gram_error, count_proof, dense_gram_error, pixel_sources

__all__ = [
    "GRAM_MAX_UNKNOWNS",
    "WELL_CONDITIONED",
    "dense_proof",
    "dft_proof",
    "gram_proof",
    "masked_gram",
    "matrix_lower_bound",
]

#: Largest operator (unknowns) whose Gram matrix :func:`gram_proof` factors: 12,288 (1.1 GiB in float64, factored
#: in place, plus its float32 copy).
GRAM_MAX_UNKNOWNS = 12_288

#: :func:`gram_proof` tries these fractions of its estimate of :math:`\lambda_{\min}` as the shift to prove.
_SHIFTS = (0.99, 0.5, 0.05)


def _known_rows(op: LinearOperator, known: torch.Tensor | None) -> int:
    return op.out_dim if known is None else int(known.sum())


def dense_proof(
    op: LinearOperator, known: torch.Tensor | None = None, max_entries: int = 2**23
) -> tuple[Proof, torch.Tensor]:
    r"""The SVD certificate of the (known rows of the) operator's dense matrix, and its singular values.

    Returns
    -------
    (Proof, torch.Tensor)
        ``injective=True`` with the bound; ``False`` by count, or when the computed :math:`\sigma_{\min}` is below
        :math:`\max(m, n)\, \varepsilon\, \sigma_{\max}` (``name="singular"``: shown numerically rank deficient,
        torch's ``pinv`` cut); ``None`` in between (too ill-conditioned to prove). The singular values descend.

    Examples
    --------
    >>> from invertnet.operators import MatrixOperator
    >>> proof, values = dense_proof(MatrixOperator(torch.eye(3, dtype=torch.float64) * 2))
    >>> proof.injective, 1.9996 < proof.lower_bound <= 2.0
    (True, True)
    """
    n, rows = op.in_dim, _known_rows(op, known)
    device = op.weight.device if isinstance(op, ConvOperator) else None
    if isinstance(op, ConvOperator):
        matrix = op.placed_matrix(torch.float64, device, max_entries)
    else:
        matrix = op.to_dense(torch.float64, device, max_entries)
    if known is not None:
        matrix = matrix[known.reshape(-1).to(matrix.device)]
    if (counted := count_proof(rows, n)) is not None:
        return counted, torch.linalg.svdvals(matrix)
    bound, values = matrix_lower_bound(matrix)
    top, bottom = float(values[0]), float(values[-1])
    cut = max(matrix.shape) * torch.finfo(torch.float64).eps * top
    if bound > 0:
        return Proof(True, bound, "dense", f"dense: sigma_min >= {bound:.4g}, proven"), values
    if bottom <= cut:
        reason = f"dense: numerically rank deficient (computed sigma_min {bottom:.3g} <= {cut:.3g}, the pinv cut)"
        return Proof(False, 0.0, "singular", reason), values
    return Proof.none(f"dense: sigma_min {bottom:.3g} is too close to 0 to prove (sigma_max {top:.3g})"), values


#: :func:`matrix_lower_bound` takes the singular values from the Gram matrix's eigenvalues when
#: :math:`\lambda_{\min} \ge` this times :math:`\lambda_{\max}` (condition numbers up to 10): then their error,
#: about :math:`n u \lambda_{\max} / (2 \sigma_i)`, is below :math:`10^{-13} \sigma_{\max}` relative to the largest,
#: and ``eigvalsh`` of the :math:`n \times n` Gram costs a fraction of ``svdvals`` of a tall matrix.
WELL_CONDITIONED = 1e-2


def matrix_lower_bound(matrix: torch.Tensor) -> tuple[float, torch.Tensor]:
    r"""A proven lower bound on :math:`\sigma_{\min}` of a dense tall matrix, and its singular values (descending).

    The bound by the verified Cholesky of :math:`B^T B - 0.9998 \sigma_{\min}^2 I` (cheap: one Gram matrix and
    one Cholesky), and where that cannot reach (condition numbers above about :math:`1 / (n \sqrt u)`), by the
    SVD certificate (:func:`~invertnet.linalg.verified.svd_lower_bound`, one full SVD). The singular values: the
    square roots of the Gram matrix's eigenvalues where it is well conditioned (:data:`WELL_CONDITIONED`), else
    ``svdvals``, or the SVD certificate's own SVD when the Gram's eigenvalues show its margin out of reach.

    Examples
    --------
    >>> b = torch.randn(60, 20, dtype=torch.float64)
    >>> bound, values = matrix_lower_bound(b)
    >>> exact = torch.linalg.svdvals(b)
    >>> 0.9997 * float(exact[-1]) < bound <= float(exact[-1]), bool(torch.allclose(values, exact, rtol=1e-12))
    (True, True)
    """
    m, n = matrix.shape
    if m < n:
        return svd_lower_bound(matrix)
    gram = matrix.T @ matrix
    error = dense_gram_error(matrix)
    eigenvalues = torch.linalg.eigvalsh(gram)
    low, high = float(eigenvalues[0]), float(eigenvalues[-1])
    if low <= 50 * gamma(n + 1) * float(gram.trace()):  # the Gram's margin would pass 2% of lambda_min: the SVD's
        return svd_lower_bound(matrix)
    if low >= WELL_CONDITIONED * high:
        values = eigenvalues.flip(0).sqrt()
    else:
        values = torch.linalg.svdvals(matrix)
        low = float(values[-1]) ** 2
    square = float(gram_lower_bound(gram, error, torch.tensor(low, dtype=torch.float64), (0.9998, 0.98)))
    if square > 0:
        return math.sqrt(square) * (1 - 4 * UNIT_ROUNDOFF), values
    bound, _ = svd_lower_bound(matrix)
    return bound, values


def masked_gram(op: ConvOperator, known: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`A^T M A` ``(n, n)`` float64, summed from every receptive field's :math:`P_g^T M_l P_g` (any padding).

    The unknowns in their natural order (channel, row, column). Copies of a pixel that padding makes add up.
    """
    device = op.weight.device
    matrices = op.patch_matrices(torch.zeros((), dtype=torch.float64, device=device))  # (g, m, k)
    groups, m, k = matrices.shape
    fields = op.out_shape[1] * op.out_shape[2]
    sources = pixel_sources(op, device).unsqueeze(0).to(torch.float64)
    columns = torch.nn.functional.unfold(sources, op.kernel_size, op.dilation, 0, op.stride)[0].round().long()
    columns = columns.reshape(groups, k, fields).permute(2, 0, 1)  # (L, g, k)
    if known is None:
        rows = torch.ones(fields, groups, m, dtype=torch.float64, device=device)
    else:
        rows = known.reshape(groups, m, fields).permute(2, 0, 1).to(device=device, dtype=torch.float64)
    n = op.in_dim
    gram = torch.zeros((n + 1) * (n + 1), dtype=torch.float64, device=device)
    chunk = max(1, 2**24 // (groups * k * k))
    for start in range(0, fields, chunk):
        part = slice(start, start + chunk)
        blocks = torch.einsum("gmk,lgm,gmj->lgkj", matrices, rows[part], matrices)
        index = columns[part]
        flat = index[..., :, None] * (n + 1) + index[..., None, :]
        gram.index_add_(0, flat.flatten(), blocks.flatten())
    return gram.reshape(n + 1, n + 1)[1:, 1:]


def _shift_invert_lambda(factor: torch.Tensor, tol: float = 1e-12) -> float | None:
    r"""The largest eigenvalue of :math:`(L L^T)^{-1}` by Lanczos (two triangular solves a step), or ``None``."""
    n = factor.shape[0]
    if n <= 64:
        inverse = torch.cholesky_inverse(factor.tril())
        return float(torch.linalg.eigvalsh(inverse)[-1])

    def apply(v: np.ndarray) -> np.ndarray:
        b = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).reshape(n, 1).to(factor)
        # two triangular solves reading the lower triangle only (the upper one still holds the Gram matrix)
        half = torch.linalg.solve_triangular(factor, b, upper=False)
        solved: torch.Tensor = torch.linalg.solve_triangular(factor.mT, half, upper=True)
        out: np.ndarray = solved.to(torch.float64).reshape(-1).cpu().numpy()
        return out

    operator = ScipyOperator((n, n), matvec=apply, rmatvec=apply, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        values = eigsh(operator, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False, ncv=min(n - 1, 20))
    except ArpackNoConvergence:
        return None
    return float(values[0])


def _estimate_in_float32(gram: torch.Tensor) -> float | None:
    r"""An estimate of :math:`\lambda_{\min}(G)` from a float32 Cholesky factor (shift-and-invert), or ``None``."""
    scale = float(gram.diagonal().max())
    low = gram.to(torch.float32).div_(scale)
    info = torch.zeros((), dtype=torch.int32, device=gram.device)
    torch.linalg.cholesky_ex(low, out=(low, info))
    if int(info) != 0:
        return None
    largest = _shift_invert_lambda(low, tol=1e-4)
    return None if largest is None or largest <= 0 else scale / largest


def gram_proof(
    op: ConvOperator, known: torch.Tensor | None = None, *, estimate: float | None = None
) -> tuple[Proof, float]:
    r"""A verified Cholesky proof of :math:`\sigma_{\min}(M A)`, and an estimate of it to many digits.

    See the module docstring. ``estimate`` (of :math:`\sigma_{\min}`) replaces the float32 factorisation when the
    caller has one. Refuses (:class:`~invertnet.errors.TooLargeError`) above :data:`GRAM_MAX_UNKNOWNS` unknowns.

    Returns
    -------
    (Proof, float)
        The proof (``injective=None`` when no shift could be proven, ``False`` by count or when :math:`G` has no
        float64 Cholesky factor even unshifted: shown numerically singular), and the estimate of
        :math:`\sigma_{\min}` (``nan`` when none).

    Examples
    --------
    >>> op = ConvOperator(torch.randn(16, 2, 3, 3, dtype=torch.float64), (9, 9), padding=1)
    >>> proof, sigma = gram_proof(op)
    >>> exact = float(torch.linalg.svdvals(op.placed_matrix())[-1])
    >>> proof.injective, 0.99 * exact <= proof.lower_bound <= exact, abs(sigma - exact) < 1e-10 * exact
    (True, True, True)
    """
    n = op.in_dim
    if n > GRAM_MAX_UNKNOWNS:
        raise TooLargeError(
            f"gram_proof: expected at most {GRAM_MAX_UNKNOWNS} unknowns (its Gram matrix is factored), got {n}; "
            "use window_proof, or a smaller input size"
        )
    if (counted := count_proof(_known_rows(op, known), n)) is not None:
        return counted, 0.0

    def build() -> torch.Tensor:
        if known is None and op.pad.mode == "zeros":
            return op.gram_matrix(torch.float64, op.weight.device, channels_last=True)
        return masked_gram(op, known)

    error = conv_gram_error(op, known, terms=op.out_shape[0] + 4 * op.kernel_size[0] * op.kernel_size[1] + 8)
    gram = build()
    guess = estimate**2 if estimate is not None else _estimate_in_float32(gram)
    shifts = [guess * f for f in _SHIFTS] if guess is not None else []
    shifts.append(2 * error)  # positive definite at all: the weakest claim
    for i, tau in enumerate(shifts):
        if tau <= error:
            continue
        if i:
            gram = build()  # the last attempt factored it in place
        bound, factor, scale, shift = verified_factor(gram, tau, error, overwrite=True)
        if factor is None:
            continue
        largest = _shift_invert_lambda(factor)
        sigma = math.sqrt(scale * (shift + 1.0 / largest)) if largest is not None and largest > 0 else math.nan
        value = math.sqrt(bound) * (1 - 4 * UNIT_ROUNDOFF)
        reason = f"gram: a verified Cholesky factorisation of A^T A - {tau:.4g} I: sigma_min >= {value:.4g}, proven"
        return Proof(True, value, "gram", reason), sigma
    reason = "gram: the Gram matrix has no Cholesky factor in float64 (numerically singular, or too close to prove)"
    proof = Proof(None if guess is not None else False, 0.0, "singular" if guess is None else "", reason)
    return proof, math.nan


def _phase_reach(op: ConvOperator) -> int:
    r"""The largest :math:`|\lfloor m_a / s_h \rfloor| + |\lfloor n_b / s_w \rfloor|` over the taps (phase sizes)."""
    (kh, kw), (dh, dw), (sh, sw) = op.kernel_size, op.dilation, op.stride
    left, _, top, _ = op.pad.pads
    rows = max(abs((dh * a - top) // sh) for a in range(kh))
    cols = max(abs((dw * b - left) // sw) for b in range(kw))
    return rows + cols


def dft_proof(op: ConvOperator) -> tuple[Proof, torch.Tensor]:
    r"""A proof for a layer the DFT diagonalises, and its singular values (descending).

    :math:`\sigma_{\min}(A) = \min_f \sigma_{\min}(M(f))`; each frequency's bound comes from the verified Gram of
    :math:`[\Re M, -\Im M; \Im M, \Re M]` (same singular values, twice), less the rounding of the computed
    :math:`M(f)`: :math:`\|\tilde M - M\|_2 \le \delta \|\, |W|\text{ summed over taps}\|_F`, :math:`\delta` from the
    phases' and the sums' rounding. A 1x1 layer (one real matrix at every frequency) gets the SVD certificate.

    Raises
    ------
    RouteError
        When the DFT does not diagonalise ``op`` (:func:`~invertnet.linalg.spectral.circulant_reason`).
    """
    reason = circulant_reason(op)
    if reason is not None:
        raise RouteError(f"dft_proof: expected a layer the 2-D DFT diagonalises, but {reason}; use prove() instead")
    like = torch.zeros((), dtype=torch.float64, device=op.weight.device)
    matrices = symbol(op, like)  # (H', W', p, q)
    hh, ww, p, q = matrices.shape
    if p < q:
        counted = count_proof(op.out_dim, op.in_dim)
        values = symbol_singular_values(matrices)
        return counted or Proof(False, 0.0, "count", "fewer rows than unknowns per frequency"), values
    if bool((matrices == matrices[:1, :1]).all()):  # a 1x1 layer: the same real matrix everywhere
        bound, single = matrix_lower_bound(matrices[0, 0].real)
        values = single.repeat(hh * ww).sort(descending=True).values
        if bound > 0:
            return Proof(True, bound, "dft", f"dft: one real {p}x{q} matrix, sigma_min >= {bound:.4g}, proven"), values
        return Proof.none(f"dft: sigma_min {float(single[-1]):.3g} too close to 0 to prove"), values
    half = matrices[:, : ww // 2 + 1].reshape(-1, p, q)
    values_half = torch.linalg.svdvals(half)
    real = torch.cat([torch.cat([half.real, -half.imag], 2), torch.cat([half.imag, half.real], 2)], 1)
    gram = real.mT @ real
    squares = gram_lower_bound(gram, dense_gram_error(real), values_half[:, -1] ** 2, fractions=(0.9998, 0.98, 0.5))
    weight = dense_weight(op, like)
    taps = weight.shape[2] * weight.shape[3]
    reach = _phase_reach(op)
    delta = 2 * (6 * UNIT_ROUNDOFF * 2 * math.pi * (reach + 1) + 4 * UNIT_ROUNDOFF + gamma(2 * taps + 4))
    symbol_error = delta * float(weight.abs().sum((2, 3)).norm()) * (1 + 8 * UNIT_ROUNDOFF)
    per_frequency = squares.clamp(min=0).sqrt() * (1 - 4 * UNIT_ROUNDOFF) - symbol_error
    bound = float(per_frequency.min())
    values = symbol_singular_values(matrices, values_half.reshape(hh, ww // 2 + 1, -1))
    if bound > 0:
        reason = f"dft: every one of the {hh}x{ww} frequencies' {p}x{q} matrices verified, sigma_min >= {bound:.4g}"
        return Proof(True, bound, "dft", reason + ", proven"), values
    return Proof.none(f"dft: sigma_min {float(values[-1]):.3g} too close to 0 to prove"), values
