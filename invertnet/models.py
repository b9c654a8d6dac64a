r"""The paper's architectures, with layers named ``conv1`` ... ``convN``.

Each ``convK`` is a block ``nn.Sequential(conv=Conv2d, act=activation)``; reconstructing "from
conv3" inverts the block's output (the activation), as in the paper's Fig. 5. With CReLU on a
layer the next convolution sees twice as many input channels and keeps its number of filters
(the paper's "CReLU (conv1-4)" models, Shang et al. 2016, Table 4).

- :func:`all_cnn_b`: All-CNN-B for ImageNet (Springenberg et al. 2014, Table 6): 12 convolutions,
  strides 4, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 1; kernels 11, 1, 3, 5, 1, 3, 3, 1, 3, 3, 1, 1. The
  paper gives no padding: we pad ``k // 2`` for ``k > 1`` except conv1 (unpadded, 54x54 output at
  224x224). ReLU: 9,372,840 parameters (the paper: 9.37M); CReLU on conv1-4: 10,144,936 (10.14M).
- :func:`convpool_cnn_c`: ConvPool-CNN-C for CIFAR (Springenberg et al. 2014, Table 2): 3x3
  convolutions 96, 96, 96, max-pool 3/2, 192, 192, 192, max-pool 3/2, 3x3 192 (unpadded),
  1x1 192, 1x1 classes, global average. Padding 1 and pool padding 1 give the 6x6 map the
  original reports before the global average.

Filters are Gaussian from a seed (He scaling, :math:`\mathcal{N}(0, 2 / \text{fan-in})`, zero
bias) unless weights are loaded (:func:`invertnet.io.load_weights`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from invertnet.activations import CReLU

__all__ = ["MODELS", "ModelSpec", "all_cnn_b", "build_model", "convpool_cnn_c", "gaussian_init_"]


def _activation(name: str) -> nn.Module:
    return {"crelu": CReLU, "relu": nn.ReLU}[name]()


def _block(conv: nn.Conv2d, activation: str | None) -> nn.Sequential:
    parts: OrderedDict[str, nn.Module] = OrderedDict(conv=conv)
    if activation is not None:
        parts["act"] = _activation(activation)
    return nn.Sequential(parts)


def gaussian_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every conv weight with He-scaled Gaussian noise from ``seed`` and zero the biases (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                noise = torch.randn(module.weight.shape, generator=generator, dtype=torch.float64)
                module.weight.copy_(noise * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def _stack(
    rows: Sequence[tuple[int, int, int, int]],
    activation: str,
    crelu_layers: Sequence[int],
    pools: dict[int, nn.Module],
    seed: int,
) -> nn.Sequential:
    """A chain of blocks ``convK`` from (filters, kernel, stride, padding) rows, then global average pooling.

    CReLU on ``crelu_layers`` (doubling the next layer's input), ``activation`` elsewhere; Gaussian
    filters from ``seed``.
    """
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    channels = 3
    for k, (filters, kernel, stride, padding) in enumerate(rows, start=1):
        act = "crelu" if k in crelu_layers else activation
        parts[f"conv{k}"] = _block(nn.Conv2d(channels, filters, kernel, stride, padding), act)
        channels = 2 * filters if act == "crelu" else filters
        if k in pools:
            parts[f"pool{k}"] = pools[k]
    parts.update(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())
    return gaussian_init_(nn.Sequential(parts), seed)


def all_cnn_b(
    activation: str = "relu", crelu_layers: Sequence[int] = (1, 2, 3, 4), num_classes: int = 1000, seed: int = 0
) -> nn.Sequential:
    """All-CNN-B (ImageNet) with CReLU on ``crelu_layers`` and ``activation`` elsewhere.

    Examples
    --------
    >>> model = all_cnn_b()
    >>> sum(p.numel() for p in model.parameters())
    10144936
    """
    rows = [
        (96, 11, 4, 0),
        (96, 1, 1, 0),
        (96, 3, 2, 1),
        (256, 5, 1, 2),
        (256, 1, 1, 0),
        (256, 3, 2, 1),
        (384, 3, 1, 1),
        (384, 1, 1, 0),
        (384, 3, 2, 1),
        (1024, 3, 1, 1),
        (1024, 1, 1, 0),
        (num_classes, 1, 1, 0),
    ]
    return _stack(rows, activation, crelu_layers, {9: nn.Dropout(0.5)}, seed)


def convpool_cnn_c(
    activation: str = "relu",
    crelu_layers: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
    num_classes: int = 10,
    seed: int = 0,
) -> nn.Sequential:
    """ConvPool-CNN-C (CIFAR) with CReLU on ``crelu_layers`` (all but the classifier by default).

    Examples
    --------
    >>> model = convpool_cnn_c(crelu_layers=())
    >>> sum(p.numel() for p in model.parameters())
    1369738
    """
    rows = [
        (96, 3, 1, 1),
        (96, 3, 1, 1),
        (96, 3, 1, 1),
        (192, 3, 1, 1),
        (192, 3, 1, 1),
        (192, 3, 1, 1),
        (192, 3, 1, 0),
        (192, 1, 1, 0),
        (num_classes, 1, 1, 0),
    ]
    return _stack(
        rows, activation, crelu_layers, {3: nn.MaxPool2d(3, 2, padding=1), 6: nn.MaxPool2d(3, 2, padding=1)}, seed
    )


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: its builder, default input size, and the layers of the paper's reconstruction figure."""

    build: Callable[[int], nn.Module]
    input_size: int
    figure_layers: tuple[str, ...]
    description: str


MODELS: dict[str, ModelSpec] = {
    "all-cnn-b-crelu": ModelSpec(
        lambda seed: all_cnn_b(seed=seed),
        224,
        ("conv1", "conv2", "conv3", "conv4"),
        "All-CNN-B (ImageNet), CReLU on conv1-4, ReLU above (Shang et al. 2016, Fig. 5)",
    ),
    "convpool-cnn-c-crelu": ModelSpec(
        lambda seed: convpool_cnn_c(seed=seed),
        32,
        ("conv1", "conv2", "conv3", "conv4"),
        "ConvPool-CNN-C (CIFAR-10), CReLU on conv1-8",
    ),
}


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A built-in model by name (see :data:`MODELS`), in eval mode, with Gaussian filters from ``seed``."""
    if name not in MODELS:
        raise ValueError(f"expected a model name in {sorted(MODELS)}, got {name!r}")
    return MODELS[name].build(seed).eval()
