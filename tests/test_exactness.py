"""'exact' is checked on every path: every inverse and route, on a battery of small networks (in-place ops too).

A result (and a step) marked ``exact`` must return the input up to rounding. The battery reconstructs from every
node of each network with every method and both readings of ReLU; a route or a layer may refuse (it says why),
but whatever it returns as exact must be within rounding of the truth. The battery must also reach every
registered layer inverse and every route, so a new one cannot slip past it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from patterns import ResBlock, Stem
from torch import nn

from invertnet import (
    AVR,
    CONV_METHODS,
    RECONSTRUCTION_METHODS,
    CReLU,
    InvertnetError,
    Proportional,
    reconstruct,
    supported_layers,
)
from invertnet.capture.graph import graph_layers
from invertnet.reconstruction.joint import JointOptions

#: float64, order-one images: rounding, amplified by the condition numbers of these small layers (LSQR stops at
#: atol 1e-10 of the response; the largest error of an exact result or step in the battery is 1.1e-11, a ReLU
#: layer solved through its active set).
EXACT = 1e-8
SIZE = 6
#: The layer-by-layer walk ("layers" where the default completes what the walk leaves, else the default), and the
#: convolution routes.
WALK = "layers" if "layers" in RECONSTRUCTION_METHODS else "auto"
ROUTES = [m for m in CONV_METHODS if m != "auto"]


class InPlace(nn.Module):
    """Every spelling of an in-place op after a conv: methods, operators, torch.*_, F.*(inplace=True), modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.act = CReLU()
        self.conv2 = nn.Conv2d(24, 24, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(24, 24, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h.mul_(2.0)
        h.add_(0.5)
        h += 0.25
        h = self.act(h)
        g = self.conv2(h)
        g.sub_(0.1)
        g.div_(1.5)
        self.relu(g)  # the result unused: g itself changed
        g = self.conv3(g)
        F.leaky_relu(g, 0.1, inplace=True)
        torch.tanh_(g)
        return g


class Functional(nn.Module):
    """Functional forms and shape changes: F.conv2d, permute, transpose, view, cat, arithmetic with constants."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(12, 3, 3, 3) / 3)
        self.act = CReLU()
        self.conv = nn.Conv2d(24, 24, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.act(F.conv2d(x, self.weight, padding=1)))
        h = h.permute(0, 2, 3, 1).contiguous().transpose(1, 2)
        h = (1.0 - h.reshape(h.shape[0], -1) * 2.0) / 3.0
        h = -torch.add(h, 0.5, alpha=2.0)
        return h.view(h.shape[0], 24, SIZE, SIZE)


class Joined(nn.Module):
    """A cat of two branches and a residual block (the walk's joins)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.act = CReLU()
        self.body = Stem(ResBlock(16), c_in=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.act(torch.cat([self.a(x), self.b(x)], 1)))


class Norms(nn.Module):
    """Normalisations, identities and pools that keep or lose, with Unflatten/Flatten around a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.group = nn.GroupNorm(2, 8)
        self.layer = nn.LayerNorm([8, SIZE, SIZE])
        self.identity = nn.Identity()
        self.drop = nn.Dropout(0.5)
        self.drop2 = nn.Dropout2d(0.5)
        self.act = CReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16 * SIZE * SIZE, 16 * SIZE * SIZE)
        self.unflat = nn.Unflatten(1, (16, SIZE, SIZE))
        self.avg = nn.AdaptiveAvgPool2d(3)
        self.max = nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.drop2(self.drop(self.identity(self.layer(self.group(self.conv(x)))))))
        return self.max(self.avg(self.unflat(self.fc(self.flat(h)))))


def _activations() -> nn.Sequential:
    """One conv, then every activation in a row: the bijective ones invert exactly, the lossy ones say so."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.ELU(),
        nn.CELU(0.5),
        nn.GELU(),
        nn.SiLU(),
        nn.Mish(),
        nn.Softplus(),
        nn.Tanh(),
        nn.Sigmoid(),
        nn.Hardswish(),
        nn.PReLU(16, 0.2),
        nn.Hardtanh(-2.0, 2.0),
        nn.ReLU6(),
        nn.ReLU(),
        AVR(),
        Proportional(1, 2),
    )


def _battery() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(18)
    bn.running_mean, bn.running_var = torch.randn(18) * 0.1, torch.rand(18) + 0.5
    return {
        # patch, window, dense, lsqr: 12 filters of 3x3x3 (injective); a stride-2 layer a block of outputs determines
        "crelu chain": nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            CReLU(),
            nn.Conv2d(16, 18, 3, padding=1),
            bn,
            CReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(36, 40, 1),
            nn.AvgPool2d(3),
            nn.Flatten(),
            nn.Linear(40, 48),
        ),
        "strided": nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), CReLU(), nn.Conv2d(32, 8, 2)),  # the last loses
        "circular": nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), CReLU()),  # fft
        "relu": nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),
        "activations": _activations(),
        "in-place": InPlace(),
        "functional": Functional(),
        "joined": Joined(),
        "norms": Norms(),
    }


