r"""Moore-Penrose pseudo-inverses of convolution layers.

Two readings of a layer's weight (see :mod:`invertnet.operators.conv` for :math:`A = P S`):

``"patch"`` — the paper's reading: invert the patch matrix. Every receptive field is estimated
as :math:`\hat p = P^+ y` and the fields are folded back with overlap averaging,

.. math::

    \hat x = (S^T S)^{-1} S^T \hat p, \qquad S^T S = \mathrm{diag}(\text{coverage}).

When every group's :math:`P_k` has full column rank (at least as many filters as patch entries)
:math:`\hat p = S x` and :math:`\hat x = x` exactly on every pixel a receptive field reads.
When :math:`P_k` is wide (fewer filters than patch entries, e.g. All-CNN-B conv1: 96 filters,
363 entries) this is **not** the operator's pseudo-inverse :math:`A^+` and can lose a lot: it
ignores that overlapping fields share pixels.

The operator's own Moore-Penrose solution :math:`A^+ y` (the minimum-norm least-squares solution):

``"fft"`` — exact, through the 2-D DFT, for circular (or no) padding when the stride divides the
input (:mod:`invertnet.spectral`); one factorisation per layer, cached.

``"lsqr"`` — matrix-free LSQR from :math:`x_0 = 0` (:mod:`invertnet.solvers`), for every layer; it
reports iterations, residual and convergence, and warns when it stops unconverged.

``"dense"`` — from the materialised matrix; tiny sizes only.

``"window"`` — the patch reading grown to blocks of outputs (:mod:`invertnet.windows`): one dense
pseudo-inverse, applied block by block. Exact on responses in the range of :math:`A` (e.g. a CReLU
layer's recovered pre-activations) when a block determines its window; a local fit otherwise.
``"lsqr"`` starts from it whenever it applies, which leaves LSQR nothing to do on such responses
and still converges to :math:`A^+ y` on any other.

``"auto"`` picks the exact closed form that applies (``"patch"`` when every patch matrix has full
column rank and the fields do not overlap or the layer is injective by it, ``"fft"`` when the DFT
diagonalises the layer), else ``"lsqr"``, and says which in :class:`SolveInfo`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn

from invertnet._checks import pair, require_4d
from invertnet.errors import RouteError, ShapeError
from invertnet.operators import DENSE_MAX_ENTRIES, ConvOperator
from invertnet.solvers import lsqr
from invertnet.spectral import CirculantFactorization, circulant_reason
from invertnet.windows import WindowInverse, window_block

__all__ = ["CONV_METHODS", "SolveInfo", "choose_method", "conv_pinv", "patch_is_exact", "patch_pinv", "pinv_rtol"]


@dataclass(frozen=True)
class SolveInfo:
    r"""How a pseudo-inverse was computed.

    Attributes
    ----------
    method : str
        The route taken (``"patch"``, ``"fft"``, ``"lsqr"``, ``"dense"``; never ``"auto"``).
    exact : bool
        Whether the route is a closed form (no iteration).
    iterations : int
        Iterations of an iterative solver (0 for closed forms).
    residual : float
        Relative residual :math:`\max_i \|A \hat x_i - y_i\| / \|y_i\|` over the batch.
    converged : bool
        Whether the solver met its tolerance (always True for closed forms).
    start : str
        ``"lsqr"``: where it started, ``"zero"`` or ``"window"`` (the :mod:`invertnet.windows` estimate).
    """

    method: str
    exact: bool
    iterations: int
    residual: float
    converged: bool
    start: str = "zero"


def pinv_rtol(shape: tuple[int, ...], dtype: torch.dtype) -> float:
    """The cutoff we pass to ``torch.linalg.pinv``: ``max(m, n) * eps(dtype)`` (torch's default, made explicit)."""
    return max(shape[-2:]) * torch.finfo(dtype).eps


def _operator(conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> ConvOperator:
    if isinstance(conv, ConvOperator):
        if conv.in_shape[1:] != pair(input_size, "input_size"):
            raise ShapeError(
                f"expected input_size {conv.in_shape[1:]} for this operator, got {tuple(input_size)}; "
                "build the operator for this size"
            )
        return conv
    if isinstance(conv, nn.Conv2d):
        return ConvOperator.from_conv(conv, input_size)
    raise TypeError(f"expected an nn.Conv2d or a ConvOperator, got {type(conv).__name__}")


def _linear_response(conv: nn.Conv2d | ConvOperator, op: ConvOperator, y: object) -> torch.Tensor:
    """Check ``y`` against the operator and subtract the bias: the response :math:`A x`."""
    y = require_4d(y, "y")
    if tuple(y.shape[1:]) != op.out_shape:
        raise ShapeError(
            f"y: expected shape (N, {', '.join(map(str, op.out_shape))}) for input size {op.in_shape[1:]}, got "
            f"{tuple(y.shape)}; pass the input_size the layer was applied to"
        )
    if not y.is_floating_point():
        raise TypeError(f"y: expected a floating-point tensor, got {y.dtype}; convert with y.double()")
    if isinstance(conv, nn.Conv2d) and conv.bias is not None:
        y = y - conv.bias.detach().to(y).reshape(1, -1, 1, 1)
    return y


_LAYER_CACHE: weakref.WeakKeyDictionary[nn.Module | ConvOperator, dict[tuple, tuple[tuple[int, int], object]]] = (
    weakref.WeakKeyDictionary()
)


def _cached(conv: nn.Conv2d | ConvOperator, key: tuple, build: Callable[[], object]) -> object:
    """Per-layer cache of factorisations, keyed by ``key``; rebuilt when the weight changes in place."""
    entries = _LAYER_CACHE.setdefault(conv, {})
    version = (conv.weight.data_ptr(), conv.weight._version)
    if key not in entries or entries[key][0] != version:
        entries[key] = (version, build())
    return entries[key][1]


def _patch_pinvs(
    conv: nn.Conv2d | ConvOperator, op: ConvOperator, like: torch.Tensor, rtol: float | None
) -> torch.Tensor:
    """The groups' :math:`P_k^+`, cached per layer, dtype, device and cutoff."""

    def build() -> torch.Tensor:
        matrices = op.patch_matrices(like)
        return torch.linalg.pinv(matrices, rtol=pinv_rtol(tuple(matrices.shape), like.dtype) if rtol is None else rtol)

    return _cached(conv, ("patch", like.dtype, like.device, rtol), build)  # type: ignore[return-value]


def _factorization(conv: nn.Conv2d | ConvOperator, op: ConvOperator, like: torch.Tensor) -> CirculantFactorization:
    """The layer's per-frequency SVD (see :mod:`invertnet.spectral`), cached per layer, input size, dtype and device."""
    key = ("fft", op.in_shape, like.dtype, like.device)
    return _cached(conv, key, lambda: CirculantFactorization(op, like))  # type: ignore[return-value]


def _window_inverse(conv: nn.Conv2d | ConvOperator, op: ConvOperator, like: torch.Tensor) -> WindowInverse | None:
    """The layer's window pseudo-inverse if a block of outputs determines its window, else None; cached."""

    def build() -> WindowInverse | None:
        block = window_block(op)
        if block is None:
            return None
        inverse = WindowInverse(op, block, like)
        return inverse if inverse.injective else None

    return _cached(conv, ("window", op.in_shape, like.dtype, like.device), build)  # type: ignore[return-value]


def _window_reason(op: ConvOperator) -> str:
    block = window_block(op)
    if block is None:
        return (
            f"no block within the size limit has as many equations as unknowns ({op.out_shape[0]} "
            f"filters for {op.in_shape[0]} input channels at stride {op.stride})"
        )
    return f"the {block[0]}x{block[1]} block's matrix is rank deficient"


def patch_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    *,
    rtol: float | None = None,
) -> torch.Tensor:
    r"""Invert a convolution through the pseudo-inverse of its patch matrix (the paper's reading).

    Parameters
    ----------
    conv : nn.Conv2d or ConvOperator
        The layer (any stride, padding, padding mode, dilation, groups, kernel shape).
    y : torch.Tensor
        Its output, shape ``(N, C_out, H_out, W_out)``, bias included.
    input_size : (int, int)
        Height and width of the layer's input.
    rtol : float, optional
        Singular values of :math:`P_k` below ``rtol * sigma_max(P_k)`` are cut; default
        ``max(m, n) * eps(dtype)``.

    Returns
    -------
    torch.Tensor
        Input estimate of shape ``(N, C_in, H, W)``, in ``y``'s dtype and on its device. Pixels that
        no receptive field reads (e.g. stride larger than the kernel) are 0.

    Notes
    -----
    :math:`\hat x = (S^T S)^{-1} S^T (I_L \otimes P^+)(y - b)`. Exact (up to rounding) on every
    pixel some receptive field reads whenever each :math:`P_k` has full column rank. When the
    fields do not overlap (stride = kernel, no padding) it equals :math:`A^+ y` for any
    :math:`P`. Otherwise, and in particular for wide :math:`P_k`, it is *not* the operator's
    pseudo-inverse; use :func:`conv_pinv` for that. The :math:`P_k^+` are computed once per
    weight, dtype, device and cutoff and cached (recomputed when the weight changes in place).

    Examples
    --------
    >>> import torch
    >>> from invertnet import patch_pinv
    >>> conv = torch.nn.Conv2d(3, 27, 3, padding=1).double()  # 27 filters >= 3*3*3 entries
    >>> x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    >>> torch.allclose(patch_pinv(conv, conv(x), (16, 16)), x)
    True
    """
    op = _operator(conv, input_size)
    z = _linear_response(conv, op, y)
    columns = op.apply_patch_matrices(z.flatten(2), _patch_pinvs(conv, op, z, rtol))
    coverage = op.coverage(device=z.device, dtype=z.dtype)
    return op.patches_adjoint(columns) / coverage.clamp(min=1)


def patch_is_exact(conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> bool:
    """Whether :func:`patch_pinv` recovers every input pixel: full column rank patch matrices, every pixel read.

    Cached per layer and input size (recomputed when the weight changes in place).
    """
    op = _operator(conv, input_size)

    def decide() -> bool:
        full_rank = bool((torch.linalg.matrix_rank(op.patch_matrices().double()) == op.patch_size).all())
        return full_rank and bool((op.coverage() > 0).all())

    return _cached(conv, ("patch-exact", op.in_shape), decide)  # type: ignore[return-value]


def choose_method(conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> str:
    """The route of ``"auto"``: ``"patch"`` if exact, else ``"fft"`` if the DFT diagonalises the layer, else LSQR."""
    op = _operator(conv, input_size)
    if patch_is_exact(conv, input_size):
        return "patch"
    if circulant_reason(op) is None:
        return "fft"
    return "lsqr"


#: Inversion routes of :func:`conv_pinv`: name -> what it computes.
CONV_METHODS: dict[str, str] = {
    "auto": "the exact closed form that applies (patch, fft), else lsqr",
    "patch": "pseudo-inverse of the patch matrix, overlap-averaged (the paper's reading)",
    "fft": "the operator's Moore-Penrose pseudo-inverse through the 2-D DFT (circular or no padding)",
    "lsqr": "the operator's minimum-norm least-squares solution by matrix-free LSQR",
    "dense": "the operator's Moore-Penrose pseudo-inverse from its dense matrix (tiny sizes)",
    "window": "pseudo-inverse of a block of outputs, block by block (exact on the operator's range)",
}


@overload
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = ...,
    *,
    rtol: float | None = ...,
    atol: float = ...,
    maxiter: int | None = ...,
    precondition: bool | None = ...,
    warm_start: bool = ...,
    warn: bool = ...,
    max_entries: int = ...,
    return_info: Literal[False] = ...,
) -> torch.Tensor: ...
@overload
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = ...,
    *,
    rtol: float | None = ...,
    atol: float = ...,
    maxiter: int | None = ...,
    precondition: bool | None = ...,
    warm_start: bool = ...,
    warn: bool = ...,
    max_entries: int = ...,
    return_info: Literal[True],
) -> tuple[torch.Tensor, SolveInfo]: ...
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = "auto",
    *,
    rtol: float | None = None,
    atol: float = 1e-10,
    maxiter: int | None = None,
    precondition: bool | None = None,
    warm_start: bool = True,
    warn: bool = True,
    max_entries: int = DENSE_MAX_ENTRIES,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    r"""Invert a convolution layer: the operator's Moore-Penrose solution :math:`A^+ (y - b)`, or the patch reading.

    Parameters
    ----------
    conv : nn.Conv2d or ConvOperator
    y : torch.Tensor
        The layer's output, ``(N, C_out, H_out, W_out)``, bias included.
    input_size : (int, int)
    method : {"auto", "patch", "fft", "lsqr", "dense", "window"}
        See :data:`CONV_METHODS` and the module docstring.
    rtol : float, optional
        Closed forms: singular values below ``rtol * sigma_max`` (the global largest) are cut;
        default ``max(m, n) * eps(dtype)``.
    atol : float, default 1e-10
        ``"lsqr"``: its ``atol`` and ``btol`` (see :func:`invertnet.solvers.lsqr`).
    maxiter : int, optional
        ``"lsqr"``: iteration cap.
    precondition : bool, optional
        ``"lsqr"``: scale each pixel by :math:`\sqrt{\bar c / c}` (:math:`c` its coverage). About halves the
        iterations on strided layers whose borders fewer fields read; the result is then *a* least-squares
        solution, the minimum-norm one only when the layer is injective on the pixels it reads. Default
        (None): on exactly when the warm start applies, which proves that injectivity.
    warm_start : bool, default True
        ``"lsqr"``: start from the ``"window"`` estimate when a block of outputs determines its window
        (:mod:`invertnet.windows`; the block's pseudo-inverse is computed once per layer and cached). The
        layer is then injective on the pixels it reads and the estimate lies in its row space, so the limit
        is still :math:`A^+ (y - b)`; on responses in the range of the layer the start is already exact.
    warn : bool, default True
        ``"lsqr"``: warn (:class:`~invertnet.solvers.ConvergenceWarning`) when it stops unconverged.
    max_entries : int
        ``"dense"``: size limit of the matrix.
    return_info : bool, default False
        Also return a :class:`SolveInfo` (route taken, iterations, relative residual, convergence).

    Returns
    -------
    torch.Tensor or (torch.Tensor, SolveInfo)
        ``(N, C_in, H, W)`` in ``y``'s dtype and on its device.

    Examples
    --------
    >>> import torch
    >>> from invertnet import conv_pinv
    >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double()
    >>> y = conv(torch.rand(1, 2, 8, 8, dtype=torch.float64))
    >>> x_fft, info = conv_pinv(conv, y, (8, 8), return_info=True)
    >>> info.method
    'fft'
    >>> x_lsqr = conv_pinv(conv, y, (8, 8), method="lsqr", atol=1e-14)
    >>> bool(torch.allclose(x_fft, x_lsqr, atol=1e-8))
    True
    """
    if method not in CONV_METHODS:
        raise ValueError(f"conv_pinv: expected method in {sorted(CONV_METHODS)}, got {method!r}")
    op = _operator(conv, input_size)
    z = _linear_response(conv, op, y)
    route = choose_method(conv, input_size) if method == "auto" else method
    iterations, converged, start = 0, True, "zero"
    if route == "patch":
        x_hat = patch_pinv(conv, y, input_size, rtol=rtol)
    elif route == "fft":
        reason = circulant_reason(op)
        if reason is not None:
            raise RouteError(
                f"conv_pinv: method 'fft' needs a layer the 2-D DFT diagonalises, but {reason}; "
                "use method='lsqr' (any layer) or 'auto'"
            )
        factors = _factorization(conv, op, z)
        cut = pinv_rtol((op.out_dim, op.in_dim), z.dtype) if rtol is None else rtol
        x_hat = factors.pinv(z, cut)
    elif route == "lsqr":
        scale = None
        window = _window_inverse(conv, op, z) if warm_start else None
        if precondition or (precondition is None and window is not None):
            coverage = op.coverage(z.device, z.dtype)
            covered = coverage > 0
            scale = torch.where(covered, (coverage[covered].mean() / coverage.clamp(min=1)).sqrt(), 1.0)
        result = lsqr(
            op,
            z,
            atol=atol,
            btol=atol,
            maxiter=maxiter,
            preconditioner=None if scale is None else (lambda v: v * scale),
            x0=None if window is None else window.apply(z),
            warn=warn,
        )
        x_hat, iterations, converged = result.x, result.iterations, bool(result.converged.all())
        start = "zero" if window is None else "window"
    elif route == "window":
        window = _window_inverse(conv, op, z)
        if window is None:
            raise RouteError(
                f"conv_pinv: method 'window' needs a block of outputs that determines the pixels it reads, but "
                f"{_window_reason(op)}; use method='lsqr' (any layer) or 'auto'"
            )
        x_hat = window.apply(z)
    else:
        matrix = op.to_dense(dtype=z.dtype, device=z.device, max_entries=max_entries)
        cut = pinv_rtol(tuple(matrix.shape), z.dtype) if rtol is None else rtol
        x_hat = (torch.linalg.pinv(matrix, rtol=cut) @ z.reshape(z.shape[0], -1).T).T.reshape(-1, *op.in_shape)
    if not return_info:
        return x_hat
    tiny = torch.finfo(z.dtype).tiny
    residual = (op.forward(x_hat) - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1).clamp(min=tiny)
    return x_hat, SolveInfo(route, route != "lsqr", iterations, float(residual.detach().max()), converged, start)
