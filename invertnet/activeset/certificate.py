r"""Whether the known rows of a layer determine its input: the certificate of exact recovery.

Where the equations :math:`M A x = M z` (:math:`M` the 0/1 diagonal of known rows) have a unique
solution, i.e. :math:`M A` has full column rank, every point that satisfies them *is* the input: the
masked least-squares solution recovers it exactly. ``determined=True`` only with a proof, which the certificate
names, and a proven lower bound :math:`\sigma_{\min}(M A) \ge` :attr:`Certificate.lower_bound`
(:mod:`invertnet.pinv.proofs`, cheapest first):

- ``"count"``: fewer known rows than unknowns proves rank deficiency (``determined=False``);
- ``"zero column"`` (convolutions): an unknown that no known row reads (``determined=False``);
- ``"patch"`` (convolutions): receptive fields whose known rows have full column rank cover every pixel;
- ``"dense"``: the SVD certificate of the known rows of the dense matrix (small operators); a computed
  :math:`\sigma_{\min} \le \max(m_K, n)\,\varepsilon\,\sigma_{\max}` shows them numerically rank deficient
  (``determined=False``, method ``"singular"``);
- ``"window"`` (convolutions): blocks of outputs whose known rows have full column rank on their windows cover
  every pixel: the masked window certificate, at any image size (the trained MobileNetV2 stem at 224 px);
- ``"gram"`` (convolutions up to :data:`~invertnet.pinv.proofs.GRAM_MAX_UNKNOWNS` unknowns): a verified Cholesky
  factorisation of :math:`A^T M A - \tau I`.

``method="lanczos"`` adds an *estimate* of :math:`\sigma_{\min}(M A)` by Lanczos (capped at
:data:`LANCZOS_MAX_RESTARTS` restarts): an estimate, an upper bound on :math:`\sigma_{\min}`, never a proof; it
never makes ``determined`` true on its own. Where no proof decides, the certificate says ``None`` and why.

The inequalities of the clipped rows are left out: they can pin the input only when it lies exactly on
a clip level's boundary (a pre-activation exactly at the level), so they prove nothing in general.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from invertnet.errors import ShapeError
from invertnet.linalg.spectrum import sigma_max, sigma_min
from invertnet.operators import DENSE_MAX_ENTRIES, LinearOperator, MaskedOperator
from invertnet.pinv.proofs import GRAM_MAX_UNKNOWNS, Proof, count_proof, dense_proof, prove

__all__ = ["LANCZOS_MAX_RESTARTS", "LANCZOS_RTOL", "Certificate", "CertificateMethod", "certify"]

CertificateMethod = Literal["auto", "dense", "lanczos", "none"]

#: Kept for reference: the ratio the old Lanczos "certificate" used. A Lanczos value is now an estimate only.
LANCZOS_RTOL = 1e-4

#: ``"auto"`` builds the dense matrix up to this many entries (32 MB in float64).
CERTIFICATE_DENSE_ENTRIES = 2**22

#: ``"lanczos"``: ARPACK's restarts are capped at this many (an estimate that stops says so; it never hangs).
LANCZOS_MAX_RESTARTS = 200


@dataclass(frozen=True)
class Certificate:
    r"""Whether the known rows determine one sample's input.

    Attributes
    ----------
    determined : bool or None
        ``True``: :math:`M A` has full column rank, proven (:attr:`proof` names how; the input is recovered
        exactly); ``False``: proven rank deficient, or shown numerically rank deficient (:attr:`proof` says
        which); ``None``: undecided.
    method : str
        What decided (the proof's name), or ``"lanczos"`` (an estimate only) or ``"none"``.
    rows, unknowns : int
        Known rows :math:`m_K` and unknowns :math:`n`.
    sigma_min, sigma_max : float
        Estimates of the extreme singular values of :math:`M A` where computed (``nan`` otherwise): a Lanczos
        :math:`\sigma_{\min}` is an upper bound, never a proof.
    reason : str
        One sentence: why.
    lower_bound : float
        Proven :math:`\sigma_{\min}(M A) \ge` this (``0.0`` when rank deficiency is proven, ``nan`` when nothing
        is proven).
    proof : str
        The proof's name (``"count"``, ``"zero column"``, ``"patch"``, ``"dense"``, ``"window"``, ``"gram"``),
        ``"singular"`` (shown numerically rank deficient), or ``""`` (none).
    """

    determined: bool | None
    method: str
    rows: int
    unknowns: int
    sigma_min: float = math.nan
    sigma_max: float = math.nan
    reason: str = ""
    lower_bound: float = math.nan
    proof: str = ""


def _from_proof(proof: Proof, rows: int, n: int, sigma: tuple[float, float] = (math.nan, math.nan)) -> Certificate:
    bound = proof.lower_bound if proof.injective is not None else math.nan
    return Certificate(
        proof.injective, proof.name or "none", rows, n, sigma[0], sigma[1], proof.reason, bound, proof.name
    )


def _lanczos(op: LinearOperator, known: torch.Tensor, rows: int, n: int, proof: Proof) -> Certificate:
    """A Lanczos estimate beside ``proof`` (which alone decides)."""
    masked = MaskedOperator(op, known.cpu())
    top = sigma_max(masked, maxiter=LANCZOS_MAX_RESTARTS)
    bottom, converged = sigma_min(masked, maxiter=LANCZOS_MAX_RESTARTS, largest=top)
    state = "converged" if converged else f"not converged after {LANCZOS_MAX_RESTARTS} restarts"
    estimate = f"Lanczos estimate sigma_min {bottom:.3g} ({state}; an upper bound, not a proof)"
    certificate = _from_proof(proof, rows, n, (bottom, top))
    reason = f"{proof.reason}; {estimate}" if proof.reason else estimate
    return Certificate(
        certificate.determined,
        certificate.method if proof.injective is not None else "lanczos",
        rows,
        n,
        bottom,
        top,
        reason,
        certificate.lower_bound,
        certificate.proof,
    )


def certify(
    op: LinearOperator,
    known: torch.Tensor,
    method: CertificateMethod = "auto",
    dense_max_entries: int = CERTIFICATE_DENSE_ENTRIES,
    proof_flops: float = 0.0,
) -> tuple[Certificate, ...]:
    r"""Per sample, whether the rows ``known`` of ``op`` determine the input (see the module docstring).

    Parameters
    ----------
    op : LinearOperator
    known : torch.Tensor
        Boolean, ``(N, *op.out_shape)``.
    method : {"auto", "dense", "lanczos", "none"}
        ``"auto"``: the proofs of :func:`invertnet.pinv.proofs.prove`, cheapest first (the dense matrix up to
        ``dense_max_entries`` entries, the Gram matrix up to :data:`~invertnet.pinv.proofs.GRAM_MAX_UNKNOWNS` unknowns).
        ``"dense"``: the count and the dense matrix only. ``"lanczos"``: the proofs of ``"auto"``, plus a capped
        Lanczos estimate of :math:`\sigma_{\min}` beside them (never a proof). ``"none"``: the count only.
    dense_max_entries : int
        ``"auto"``'s size limit for the dense matrix.
    proof_flops : float, default 0
        ``"auto"`` and ``"lanczos"`` also try the banded verified Cholesky of the known rows' Gram matrix
        (:func:`~invertnet.pinv.proofs.banded.banded_proof`) when it costs at most this many flops; ``0`` skips it.

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
    >>> certify(op, torch.tensor([[True, True, True]]))[0].proof
    'dense'
    """
    if tuple(known.shape[1:]) != op.out_shape or known.ndim != len(op.out_shape) + 1:
        raise ShapeError(
            f"certify: expected a mask of shape (N, {', '.join(map(str, op.out_shape))}), got {tuple(known.shape)}"
        )
    n = op.in_dim
    certificates = []
    for sample in known.bool():
        rows = int(sample.sum())
        counted = count_proof(rows, n)
        if counted is not None:
            certificates.append(_from_proof(counted, rows, n))
        elif method == "none":
            certificates.append(Certificate(None, "none", rows, n, reason="not computed (method 'none')"))
        elif method == "dense":
            proof, values = dense_proof(op, sample, max_entries=DENSE_MAX_ENTRIES)
            sigma = (float(values[-1]), float(values[0])) if len(values) else (math.nan, math.nan)
            certificates.append(_from_proof(proof, rows, n, sigma))
        else:
            proof = prove(
                op,
                sample,
                dense_max_entries=dense_max_entries,
                gram_max_unknowns=GRAM_MAX_UNKNOWNS,
                banded_max_flops=proof_flops,
            )
            if method == "lanczos":
                certificates.append(_lanczos(op, sample, rows, n, proof))
            else:
                certificates.append(_from_proof(proof, rows, n))
    return tuple(certificates)
