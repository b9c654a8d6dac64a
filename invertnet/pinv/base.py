r"""What every inversion route shares: the layer it inverts, its options, its result, the registry.

A *route* is one way of inverting a convolution layer :math:`y = A x + b`. It says

- whether it applies to a layer, and why not (:meth:`Route.why_not`);
- whether, on this layer, it computes the operator's Moore-Penrose solution :math:`A^+ (y - b)` for
  every :math:`y` (:meth:`Route.pinv_reason`: ``None`` when it does, else why not);
- roughly what it costs (:meth:`Route.cost`: floating-point operations and the memory it keeps);
- how to solve (:meth:`Route.solve`), returning the estimate with two separate facts:
  ``closed_form`` (computed without iteration: how it was computed) and ``exact`` (it returns the
  layer's input from the layer's exact output: what it achieves, proven for this layer).

A new route is one file with a :class:`Route` subclass and one call to :func:`register_route`;
``conv_pinv``, ``"auto"``, the CLI and the README's table all read :data:`ROUTES`.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

import torch
from torch import nn

from invertnet._checks import pair, require_4d
from invertnet.errors import DTypeError, OptionError, ShapeError, UnsupportedLayerError
from invertnet.operators import DENSE_MAX_ENTRIES, ConvOperator

__all__ = [
    "ROUTES",
    "ConvLayer",
    "Cost",
    "LiveTable",
    "Route",
    "RouteResult",
    "SolveInfo",
    "SolveOptions",
    "pinv_rtol",
    "register_route",
]

T = TypeVar("T")


@dataclass(frozen=True)
class SolveOptions:
    r"""Settings of the inversion routes (each route reads the ones it needs).

    Attributes
    ----------
    rtol : float, optional
        Closed forms: singular values below ``rtol * sigma_max`` (the global largest) are cut;
        default ``max(m, n) * eps(dtype)`` (:func:`pinv_rtol`).
    atol : float, default 1e-10
        ``"lsqr"``: its ``atol`` and ``btol`` (see :func:`invertnet.linalg.solvers.lsqr`).
    maxiter : int or None, default 1000
        ``"lsqr"``: iteration cap (``None``: :func:`invertnet.linalg.solvers.lsqr`'s own, up to 20,000). A layer that
        stops unconverged says so (``SolveInfo.converged``, and the step's note in a reconstruction).
    precondition : bool or "border", optional
        ``"lsqr"``: True scales each pixel by :math:`\sqrt{\bar c / c}` (:math:`c` its coverage); the result is
        then *a* least-squares solution, the minimum-norm one only when the layer is injective on the pixels it
        reads. ``"border"``: conjugate gradients on the normal equations preconditioned by
        :class:`invertnet.linalg.preconditioners.BorderPreconditioner` (convolutions with zero padding or none whose
        stride divides the padded input; :func:`~invertnet.linalg.preconditioners.border_reason` says why not), for
        responses off the layer's range: All-CNN-B conv1 at 224x224 needs 33 iterations instead of 278 (default atol).
        Default (None): where the window start applies (which proves the injectivity), ``"border"`` when the
        response is off the range, the preconditioner fits the layer and building it stays within
        ``max_memory`` (:func:`~invertnet.linalg.preconditioners.border_bytes`), else the coverage scaling.
    warm_start : bool, default True
        ``"lsqr"``: start from the ``"window"`` estimate when a block of outputs determines its window.
    warn : bool, default True
        ``"lsqr"``: warn (:class:`~invertnet.linalg.solvers.ConvergenceWarning`) when it stops unconverged.
    max_entries : int
        ``"dense"``: size limit of the matrix.
    max_memory : int, default 2 GiB
        ``"auto"`` passes over closed forms whose factorisation would keep more bytes than this, and
        ``"lsqr"`` over the default border preconditioner when building it would peak above this.
    """

    rtol: float | None = None
    atol: float = 1e-10
    maxiter: int | None = 1000
    precondition: bool | Literal["border"] | None = None
    warm_start: bool = True
    warn: bool = True
    max_entries: int = DENSE_MAX_ENTRIES
    max_memory: int = 2 * 2**30

    def __post_init__(self) -> None:
        if self.rtol is not None and not 0 <= self.rtol < 1:
            raise OptionError(f"SolveOptions: expected rtol in [0, 1) or None, got {self.rtol}; try None (default)")
        if not self.atol > 0:
            raise OptionError(f"SolveOptions: expected a positive atol, got {self.atol}; try 1e-10")
        if not (self.precondition is None or isinstance(self.precondition, bool) or self.precondition == "border"):
            raise OptionError(
                f"SolveOptions: expected precondition True, False, None or 'border', got {self.precondition!r}"
            )
        if self.maxiter is not None and self.maxiter < 0:
            raise OptionError(f"SolveOptions: expected maxiter >= 0 or None, got {self.maxiter}")


@dataclass(frozen=True)
class SolveInfo:
    r"""How a layer was inverted, in one vocabulary.

    Attributes
    ----------
    method : str
        The route taken (a name of :data:`ROUTES`; never ``"auto"``).
    closed_form : bool
        Computed without iteration (how it was computed).
    exact : bool
        The route returns the layer's input from the layer's exact output, proven for this layer (what it
        achieves): e.g. the layer is injective and the route is its pseudo-inverse, or every patch matrix
        has full column rank. A converged LSQR is exact when a window or patch certificate proves
        injectivity; a closed form on a layer with a null space is not.
    pseudo_inverse : bool
        The estimate is the operator's Moore-Penrose solution :math:`A^+ (y - b)` for any response
        (up to the solver's tolerance), not only for responses in the layer's range.
    iterations : int
        Iterations of an iterative solver (0 for closed forms).
    residual : float
        Relative residual :math:`\max_i \|A \hat x_i - z_i\| / \|z_i\|` over the batch (:math:`z = y - b`).
    converged : bool
        Whether the solver met its tolerance (always True for closed forms).
    start : str
        ``"lsqr"``: where it started, ``"zero"`` or ``"window"``; ``""`` for closed forms.
    solver : str
        The iterative solver that ran: ``"lsqr"``, or ``"pcgls"`` (CGLS preconditioned by the circulant + border
        preconditioner, which the ``lsqr`` route takes for responses off the layer's range); ``""`` for closed
        forms.
    reason : str
        Why this route (for ``"auto"``, why it was chosen) and what it proves.
    proof : str
        What proves ``exact`` (:mod:`invertnet.pinv.proofs`: ``"patch"``, ``"window"``, ``"dft"``, ``"dense"``); ``""``
        when not exact.
    """

    method: str
    closed_form: bool
    exact: bool
    pseudo_inverse: bool
    iterations: int
    residual: float
    converged: bool
    start: str = ""
    reason: str = ""
    proof: str = ""
    solver: str = ""


@dataclass(frozen=True)
class Cost:
    """A route's rough cost on one layer: floating-point operations (setup + one image) and bytes it keeps."""

    flops: float
    memory: int

    def __str__(self) -> str:
        return f"~{self.flops:.2g} flops, {_bytes(self.memory)}"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class RouteResult:
    """What :meth:`Route.solve` returns: the estimate and what the route knows about it."""

    x: torch.Tensor
    exact: bool
    iterations: int = 0
    converged: bool = True
    start: str = ""
    note: str = ""
    proof: str = ""
    solver: str = ""


def pinv_rtol(shape: tuple[int, ...], dtype: torch.dtype) -> float:
    """The cutoff we pass to ``torch.linalg.pinv``: ``max(m, n) * eps(dtype)`` (torch's default, made explicit)."""
    return max(shape[-2:]) * torch.finfo(dtype).eps


_LAYER_CACHE: weakref.WeakKeyDictionary[nn.Module | ConvOperator, dict[tuple[object, ...], tuple[object, object]]] = (
    weakref.WeakKeyDictionary()
)


class ConvLayer:
    r"""A convolution at one input size: its operator :math:`A` (bias apart) and cached factorisations.

    Parameters
    ----------
    conv : nn.Conv2d or ConvOperator
        The layer (any stride, padding, padding mode, dilation, groups, kernel shape).
    input_size : (int, int)
        Height and width of its input.

    Notes
    -----
    Factorisations (patch pseudo-inverses, the DFT's per-frequency SVDs, window pseudo-inverses,
    certificates) are cached per module, key (input size, dtype, device, ...) and weight version, so they
    are rebuilt when the weight changes in place and freed with the module.
    """

    def __init__(self, conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int]) -> None:
        self.conv = conv
        size = pair(input_size, "input_size")
        if isinstance(conv, ConvOperator):
            if conv.in_shape[1:] != size:
                raise ShapeError(
                    f"expected input_size {conv.in_shape[1:]} for this operator, got {tuple(input_size)}; "
                    "build the operator for this size"
                )
            self.op = conv
        elif isinstance(conv, nn.Conv2d):
            self.op = ConvOperator.from_conv(conv, size)
        else:
            raise UnsupportedLayerError(
                f"expected an nn.Conv2d or a ConvOperator, got {type(conv).__name__}; "
                "wrap other linear layers in a LinearOperator"
            )

    def cached(self, key: tuple[object, ...], build: Callable[[], T]) -> T:
        """``build()`` once per layer, ``key`` and weight version."""
        entries = _LAYER_CACHE.setdefault(self.conv, {})
        weight = self.conv.weight
        version = (weight.data_ptr(), weight._version)
        if key not in entries or entries[key][0] != version:
            entries[key] = (version, build())
        return entries[key][1]  # type: ignore[return-value]  # built by `build` for this key

    def coverage(self) -> torch.Tensor:
        """How many receptive fields read each input pixel, ``(H, W)`` float64 on the CPU (cached)."""
        return self.cached(("coverage", self.op.in_shape), lambda: self.op.coverage())

    def reads_every_pixel(self) -> bool:
        """Whether every input pixel is read by some receptive field (otherwise :math:`A` has zero columns)."""
        return bool((self.coverage() > 0).all())

    def response(self, y: object) -> torch.Tensor:
        """Check ``y`` against the operator and subtract the bias: the linear response :math:`z = A x`."""
        y = require_4d(y, "y")
        op = self.op
        if tuple(y.shape[1:]) != op.out_shape:
            raise ShapeError(
                f"y: expected shape (N, {', '.join(map(str, op.out_shape))}) for input size {op.in_shape[1:]}, got "
                f"{tuple(y.shape)}; pass the input_size the layer was applied to"
            )
        if not y.is_floating_point():
            raise DTypeError(f"y: expected a floating-point tensor, got {y.dtype}; convert with y.double()")
        if isinstance(self.conv, nn.Conv2d) and self.conv.bias is not None:
            y = y - self.conv.bias.detach().to(y).reshape(1, -1, 1, 1)
        return y

    def loss(self) -> str:
        """What a non-exact inversion of this layer loses, in words (for step notes)."""
        op = self.op
        if op.out_dim < op.in_dim:
            return f"fewer responses ({op.out_dim}) than unknowns ({op.in_dim}): a null space is lost"
        unread = int((self.coverage() == 0).sum())
        if unread:
            return f"{unread} of {op.in_shape[1] * op.in_shape[2]} pixel positions no filter reads (set to 0)"
        return "not proven injective: a null-space component may be lost"

    @property
    def forward_flops(self) -> float:
        """Multiply-adds times two of one forward application to one image."""
        return 2.0 * self.op.out_dim * self.op.patch_size


class Route(ABC):
    """One way of inverting a convolution layer (see the module docstring).

    Subclasses set :attr:`name`, :attr:`summary` and :attr:`closed_form`, and implement the four methods.
    """

    #: Its name in :data:`ROUTES` and on the command line.
    name: ClassVar[str]
    #: One line for tables and ``--help``.
    summary: ClassVar[str]
    #: Computed without iteration.
    closed_form: ClassVar[bool]
    #: Why it computes :math:`A^+` where :meth:`pinv_reason` is ``None`` (said in ``SolveInfo.reason``).
    because: ClassVar[str]

    @abstractmethod
    def why_not(self, layer: ConvLayer, options: SolveOptions) -> str | None:
        """Why this route does not apply to ``layer`` (a clause for an error message), or ``None``."""

    @abstractmethod
    def pinv_reason(self, layer: ConvLayer) -> str | None:
        """``None`` when, on ``layer``, the route computes :math:`A^+ z` for every ``z``; else why not."""

    @abstractmethod
    def cost(self, layer: ConvLayer, options: SolveOptions) -> Cost:
        """Rough cost on ``layer``: setup plus one image."""

    @abstractmethod
    def solve(self, layer: ConvLayer, z: torch.Tensor, options: SolveOptions) -> RouteResult:
        """Invert the linear response ``z`` (bias removed), ``(N, *out_shape) -> (N, *in_shape)``."""


#: The registered routes by name, in registration order (cheapest reading first).
ROUTES: dict[str, Route] = {}


def register_route(route: Route) -> Route:
    """Add ``route`` to :data:`ROUTES`; refuses a name that is taken (and the reserved ``"auto"``)."""
    if route.name == "auto" or route.name in ROUTES:
        raise OptionError(
            f"register_route: expected a new route name, got {route.name!r}, which is taken; choose another name"
        )
    ROUTES[route.name] = route
    return route


class LiveTable(Mapping[str, str]):
    """A read-only name -> description table rebuilt on every access (it follows a registry as it grows)."""

    def __init__(self, build: Callable[[], dict[str, str]]) -> None:
        self._build = build

    def __getitem__(self, key: str) -> str:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


def dense_svd_flops(m: int, n: int) -> float:
    """Rough flops of a thin SVD of an ``m x n`` matrix (about ``4 m n min(m, n)``)."""
    return 4.0 * m * n * min(m, n)
