r"""The ``"lsqr"`` route: the operator's minimum-norm least-squares solution by matrix-free LSQR.

Works on every layer (:func:`invertnet.linalg.solvers.lsqr`). From :math:`x_0` in the row space of :math:`A` it
converges to :math:`x_0 + A^+ (z - A x_0) = A^+ z`. By default it starts from the ``"window"`` estimate
when a block of outputs determines its window: the layer is then injective on the pixels it reads, the
estimate is zero elsewhere (so it lies in the row space), and on responses in the layer's range it is
already exact, which leaves LSQR nothing to do. With that start, pixels are also scaled by
:math:`\sqrt{\bar c / c}` (:math:`c` their coverage), which about halves the iterations on strided layers
and keeps the limit minimum-norm because the layer is injective on what it reads.

Off the range (a response from a deeper layer's reconstruction) that LSQR still needs hundreds of
iterations on a strided layer, because the pixels near the border are read by few outputs. There, by
default (when the window estimate leaves a residual, the preconditioner fits the layer and building it
stays within ``SolveOptions.max_memory``: :func:`~invertnet.linalg.preconditioners.border_bytes`), or always with
``precondition="border"``, the route runs conjugate gradients on the normal equations preconditioned by
:class:`~invertnet.linalg.preconditioners.BorderPreconditioner` instead (:func:`invertnet.linalg.solvers.pcgls`, to
:math:`\langle s, M s \rangle^{1/2} \le a_{tol} \langle A^T z, M A^T z \rangle^{1/2}`, :math:`s = A^T r`),
from the same start: the preconditioner is built once per layer and input size (cached) and is positive
definite on the pixels the layer reads, so on an injective layer the limit is :math:`A^+ z` as well.
"""

from __future__ import annotations

import torch

from invertnet.errors import RouteError
from invertnet.linalg.preconditioners import BorderPreconditioner, border_bytes, border_reason
from invertnet.linalg.solvers import LsqrResult, lsqr, pcgls
from invertnet.operators import ConvOperator
from invertnet.pinv.base import ConvLayer, Cost, Route, RouteResult, SolveOptions
from invertnet.pinv.patch import full_column_rank
from invertnet.pinv.window import window_inverse

__all__ = ["LSQRRoute", "injectivity_certificate"]

#: Iterations ``"auto"`` budgets for LSQR when comparing costs (measured: 230-570 on All-CNN-B layers).
EXPECTED_ITERATIONS = 300


def injectivity_certificate(layer: ConvLayer, like: torch.Tensor) -> str | None:
    """A cheap proof that the layer is injective (every pixel read, and full-rank patches or window), or None.

    Both are proven (:func:`~invertnet.pinv.patch.full_column_rank`, :attr:`WindowInverse.lower_bound
    <invertnet.pinv.windows.WindowInverse>`): verified Cholesky factorisations, not numerical ranks.
    """
    if layer.op.out_dim < layer.op.in_dim or not layer.reads_every_pixel():
        return None
    if full_column_rank(layer):
        return "patch: every patch matrix has full column rank (proven)"
    inverse = window_inverse(layer, like)
    if inverse is not None:
        return (
            f"window: a block of {inverse.block[0]}x{inverse.block[1]} outputs determines its window "
            f"(sigma_min of the window >= {inverse.lower_bound:.3g}, proven)"
        )
    return None


class LSQRRoute(Route):
    """Matrix-free LSQR on :math:`A`, from the window estimate where one applies."""

    name = "lsqr"
    summary = "the operator's minimum-norm least-squares solution by matrix-free LSQR (any layer)"
    closed_form = False
    because = "LSQR converges to A^+ z (minimum norm) from a start in the row space"

    def why_not(self, layer: ConvLayer, options: SolveOptions) -> str | None:
        return None

    def pinv_reason(self, layer: ConvLayer) -> str | None:
        return None

    def cost(self, layer: ConvLayer, options: SolveOptions) -> Cost:
        iterations = EXPECTED_ITERATIONS if options.maxiter is None else min(EXPECTED_ITERATIONS, options.maxiter)
        return Cost(2 * iterations * layer.forward_flops, 6 * 8 * layer.op.in_dim)

    def solve(self, layer: ConvLayer, z: torch.Tensor, options: SolveOptions) -> RouteResult:
        op = layer.op
        window = window_inverse(layer, z) if options.warm_start else None
        x0 = None if window is None else window.apply(z)
        if options.precondition == "border" or (
            options.precondition is None
            and x0 is not None
            and border_reason(op) is None
            and border_bytes(op, z.dtype) <= options.max_memory
            and _off_range(op, z, x0)
        ):
            border = self._border(layer, z, options, x0)
            return self._finish(layer, z, border, "zero" if window is None else "window", "pcgls")
        scale = None
        if options.precondition is True or (options.precondition is None and window is not None):
            coverage = layer.coverage().to(device=z.device, dtype=z.dtype)
            covered = coverage > 0
            scale = torch.where(covered, (coverage[covered].mean() / coverage.clamp(min=1)).sqrt(), 1.0)
        result = lsqr(
            op,
            z,
            atol=options.atol,
            btol=options.atol,
            maxiter=options.maxiter,
            preconditioner=None if scale is None else (lambda v: v * scale),
            x0=x0,
            warn=options.warn,
        )
        return self._finish(layer, z, result, "zero" if window is None else "window", "lsqr")

    @staticmethod
    def _border(layer: ConvLayer, z: torch.Tensor, options: SolveOptions, x0: torch.Tensor | None) -> LsqrResult:
        """CGLS preconditioned by the layer's (cached) :class:`BorderPreconditioner`, from ``x0`` or zero."""
        reason = border_reason(layer.op)
        if reason is not None:
            raise RouteError(f"lsqr: precondition='border' does not apply: {reason}; use precondition=None")
        key = ("border", layer.op.in_shape, z.dtype, z.device)
        border = layer.cached(key, lambda: BorderPreconditioner(layer.op, z))
        return pcgls(layer.op, z, border, tol=options.atol, maxiter=options.maxiter, x0=x0, warn=options.warn)

    @staticmethod
    def _finish(layer: ConvLayer, z: torch.Tensor, result: LsqrResult, start: str, solver: str) -> RouteResult:
        converged = bool(result.converged.all())
        certificate = injectivity_certificate(layer, z) if converged else None
        note = f"injective: {certificate}" if certificate else ""
        return RouteResult(
            result.x,
            certificate is not None,
            result.iterations,
            converged,
            start,
            note,
            proof=certificate.split(":")[0] if certificate else "",
            solver=solver,
        )


def _off_range(op: ConvOperator, z: torch.Tensor, x0: torch.Tensor) -> bool:
    r"""Whether the window estimate leaves a residual: some sample of ``z`` is off the layer's range.

    The window estimate is exact on the range, so a response in it is reproduced to rounding; one off it
    leaves :math:`\|z - A x_0\| > \sqrt{\epsilon} \|z\|`, and LSQR would have work to do.
    """
    residual = (z - op.forward(x0)).flatten(1).norm(dim=1)
    return bool((residual > torch.finfo(z.dtype).eps ** 0.5 * z.flatten(1).norm(dim=1)).any())
