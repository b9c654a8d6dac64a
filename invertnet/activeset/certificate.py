r"""Whether the known rows of a layer determine its input: the certificate of exact recovery.

Where the equations :math:`M A x = M z` (:math:`M` the 0/1 diagonal of known rows) have a unique
solution, i.e. :math:`M A` has full column rank, every point that satisfies them *is* the input: the
masked least-squares solution recovers it exactly. Four ways to decide, cheapest first:

- ``"count"``: fewer known rows than unknowns proves rank deficiency (``determined=False``);
- ``"patch"`` (convolutions): where the known rows of one output position (its filters, read on one receptive
  field) have full column rank, that receptive field is determined; when every input pixel lies in such a field,
  the input is (``determined=True``; a batched SVD of one small matrix per position, cheap at any image size).
  Fields that fail prove nothing (neighbouring fields may still determine their pixels), so a failure falls
  through to the next method;
- ``"dense"``: the singular values of the known rows of the dense matrix (tiny sizes); full column rank
  when :math:`\sigma_{\min} > \max(m_K, n)\,\varepsilon\,\sigma_{\max}` (``torch.linalg.pinv``'s cutoff),
  else rank deficient;
- ``"lanczos"``: :math:`\sigma_{\min}` and :math:`\sigma_{\max}` of :math:`M A` by Lanczos
  (:mod:`invertnet.spectrum`), matrix-free. ``determined=True`` when it converged with
  :math:`\sigma_{\min} > 10^{-4} \sigma_{\max}`; a smaller estimate is below what the iteration resolves
  (its error on a null space is about :math:`3 \cdot 10^{-6} \sigma_{\max}`), and the answer is
  ``None`` (unknown). A Lanczos value is a converged estimate, not a rigorous lower bound: the
  certificate says which method decided.

``"auto"`` runs Lanczos only up to :data:`LANCZOS_MAX_UNKNOWNS` unknowns (a masked operator at ImageNet sizes takes
minutes); above, an undecided certificate says so (``determined=None``).

The inequalities of the clipped rows are left out: they can pin the input only when it lies exactly on
a clip level's boundary (a pre-activation exactly at the level), so they prove nothing in general.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from invertnet.errors import ShapeError
from invertnet.operators import ConvOperator, LinearOperator, MaskedOperator
from invertnet.spectrum import sigma_max, sigma_min

__all__ = ["LANCZOS_MAX_UNKNOWNS", "LANCZOS_RTOL", "Certificate", "CertificateMethod", "certify"]

CertificateMethod = Literal["auto", "dense", "lanczos", "none"]

#: ``"lanczos"`` calls the known rows determining when :math:`\sigma_{\min} > ` this times :math:`\sigma_{\max}`.
LANCZOS_RTOL = 1e-4

#: ``"auto"`` builds the dense matrix up to this many entries (32 MB in float64), Lanczos above.
CERTIFICATE_DENSE_ENTRIES = 2**22

#: ``"auto"`` runs Lanczos on masked operators with at most this many unknowns (undecided above).
LANCZOS_MAX_UNKNOWNS = 2**16

#: The patch certificate takes positions in chunks of at most this many matrix entries.
_PATCH_CHUNK_ENTRIES = 2**24


@dataclass(frozen=True)
class Certificate:
    r"""Whether the known rows determine one sample's input.

    Attributes
    ----------
    determined : bool or None
        ``True``: :math:`M A` has full column rank (the input is recovered exactly);
        ``False``: it does not; ``None``: unknown (not computed, or not resolved).
    method : str
        What decided: ``"count"``, ``"patch"``, ``"dense"``, ``"lanczos"`` or ``"none"``.
    rows, unknowns : int
        Known rows :math:`m_K` and unknowns :math:`n`.
    sigma_min, sigma_max : float
        Of :math:`M A` (``nan`` when not computed).
    reason : str
        One sentence: why.
    """

    determined: bool | None
    method: str
    rows: int
    unknowns: int
    sigma_min: float = math.nan
    sigma_max: float = math.nan
    reason: str = ""


def _dense(matrix: torch.Tensor, known: torch.Tensor, rows: int, n: int) -> Certificate:
    singular = torch.linalg.svdvals(matrix[known.reshape(-1).to(matrix.device)])
    top, bottom = float(singular[0]), float(singular[-1])
    cut = max(rows, n) * torch.finfo(torch.float64).eps * top
    determined = bottom > cut
    reason = (
        f"the {rows} known rows have full column rank (sigma_min {bottom:.3g} > {cut:.3g})"
        if determined
        else f"the {rows} known rows are rank deficient (sigma_min {bottom:.3g} <= {cut:.3g})"
    )
    return Certificate(determined, "dense", rows, n, bottom, top, reason)


def _lanczos(op: LinearOperator, known: torch.Tensor, rows: int, n: int) -> Certificate:
    masked = MaskedOperator(op, known.cpu())
    top = sigma_max(masked)
    bottom, converged = sigma_min(masked)
    if converged and bottom > LANCZOS_RTOL * top:
        reason = f"Lanczos: sigma_min {bottom:.3g} > {LANCZOS_RTOL:g} sigma_max ({top:.3g})"
        return Certificate(True, "lanczos", rows, n, bottom, top, reason)
    why = "did not converge" if not converged else f"gave sigma_min {bottom:.3g} <= {LANCZOS_RTOL:g} sigma_max"
    return Certificate(None, "lanczos", rows, n, bottom, top, f"unknown: Lanczos {why}")


def _patch(op: ConvOperator, known: torch.Tensor, rows: int, n: int) -> Certificate | None:
    """The patch certificate of one sample, or ``None`` when some pixel lies in no determined receptive field."""
    matrices = op.patch_matrices().detach().to(torch.float64)  # (g, m, k)
    g, m, k = matrices.shape
    if m < k:
        return None
    mask = known.reshape(g, m, -1).permute(2, 0, 1).to(torch.float64)  # (L, g, m)
    determined = torch.zeros(mask.shape[:2], dtype=torch.bool, device=mask.device)
    enough = mask.sum(2) >= k
    chunk = max(1, _PATCH_CHUNK_ENTRIES // (g * m * k))
    positions = enough.any(1).nonzero().flatten()
    matrices = matrices.to(mask.device)
    for start in range(0, positions.numel(), chunk):
        at = positions[start : start + chunk]
        singular = torch.linalg.svdvals(mask[at].unsqueeze(-1) * matrices)  # (l, g, min(m, k))
        cut = max(m, k) * torch.finfo(torch.float64).eps * singular[..., :1]
        determined[at] = enough[at] & (singular[..., -1:] > cut).squeeze(-1)
    read = op.patches_adjoint(determined.T.repeat_interleave(k, 0).unsqueeze(0).to(torch.float64))
    if not bool((read > 0).all()):
        return None
    fields = int(determined.sum())
    reason = f"patch: every pixel lies in one of the {fields} receptive fields whose known rows have full column rank"
    return Certificate(True, "patch", rows, n, reason=reason)


def certify(
    op: LinearOperator,
    known: torch.Tensor,
    method: CertificateMethod = "auto",
    dense_max_entries: int = CERTIFICATE_DENSE_ENTRIES,
) -> tuple[Certificate, ...]:
    r"""Per sample, whether the rows ``known`` of ``op`` determine the input (see the module docstring).

    Parameters
    ----------
    op : LinearOperator
    known : torch.Tensor
        Boolean, ``(N, *op.out_shape)``.
    method : {"auto", "dense", "lanczos", "none"}
        ``"auto"``: the count, the patch certificate (convolutions), then the dense matrix when ``op`` has at
        most ``dense_max_entries`` entries, else Lanczos up to :data:`LANCZOS_MAX_UNKNOWNS` unknowns.
        ``"none"``: the count only.
    dense_max_entries : int
        ``"auto"``'s size limit for the dense matrix.

    Returns
    -------
    tuple of Certificate
        One per sample.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import MatrixOperator
    >>> op = MatrixOperator(torch.eye(3, dtype=torch.float64))
    >>> [c.determined for c in certify(op, torch.tensor([[True, True, True], [True, False, True]]))]
    [True, False]
    """
    if tuple(known.shape[1:]) != op.out_shape or known.ndim != len(op.out_shape) + 1:
        raise ShapeError(
            f"certify: expected a mask of shape (N, {', '.join(map(str, op.out_shape))}), got {tuple(known.shape)}"
        )
    n = op.in_dim
    matrix: torch.Tensor | None = None
    certificates = []
    for sample in known.bool():
        rows = int(sample.sum())
        if rows < n:
            reason = f"{rows} known rows for {n} unknowns: rank deficient by count"
            certificates.append(Certificate(False, "count", rows, n, 0.0, math.nan, reason))
        elif method == "none":
            certificates.append(Certificate(None, "none", rows, n, reason="not computed (method 'none')"))
        elif method == "auto" and isinstance(op, ConvOperator) and (patch := _patch(op, sample, rows, n)):
            certificates.append(patch)
        elif method == "dense" or (method == "auto" and op.out_dim * n <= dense_max_entries):
            if matrix is None:
                matrix = op.to_dense(torch.float64, known.device)
            certificates.append(_dense(matrix, sample, rows, n))
        elif method == "lanczos" or n <= LANCZOS_MAX_UNKNOWNS:
            certificates.append(_lanczos(op, sample, rows, n))
        else:
            reason = (
                f"undecided: {rows} known rows for {n} unknowns pass the count, no patch certificate holds, and "
                f"{n} unknowns exceed Lanczos's limit ({LANCZOS_MAX_UNKNOWNS}); pass certificate='lanczos'"
            )
            certificates.append(Certificate(None, "none", rows, n, reason=reason))
    return tuple(certificates)
