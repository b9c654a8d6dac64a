r"""Torchvision-shaped architectures in plain PyTorch: same module names, same state-dict keys.

Researchers bring torchvision models; ``torchvision`` itself may not import (its compiled operators
must match the installed torch). These compact definitions, written from the papers, reproduce
torchvision's module tree, so that a torchvision checkpoint loads into them with ``strict=True``,
and its forward patterns (the ones a graph walk has to follow), e.g. ResNet's reused ``relu``
module and in-place ``out += identity``, DenseNet's concatenations and its functional final ReLU.

========================= ============ =====================================================
builder                   parameters   pattern
========================= ============ =====================================================
:func:`alexnet`           61,100,840   chain, adaptive average pool, ``torch.flatten``, MLP
:func:`vgg16_bn`          138,365,992  chain of conv-BN-ReLU, five max-pools, MLP
:func:`resnet18`          11,689,512   residual additions, projection shortcuts
:func:`squeezenet1_0`     1,248,424    Fire modules: two branches concatenated
:func:`mobilenet_v2`      3,504,872    inverted residuals, depthwise convs, ReLU6
:func:`densenet121`       7,978,856    dense blocks: every layer sees the concatenation of all before
========================= ============ =====================================================

The counts are torchvision's published ones for ``num_classes=1000`` (checked in
``tests/test_architectures.py``). Activations are in place (``inplace=True``) where torchvision's
are, so hooks and graph captures see what they see on a torchvision model.

Initialisation: each builder leaves PyTorch's default ``reset_parameters`` (Kaiming-uniform with
``a = sqrt(5)`` for convolutions and linear layers, BatchNorm scale 1 and shift 0, running mean 0
and variance 1), drawn from the global random generator. Torchvision initialises differently
(He-normal for ResNet, VGG, MobileNetV2, DenseNet; :math:`\mathcal{N}(0, 0.01)` linear layers);
the model zoo (:data:`invertnet.zoo.models.MODELS`) re-draws the weights from a seed with the zoo's
He scaling (:func:`invertnet.zoo.models.gaussian_init_`), so ``build_model("resnet18", seed)`` is
reproducible. Trained weights are loaded over either.

Examples
--------
>>> import torch
>>> net = squeezenet1_0().eval()
>>> with torch.no_grad():
...     net(torch.zeros(1, 3, 64, 64)).shape
torch.Size([1, 1000])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "BasicBlock",
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "Fire",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "SqueezeNet",
    "VGGStyle",
    "alexnet",
    "densenet121",
    "mobilenet_v2",
    "resnet18",
    "squeezenet1_0",
    "vgg16_bn",
]


def _relu() -> nn.ReLU:
    return nn.ReLU(inplace=True)


class VGGStyle(nn.Module):
    """``features``, ``avgpool`` (adaptive, to ``pooled x pooled``), ``torch.flatten``, ``classifier``.

    The layout of torchvision's AlexNet and VGG (the same forward, different contents).
    """

    def __init__(self, features: nn.Sequential, pooled: int, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        out: torch.Tensor = self.classifier(x)
        return out


def alexnet(num_classes: int = 1000) -> nn.Module:
    """AlexNet in torchvision's one-tower variant (64, 192, 384, 256, 256 filters; no LRN).

    Five convolutions (11x11 stride 4, 5x5, three 3x3) with three 3x3/2 max-pools, a 6x6 adaptive
    average pool, then dropout-Linear(9216, 4096)-ReLU, dropout-Linear(4096, 4096)-ReLU,
    Linear(4096, ``num_classes``). Inputs of 63x63 and more.

    Parameters
    ----------
    num_classes : int
        Outputs of the last linear layer.

    Returns
    -------
    nn.Module
        PyTorch's default initialisation (see the module docstring), train mode.

    References
    ----------
    A. Krizhevsky, I. Sutskever, G. Hinton, "ImageNet classification with deep convolutional neural
    networks", NeurIPS 2012; A. Krizhevsky, "One weird trick for parallelizing convolutional neural
    networks", arXiv:1404.5997, 2014 (the single-tower widths).
    """
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        _relu(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        _relu(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        _relu(),
        nn.Conv2d(384, 256, 3, padding=1),
        _relu(),
        nn.Conv2d(256, 256, 3, padding=1),
        _relu(),
        nn.MaxPool2d(3, 2),
    )
    classifier = nn.Sequential(
        nn.Dropout(0.5),
        nn.Linear(256 * 6 * 6, 4096),
        _relu(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        _relu(),
        nn.Linear(4096, num_classes),
    )
    return VGGStyle(features, 6, classifier)


def vgg16_bn(num_classes: int = 1000) -> nn.Module:
    """VGG-16 (configuration D) with BatchNorm after every convolution.

    Thirteen 3x3 convolutions (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M; each
    conv-BN-ReLU, M a 2x2 max-pool), a 7x7 adaptive average pool, then Linear(25088, 4096)-ReLU-
    dropout, Linear(4096, 4096)-ReLU-dropout, Linear(4096, ``num_classes``). Inputs of 32x32 and
    more.

    Parameters
    ----------
    num_classes : int
        Outputs of the last linear layer.

    Returns
    -------
    nn.Module
        PyTorch's default initialisation (see the module docstring), train mode.

    References
    ----------
    K. Simonyan, A. Zisserman, "Very deep convolutional networks for large-scale image
    recognition", ICLR 2015 (Table 1, column D); S. Ioffe, C. Szegedy, "Batch normalization",
    ICML 2015.
    """
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0):
        if width == 0:
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), _relu()]
            channels = width
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        _relu(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        _relu(),
        nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )
    return VGGStyle(nn.Sequential(*layers), 7, classifier)


class BasicBlock(nn.Module):
    r"""ResNet's basic block: :math:`y = \mathrm{relu}(F(x) + s(x))`, :math:`F` = conv-BN-ReLU-conv-BN (3x3).

    ``s`` is the identity, or ``downsample`` (1x1 convolution with the block's stride, then
    BatchNorm) when the stride or the width changes. As in torchvision, one ``relu`` module serves
    both activations, and the shortcut is added in place (``out += identity``).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = _relu()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        result: torch.Tensor = self.relu(out)
        return result


