r"""Window pseudo-inverses: the paper's patch reading grown from one output to a block of outputs.

A block of :math:`m_h \times m_w` neighbouring outputs of a convolution reads a window of
:math:`F_h \times F_w` pixels of the padded input, :math:`F = s (m - 1) + d (k - 1) + 1`. Its matrix
:math:`A_w` (:math:`C_{out} m_h m_w \times C_{in} F_h F_w`) is the same for every block: on its padded
input a convolution is translation invariant. When :math:`A_w` has full column rank on the pixels the
block reads, the block determines its window,

.. math::

    y = A x \quad\Longrightarrow\quad x|_{\text{window}} = A_w^+\, y|_{\text{block}},

so tiling the output grid with blocks (the last one shifted back to fit) and averaging the windows
where they overlap (and over the copies that reflect, replicate or circular padding makes)
recovers :math:`x` **exactly** on every pixel the layer reads, from one dense matrix. A single
output is the patch reading (:math:`m = 1`, :math:`A_w = P`), which needs as many filters as patch
entries; a block needs only :math:`C_{out} m_h m_w \ge C_{in} F_h F_w`, which holds for large enough
blocks whenever :math:`C_{out} > C_{in} s_h s_w`. All-CNN-B conv1 (96 filters of 11x11x3, stride 4,
96 > 48) gets blocks of 4x5 outputs reading 23x27 pixels: 1920 equations for 1863 unknowns.

For a response outside the range of :math:`A` (noise, a ReLU's lost half) the tiled estimate is a
local least-squares fit, *not* :math:`A^+ y`. It lies in the row space of :math:`A` (the layer is
then injective on the pixels it reads, and the estimate is zero elsewhere), so LSQR started from
it converges to :math:`A^+ y`: :func:`invertnet.pinv.conv_pinv` does that by default.
"""

from __future__ import annotations

import math

import torch

from invertnet.linalg.spectrum import sigma_max
from invertnet.linalg.verified import UNIT_ROUNDOFF, abs_gram_norm, gamma, gram_lower_bound
from invertnet.operators import ConvOperator, LinearOperator

__all__ = ["QR_MAX_CONDITION", "WINDOW_MAX_ENTRIES", "WindowInverse", "starts", "window_block", "window_operator"]

#: Largest window matrix :math:`A_w` (entries) :func:`window_block` considers: 80 MB in float64, about a second of QR.
WINDOW_MAX_ENTRIES = 10_000_000

#: :class:`WindowInverse` keeps the QR factorisation of :math:`A_w` when its condition number is below this;
#: above it (or with fewer equations than unknowns) an SVD decides the rank and gives the pseudo-inverse.
QR_MAX_CONDITION = 1e8


def window_operator(op: ConvOperator, block: tuple[int, int]) -> ConvOperator:
    """The layer restricted to one block of outputs: the same filters, no padding, on the block's window."""
    rows, cols = (op.stride[i] * (block[i] - 1) + op.dilation[i] * (op.kernel_size[i] - 1) + 1 for i in range(2))
    return ConvOperator(op.weight, (rows, cols), op.stride, 0, op.dilation, op.groups)


