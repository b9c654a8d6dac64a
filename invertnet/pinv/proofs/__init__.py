r"""Proofs that a layer (or the known rows of one) is injective, with proven lower bounds on its sigma_min.

An estimate of :math:`\sigma_{\min}` (Lanczos, a Ritz value) bounds it from *above*; a proof bounds it from
below. Every ``exact`` and every ``injective`` verdict of invertnet rests on one of these, and names it:

- :mod:`~invertnet.pinv.proofs.base` -- :class:`Proof`; the count and zero columns (proven *not* injective);
- :mod:`~invertnet.pinv.proofs.local` -- :func:`patch_proof` and :func:`window_proof`: fields or blocks of outputs
  that determine the pixels they read, combined into a lower bound at any image size (masked or not);
- :mod:`~invertnet.pinv.proofs.whole` -- the whole operator at once: :func:`dense_proof` (SVD certificate of its
  matrix), :func:`gram_proof` (verified Cholesky of its Gram matrix, up to :data:`GRAM_MAX_UNKNOWNS` unknowns),
  :func:`dft_proof` (per-frequency, for layers the DFT diagonalises);
- :mod:`~invertnet.pinv.proofs.banded` -- :func:`banded_proof`: the verified Cholesky of a convolution's Gram
  matrix block row by block row (it is banded by image rows), for layers too large to factor whole;
- :func:`prove` -- the cheapest proof that decides, in that order;
- :mod:`~invertnet.pinv.proofs.upper` -- the other side: :func:`vector_upper_bound`, a proven upper bound on
  :math:`\sigma_{\min}` from an explicit vector (an estimate's Ritz vector), so the two bracket it.

The floating-point arithmetic behind each bound is in :mod:`invertnet.linalg.verified`.

Example
-------
>>> import torch
>>> from invertnet.operators import ConvOperator
>>> op = ConvOperator(torch.randn(32, 3, 5, 5, dtype=torch.float64), (41, 41), stride=2)  # 32 filters, 75 entries
>>> proof = prove(op)
>>> proof.injective, proof.name
(True, 'window')
"""

from invertnet.pinv.proofs.banded import BANDED_MAX_FLOPS, MaskedGramRows, banded_flops, banded_proof
from invertnet.pinv.proofs.base import Proof, count_proof, zero_column_proof
from invertnet.pinv.proofs.local import patch_proof, window_proof
from invertnet.pinv.proofs.prove import prove
from invertnet.pinv.proofs.upper import vector_upper_bound
from invertnet.pinv.proofs.whole import GRAM_MAX_UNKNOWNS, dense_proof, dft_proof, gram_proof

__all__ = [
    "BANDED_MAX_FLOPS",
    "GRAM_MAX_UNKNOWNS",
    "MaskedGramRows",
    "Proof",
    "banded_flops",
    "banded_proof",
    "count_proof",
    "dense_proof",
    "dft_proof",
    "gram_proof",
    "patch_proof",
    "prove",
    "vector_upper_bound",
    "window_proof",
    "zero_column_proof",
]
