"""The cheapest proof that decides: count, zero columns, patch, dense, window, Gram, banded (in that order)."""

from __future__ import annotations

import math

import torch

from invertnet.operators import ConvOperator, LinearOperator
from invertnet.pinv.proofs.banded import banded_flops, banded_proof
from invertnet.pinv.proofs.base import Proof, count_proof, zero_column_proof
from invertnet.pinv.proofs.local import patch_proof, window_proof
from invertnet.pinv.proofs.whole import GRAM_MAX_UNKNOWNS, dense_proof, gram_proof

__all__ = ["DENSE_PROOF_ENTRIES", "prove"]

#: :func:`prove` builds the dense matrix of operators with at most this many entries (32 MB in float64).
DENSE_PROOF_ENTRIES = 2**22


def prove(
    op: LinearOperator,
    known: torch.Tensor | None = None,
    *,
    dense_max_entries: int = DENSE_PROOF_ENTRIES,
    gram_max_unknowns: int = GRAM_MAX_UNKNOWNS,
    window_max_columns: int | None = None,
    banded_max_flops: float = 0.0,
) -> Proof:
    r"""Decide whether :math:`M A` (the rows ``known`` of ``op``; all by default) is injective, cheapest proof first.

    1. the count (fewer rows than unknowns: not injective);
    2. zero columns (an unknown no row reads: not injective; convolutions);
    3. the patch certificate (fields of full column rank cover every pixel; convolutions, any size);
    4. the dense matrix's SVD certificate, up to ``dense_max_entries`` entries;
    5. the window certificate (blocks of outputs; convolutions, any size, windows up to ``window_max_columns``);
    6. a verified Cholesky of the Gram matrix, up to ``gram_max_unknowns`` unknowns (``0`` skips it);
    7. the banded verified Cholesky (:func:`~invertnet.pinv.proofs.banded.banded_proof`, positive definiteness:
       a small bound) within ``banded_max_flops`` (default ``0``: off; All-CNN-B ReLU conv4's known rows at
       224 px take 1.1e13 flops, minutes).

    Returns the first proof that decides (``injective`` True or False), else a :class:`Proof` with
    ``injective=None`` saying what was tried.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(8, 1, 3, 3, dtype=torch.float64), (6, 6))
    >>> prove(op).name, prove(op, torch.zeros(op.out_shape, dtype=torch.bool)).name
    ('dense', 'count')
    """
    n = op.in_dim
    mask = None if known is None else known.reshape(op.out_shape).bool()
    rows = op.out_dim if mask is None else int(mask.sum())
    if (counted := count_proof(rows, n)) is not None:
        return counted
    tried = []
    if isinstance(op, ConvOperator):
        if (zero := zero_column_proof(op, mask)) is not None:
            return zero
        if (patch := patch_proof(op, mask)) is not None:
            return patch
        tried.append("no patch certificate")
    if op.out_dim * n <= dense_max_entries:
        dense, _ = dense_proof(op, mask, dense_max_entries)
        if dense.injective is not None:
            return dense
        tried.append(dense.reason)
    if isinstance(op, ConvOperator):
        if (window := window_proof(op, mask, max_columns=window_max_columns)) is not None:
            return window
        tried.append("no block of outputs within the size limit determines its window")
        if n <= gram_max_unknowns:
            gram = gram_proof(op, mask)[0]
            if gram.injective is not None:
                return gram
            tried.append(gram.reason)
        else:
            tried.append(f"{n} unknowns exceed the Gram proof's limit ({gram_max_unknowns})")
        if banded_max_flops > 0:
            banded = banded_proof(op, None, mask, max_flops=banded_max_flops)
            if banded.injective is not None:
                return banded
            tried.append(banded.reason)
        elif math.isfinite(flops := banded_flops(op)):
            tried.append(f"the banded verified Cholesky (not run: no flop budget) would take {flops:.2g} flops")
    return Proof.none(f"undecided: {rows} rows for {n} unknowns pass the count; " + "; ".join(tried))