class _TriangularInverse(LinearOperator):
    """:math:`R^{-1}` of an upper-triangular :math:`R` by triangular solves (for Lanczos on its norm)."""

    def __init__(self, r: torch.Tensor) -> None:
        self.r = r
        self.in_shape = self.out_shape = (r.shape[0],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        solved: torch.Tensor = torch.linalg.solve_triangular(self.r, x.T, upper=True)
        return solved.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        solved: torch.Tensor = torch.linalg.solve_triangular(self.r.T, y.T, upper=False)
        return solved.T


def _qr_factors(
    matrix: torch.Tensor, window: ConvOperator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None:
    r"""Householder QR of a tall ``matrix`` (:math:`A_w` on the pixels read) and its condition number.

    ``None`` when the condition number reaches :data:`QR_MAX_CONDITION` (the caller then uses the SVD).
    :math:`\sigma_{\max}` comes from Lanczos on the window's convolution, :math:`\sigma_{\min} =
    1 / \|R^{-1}\|_2` from Lanczos on :math:`R^{-T} R^{-1}` (two triangular solves a step).
    """
    householder, tau = torch.geqrf(matrix)
    r = householder[: matrix.shape[1]].triu()
    diagonal = r.diagonal().abs()
    if float(diagonal.min()) * QR_MAX_CONDITION <= float(diagonal.max()):  # cond >= max|r_ii| / min|r_ii|
        return None
    largest = sigma_max(window)
    smallest = 1.0 / sigma_max(_TriangularInverse(r.cpu()))
    condition = largest / smallest
    if not math.isfinite(condition) or condition >= QR_MAX_CONDITION:
        return None
    return householder, tau, r, condition


def _proven_sigma_min(matrix: torch.Tensor) -> float:
    """A proven lower bound on the smallest singular value of a tall float64 ``matrix`` (0.0 when none)."""
    square = float(gram_lower_bound(matrix.T @ matrix, gamma(matrix.shape[0]) * abs_gram_norm(matrix)))
    return math.sqrt(square) * (1 - 4 * UNIT_ROUNDOFF) if square > 0 else 0.0


def window_block(op: ConvOperator, max_entries: int = WINDOW_MAX_ENTRIES) -> tuple[int, int] | None:
    r"""The smallest block of outputs with at least as many equations as its window has unknowns.

    Blocks grow as :math:`m \times m`, :math:`m \times (m+1)`, :math:`(m+1) \times m` (clipped to the output
    grid). ``None`` when no block within ``max_entries`` matrix entries has enough equations. This is a
    count only; :class:`WindowInverse` then checks the rank.
    """
    c_out = op.out_shape[0]
    rows_max, cols_max = op.out_shape[1:]
    for m in range(1, max(rows_max, cols_max) + 1):
        for block in ((m, m), (m, m + 1), (m + 1, m)):
            block = (min(block[0], rows_max), min(block[1], cols_max))
            window = window_operator(op, block)
            rows = c_out * block[0] * block[1]
            if rows * window.in_dim > max_entries:
                return None
            if rows >= window.in_dim:
                return block
    return None


def starts(blocks: int, size: int) -> list[int]:
    """Block origins that tile ``range(size)`` with blocks of ``blocks``, the last one shifted back to fit."""
    starts = list(range(0, size - blocks + 1, blocks))
    if starts[-1] + blocks < size:
        starts.append(size - blocks)
    return starts


class WindowInverse:
    r"""The tiled window pseudo-inverse of a convolution (see the module docstring).

    Parameters
    ----------
    op : ConvOperator
    block : (int, int)
        Outputs per block, e.g. from :func:`window_block`.
    like : torch.Tensor
        Dtype and device of the responses it will invert; the factorisation is computed in float64
        on ``like``'s device and stored in ``like``'s dtype.

    Attributes
    ----------
    block, window : (int, int)
        Outputs per block and the pixels (padded input) their window spans.
    blocks : int
        Blocks that tile the output grid.
    injective : bool
        Whether :math:`A_w` has full column rank on the pixels the block reads, proven (:attr:`lower_bound` > 0);
        only then is the tiled estimate exact on the range of :math:`A`.
    lower_bound : float
        A proven lower bound on :math:`\sigma_{\min}(A_w)` on the pixels the block reads (a verified Cholesky
        factorisation of :math:`A_w^T A_w - \tau I`, :func:`invertnet.linalg.verified.gram_lower_bound`); ``0.0`` when
        none.
    condition : float
        :math:`\sigma_{max} / \sigma_{min}` of :math:`A_w` on the pixels the block reads.
    factorization : {"qr", "svd"}
        How :math:`A_w^+` is applied (see Notes).

    Notes
    -----
    With at least as many equations as unknowns, :math:`A_w` (restricted to the pixels it reads) is
    factored :math:`A_w = Q R` by Householder QR (``geqrf``, :math:`2 m n^2 - 2 n^3 / 3` flops, about a
    tenth of the time of an SVD of the same matrix). :math:`\sigma_{\max}` comes from Lanczos on the
    window's convolution and :math:`\sigma_{\min} = 1 / \|R^{-1}\|_2` from Lanczos on
    :math:`R^{-T} R^{-1}` (two triangular solves a step; both to ARPACK's tolerance 1e-10). When the
    condition number :math:`\kappa` is below :data:`QR_MAX_CONDITION`, :math:`A_w` has full column rank and
    :math:`A_w^+ = R^{-1} Q^T` is applied as ``ormqr`` then a triangular solve. Accuracy: Householder
    QR is backward stable (:math:`R` is the exact factor of :math:`A_w + E`, :math:`\|E\| \approx c\, m n\,
    \varepsilon \|A_w\|`), so the solution's relative error is of order :math:`\kappa \varepsilon`, as
    with the SVD; normal equations (Cholesky of :math:`A_w^T A_w`) would give :math:`\kappa^2 \varepsilon`.
    And :math:`\kappa < 10^8` lies far inside the SVD's rank cut (:math:`\sigma_{\min} >
    \max(m, n)\, \varepsilon\, \sigma_{\max}`, i.e. :math:`\kappa \lesssim 10^{12}`), so the rank
    verdict is the SVD's. Otherwise (fewer equations than unknowns, or :math:`\kappa \ge`
    :data:`QR_MAX_CONDITION`) an SVD gives the rank (that cut) and the explicit pseudo-inverse.

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> op = ConvOperator(torch.randn(32, 3, 5, 5, dtype=torch.float64), (23, 23), stride=2)
    >>> inverse = WindowInverse(op, window_block(op), torch.zeros((), dtype=torch.float64))
    >>> inverse.injective, inverse.block
    (True, (2, 3))
    >>> x = torch.rand(2, *op.in_shape, dtype=torch.float64)
    >>> bool(torch.allclose(inverse.apply(op.forward(x)), x))
    True
    """

    def __init__(self, op: ConvOperator, block: tuple[int, int], like: torch.Tensor) -> None:
        self.op = op
        self.block = block
        window = window_operator(op, block)
        self.window = window.input_size
        matrix = window.placed_matrix(torch.float64, like.device, WINDOW_MAX_ENTRIES)
        read = matrix.abs().sum(0) > 0
        self._read = read
        unknowns = int(read.sum())
        self._factors: tuple[torch.Tensor, ...]  # QR: Householder vectors, tau, R; SVD: the pseudo-inverse
        self.lower_bound = _proven_sigma_min(matrix[:, read]) if unknowns <= matrix.shape[0] else 0.0
        self.injective = self.lower_bound > 0
        factors = _qr_factors(matrix[:, read], window) if self.injective else None
        if factors is not None:
            householder, tau, r, self.condition = factors
            self.factorization = "qr"
            self._factors = (householder.to(like.dtype), tau.to(like.dtype), r.to(like.dtype))
        else:
            u, singular, vh = torch.linalg.svd(matrix[:, read], full_matrices=False)
            cut = max(matrix.shape) * torch.finfo(torch.float64).eps * float(singular[0])
            self.factorization = "svd"
            self.condition = float(singular[0] / singular[-1]) if float(singular[-1]) > 0 else float("inf")
            kept = singular > cut
            self._factors = (((vh[kept].T / singular[kept]) @ u[:, kept].T).to(like.dtype),)

        (hp, wp), (_, ho, wo) = op.pad.output_size, op.out_shape
        rows, cols = starts(block[0], ho), starts(block[1], wo)
        self.blocks = len(rows) * len(cols)
        device = like.device
        r0 = torch.tensor(rows, device=device).reshape(-1, 1, 1, 1)
        c0 = torch.tensor(cols, device=device).reshape(1, -1, 1, 1)
        a = torch.arange(block[0], device=device).reshape(1, 1, -1, 1)
        b = torch.arange(block[1], device=device).reshape(1, 1, 1, -1)
        self._outputs = ((r0 + a) * wo + c0 + b).reshape(self.blocks, -1)
        fa = torch.arange(self.window[0], device=device).reshape(1, 1, -1, 1)
        fb = torch.arange(self.window[1], device=device).reshape(1, 1, 1, -1)
        s_h, s_w = op.stride
        self._pixels = ((s_h * r0 + fa) * wp + s_w * c0 + fb).reshape(-1)
        c_in = op.in_shape[0]
        counts = torch.zeros(1, c_in, hp * wp, dtype=like.dtype, device=device)
        counts.index_add_(2, self._pixels, read.reshape(1, c_in, -1).to(like.dtype).repeat(1, 1, self.blocks))
        self._counts = op.pad.adjoint(counts.reshape(1, c_in, hp, wp)).clamp(min=1)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        r"""Tile, solve every block with :math:`A_w^+`, average the windows: ``(N, *out_shape) -> (N, *in_shape)``.

        ``y`` is the linear response (bias removed). Every estimate of a pixel (several windows, and
        the padded copies of reflect, replicate and circular padding) is averaged. Exact on the pixels
        the layer reads when :attr:`injective` and ``y`` is in the range of the operator; zero on
        pixels it does not read.
        """
        n, c_in = y.shape[0], self.op.in_shape[0]
        responses = y.flatten(2)[:, :, self._outputs].transpose(1, 2).reshape(n * self.blocks, -1)
        factors = [t.to(device=y.device, dtype=y.dtype) for t in self._factors]
        if self.factorization == "qr":  # A_w^+ = R^{-1} Q^T
            householder, tau, r = factors
            rotated = torch.ormqr(householder, tau, responses.T, left=True, transpose=True)[: r.shape[0]]
            solved = torch.linalg.solve_triangular(r, rotated, upper=True).T
        else:
            solved = responses @ factors[0].T
        read = self._read.to(y.device)
        windows = y.new_zeros(n * self.blocks, read.numel())
        windows[:, read] = solved
        windows = windows.reshape(n, self.blocks, c_in, -1).transpose(1, 2).reshape(n, c_in, -1)
        hp, wp = self.op.pad.output_size
        padded = torch.zeros(n, c_in, hp * wp, dtype=y.dtype, device=y.device)
        padded.index_add_(2, self._pixels, windows)
        return self.op.pad.adjoint(padded.reshape(n, c_in, hp, wp)) / self._counts.to(y.dtype)
