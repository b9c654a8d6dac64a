"""Activation sparsity: the fraction of exact zeros each layer outputs.

Shang et al. (2016) compare it for ReLU and CReLU; a CReLU output is at least half zeros by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from invertnet.capture.graph import layer_values

__all__ = ["activation_sparsity"]


def activation_sparsity(model: nn.Module, images: torch.Tensor, layers: Sequence[str]) -> dict[str, float]:
    """Fraction of entries exactly 0 in the output of each of ``layers`` on ``images``.

    ``layers`` are node, module or container names of any network (:func:`invertnet.capture.graph.capture`).

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), CReLU())
    >>> activation_sparsity(net, torch.rand(2, 3, 8, 8), ["1"])["1"] >= 0.5
    True
    """
    outputs = layer_values(model, images, layers)
    return {name: float((out == 0).double().mean()) for name, out in outputs.items()}
