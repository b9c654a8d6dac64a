r"""``conv_pinv``: invert a convolution layer by a named route, or by the cheapest provably right one.

``"auto"`` considers the routes that compute the operator's Moore-Penrose solution :math:`A^+ (y - b)` on
this layer (:meth:`~invertnet.pinv.base.Route.pinv_reason` is ``None``), drops the closed forms whose
factorisation would keep more than ``SolveOptions.max_memory`` bytes, and takes the cheapest by its
estimated floating-point operations; LSQR (which converges to :math:`A^+` on every layer, and starts from
the window estimate that is already exact on the layer's range) is always a candidate. The choice and the
reason are in :attr:`SolveInfo.reason`.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import nn

from invertnet.errors import OptionError, RouteError
from invertnet.operators import ConvOperator
from invertnet.pinv.base import ROUTES, ConvLayer, Route, SolveInfo, SolveOptions

__all__ = ["choose_method", "choose_route", "conv_pinv"]


def _method_names() -> list[str]:
    return ["auto", *ROUTES]


def choose_route(layer: ConvLayer, options: SolveOptions) -> tuple[Route, str]:
    """The route of ``"auto"`` for ``layer``, and why (see the module docstring)."""
    candidates: list[tuple[float, Route]] = []
    passed: list[str] = []
    for route in ROUTES.values():
        not_pinv = route.pinv_reason(layer)
        if not_pinv is not None:
            continue
        if route.why_not(layer, options) is not None:
            continue
        cost = route.cost(layer, options)
        if route.closed_form and cost.memory > options.max_memory:
            passed.append(f"{route.name} needs {cost.memory / 2**30:.1f} GB, over max_memory")
            continue
        candidates.append((cost.flops, route))
    route = min(candidates, key=lambda pair: pair[0])[1]
    others = [f"{r.name} ~{flops:.2g} flops" for flops, r in candidates if r is not route]
    costs = "; ".join([str(route.cost(layer, options)), *others, *passed])
    return route, f"{route.because}; the cheapest provable route ({costs})"


def choose_method(
    conv: nn.Conv2d | ConvOperator, input_size: tuple[int, int], options: SolveOptions | None = None
) -> str:
    """The name of the route ``"auto"`` takes for this layer.

    Examples
    --------
    >>> import torch
    >>> choose_method(torch.nn.Conv2d(192, 96, 1), (54, 54))
    'patch'
    >>> choose_method(torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (8, 8))
    'fft'
    """
    return choose_route(ConvLayer(conv, input_size), options or SolveOptions())[0].name


@overload
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = ...,
    *,
    options: SolveOptions | None = ...,
    return_info: Literal[False] = ...,
) -> torch.Tensor: ...
@overload
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = ...,
    *,
    options: SolveOptions | None = ...,
    return_info: Literal[True],
) -> tuple[torch.Tensor, SolveInfo]: ...
def conv_pinv(
    conv: nn.Conv2d | ConvOperator,
    y: torch.Tensor,
    input_size: tuple[int, int],
    method: str = "auto",
    *,
    options: SolveOptions | None = None,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    r"""Invert a convolution layer: the operator's Moore-Penrose solution :math:`A^+ (y - b)`, or a named reading.

    Parameters
    ----------
    conv : nn.Conv2d or ConvOperator
    y : torch.Tensor
        The layer's output, ``(N, C_out, H_out, W_out)``, bias included.
    input_size : (int, int)
    method : str, default "auto"
        ``"auto"`` or a route of :data:`~invertnet.pinv.ROUTES` (``"patch"``, ``"window"``, ``"fft"``,
        ``"dense"``, ``"lsqr"``); see :mod:`invertnet.pinv`.
    options : SolveOptions, optional
        Cutoffs, LSQR's tolerance and cap, size limits.
    return_info : bool, default False
        Also return a :class:`SolveInfo`: the route, ``closed_form``, ``exact``, ``pseudo_inverse``,
        iterations, relative residual, convergence and the reason.

    Returns
    -------
    torch.Tensor or (torch.Tensor, SolveInfo)
        ``(N, C_in, H, W)`` in ``y``'s dtype and on its device.

    Raises
    ------
    OptionError
        Unknown method.
    RouteError
        A named route that does not apply to this layer (the message says why and what to use).

    Examples
    --------
    >>> import torch
    >>> from invertnet import SolveOptions, conv_pinv
    >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double()
    >>> y = conv(torch.rand(1, 2, 8, 8, dtype=torch.float64))
    >>> x_fft, info = conv_pinv(conv, y, (8, 8), return_info=True)
    >>> info.method, info.closed_form, info.exact, info.pseudo_inverse
    ('fft', True, True, True)
    >>> x_lsqr = conv_pinv(conv, y, (8, 8), method="lsqr", options=SolveOptions(atol=1e-14))
    >>> bool(torch.allclose(x_fft, x_lsqr, atol=1e-8))
    True
    """
    options = options or SolveOptions()
    if method != "auto" and method not in ROUTES:
        raise OptionError(
            f"conv_pinv: expected method in {_method_names()}, got {method!r}; 'auto' picks the cheapest provable one"
        )
    layer = ConvLayer(conv, input_size)
    z = layer.response(y)
    if method == "auto":
        route, reason = choose_route(layer, options)
    else:
        route = ROUTES[method]
        why_not = route.why_not(layer, options)
        if why_not is not None:
            raise RouteError(
                f"conv_pinv: method {method!r} does not apply to this layer: {why_not}; "
                "use method='lsqr' (any layer) or 'auto'"
            )
        not_pinv = route.pinv_reason(layer)
        reason = route.because if not_pinv is None else f"not A^+ on this layer: {not_pinv}"
    result = route.solve(layer, z, options)
    if not return_info:
        return result.x
    op = layer.op
    tiny = torch.finfo(z.dtype).tiny
    residual = (op.forward(result.x) - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1).clamp(min=tiny)
    pseudo_inverse = route.pinv_reason(layer) is None and result.converged
    note = f"; {result.note}" if result.note else ""
    info = SolveInfo(
        method=route.name,
        closed_form=route.closed_form,
        exact=result.exact,
        pseudo_inverse=pseudo_inverse,
        iterations=result.iterations,
        residual=float(residual.detach().max()),
        converged=result.converged,
        start=result.start,
        reason=reason + note,
        proof=result.proof if result.exact else "",
        solver=result.solver,
    )
    return result.x, info
