r"""Local proofs: receptive fields and blocks of outputs that determine the pixels they read, at any image size.

Split the rows of :math:`M A` into blocks :math:`b` (the known rows of one output position, or of a block of
:math:`m_h \times m_w` neighbouring positions). Block :math:`b` reads the pixels :math:`C_b` of its window, and
its rows restricted to them form :math:`A_b`. If every :math:`A_b` that is used has full column rank,
:math:`\sigma_{\min}(A_b) \ge \beta_b > 0` (proven, :mod:`invertnet.linalg.verified`), then for every :math:`x`

.. math::

    \|M A x\|^2 \ \ge\ \frac{1}{\mu} \sum_b \|A_b x_{C_b}\|^2 \ \ge\ \frac{1}{\mu} \sum_b \beta_b^2 \|x_{C_b}\|^2
    \ \ge\ \frac{\min_p D_p}{\mu} \|x\|^2, \qquad D_p = \sum_{b:\, p \in C_b} \beta_b^2,

with :math:`\mu` the largest number of used blocks that share a row. So
:math:`\sigma_{\min}(M A) \ge \sqrt{\min_p D_p / \mu}` when every pixel lies in some determined block. This is
the left inverse the patch and window readings build, made a bound: :math:`L = D^{-1} \sum_b E_b \beta_b^2
A_b^{+}`-like, without forming it.

- Copies of a pixel that reflect, replicate or circular padding make are separate columns of the block's window
  matrix :math:`A_w`; :math:`A_b = A_w S_b` with :math:`S_b` duplicating, :math:`\|S_b x\| \ge \|x\|`, so
  :math:`\sigma_{\min}(A_w)` bounds every block (and :math:`D_p` counts the copies).
- Zero padding: padded positions are no unknowns; their columns are dropped from a block's Gram matrix (made a
  decoupled unit block), and so are columns no known row of the block reads (they add nothing to
  :math:`A_b x`).
- Unmasked layers: every block's matrix has the columns of the one window matrix (after the drops), so one
  verified :math:`\beta` of the window matrix serves all blocks: :math:`\sigma_{\min}(A) \ge \beta
  \sqrt{\min_p c_p / \mu}`, :math:`c_p` the number of windows that read pixel :math:`p`.

The cost is one small Gram matrix and one or two Cholesky factorisations per block (per field), batched: a
224x224 layer takes seconds when its blocks have a few hundred unknowns.
"""

from __future__ import annotations

import math

import torch

from invertnet.linalg.verified import (
    UNIT_ROUNDOFF,
    abs_gram_norm,
    deflate,
    gamma,
    gram_lower_bound,
    lambda_min_estimate,
)
from invertnet.operators import ConvOperator
from invertnet.pinv.proofs.base import Proof, conv_gram_error, dense_gram_error, pixel_sources
from invertnet.pinv.windows import starts, window_operator

__all__ = ["BLOCK_MAX_COLUMNS", "TEMPLATE_MAX_COLUMNS", "patch_proof", "window_proof"]

#: Largest window (columns) of a masked block: every block gets its own Gram matrix and Cholesky.
BLOCK_MAX_COLUMNS = 2048

#: Largest window (columns) of an unmasked layer's one window matrix (one Gram matrix, two Cholesky factorisations).
TEMPLATE_MAX_COLUMNS = 12_288

#: Unmasked layers also try larger blocks (for a tighter bound) while their window has at most this many columns.
TIGHT_MAX_COLUMNS = 3000

#: Entries of the batched Gram matrices built at once.
_CHUNK_ENTRIES = 2**25

#: A masked block is tried when its expected known rows are at least this many times its window's columns.
_ROW_MARGIN = 1.1


def _decouple(gram: torch.Tensor, claimed: torch.Tensor) -> torch.Tensor:
    """Zero the rows and columns of unclaimed unknowns and put the largest diagonal entry on their diagonal."""
    keep = claimed.to(gram.dtype)
    # the largest diagonal entry: above any shift that can be proven, and no larger (it enters the margin's trace)
    dummy = gram.diagonal(dim1=-2, dim2=-1).amax(-1).clamp(min=torch.finfo(gram.dtype).tiny)
    gram = gram * keep[..., :, None] * keep[..., None, :]
    return gram + torch.diag_embed((1 - keep) * dummy[..., None])


