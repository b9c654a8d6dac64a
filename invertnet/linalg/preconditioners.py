r"""A preconditioner for the normal equations of a strided convolution with zero padding or none.

A convolution with stride :math:`s` whose stride divides the input, after a space-to-depth
(:func:`invertnet.linalg.spectral.space_to_depth`: :math:`q = C_{in} s_h s_w` channels on an
:math:`n_h \times n_w = H/s_h \times W/s_w` grid of blocks), is a *valid* cross-correlation of
:math:`t_h \times t_w` matrices :math:`W_k` (:math:`C_{out} \times q`, :math:`t = \lceil k / s \rceil`):
:math:`y_o = \sum_k W_k \tilde x_{o + k}` for the outputs :math:`o \in [0, n_h - t_h] \times [0, n_w - t_w]`.
Its Gram matrix :math:`G = A^T A` couples blocks :math:`b, b'` by

.. math::

    G_{b b'} = \sum_{o \text{ valid}} W_{b - o}^T W_{b' - o},

a :math:`(2t - 1) \times (2t - 1)` stencil of :math:`q \times q` matrices that is translation invariant
except within :math:`t - 1` blocks of the border, where fewer outputs read a block. Those border blocks carry
the smallest eigenvalues of :math:`G` (All-CNN-B conv1 at 128x128: the circulant symbol of :math:`G` has
condition number 45, yet CGLS needs 382 iterations to 1e-6, and the error it leaves lies in the outermost two
blocks).

:class:`BorderPreconditioner` approximates :math:`G^{-1}` additively (additive Schwarz):

- the whole grid: the circulant with the interior stencil, :math:`\hat G(\theta) = \sum_d G_d e^{i \theta \cdot d}`,
  one Hermitian :math:`q \times q` matrix per frequency (2-D DFT);
- each of the four edge strips, :math:`w` blocks deep and the grid long: the strip's exact Gram across its depth
  (with the border's missing outputs), made circulant along the edge (1-D DFT, one :math:`w q \times w q`
  matrix per frequency);
- each of the four corners, :math:`c \times c` blocks: the exact Gram restricted to the corner (Cholesky).

Every piece is a symmetric positive definite matrix restricted to its pixels, so their sum :math:`M` is
symmetric positive definite on the pixels the layer reads (pixels it never reads are masked out), and
preconditioned conjugate gradients on the normal equations (:func:`invertnet.linalg.solvers.pcgls`) converge to the
least-squares solution, which is :math:`A^+ z` when the layer is injective on the pixels it reads.
The pieces are built from the :math:`t_h^2 t_w^2` products :math:`W_k^T W_{k'}` (no probing, no dense
operator matrix).

Zero padding: the layer is the valid convolution of the zero-padded input, :math:`A = A_{\text{valid}} E` with
:math:`E` the embedding of the image in the padded grid, so :math:`A^T A = E^T G_{\text{valid}} E` is
:math:`G_{\text{valid}}` on the image's pixels. The pieces are built on the padded grid with the padding
pixels decoupled (identity rows and columns, as for pixels no output reads); an application pads its input
with zeros and crops its output. The stride must divide the padded size.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time

import torch
import torch.nn.functional as F

from invertnet.errors import RouteError, ShapeError
from invertnet.linalg.spectral import depth_to_space, space_to_depth
from invertnet.operators import ConvOperator

__all__ = ["CIRCULANT_CHUNK", "BorderPreconditioner", "border_bytes", "border_reason", "calibrate_matvec"]

#: Frequencies of the circulant piece built at once (their symbols, Cholesky factors and inverses in the
#: working dtype are the construction's temporaries; what is kept is converted chunk by chunk).
CIRCULANT_CHUNK = 512


def _valid_of(op: ConvOperator) -> ConvOperator:
    """The same convolution without padding on the zero-padded input grid (``op`` itself when unpadded)."""
    left, right, top, bottom = op.pad.pads
    if not any(op.pad.pads):
        return op
    h, w = op.input_size
    return ConvOperator(op.weight, (h + top + bottom, w + left + right), op.stride, 0, op.dilation, op.groups)


def _blocks_of(op: ConvOperator) -> tuple[tuple[int, int], tuple[int, int], int]:
    """The polyphase kernel's taps, the grid of stride-sized blocks (of the padded input), the default depth."""
    (h, w), (sh, sw) = _valid_of(op).in_shape[1:], op.stride
    taps = (math.ceil(op.kernel_size[0] / sh), math.ceil(op.kernel_size[1] / sw))
    return taps, (h // sh, w // sw), max(4, taps[0] + 1, taps[1] + 1)


def border_reason(op: ConvOperator) -> str | None:
    """Why :class:`BorderPreconditioner` does not apply to ``op``, or ``None`` when it does."""
    if op.groups != 1 or op.dilation != (1, 1):
        return f"groups={op.groups}, dilation={op.dilation}: only groups=1 and dilation 1 are supported"
    if any(op.pad.pads) and op.pad.mode != "zeros":
        return f"padding_mode={op.pad.mode!r}: only zero padding (or none) is supported"
    (kh, kw), (left, right, top, bottom) = op.kernel_size, op.pad.pads
    if max(top, bottom) >= kh or max(left, right) >= kw:
        return f"padding {op.pad.pads} as wide as the kernel {op.kernel_size}: some outputs read padding only"
    (h, w), (sh, sw) = _valid_of(op).in_shape[1:], op.stride
    if h % sh or w % sw:
        return f"the stride {op.stride} does not divide the padded input size {(h, w)}"
    taps, grid, _ = _blocks_of(op)
    if op.out_shape[1:] != (grid[0] - taps[0] + 1, grid[1] - taps[1] + 1):
        return f"the output grid {op.out_shape[1:]} is not the valid grid of the polyphase kernel"
    if min(grid[i] - 4 * taps[i] for i in range(2)) < 0:
        return f"the block grid {grid} is too small for the border pieces (at least {4 * max(taps)} blocks a side)"
    return None


def border_bytes(op: ConvOperator, dtype: torch.dtype = torch.float64, single: bool = True) -> int:
    r"""Peak bytes of building the default :class:`BorderPreconditioner` of ``op`` in ``dtype`` (an estimate).

    It keeps one :math:`q \times q` complex inverse per frequency of the block grid (``rfft2``), one
    :math:`w q \times w q` per frequency along each edge strip and four :math:`c^2 q \times c^2 q` corners, in
    single precision when ``single``. Building them adds, at the peak, four times the largest piece under
    construction in ``dtype`` (a symbol, a term of its sum, its factor and its inverse): a chunk of
    :data:`CIRCULANT_CHUNK` circulant frequencies, a strip or a corner. Measured on All-CNN-B conv1 at 224 /
    448 / 896 px: 0.13 / 0.32 / 0.79 GiB above the process, estimated 0.14 / 0.31 / 0.82. The lsqr route's
    default passes over the preconditioner when this exceeds ``SolveOptions.max_memory``.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(96, 3, 11, 11), (896, 896), stride=4)  # All-CNN-B conv1 at 896 px
    >>> round(border_bytes(op) / 2**30, 2)  # GiB
    0.82
    """
    _, (nh, nw), depth = _blocks_of(op)
    q = op.in_shape[0] * op.stride[0] * op.stride[1]
    real = torch.finfo(dtype).bits // 8
    kept_real = 4 if single else real
    circulant = nh * (nw // 2 + 1) * q**2
    strips = 2 * (nw // 2 + 1 + nh // 2 + 1) * (depth * q) ** 2
    corners = 4 * (depth**2 * q) ** 2
    kept = 2 * kept_real * (circulant + strips) + kept_real * corners
    chunk = max(
        2 * real * min(circulant, CIRCULANT_CHUNK * q**2),
        2 * real * (max(nh, nw) // 2 + 1) * (depth * q) ** 2,
        real * corners // 4,
    )
    return int(kept + 4 * chunk)


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _spd_inverse(matrix: torch.Tensor, what: str, kept: torch.dtype) -> torch.Tensor:
    """The inverse of (a batch of) Hermitian positive definite matrices by Cholesky; refuses singular ones.

    Factored in the precision ``kept`` (real) first when it is lower than the matrix's, which is all a
    preconditioner keeps; where that factorisation fails, in the matrix's own precision.
    """
    if torch.finfo(kept).bits < torch.finfo(matrix.real.dtype).bits:
        low = matrix.to(_complex(kept) if matrix.is_complex() else kept)
        factor, info = torch.linalg.cholesky_ex(low)
        if not bool((info != 0).any()):
            return torch.cholesky_inverse(factor)
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        raise RouteError(
            f"BorderPreconditioner: {what} is not positive definite, so the layer is not injective on the pixels "
            "it reads; use the lsqr route without precondition='border'"
        )
    return torch.cholesky_inverse(factor)


#: Elements of the product's temporary per chunk in :func:`_batched_matvec` before (or without) a calibration.
_MATVEC_CHUNK = 2**18

#: The chunk sizes (elements of the temporary) a calibration tries; 0 is ``matmul`` (``bmm``) itself, and
#: :data:`_ROW_PRODUCT` the row vector times the transposed matrices.
_ROW_PRODUCT = -1
_MATVEC_CANDIDATES = (2**15, 2**16, 2**17, 2**18, 2**19, 2**20, 0, _ROW_PRODUCT)

#: Calibrated chunk per (batch, n, dtype) of one-column products: chosen on this machine, once per process.
_MATVEC_PLANS: dict[tuple[int, int, torch.dtype], int] = {}


def _chunked_matvec(matrices: torch.Tensor, columns: torch.Tensor, chunk: int) -> torch.Tensor:
    """``matrices @ columns[..., None]`` by elementwise products summed along the rows, ``chunk`` elements at once.

    ``chunk`` 0: ``bmm`` itself; :data:`_ROW_PRODUCT`: :math:`(v^T M^T)^T`, one ``(1, n) x (n, n)^T`` product per
    matrix, which reads each matrix row by row (for All-CNN-B conv1's pieces on an AVX512 Xeon: 2.6-4x faster than
    ``bmm`` and 1.9-2.7x faster than the best chunk).
    """
    batch, n, _ = matrices.shape
    if chunk == 0:
        return (matrices @ columns[..., None])[..., 0]
    if chunk == _ROW_PRODUCT:
        return (columns[:, None, :] @ matrices.mT)[:, 0, :]
    step = max(1, chunk // (n * n))
    out = columns.new_empty(batch, n)
    for i in range(0, batch, step):
        torch.sum(matrices[i : i + step] * columns[i : i + step, None, :], dim=-1, out=out[i : i + step])
    return out


def calibrate_matvec(matrices: torch.Tensor, repeat: int = 3) -> int:
    """Time the candidate chunk sizes of :func:`_batched_matvec` on ``matrices`` (CPU) and keep the fastest.

    One-column products of many small matrices are limited by memory traffic, and how a temporary of a given
    size fares depends on the machine's caches and on what else runs; a fixed size tuned on one machine ran 2x
    slower on another. So the size is measured here, on the matrices themselves, when a preconditioner is
    built: :data:`_MATVEC_CANDIDATES` (``bmm`` and the row product among them), ``repeat`` runs each after a
    warm-up, the median kept (tens of milliseconds, once per shape and process). Returns the chosen chunk (0:
    ``bmm``, :data:`_ROW_PRODUCT`: the row product).
    """
    batch, n, _ = matrices.shape
    key = (batch, n, matrices.dtype)
    if matrices.device.type != "cpu":
        return 0
    if key in _MATVEC_PLANS:
        return _MATVEC_PLANS[key]
    columns = torch.ones(batch, n, dtype=matrices.dtype)
    timings = {}
    for chunk in _MATVEC_CANDIDATES:
        if chunk > 0 and chunk // (n * n) >= 2 * batch:
            continue  # the same as a smaller candidate that already covers the batch in one product
        _chunked_matvec(matrices, columns, chunk)
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            _chunked_matvec(matrices, columns, chunk)
            runs.append(time.perf_counter() - start)
        timings[chunk] = statistics.median(runs)
    _MATVEC_PLANS[key] = min(timings, key=lambda c: timings[c])
    return _MATVEC_PLANS[key]


def _batched_matvec(matrices: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``matrices @ vectors`` for ``(B, n, n)`` and ``(B, n, N)``; one column on CPU by the calibrated chunks.

    ``bmm`` on one column per matrix ran at a third of the speed of an elementwise product summed along the
    rows, chunk by chunk (complex64 on one thread: 2.2 against 5.4 ms for 1,624 matrices of 48x48), but the best
    chunk depends on the machine: :func:`calibrate_matvec` chooses it (until then, :data:`_MATVEC_CHUNK`).
    Several columns, or another device, go to ``matmul``.
    """
    if vectors.shape[-1] != 1 or vectors.device.type != "cpu":
        return matrices @ vectors
    batch, n, _ = matrices.shape
    chunk = _MATVEC_PLANS.get((batch, n, matrices.dtype), _MATVEC_CHUNK)
    return _chunked_matvec(matrices, vectors[..., 0].contiguous(), chunk)[..., None]  # a strided column: 5x slower


class BorderPreconditioner:
    r"""Additive Schwarz approximation of :math:`(A^T A)^{-1}` for a strided convolution, zero padding or none.

    See the module docstring for the maths.

    Parameters
    ----------
    op : ConvOperator
        A convolution for which :func:`border_reason` is ``None``.
    like : torch.Tensor
        Dtype and device.
    depth : int, optional
        Blocks across each edge strip; default :math:`\max(4, t_h + 1, t_w + 1)` (4 for All-CNN-B conv1, 16 pixels).
    corner : int, optional
        Blocks per side of each corner square; default the same as ``depth``.
    single : bool, default True
        Factor, keep and apply the pieces in single precision (float32, complex64; a piece whose factorisation
        fails there is factored in the working dtype): half the bytes per application, half the setup. A
        preconditioner only steers the search directions; :func:`invertnet.linalg.solvers.pcgls` keeps its iterates
        and residuals in the working dtype and converges to the same solution (float64, measured: the same
        iteration counts, errors down to 1e-12).
    calibrate : bool, default True
        Time the batched products' chunk sizes on this machine once per shape (:func:`calibrate_matvec`).

    Raises
    ------
    ShapeError
        When :func:`border_reason` says the layer does not fit.
    RouteError
        When a piece is not positive definite (the layer is not injective on the pixels it reads).

    Notes
    -----
    Measured on All-CNN-B conv1 (96 filters of 3x11x11, stride 4, :math:`q = 48`, 56x56 blocks at 224x224),
    response + 1% noise, to 1e-6 of :math:`A^+ z`: 25 iterations (18 with ``corner=6``), against 168 for LSQR
    from the window estimate with coverage scaling (to relative 1e-9: 33 against 278); an application costs
    0.63 forward + adjoint pairs with ``single`` (1.24 without), the setup about 60 once per layer and size
    (``benchmarks/bench_solvers.py --only offrange``).
    Deeper strips and larger corners cut iterations but cost more to build and apply: a corner is a dense
    :math:`c^2 q \times c^2 q` inverse, a strip :math:`n/2 + 1` dense :math:`w q \times w q` ones.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(24, 2, 5, 5, dtype=torch.float64), (48, 48), stride=2)
    >>> m = BorderPreconditioner(op, torch.zeros((), dtype=torch.float64))
    >>> u, v = torch.randn(2, 1, *op.in_shape, dtype=torch.float64)
    >>> bool(torch.isclose((u * m(v)).sum(), (m(u) * v).sum()))
    True
    """

    def __init__(
        self,
        op: ConvOperator,
        like: torch.Tensor,
        depth: int | None = None,
        corner: int | None = None,
        single: bool = True,
        calibrate: bool = True,
    ) -> None:
        reason = border_reason(op)
        if reason is not None:
            raise ShapeError(f"BorderPreconditioner: {reason}; use the lsqr route without it")
        self.op = op
        dtype, device = like.dtype, like.device
        self.stride = op.stride
        self.taps, self.grid, default_depth = _blocks_of(op)
        (th, tw), (sh, sw) = self.taps, self.stride
        self.depth = depth if depth is not None else default_depth
        self.corner = corner if corner is not None else self.depth
        if not 0 < self.depth <= min(self.grid) // 2 or not 0 < self.corner <= min(self.grid) // 2:
            raise ShapeError(
                f"BorderPreconditioner: expected depth and corner in [1, {min(self.grid) // 2}] blocks (half the "
                f"{self.grid} grid), got {self.depth} and {self.corner}"
            )
        self.pads = op.pad.pads
        weight = op.weight.to(device=device, dtype=dtype)
        c_out, c_in, kh, kw = weight.shape
        weight = F.pad(weight, (0, tw * sw - kw, 0, th * sh - kh))
        taps = weight.reshape(c_out, c_in, th, sh, tw, sw).permute(2, 4, 0, 1, 3, 5).reshape(th, tw, c_out, -1)
        self.q = taps.shape[-1]
        # P[a, b, a', b'] = W_ab^T W_a'b'
        self._products = torch.einsum("abop,cdoq->abcdpq", taps, taps)
        # the pixels that are unknowns: read by some output, and not padding
        read = _valid_of(op).coverage(device=device, dtype=dtype) > 0
        left, right, top, bottom = self.pads
        real = torch.zeros_like(read)
        real[top : read.shape[0] - bottom, left : read.shape[1] - right] = True
        read &= real
        self.read = space_to_depth(read.expand(1, c_in, -1, -1).to(dtype), self.stride)[0] > 0  # (q, nh, nw)
        self._mask = read.to(dtype)
        # the pieces invert the Gram divided by its scale and apply to inputs divided by their largest entry,
        # so float32 neither overflows nor underflows whatever the scale of the weights and of the inputs
        kept = self._kept = torch.float32 if single else dtype
        self._gram_scale = float(self._products.abs().max()) or 1.0
        self._circulant = self._circulant_factor(kept)
        self._strips = [self._strip_factor(side).to(_complex(kept)) for side in ("top", "bottom", "left", "right")]
        self._corners = [self._corner_factor(rows, cols).to(kept) for rows, cols in self._corner_slices()]
        if calibrate:
            for pieces in (self._circulant, *self._strips):
                calibrate_matvec(pieces)

    # --- the Gram matrix on rectangles of blocks ----------------------------------------
    def rectangle_gram(self, rows: slice, cols: slice) -> torch.Tensor:
        r""":math:`G` on a rectangle of blocks, ``(n q, n q)``: blocks row-major, then the :math:`q` channels.

        Scatters :math:`W_k^T W_{k'}` onto blocks :math:`(o + k, o + k')` for every valid output :math:`o` whose
        two blocks lie in the rectangle: :math:`t_h^2 t_w^2` scatters, no operator application.
        """
        (th, tw), (nh, nw), q = self.taps, self.grid, self.q
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
        hr, wr = r1 - r0, c1 - c0
        out = self._products.new_zeros(hr * wr, hr * wr, q, q)
        device = out.device
        for a, b, a2, b2 in itertools.product(range(th), range(tw), range(th), range(tw)):
            oi = torch.arange(max(0, r0 - min(a, a2)), min(nh - th, r1 - 1 - max(a, a2)) + 1, device=device)
            oj = torch.arange(max(0, c0 - min(b, b2)), min(nw - tw, c1 - 1 - max(b, b2)) + 1, device=device)
            first = ((oi[:, None] + a - r0) * wr + oj[None] + b - c0).reshape(-1)
            second = ((oi[:, None] + a2 - r0) * wr + oj[None] + b2 - c0).reshape(-1)
            out.index_put_((first, second), self._products[a, b, a2, b2].expand(len(first), q, q), accumulate=True)
        return out.permute(0, 2, 1, 3).reshape(hr * wr * q, hr * wr * q)

    def _blocks(self, rows: slice, cols: slice) -> torch.Tensor:
        """The Gram of a rectangle as ``(hr, wr, q, hr, wr, q)`` on the unknowns; identity at padding, unread pixels."""
        hr, wr, q = rows.stop - rows.start, cols.stop - cols.start, self.q
        read = self.read[:, rows, cols].permute(1, 2, 0).reshape(-1).to(self._products.dtype)
        gram = self.rectangle_gram(rows, cols) / self._gram_scale * read[:, None] * read[None, :] + torch.diag(1 - read)
        return gram.reshape(hr, wr, q, hr, wr, q)

    # --- the three kinds of piece -------------------------------------------------------
    def _circulant_factor(self, kept: torch.dtype) -> torch.Tensor:
        r"""The inverses of the symbol at the ``rfft2`` frequencies, ``(nh * (nw // 2 + 1), q, q)`` in ``kept``.

        :math:`\hat G(\theta) = \sum_d G_d e^{i \theta \cdot d}` summed over the :math:`(2t - 1)^2` stencil
        offsets, :data:`CIRCULANT_CHUNK` frequencies at a time.
        """
        (th, tw), (nh, nw), q = self.taps, self.grid, self.q
        rows, cols = slice(2 * th - (th - 1), 2 * th + th), slice(2 * tw - (tw - 1), 2 * tw + tw)  # around (2t, 2t)
        gram = self.rectangle_gram(rows, cols) / self._gram_scale
        gram = gram.reshape(2 * th - 1, 2 * tw - 1, q, 2 * th - 1, 2 * tw - 1, q)
        offsets = list(itertools.product(range(-(th - 1), th), range(-(tw - 1), tw)))
        stencil = torch.stack([gram[th - 1, tw - 1, :, th - 1 + dh, tw - 1 + dw, :] for dh, dw in offsets])
        stencil = stencil.to(_complex(stencil.dtype))
        real = stencil.real.dtype
        device = stencil.device
        theta_h = torch.arange(nh, device=device, dtype=real) * (2 * math.pi / nh)
        theta_w = torch.arange(nw // 2 + 1, device=device, dtype=real) * (2 * math.pi / nw)
        theta = torch.stack(torch.meshgrid(theta_h, theta_w, indexing="ij"), -1).reshape(-1, 2)  # rfft2 order
        shifts = torch.tensor(offsets, device=device, dtype=real)  # (offsets, 2)
        out = torch.empty(len(theta), q, q, dtype=_complex(kept), device=device)
        for start in range(0, len(theta), CIRCULANT_CHUNK):
            phases = torch.polar(
                torch.ones((), dtype=real, device=device), theta[start : start + CIRCULANT_CHUNK] @ shifts.T
            )
            symbol = torch.einsum("fd,dpq->fpq", phases, stencil)
            out[start : start + CIRCULANT_CHUNK] = _spd_inverse(symbol, "the circulant symbol", kept)
        return out

    def _strip_slices(self, side: str) -> tuple[slice, slice]:
        (nh, nw), w = self.grid, self.depth
        return {
            "top": (slice(0, w), slice(0, nw)),
            "bottom": (slice(nh - w, nh), slice(0, nw)),
            "left": (slice(0, nh), slice(0, w)),
            "right": (slice(0, nh), slice(nw - w, nw)),
        }[side]

    def _strip_factor(self, side: str) -> torch.Tensor:
        across, q = side in ("top", "bottom"), self.q
        length = self.grid[1] if across else self.grid[0]
        reach = self.taps[1] if across else self.taps[0]
        centre = slice(length // 2 - (reach - 1), length // 2 + reach)  # the strip's middle, 2 t - 1 blocks long
        rows, cols = self._strip_slices(side)
        gram = self._blocks(rows, centre) if across else self._blocks(centre, cols)
        if not across:  # put the along-the-edge axis second, as for top and bottom
            gram = gram.permute(1, 0, 2, 4, 3, 5)
        n = self.depth * q
        theta = torch.arange(length // 2 + 1, device=gram.device, dtype=gram.dtype) * (2 * math.pi / length)
        symbol = torch.zeros(len(theta), n, n, dtype=_complex(gram.dtype), device=gram.device)
        for d in range(-(reach - 1), reach):
            stencil = gram[:, reach - 1, :, :, reach - 1 + d, :].reshape(n, n)  # T_d, with the ones in T_0
            symbol += torch.polar(torch.ones_like(theta), theta * d)[:, None, None] * stencil
        return _spd_inverse(symbol, "an edge strip's symbol", self._kept)

    def _corner_slices(self) -> list[tuple[slice, slice]]:
        (nh, nw), c = self.grid, self.corner
        return [(rows, cols) for rows in (slice(0, c), slice(nh - c, nh)) for cols in (slice(0, c), slice(nw - c, nw))]

    def _corner_factor(self, rows: slice, cols: slice) -> torch.Tensor:
        gram = self._blocks(rows, cols)
        n = gram.shape[0] * gram.shape[1] * self.q
        return _spd_inverse(gram.reshape(n, n), "a corner's Gram", self._kept)

    # --- application ----------------------------------------------------------------------
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`M v` for input-shaped ``v`` ``(N, C_in, H, W)``."""
        n, q, w = v.shape[0], self.q, self.depth
        left, right, top, bottom = self.pads
        padded = (F.pad(v, self.pads) if any(self.pads) else v) * self._mask
        size = padded.abs().flatten(1).amax(1).clamp(min=torch.finfo(v.dtype).tiny).reshape(-1, 1, 1, 1)
        x = space_to_depth((padded / size).to(self._kept), self.stride)  # (N, q, nh, nw), entries in [-1, 1]
        nh, nw = self.grid
        spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(-1, q, n)  # (nh * (nw//2+1), q, N)
        solved = _batched_matvec(self._circulant, spectrum).reshape(nh, -1, q, n)
        out = torch.fft.irfft2(solved.permute(3, 2, 0, 1), s=(nh, nw))
        for side, factor in zip(("top", "bottom", "left", "right"), self._strips, strict=True):
            along = slice(0, w) if side in ("top", "left") else slice(-w, None)
            if side in ("top", "bottom"):
                strip = x[:, :, along, :].permute(0, 3, 2, 1).reshape(n, nw, w * q)  # (N, along, depth*q)
            else:
                strip = x[:, :, :, along].permute(0, 2, 3, 1).reshape(n, nh, w * q)
            length = strip.shape[1]
            spectrum = torch.fft.rfft(strip, dim=1).permute(1, 2, 0).contiguous()  # (freq, depth*q, N)
            solved = torch.fft.irfft(_batched_matvec(factor, spectrum).permute(2, 0, 1), n=length, dim=1)
            solved = solved.reshape(n, length, w, q)
            if side in ("top", "bottom"):
                out[:, :, along, :] += solved.permute(0, 3, 2, 1)
            else:
                out[:, :, :, along] += solved.permute(0, 3, 1, 2)
        for (rows, cols), factor in zip(self._corner_slices(), self._corners, strict=True):
            local = x[:, :, rows, cols].permute(0, 2, 3, 1).reshape(n, -1).T
            solved = (factor @ local).T.reshape(n, rows.stop - rows.start, cols.stop - cols.start, q)
            out[:, :, rows, cols] += solved.permute(0, 3, 1, 2)
        out = depth_to_space(out, self.stride).to(v.dtype) * (self._mask * (size / self._gram_scale))
        return out[..., top : out.shape[-2] - bottom, left : out.shape[-1] - right]
