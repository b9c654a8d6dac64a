r"""Which layers of a model can be inverted at all: dimension counts, certificates and singular values.

A layer can only be undone where its operator :math:`A` is injective on the inputs it can receive, and how
stably is told by its smallest singular value, :math:`\|A^+(y - y')\| \le \|y - y'\| / \sigma_{\min}`.

:func:`injectivity_report` gives, per convolution and pooling layer of a chain: the input and output
dimensions, the dimension count that already rules inversion out (behind a CReLU input the unknowns are the
``C/2`` pre-activation channels, not ``C``), :math:`\sigma_{\min}`, :math:`\sigma_{\max}`, the condition
number and a verdict (:mod:`invertnet.spectrum` computes the singular values).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from invertnet._checks import pair
from invertnet.activations import CReLU
from invertnet.errors import UnsupportedLayerError
from invertnet.operators import ConvOperator
from invertnet.pinv import ConvLayer
from invertnet.pinv.lsqr import injectivity_certificate
from invertnet.spectral import circulant_reason, circulant_singular_values
from invertnet.spectrum import (
    DENSE_SPECTRUM_ENTRIES,
    cholesky_pays,
    dense_singular_values,
    sigma_max,
    sigma_min,
    sigma_min_cholesky,
)
from invertnet.trace import LayerRecord, require_module, trace

__all__ = ["VERDICTS", "LayerSpectrum", "injectivity_report", "ruled_out_by_count", "unknowns"]

VERDICTS = (
    "injective",
    "numerically singular",
    "not injective (dimension count)",
    "not injective as a linear map (count passes on CReLU inputs only)",
    "not injective (pooling)",
    "not injective (pixels no filter reads)",
)


@dataclass(frozen=True)
class LayerSpectrum:
    r"""Injectivity report of one layer.

    Attributes
    ----------
    name, kind : str
    in_shape, out_shape : tuple of int
    in_dim, out_dim : int
        Unknowns and responses of the linear map.
    unknowns : int
        Degrees of freedom of the possible inputs: ``in_dim / 2`` behind a CReLU, else ``in_dim``.
    sigma_max, sigma_min, condition : float
        Of the linear map (``nan`` for max-pooling, which is not linear).
    exact : bool
        Whether the singular values are exact (DFT or dense) rather than iterative estimates.
    converged : bool
        Whether the iterative estimate of ``sigma_min`` converged.
    verdict : str
        One of :data:`VERDICTS`.
    singular_values : torch.Tensor or None
        The whole spectrum where it is exact (DFT of circular layers, the dense matrix of small ones),
        else the circulant approximation on the same grid (for plots) when the stride divides the
        input; ``None`` otherwise.
    method : str
        How the singular values were computed: ``"dft"``, ``"dense"``, ``"lanczos"`` (one run for
        :math:`\sigma_{\max}`, one on :math:`c I - A^T A` for :math:`\sigma_{\min}`, which keeps a null space;
        :func:`invertnet.spectrum.sigma_min`), ``"lanczos, certified"`` (a window or patch certificate proves
        the layer injective, so the second run is on :math:`A^T A`), ``"lanczos max"`` (:math:`\sigma_{\min}
        = 0` by counting or unread pixels; Lanczos for :math:`\sigma_{\max}` only), ``"cholesky"`` (Lanczos for
        :math:`\sigma_{\max}`, then on :math:`(A^T A)^{-1}` through the Cholesky factor of the Gram matrix for
        :math:`\sigma_{\min}`, where :func:`invertnet.spectrum.cholesky_pays`; a singular Gram matrix falls back
        to ``"lanczos"``) or ``"none"`` (max-pooling).
    """

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_dim: int
    out_dim: int
    unknowns: int
    sigma_max: float
    sigma_min: float
    condition: float
    exact: bool
    converged: bool
    verdict: str
    singular_values: torch.Tensor | None
    method: str = ""


def unknowns(record: LayerRecord, previous: LayerRecord | None) -> int:
    """Degrees of freedom of a layer's possible inputs: half the entries behind a CReLU, else all."""
    size = record.input[0].numel()
    return size // 2 if previous is not None and isinstance(previous.module, CReLU) else size


def ruled_out_by_count(records: list[LayerRecord]) -> str | None:
    """The first layer of a chain with fewer responses than unknowns (its features have many preimages)."""
    for i, record in enumerate(records):
        linear_or_pool = isinstance(record.module, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d))
        if linear_or_pool and math.prod(record.output_shape) < unknowns(record, records[i - 1] if i else None):
            return record.name
    return None


def _linear_operator(record: LayerRecord) -> ConvOperator | None:
    module, size = record.module, pair(tuple(record.input.shape[-2:]), "input size")
    if isinstance(module, nn.Conv2d):
        return ConvOperator.from_conv(module, size)
    if isinstance(module, nn.AvgPool2d):
        return ConvOperator.from_pool(module, record.input.shape[1], size, record.input.double())
    return None