def _field_bounds(matrices: torch.Tensor, known: torch.Tensor, claimed: torch.Tensor) -> torch.Tensor:
    r"""Proven lower bounds on :math:`\sigma_{\min}^2` of masked blocks (``0`` where nothing is proven).

    ``matrices``: ``(R, F)`` shared by every block, or ``(B, R, F)``; ``known`` ``(B, R)`` the rows kept;
    ``claimed`` ``(B, F)`` the columns that count. Blocks with fewer known rows than claimed columns get 0.
    """
    batch = known.shape[0]
    out = torch.zeros(batch, dtype=torch.float64, device=known.device)
    enough = (known.sum(-1) >= claimed.sum(-1)) & claimed.any(-1)
    r, n = matrices.shape[-2:]
    # one matrix for every block: gather each block's known rows (a zero row pads)
    padded = torch.cat([matrices, matrices.new_zeros(1, n)]) if matrices.ndim == 2 else matrices
    chunk = max(1, _CHUNK_ENTRIES // (n * n + r * n))
    for index in torch.split(enough.nonzero().flatten(), chunk):
        if index.numel() == 0:
            continue
        rows = known[index]
        if matrices.ndim == 2:
            count = int(rows.sum(-1).max())
            order = torch.where(rows, torch.arange(r, device=rows.device), r).sort(-1).values[:, :count]
            weighted = padded[order]  # (b, K, F): the known rows, then zero rows
        else:
            weighted = matrices[index] * rows.to(torch.float64)[..., :, None]
        gram = _decouple(weighted.mT @ weighted, claimed[index])
        error = gamma(weighted.shape[-2] + 2) * abs_gram_norm(weighted)
        out[index] = gram_lower_bound(gram, error, lambda_min_estimate(gram, steps=15))
    return out


def patch_proof(op: ConvOperator, known: torch.Tensor | None = None) -> Proof | None:
    r"""The patch certificate: receptive fields whose known rows have full column rank, and a lower bound.

    Blocks are single output positions (one receptive field, its group's filters as rows; see the module
    docstring). ``None`` when some pixel lies in no determined field (nothing is proven; neighbouring blocks may
    still determine it: :func:`window_proof`).

    Parameters
    ----------
    op : ConvOperator
    known : torch.Tensor, optional
        Boolean ``op.out_shape``: the known rows; default all.

    Examples
    --------
    >>> import torch
    >>> op = ConvOperator(torch.randn(27, 3, 3, 3, dtype=torch.float64), (16, 16), padding=1)
    >>> proof = patch_proof(op)
    >>> proof.injective, proof.name, 0 < proof.lower_bound <= float(torch.linalg.svdvals(op.placed_matrix())[-1])
    (True, 'patch', True)
    """
    matrices = op.patch_matrices(torch.zeros((), dtype=torch.float64, device=op.weight.device))  # (g, m, k)
    groups, m, k = matrices.shape
    if m < k:
        return None
    device = matrices.device
    fields = op.out_shape[1] * op.out_shape[2]
    sources = pixel_sources(op, device).unsqueeze(0).to(torch.float64)
    columns = torch.nn.functional.unfold(sources, op.kernel_size, op.dilation, 0, op.stride)[0].round().long()
    columns = columns.reshape(groups, k, fields).permute(2, 0, 1)  # (L, g, k): pixel numbers, 0 for zero padding
    if known is None:
        gram = matrices.mT @ matrices
        bounds = gram_lower_bound(gram, dense_gram_error(matrices))  # (g,)
        squares = bounds.reshape(1, groups, 1).expand(fields, groups, k)
    else:
        rows = known.reshape(groups, m, fields).permute(2, 0, 1).reshape(fields * groups, m)
        claimed = (columns > 0).reshape(fields * groups, k)
        shared = matrices.repeat(fields, 1, 1) if groups > 1 else matrices[0]
        squares = _field_bounds(shared, rows, claimed).reshape(fields, groups, 1).expand(fields, groups, k)
    if not bool((squares > 0).any()):
        return None
    per_pixel = torch.zeros(op.in_dim + 1, dtype=torch.float64, device=device)
    per_pixel.index_add_(0, columns.flatten(), squares.flatten())
    covered = deflate(per_pixel[1:], op.kernel_size[0] * op.kernel_size[1] * 4)
    smallest = float(covered.min())
    if smallest <= 0:
        return None
    bound = math.sqrt(smallest) * (1 - 8 * UNIT_ROUNDOFF)
    determined = int((squares[:, :, 0] > 0).sum())
    what = "known rows" if known is not None else "filters"
    reason = (
        f"patch: every pixel lies in one of the {determined} receptive fields whose {what} have full column rank "
        f"(sigma_min >= {bound:.4g}, proven)"
    )
    return Proof(True, bound, "patch", reason)


def _candidate_blocks(
    op: ConvOperator, rows_per_position: float, max_columns: int, margins: tuple[float, ...]
) -> list[tuple[int, int]]:
    r"""For each margin, the smallest block whose expected rows are ``margin`` times its window's columns (in order).

    Blocks grow as :math:`m \times m`, :math:`m \times (m + 1)`, :math:`(m + 1) \times m` (clipped to the output
    grid); those over ``max_columns`` window columns are left out.
    """
    ho, wo = op.out_shape[1:]
    found: list[tuple[int, int]] = []
    wanted = list(margins)
    for m in range(1, max(ho, wo) + 1):
        for block in ((m, m), (m, m + 1), (m + 1, m)):
            block = (min(block[0], ho), min(block[1], wo))
            columns = window_operator(op, block).in_dim
            if columns > max_columns:
                return found
            while wanted and rows_per_position * block[0] * block[1] >= wanted[0] * columns:
                wanted.pop(0)
                if block not in found:
                    found.append(block)
            if not wanted:
                return found
    return found


def _tiling(op: ConvOperator, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Block origins ``(B, 2)``, each block's output positions ``(B, mh*mw)`` and window sources ``(B, F)``, and mu."""
    device = op.weight.device
    ho, wo = op.out_shape[1:]
    rows, cols = starts(block[0], ho), starts(block[1], wo)
    r0 = torch.tensor(rows, device=device).reshape(-1, 1).expand(-1, len(cols)).reshape(-1)
    c0 = torch.tensor(cols, device=device).reshape(1, -1).expand(len(rows), -1).reshape(-1)
    a = torch.arange(block[0], device=device)
    b = torch.arange(block[1], device=device)
    positions = ((r0[:, None, None] + a[None, :, None]) * wo + c0[:, None, None] + b[None, None, :]).flatten(1)
    window = window_operator(op, block).input_size
    sources = pixel_sources(op, device)
    fy = torch.arange(window[0], device=device)
    fx = torch.arange(window[1], device=device)
    ys = (op.stride[0] * r0)[:, None, None] + fy[None, :, None]
    xs = (op.stride[1] * c0)[:, None, None] + fx[None, None, :]
    windows = sources[:, ys, xs].permute(1, 0, 2, 3).flatten(1)  # (B, C_in * F_h * F_w), channel-major
    cover = torch.zeros(ho * wo, dtype=torch.long, device=device)
    cover.index_add_(0, positions.flatten(), torch.ones_like(positions.flatten()))
    return torch.stack([r0, c0], 1), positions, windows, int(cover.max())


def _merged(gram: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    r"""A block's own Gram matrix :math:`S^T G_w S` from the window's: padding dropped, copies of a pixel merged.

    Returns the merged matrix (over the block's distinct pixels, in first-seen order), those pixels' numbers, and
    the largest number of copies of one pixel (:math:`\|S\|_2^2`, for the rounding bound).
    """
    real = sources > 0
    pixels, local = torch.unique(sources[real], return_inverse=True)
    k = len(pixels)
    index = local[:, None] * k + local[None, :]
    merged = torch.zeros(k * k, dtype=gram.dtype, device=gram.device)
    merged.index_add_(0, index.flatten(), gram[real][:, real].flatten())
    copies = int(torch.bincount(local).max()) if k else 0
    return merged.reshape(k, k), pixels, copies


def _unmasked_window(op: ConvOperator, block: tuple[int, int]) -> Proof | None:
    """The unmasked window proof for one block size (module docstring), or ``None``.

    Small windows (at most :data:`TIGHT_MAX_COLUMNS` columns): every distinct kind of block (its padding dropped,
    its copies merged: the border blocks of a zero-padded layer have fewer unknowns) gets its own verified bound.
    Larger ones: the window matrix's bound serves every block.
    """
    window = window_operator(op, block)
    gram = window.gram_matrix(torch.float64, op.weight.device)
    read = gram.diagonal() > 0
    n = int(read.sum())
    _, _, sources, mu = _tiling(op, block)
    error = conv_gram_error(window)
    counts = torch.zeros(op.in_dim + 1, dtype=torch.float64, device=sources.device)
    if n > TIGHT_MAX_COLUMNS or not any(op.pad.pads):
        if window.out_dim < n:
            return None
        gram = gram[read][:, read]
        estimate = lambda_min_estimate(gram, dtype=torch.float32 if n > 2048 else None)
        square = float(gram_lower_bound(gram, torch.tensor(error), estimate))
        if square <= 0:
            return None
        claimed = sources[:, read.to(sources.device)]
        counts.index_add_(0, claimed.flatten(), torch.full((claimed.numel(),), square, dtype=torch.float64))
        kinds = 1
    else:  # one bound per kind of block: padding dropped and copies merged
        patterns: dict[tuple[int, ...], float] = {}
        gram = gram[read][:, read]
        for row in sources[:, read.to(sources.device)].tolist():
            pattern = tuple(_relative(row))
            if pattern not in patterns:
                merged, _, copies = _merged(gram, torch.tensor(row, device=gram.device))
                if window.out_dim < merged.shape[0] or merged.shape[0] == 0:
                    patterns[pattern] = 0.0
                    continue
                proven = gram_lower_bound(merged, torch.tensor(error * copies * copies * (1 + 1e-12)))
                patterns[pattern] = float(proven)
            square = patterns[pattern]
            pixels = torch.tensor(sorted({p for p in row if p > 0}), dtype=torch.long)
            counts.index_add_(0, pixels, torch.full((len(pixels),), square, dtype=torch.float64))
        kinds = len(patterns)
        if min(patterns.values()) <= 0:
            return None
        square = min(patterns.values())
    smallest = float(deflate(counts[1:], 4 * sources.shape[0]).min())
    if smallest <= 0:
        return None
    bound = math.sqrt(smallest / mu) * (1 - 8 * UNIT_ROUNDOFF)
    reason = (
        f"window: every {block[0]}x{block[1]} block of outputs determines its {window.input_size[0]}x"
        f"{window.input_size[1]} window ({kinds} kind(s) of block, sigma_min >= {math.sqrt(square):.4g} each), every "
        f"pixel is covered, rows in at most {mu} blocks: sigma_min >= {bound:.4g}, proven"
    )
    return Proof(True, bound, "window", reason)


def _relative(sources: list[int]) -> list[int]:
    """A block's window as a pattern: each column's pixel renumbered by first appearance (0 for padding)."""
    seen: dict[int, int] = {}
    return [seen.setdefault(p, len(seen) + 1) if p > 0 else 0 for p in sources]


def _masked_window(op: ConvOperator, known: torch.Tensor, block: tuple[int, int]) -> tuple[Proof | None, float]:
    """The masked window proof for one block size, or ``None``; and the share of pixels it covered."""
    device = op.weight.device
    window = window_operator(op, block)
    matrix = window.placed_matrix(torch.float64, device)  # (C_out * mh * mw, F), rows (o, i, j)
    _, positions, sources, _ = _tiling(op, block)
    c_out = op.out_shape[0]
    flat = known.reshape(c_out, -1).to(device)
    rows = flat[:, positions].permute(1, 0, 2).flatten(1)  # (B, C_out * mh * mw) in (o, i, j) order
    read = (matrix.abs().mT.to(torch.float64) @ rows.T.to(torch.float64)).T > 0  # columns a known row reads
    claimed = read & (sources > 0)
    squares = _field_bounds(matrix, rows, claimed)
    used = squares > 0
    per_pixel = torch.zeros(op.in_dim + 1, dtype=torch.float64, device=device)
    weights = torch.where(claimed & used[:, None], squares[:, None], 0.0)
    per_pixel.index_add_(0, sources.flatten(), weights.flatten())
    covered = deflate(per_pixel[1:], 4 * window.in_dim)
    share = float((covered > 0).double().mean())
    if not bool(used.any()) or float(covered.min()) <= 0:
        return None, share
    cover = torch.zeros(op.out_shape[1] * op.out_shape[2], dtype=torch.long, device=device)
    taken = positions[used].flatten()
    cover.index_add_(0, taken, torch.ones_like(taken))
    mu = int(cover.max())
    bound = math.sqrt(float(covered.min()) / mu) * (1 - 8 * UNIT_ROUNDOFF)
    reason = (
        f"window: {int(used.sum())} of {len(used)} blocks of {block[0]}x{block[1]} outputs have known rows of full "
        f"column rank on their {window.input_size[0]}x{window.input_size[1]} windows, and every pixel lies in one: "
        f"sigma_min >= {bound:.4g}, proven"
    )
    return Proof(True, bound, "window", reason), share


def window_proof(
    op: ConvOperator,
    known: torch.Tensor | None = None,
    *,
    block: tuple[int, int] | None = None,
    max_columns: int | None = None,
) -> Proof | None:
    r"""The window certificate: blocks of outputs that determine their windows, and a lower bound (module docstring).

    Parameters
    ----------
    op : ConvOperator
    known : torch.Tensor, optional
        Boolean ``op.out_shape``: the known rows (a ReLU's equations, ...); default all.
    block : (int, int), optional
        Outputs per block. Default with ``known``: the smallest blocks whose expected known rows exceed their
        window's columns by 10% (then larger ones, 1.4x and 2x, while some pixel stays undetermined). Without:
        the smallest block with as many rows as columns, and those with 1.5x and 2.5x as many (windows of at
        most :data:`TIGHT_MAX_COLUMNS` columns), the best bound of the three.
    max_columns : int, optional
        Largest window considered: :data:`BLOCK_MAX_COLUMNS` with ``known``, :data:`TEMPLATE_MAX_COLUMNS` without.

    Returns
    -------
    Proof or None
        ``None`` when no block size within the limit determines every pixel (nothing proven).

    Examples
    --------
    >>> import torch
    >>> op = ConvOperator(torch.randn(96, 3, 11, 11, dtype=torch.float64), (31, 31), stride=4)
    >>> proof = window_proof(op)  # 96 filters < 363 patch entries: no patch certificate, but blocks work
    >>> proof.name, proof.lower_bound > 0
    ('window', True)
    """
    limit = max_columns or (BLOCK_MAX_COLUMNS if known is not None else TEMPLATE_MAX_COLUMNS)
    c_out = op.out_shape[0]
    if known is None:
        if block is not None:
            return _unmasked_window(op, block)
        smallest = _candidate_blocks(op, c_out, limit, (1.0,))
        larger = _candidate_blocks(op, c_out, min(limit, TIGHT_MAX_COLUMNS), (1.5, 2.5))
        proofs = [p for b in dict.fromkeys(smallest + larger) if (p := _unmasked_window(op, b)) is not None]
        return max(proofs, key=lambda p: p.lower_bound) if proofs else None
    per_position = float(known.reshape(c_out, -1).sum(0).double().mean())
    blocks = [block] if block is not None else _candidate_blocks(op, per_position, limit, (_ROW_MARGIN, 1.4, 2.0))
    for candidate in blocks:
        proof, _ = _masked_window(op, known.reshape(op.out_shape), candidate)
        if proof is not None:
            return proof
    return None
