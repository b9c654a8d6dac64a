r"""What each ReLU layer keeps: its active set, whether that determines the input, and what each reading recovers.

A ReLU output :math:`h = \max(0, W x + b)` says more than its positive part: every positive entry is an equation
on the input and every zero an inequality (:mod:`invertnet.activeset`). Per layer and image this module measures

- the **active share**: the fraction of the layer's outputs that are equations (strictly inside the clip levels);
- the **certificate**: whether those equations determine the layer's input
  (:func:`~invertnet.activeset.certify`: count, patch, dense rank or Lanczos), i.e. whether the layer is exactly
  invertible on this image;
- the **recovered PSNR** of the reconstruction from that layer by three readings:
  the active set (``relu="active_set"``), the identity (``relu="identity"``, the paper's ReLU baseline), and the
  **CReLU twin** of the network (:func:`crelu_twin`: every ReLU after a convolution replaced by CReLU on half its
  filters, the paper's "half" models, which keep the output width and invert exactly).

Example
-------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()).double().eval()
>>> rows = layer_information(net, torch.rand(1, 1, 12, 12, dtype=torch.float64), ["1"])
>>> rows[0].determined, rows[0].psnr_active_set > rows[0].psnr_identity
(1, True)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from invertnet.activeset import activation_constraints, certify, clip_levels
from invertnet.capture.graph import Graph, capture
from invertnet.errors import ModelError, UnsupportedLayerError
from invertnet.nn.activations import CReLU
from invertnet.operators import ConvOperator, LinearOperator, MatrixOperator
from invertnet.reconstruction.api import reconstruct

__all__ = ["LayerInformation", "crelu_twin", "format_information", "layer_information"]

_CLIPS = (nn.ReLU, nn.Hardtanh)  # ReLU6 is a Hardtanh
_CARRIERS = (nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d)


@dataclass(frozen=True)
class LayerInformation:
    """What one layer keeps, over a batch of images.

    Attributes
    ----------
    layer : str
        The layer (its output is a clipping activation's).
    images : int
    active_share : float
        Mean share of the activation's outputs that are equations (strictly inside the clip levels).
    determined : int
        Images whose equations determine the layer's input (certificate ``True``).
    undecided : int
        Images for which no certificate could decide.
    certificate : str
        The first image's certificate, in one sentence.
    psnr_active_set, psnr_identity, psnr_twin : float
        Mean PSNR (dB) of the layer-by-layer reconstruction from ``layer`` by each reading (``nan`` without a
        twin).
    seconds_active_set, seconds_identity, seconds_twin : float
        Time of each reconstruction (all images).
    psnr_default, seconds_default : float
        The default (``method="auto"``: exact steps, then the completion) from ``layer``: the best answer the
        package computes, beside what each reading keeps on its own.
    """

    layer: str
    images: int
    active_share: float
    determined: int
    undecided: int
    certificate: str
    psnr_active_set: float
    psnr_identity: float
    psnr_twin: float
    seconds_active_set: float
    seconds_identity: float
    seconds_twin: float
    psnr_default: float = math.nan
    seconds_default: float = math.nan


def _halve_conv(conv: nn.Conv2d, where: str) -> nn.Conv2d:
    if conv.groups != 1 or conv.out_channels % 2:
        raise ModelError(
            f"crelu_twin: expected Conv2d {where!r} with groups=1 and an even number of filters, got groups="
            f"{conv.groups} and {conv.out_channels} filters; the twin keeps half the filters of plain convolutions"
        )
    half = conv.out_channels // 2
    twin = nn.Conv2d(
        conv.in_channels,
        half,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        twin.weight.copy_(conv.weight[:half])
        if conv.bias is not None and twin.bias is not None:
            twin.bias.copy_(conv.bias[:half])
    return twin


def _halve_batchnorm(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    half = bn.num_features // 2
    twin = nn.BatchNorm2d(
        half, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.weight.device, bn.weight.dtype
    )
    state = {k: (v[:half] if v.ndim else v) for k, v in bn.state_dict().items()}
    twin.load_state_dict(state)
    return twin.train(bn.training)


def crelu_twin(model: nn.Module) -> nn.Module:
    """The CReLU twin of a ReLU network: each ``Conv2d [-> BatchNorm2d] -> ReLU`` keeps its first half of filters.

    CReLU doubles them back, so every layer keeps its output width and the next layer is unchanged (the paper's
    "half" models, Shang et al. 2016, Sec. 4). The twin shares the kept filters with ``model`` (a deep copy). The
    pattern is looked for among the children of every ``nn.Sequential``.

    Raises
    ------
    ModelError
        When no such pattern exists, or a convolution before a ReLU is grouped or has an odd number of filters.

    Examples
    --------
    >>> from torch import nn
    >>> twin = crelu_twin(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    >>> [type(m).__name__ for m in twin], twin[0].out_channels
    (['Conv2d', 'CReLU', 'Conv2d'], 4)
    """
    twin = copy.deepcopy(model)
    replaced = 0
    for where, container in twin.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for i, name in enumerate(names):
            module = container._modules[name]
            if not (isinstance(module, nn.ReLU) and i > 0):
                continue
            below = [names[i - 1]]
            if isinstance(container._modules[below[0]], nn.BatchNorm2d) and i > 1:
                below.insert(0, names[i - 2])
            conv = container._modules[below[0]]
            if not isinstance(conv, nn.Conv2d):
                continue
            prefix = f"{where}." if where else ""
            container._modules[below[0]] = _halve_conv(conv, prefix + below[0])
            if len(below) == 2:
                bn = container._modules[below[1]]
                if isinstance(bn, nn.BatchNorm2d):
                    container._modules[below[1]] = _halve_batchnorm(bn)
            container._modules[name] = CReLU()
            replaced += 1
    if not replaced:
        raise ModelError(
            "crelu_twin: expected Conv2d [-> BatchNorm2d] -> ReLU inside an nn.Sequential, found none; the twin "
            "replaces such ReLUs by CReLU on half the filters"
        )
    return twin


def _solving_operator(graph: Graph) -> tuple[nn.Module, LinearOperator, torch.Tensor]:
    """The clipping activation at the graph's target, the operator of the layer that solves it, and its output."""
    node = graph.nodes[graph.target]
    if not isinstance(node.module, _CLIPS):
        raise UnsupportedLayerError(
            f"layer_information: expected a layer whose output is a ReLU, ReLU6 or Hardtanh, got {node.label!r} "
            f"({type(node.module).__name__ if node.module is not None else node.target}); pass the activation's "
            "layer (a zoo model's 'convK')"
        )
    activation = node.module
    below = graph.nodes[node.parents[0]]
    while isinstance(below.module, _CARRIERS):
        below = graph.nodes[below.parents[0]]
    layer, source = below.module, graph.nodes[below.parents[0]].tensor
    if isinstance(layer, nn.Conv2d):
        op: LinearOperator = ConvOperator.from_conv(layer, (source.shape[-2], source.shape[-1]))
    elif isinstance(layer, nn.Linear) and source.ndim == 2:
        op = MatrixOperator.from_linear(layer)
    else:
        raise UnsupportedLayerError(
            f"layer_information: expected a Conv2d or Linear below {node.label!r} (through BatchNorm2d), got "
            f"{below.label!r}"
        )
    return activation, op, node.tensor


def _timed(
    model: nn.Module, images: torch.Tensor, layer: str, method: str, relu: str, data_range: float
) -> tuple[float, float]:
    """Mean PSNR of the reconstruction from ``layer``, and its seconds."""
    start = time.perf_counter()
    psnr = reconstruct(model, images, layer, method, relu=relu, data_range=data_range).psnr
    return float(psnr.mean()), time.perf_counter() - start


def layer_information(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    *,
    twin: nn.Module | None = None,
    method: str = "layers",
    data_range: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> list[LayerInformation]:
    r"""Per layer, what its ReLU keeps of ``images`` (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        In eval mode; use ``model.double()`` for exact figures.
    images : torch.Tensor
        ``(N, C, H, W)``.
    layers : sequence of str
        Layers whose output is a ReLU, ReLU6 or Hardtanh (a zoo model's ``"convK"``).
    twin : nn.Module, optional
        The CReLU twin to compare with (e.g. ``crelu_twin(model)``); ``None`` leaves its columns ``nan``.
    method : str, default "layers"
        The layer-by-layer method of the readings (``"layers"`` or a convolution route); the default's column is
        always ``"auto"``.
    data_range : float, default 1.0
        For PSNR.
    progress : callable, optional
        Called with one line per layer.

    Returns
    -------
    list of LayerInformation
        One per layer, in the order given.
    """
    rows = []
    for layer in layers:
        graph = capture(model, images, layer)
        activation, op, h = _solving_operator(graph)
        lower, upper = clip_levels(activation)
        known = activation_constraints(h.detach(), lower, upper).known
        certificates = certify(op, known)
        psnr_set, seconds_set = _timed(model, images, layer, method, "active_set", data_range)
        psnr_id, seconds_id = _timed(model, images, layer, method, "identity", data_range)
        psnr_twin, seconds_twin = (
            _timed(twin, images, layer, method, "active_set", data_range) if twin is not None else (math.nan, math.nan)
        )
        psnr_default, seconds_default = _timed(model, images, layer, "auto", "active_set", data_range)
        row = LayerInformation(
            layer=layer,
            images=images.shape[0],
            active_share=float(known.flatten(1).double().mean()),
            determined=sum(c.determined is True for c in certificates),
            undecided=sum(c.determined is None for c in certificates),
            certificate=certificates[0].reason,
            psnr_active_set=psnr_set,
            psnr_identity=psnr_id,
            psnr_twin=psnr_twin,
            seconds_active_set=seconds_set,
            seconds_identity=seconds_id,
            seconds_twin=seconds_twin,
            psnr_default=psnr_default,
            seconds_default=seconds_default,
        )
        rows.append(row)
        if progress is not None:
            progress(
                f"{layer}: active {row.active_share:.1%}, determined {row.determined}/{row.images}, PSNR active set "
                f"{psnr_set:.2f} dB, identity {psnr_id:.2f} dB, twin {psnr_twin:.2f} dB, default {psnr_default:.2f} dB"
            )
    return rows


def format_information(rows: Sequence[LayerInformation]) -> str:
    """The rows as a plain-text table: PSNR (dB) and seconds of each layer-by-layer reading, then the default."""
    head = (
        f"{'layer':<10} {'active':>7} {'determined':>10}   {'active set':>15} {'identity':>15} {'CReLU twin':>15} "
        f"{'default':>15}"
    )
    lines = [head]
    for r in rows:
        cells = [
            f"{p:6.2f} dB {s:5.1f} s"
            for p, s in (
                (r.psnr_active_set, r.seconds_active_set),
                (r.psnr_identity, r.seconds_identity),
                (r.psnr_twin, r.seconds_twin),
                (r.psnr_default, r.seconds_default),
            )
        ]
        share = f"{r.determined}/{r.images}"
        lines.append(f"{r.layer:<10} {r.active_share:>7.1%} {share:>10}   " + " ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)