def _nodes(model: nn.Module, image: torch.Tensor) -> list[tuple[str, bool]]:
    """Every node but the input, and whether it is a convolution (module or functional)."""
    return [
        (name, kind == "Conv2d" or label.startswith("conv2d"))
        for name, label, kind, _ in graph_layers(model, image)
        if kind != "input"
    ]


def _check(result, where: str) -> None:
    """``exact`` implies rounding: for the result, and for every step of an exact prefix of the walk."""
    if result.exact:
        error = float(result.relative_error.max())
        assert error < EXACT, f"{where}: marked exact at relative error {error:.3g}"
    for step in result.steps:
        if not step.exact:
            break  # below an inexact step, an exact step inverts an estimate, not the truth
        error = float(step.relative_error.max())
        assert math.isnan(error) or error < EXACT, f"{where}: step {step.name} marked exact at {error:.3g}"


def test_exact_means_rounding_on_every_inverse_and_route():
    image = torch.rand(1, 3, SIZE, SIZE, dtype=torch.float64)
    kinds, routes, exact, refused = set(), set(), 0, 0
    for name, model in _battery().items():
        model = model.double().eval()
        clipping = any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)) for m in model.modules())
        nodes = _nodes(model, image)
        for node, conv in nodes:
            # every node with the walk; every route from every convolution (what is below it is walked the same
            # way); the default from the last node
            methods = [WALK, *ROUTES] if conv else [WALK]
            for method in methods + (["auto"] if node == nodes[-1][0] and "auto" not in methods else []):
                for relu in ("active_set", "identity") if clipping else ("active_set",):
                    where = f"{name}, {node}, {method}, relu={relu}"
                    try:
                        result = reconstruct(model, image, node, method, relu=relu)
                    except InvertnetError:  # refusing (naming why) is always allowed
                        refused += 1
                        continue
                    _check(result, where)
                    exact += result.exact
                    kinds |= {step.kind for step in result.steps}
                    routes |= {step.route for step in result.steps}
        last = _nodes(model, image)[-1][0]
        joint = reconstruct(model, image, last, "joint", joint=JointOptions(lbfgs_evaluations=20, max_steps=2))
        assert not joint.exact, f"{name}: a joint inversion is never proven exact"
    assert exact > 50  # the battery proves many results exact, not only refusals
    missing = set(supported_layers()) - kinds
    assert not missing, f"the battery never inverted {sorted(missing)}: add them to a network"
    assert {"patch", "window", "fft", "dense", "lsqr", "active_set"} <= routes, routes
    for function in ("divide", "subtract the constant", "undo the subtraction", "multiply", "permute back"):
        assert function in routes, function


def test_an_in_place_op_after_a_conv_is_inverted_as_an_op():
    """The issue's case: ``h = conv(x); h.mul_(2)`` came back exact at relative error 0.72."""

    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 2)
            self.act = CReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            h.mul_(2)
            return self.act(h)

    image = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    result = reconstruct(Doubled().double().eval(), image, "act")
    assert [(s.name, s.route, s.exact) for s in result.steps] == [
        ("act", "invert_crelu", True),
        (".mul_() (mul_)", "divide", True),
        ("conv", "lsqr", True),
    ]
    assert float(result.relative_error[0]) < 1e-12


@pytest.mark.parametrize("method", ["auto", "joint"])
def test_an_in_place_change_through_a_view_is_refused_naming_the_node(method):
    class ThroughView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 2)
            self.act = CReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            h.view(h.shape[0], -1).mul_(2)
            return self.act(h)

    with pytest.raises(
        InvertnetError, match=r"in-place operations the graph can follow, got \.mul_\(\) \(mul_\), and the graph run"
    ):
        reconstruct(ThroughView().double().eval(), torch.rand(1, 3, 8, 8, dtype=torch.float64), "act", method)


class Shuffle(nn.Module):
    """ShuffleNet's unit: split the channels, one half through a branch, concatenate, shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 48, 3, padding=1)
        self.act = CReLU()
        self.branch = nn.Conv2d(48, 48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.act(self.stem(x)).chunk(2, dim=1)
        out = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def test_a_channel_shuffle_is_refused_naming_the_split_by_the_walk():
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(InvertnetError, match=r"got node '\.chunk\(\) \(chunk\)', which splits a tensor into 2 parts"):
        reconstruct(Shuffle().double().eval(), image, "view_1")


def test_a_channel_shuffle_inverts_jointly_to_the_input_shape():
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    result = reconstruct(Shuffle().double().eval(), image, "view_1", "joint")
    assert result.image.shape == image.shape
    assert not result.exact
    assert float(result.feature_residual[0]) < 1e-8
