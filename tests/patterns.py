"""Small definitions of the architecture patterns researchers bring (torchvision's shapes, our own code).

Used by the tests of the walk: what a chain walk cannot follow must be refused with the place named.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: one ReLU module used twice, an in-place skip addition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """A stem and one stage of two BasicBlocks, with torchvision's names (conv1, bn1, relu, maxpool, layer1)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(channels), BasicBlock(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))


class OutOfPlaceSkip(nn.Module):
    """A residual block written out of place: ``conv2(relu(conv1(x))) + x``."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x))) + x


class FunctionalBetween(nn.Module):
    """A functional operation between two modules."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class InPlaceBetween(nn.Module):
    """An in-place operation between two modules: the tensor object is the same, its values are not."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y.mul_(2)
        return self.b(y)


def trained_like(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics and put the model in eval mode, in float64."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = torch.randn(module.num_features, generator=generator) * 0.1
            module.running_var = torch.rand(module.num_features, generator=generator) + 0.5
    return model.double().eval()


def act(kind: str) -> nn.Module:
    """CReLU (injective variants) or ReLU (the lossy ones researchers train)."""
    from invertnet import CReLU

    return CReLU() if kind == "crelu" else nn.ReLU()


def _width(kind: str, channels: int) -> int:
    return 2 * channels if kind == "crelu" else channels


class ResBlock(nn.Module):
    """BasicBlock: one activation module used twice, an identity skip; contractive branch when ``scale`` < 1."""

    def __init__(self, channels: int, kind: str = "crelu", scale: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = act(kind)
        self.conv2 = nn.Conv2d(_width(kind, channels), channels, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv1.weight.mul_(scale)
            self.conv2.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act(self.conv1(x)))
        out = out + x
        return self.act(out)


class Bottleneck(nn.Module):
    """A bottleneck whose shortcut is a strided 1x1 projection: the join has no identity branch."""

    def __init__(self, c_in: int, c_out: int, kind: str = "crelu") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_out, 1)
        self.act = act(kind)
        self.conv = nn.Conv2d(_width(kind, c_out), c_out, 3, stride=2, padding=1)
        self.project = nn.Conv2d(c_in, c_out, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.reduce(x))) + self.project(x)


class Fire(nn.Module):
    """SqueezeNet's Fire: squeeze, then two expand branches concatenated."""

    def __init__(self, c_in: int, squeeze: int, expand: int, kind: str = "crelu") -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.squeeze_act = act(kind)
        self.expand1x1 = nn.Conv2d(_width(kind, squeeze), expand, 1)
        self.expand3x3 = nn.Conv2d(_width(kind, squeeze), expand, 3, padding=1)
        self.expand_act = act(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return self.expand_act(torch.cat([self.expand1x1(x), self.expand3x3(x)], 1))


class DenseLayer(nn.Module):
    """DenseNet: the input concatenated with new features."""

    def __init__(self, c_in: int, growth: int, kind: str = "crelu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1)
        self.act = act(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.act(self.conv(x))], 1)


class InvertedResidual(nn.Module):
    """MobileNetV2: expand 1x1, depthwise 3x3, project 1x1, identity skip (contractive when ``scale`` < 1)."""

    def __init__(self, channels: int, expand: int, kind: str = "crelu", scale: float = 0.3) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.act1 = act(kind) if kind == "crelu" else nn.ReLU6()
        self.depthwise = nn.Conv2d(
            _width(kind, hidden), _width(kind, hidden), 3, padding=1, groups=_width(kind, hidden)
        )
        self.act2 = act(kind) if kind == "crelu" else nn.ReLU6()
        self.project = nn.Conv2d(_width(kind, _width(kind, hidden)), channels, 1, bias=False)
        with torch.no_grad():
            for conv in (self.expand, self.depthwise, self.project):
                conv.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.depthwise(self.act1(self.expand(x)))))


class Stem(nn.Module):
    """An injective CReLU stem (more filters than a stride-1 window needs) followed by a pattern."""

    def __init__(self, body: nn.Module, c_in: int = 3, channels: int = 8, kind: str = "crelu") -> None:
        super().__init__()
        self.stem = nn.Conv2d(c_in, channels, 3, padding=1)
        self.stem_act = act(kind)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem_act(self.stem(x)))


class LinearHead(nn.Module):
    """Convolutions, then flatten and Linear layers (AlexNet/VGG classifier shape)."""

    def __init__(self, kind: str = "crelu", size: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 2, stride=2)  # square patch matrix on disjoint fields: exact
        self.act = act(kind)
        n = _width(kind, 12) * (size // 2) ** 2
        self.fc = nn.Linear(n, n + 8)
        self.fc_act = act(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_act(self.fc(torch.flatten(self.act(self.conv(x)), 1)))