class ResNet(nn.Module):
    """ResNet with basic blocks: stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages, pool, ``fc``.

    Stage ``k`` has ``blocks[k]`` basic blocks of width ``64 * 2**k``; stages 2-4 start with stride 2.
    """

    def __init__(self, blocks: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = _relu()
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        if len(blocks) != 4:
            raise ValueError(f"expected four stages of blocks, got {len(blocks)}: {tuple(blocks)}")
        self.layer1 = self._stage(64, 64, blocks[0], 1)
        self.layer2 = self._stage(64, 128, blocks[1], 2)
        self.layer3 = self._stage(128, 256, blocks[2], 2)
        self.layer4 = self._stage(256, 512, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def _stage(inplanes: int, planes: int, count: int, stride: int) -> nn.Sequential:
        """``count`` basic blocks; the first changes the width and applies the stride."""
        return nn.Sequential(
            BasicBlock(inplanes, planes, stride), *(BasicBlock(planes, planes) for _ in range(count - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        out: torch.Tensor = self.fc(x)
        return out


def resnet18(num_classes: int = 1000) -> nn.Module:
    """ResNet-18: two basic blocks in each of four stages (64, 128, 256, 512 channels).

    Designed for 224x224; runs on inputs of 8x8 and more.

    Parameters
    ----------
    num_classes : int
        Outputs of ``fc``.

    Returns
    -------
    nn.Module
        PyTorch's default initialisation (see the module docstring), train mode.

    References
    ----------
    K. He, X. Zhang, S. Ren, J. Sun, "Deep residual learning for image recognition", CVPR 2016
    (Table 1; projection shortcuts, option B, where the shape changes).
    """
    return ResNet((2, 2, 2, 2), num_classes)


class Fire(nn.Module):
    """SqueezeNet's Fire module: 1x1 ``squeeze``, then 1x1 and 3x3 ``expand`` branches, concatenated.

    Each convolution is followed by a ReLU (``squeeze_activation``, ``expand1x1_activation``,
    ``expand3x3_activation``); the output has ``expand1x1 + expand3x3`` channels.
    """

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.squeeze_activation = _relu()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = _relu()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = _relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet(nn.Module):
    """``features`` (stem and Fire modules), ``classifier`` (dropout, 1x1 conv, ReLU, global pool), flatten."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(channels, num_classes, 1), _relu(), nn.AdaptiveAvgPool2d((1, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


def squeezenet1_0(num_classes: int = 1000) -> nn.Module:
    """SqueezeNet 1.0: 7x7/2 conv (96), max-pools (3x3/2, ceil mode) after conv1, fire4, fire8.

    Fire modules fire2-fire9 with squeeze/expand widths 16/64, 16/64, 32/128, 32/128, 48/192,
    48/192, 64/256, 64/256 (both expand branches of the same width); the classifier is a 1x1
    convolution to ``num_classes``, ReLU and global average pooling. Inputs of 21x21 and more.

    Parameters
    ----------
    num_classes : int
        Outputs of the final 1x1 convolution.

    Returns
    -------
    nn.Module
        PyTorch's default initialisation (see the module docstring), train mode.

    References
    ----------
    F. Iandola, S. Han, M. Moskewicz, K. Ashraf, W. Dally, K. Keutzer, "SqueezeNet: AlexNet-level
    accuracy with 50x fewer parameters and <0.5MB model size", arXiv:1602.07360, 2016 (Table 1).
    """
    features = nn.Sequential(
        nn.Conv2d(3, 96, 7, stride=2),
        _relu(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(96, 16, 64, 64),
        Fire(128, 16, 64, 64),
        Fire(128, 32, 128, 128),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 32, 128, 128),
        Fire(256, 48, 192, 192),
        Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(512, 64, 256, 256),
    )
    return SqueezeNet(features, 512, num_classes)


def _conv_bn_relu6(inplanes: int, planes: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias, "same" padding), BatchNorm, ReLU6: indices 0, 1, 2."""
    return nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (omitted for ``expand_ratio`` 1), 3x3 depthwise, linear 1x1 projection.

    ``conv`` holds ``[expand,] depthwise, project conv, project BN`` (the first two as
    conv-BN-ReLU6 triples); ``y = x + conv(x)`` when the stride is 1 and the width is kept,
    ``y = conv(x)`` otherwise.
    """

    def __init__(self, inplanes: int, planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inplanes * expand_ratio
        self.use_res_connect = stride == 1 and inplanes == planes
        layers: list[nn.Module] = [] if expand_ratio == 1 else [_conv_bn_relu6(inplanes, hidden, kernel=1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """``features`` (stem, 17 inverted residuals, 1x1 conv to 1280), functional global pool, ``classifier``."""

    #: (expansion t, width c, repeats n, first stride s), Sandler et al. 2018, Table 2.
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        channels = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(_conv_bn_relu6(channels, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        out: torch.Tensor = self.classifier(x)
        return out


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 with width multiplier 1: inverted residuals with linear bottlenecks and ReLU6.

    Designed for 224x224 (five stride-2 stages); runs on inputs of 8x8 and more. The trained
    ImageNet features shipped with invertnet load with :func:`invertnet.zoo.models.trained_mobilenet_v2`.

    Parameters
    ----------
    num_classes : int
        Outputs of ``classifier.1``.

    Returns
    -------
    nn.Module
        PyTorch's default initialisation (see the module docstring), train mode.

    References
    ----------
    M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: inverted residuals and
    linear bottlenecks", CVPR 2018 (Tables 1-2).
    """
    return MobileNetV2(num_classes)


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 conv (``bn_size * growth`` filters), BN-ReLU-3x3 conv (``growth``).

    Its input is the list of all earlier feature maps of the block, concatenated on channels.
    """

    def __init__(self, inplanes: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(inplanes)
        self.relu1 = _relu()
        self.conv1 = nn.Conv2d(inplanes, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = _relu()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(inputs, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        out: torch.Tensor = self.conv2(self.relu2(self.norm2(x)))
        return out


class DenseBlock(nn.ModuleDict):
    """``denselayer1`` ... ``denselayerN``; layer ``k`` sees the block input and the outputs of layers ``1..k-1``.

    Returns the concatenation of the block input and every layer's output.
    """

    def __init__(self, layers: int, inplanes: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for k in range(layers):
            self[f"denselayer{k + 1}"] = DenseLayer(inplanes + k * growth, growth, bn_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """``features`` (stem, dense blocks and transitions, ``norm5``), functional ReLU and pool, ``classifier``."""

    def __init__(
        self, blocks: Sequence[int], growth: int = 32, stem: int = 64, bn_size: int = 4, num_classes: int = 1000
    ) -> None:
        super().__init__()
        parts: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(stem),
            relu0=_relu(),
            pool0=nn.MaxPool2d(3, 2, padding=1),
        )
        channels = stem
        for k, layers in enumerate(blocks, start=1):
            parts[f"denseblock{k}"] = DenseBlock(layers, channels, growth, bn_size)
            channels += layers * growth
            if k < len(blocks):  # transition: BN, ReLU, 1x1 conv halving the channels, 2x2 average pool
                parts[f"transition{k}"] = nn.Sequential(
                    OrderedDict(
                        norm=nn.BatchNorm2d(channels),
                        relu=_relu(),
                        conv=nn.Conv2d(channels, channels // 2, 1, bias=False),
                        pool=nn.AvgPool2d(2, 2),
                    )
                )
                channels //= 2
        parts["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(parts)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.relu(x, inplace=True)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        out: torch.Tensor = self.classifier(x)
        return out


def densenet121(num_classes: int = 1000) -> nn.Module:
    """DenseNet-121 (DenseNet-BC): growth 32, blocks of 6, 12, 24, 16 layers, 64-channel stem, compression 0.5.

    Inputs of 29x29 and more.

    Parameters
    ----------
    num_classes : int
        Outputs of ``classifier``.

    Returns
    -------
    nn.Module
        PyTorch's default initialisation (see the module docstring), train mode.

    References
    ----------
    G. Huang, Z. Liu, L. van der Maaten, K. Weinberger, "Densely connected convolutional networks",
    CVPR 2017 (Table 1).
    """
    return DenseNet((6, 12, 24, 16), num_classes=num_classes)


#: Builders by torchvision's names.
ARCHITECTURES = {
    "alexnet": alexnet,
    "vgg16_bn": vgg16_bn,
    "resnet18": resnet18,
    "squeezenet1_0": squeezenet1_0,
    "mobilenet_v2": mobilenet_v2,
    "densenet121": densenet121,
}