def _layer_spectrum(record: LayerRecord, previous: LayerRecord | None, rtol: float) -> LayerSpectrum:
    in_shape, out_shape = tuple(record.input.shape[1:]), record.output_shape
    in_dim, out_dim = math.prod(in_shape), math.prod(out_shape)
    free = unknowns(record, previous)
    common = partial(
        LayerSpectrum,
        name=record.name,
        kind=type(record.module).__name__,
        in_shape=in_shape,
        out_shape=out_shape,
        in_dim=in_dim,
        out_dim=out_dim,
        unknowns=free,
    )
    op = _linear_operator(record)
    if op is None:  # max-pooling: not linear; only the count speaks
        return common(
            sigma_max=math.nan,
            sigma_min=math.nan,
            condition=math.nan,
            exact=True,
            converged=True,
            verdict="not injective (pooling)",
            singular_values=None,
            method="none",
        )
    op = ConvOperator(op.weight.double(), op.input_size, op.stride, op.pad.pads, op.dilation, op.groups, op.pad.mode)
    values: torch.Tensor | None = None
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    like = torch.zeros((), dtype=torch.float64)
    unread = bool((op.coverage() == 0).any())
    exact, converged, method = True, True, ""
    if h % sh == 0 and w % sw == 0 and circulant_reason(op) is None:
        method = "dft"
        values = circulant_singular_values(op, like)
    elif out_dim * in_dim <= DENSE_SPECTRUM_ENTRIES:
        method = "dense"
        values = dense_singular_values(op)
    if values is not None:
        s_max = float(values[0])
        s_min = float(values[-1]) if out_dim >= in_dim and not unread else 0.0
    else:
        exact = False
        s_max = sigma_max(op)
        if out_dim < in_dim or unread:
            method, s_min = "lanczos max", 0.0
        elif (by_cholesky := sigma_min_cholesky(op) if cholesky_pays(op) else None) is not None:
            method, s_min = "cholesky", by_cholesky
        else:
            certified = injectivity_certificate(ConvLayer(op, (h, w)), like) is not None
            method = "lanczos, certified" if certified else "lanczos"
            s_min, converged = sigma_min(op, largest=s_max, injective=certified)
        if h % sh == 0 and w % sw == 0:
            values = circulant_singular_values(op, like)  # the circulant approximation, for plots
    if out_dim < free:
        verdict = "not injective (dimension count)"
    elif out_dim < in_dim:
        verdict = "not injective as a linear map (count passes on CReLU inputs only)"
    elif unread:
        verdict = "not injective (pixels no filter reads)"
    elif s_min <= rtol * s_max:
        verdict = "numerically singular"
    else:
        verdict = "injective"
    condition = s_max / s_min if s_min > 0 else math.inf
    return common(
        sigma_max=s_max,
        sigma_min=s_min,
        condition=condition,
        exact=exact,
        converged=converged,
        verdict=verdict,
        singular_values=values,
        method=method,
    )


def injectivity_report(
    model: nn.Module,
    input_size: tuple[int, int],
    layer: str | None = None,
    *,
    rtol: float = 1e-6,
    progress: Callable[[str], None] | None = None,
) -> list[LayerSpectrum]:
    r"""The injectivity of every convolution and pooling layer of ``model`` up to ``layer``.

    Parameters
    ----------
    model : nn.Module
        A chain of named modules (as for :func:`invertnet.reconstruct`).
    input_size : (int, int)
        Spatial size of the input (the number of channels is read from the first convolution).
    layer : str, optional
        Stop at this layer; default: the last convolution or pooling layer.
    rtol : float, default 1e-6
        A layer is "numerically singular" when :math:`\sigma_{\min} \le` ``rtol`` :math:`\sigma_{\max}`. Lanczos
        estimates of :math:`\sigma_{\min}` are accurate to about :math:`10^{-7} \sigma_{\max}` in absolute terms,
        so a smaller ``rtol`` cannot be told apart for layers without an exact (DFT) spectrum.
    progress : callable, optional
        Called with a line before each layer's singular values are computed (Lanczos can take seconds) and
        with one after, saying how (:attr:`LayerSpectrum.method`) and in how many seconds.

    Returns
    -------
    list of LayerSpectrum

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU(), torch.nn.Conv2d(24, 10, 1))
    >>> [r.verdict for r in injectivity_report(net, (8, 8))]
    ['injective', 'not injective (dimension count)']
    """
    model = require_module(model)
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]
    if not named:
        raise UnsupportedLayerError(
            f"injectivity_report: expected a model with Conv2d or pooling layers, got {type(model).__name__} "
            "without any; the report covers convolution and pooling layers only"
        )
    first_conv = next((m for _, m in named if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float64
    image = torch.zeros(1, channels, *input_size, dtype=dtype)
    records = trace(model, image, layer or named[-1][0]).records
    report = []
    for i, record in enumerate(records):
        if isinstance(record.module, kinds):
            if progress is not None:
                progress(f"{record.name}: {type(record.module).__name__} on {tuple(record.input.shape[1:])}")
            start = time.perf_counter()
            report.append(_layer_spectrum(record, records[i - 1] if i else None, rtol))
            if progress is not None:
                progress(f"{record.name}: {report[-1].method}, {time.perf_counter() - start:.1f} s")
    return report
