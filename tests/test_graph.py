"""The graph walk on the patterns researchers train: residual, projection, Fire, dense, inverted residual, heads."""

from __future__ import annotations

import pytest
import torch
from patterns import (
    Bottleneck,
    DenseLayer,
    Fire,
    InvertedResidual,
    LinearHead,
    ResBlock,
    Stem,
    TinyResNet,
    trained_like,
)
from torch import nn

from invertnet import JointOptions, UnsupportedLayerError, WeightsError, invert_jointly, reconstruct
from invertnet.capture.graph import capture, graph_layers
from invertnet.errors import ArgumentTypeError, ForwardError, NonFiniteError
from invertnet.reconstruction.blocks import branch_lipschitz


def _crelu_patterns() -> dict[str, tuple[nn.Module, int]]:
    torch.manual_seed(0)
    return {
        "basic block, reused CReLU": (Stem(nn.Sequential(ResBlock(16), ResBlock(32))), 10),
        "fire": (Stem(Fire(16, 16, 32)), 10),
        "dense": (Stem(nn.Sequential(DenseLayer(16, 8), DenseLayer(32, 8))), 10),
        "inverted residual": (Stem(InvertedResidual(16, 2)), 10),
        "flatten + linear": (LinearHead(), 6),
    }


@pytest.mark.parametrize("name", list(_crelu_patterns()))
def test_injective_crelu_patterns_are_recovered_from_their_deepest_node(name):
    model, size = _crelu_patterns()[name]
    model = model.double().eval()
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    graph = capture(model, x, "output" if False else _deepest(model, x))
    result = reconstruct(model, x, graph.target)
    assert float(result.relative_error) <= 1e-10, [(s.name, s.route, float(s.relative_error)) for s in result.steps]
    assert float(result.feature_residual) <= 1e-10


def _deepest(model: nn.Module, x: torch.Tensor) -> str:
    """The last node of the forward pass."""
    import torch.fx as fx

    from invertnet.capture.graph import _symbolic_trace

    nodes = [n for n in _symbolic_trace(model).graph.nodes if n.op not in ("output", "placeholder", "get_attr")]
    assert isinstance(fx, object)
    return nodes[-1].name


def test_contractive_residual_converges_at_the_rate_its_lipschitz_bound_predicts():
    torch.manual_seed(1)
    model = Stem(ResBlock(16, scale=0.3)).double().eval()
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    graph = capture(model, x, "body.conv2")
    bound = branch_lipschitz(graph, "stem_act", "body_conv2")
    assert bound is not None
    assert bound < 1
    result = reconstruct(model, x, _deepest(model, x))
    step = next(s for s in result.steps if s.route == "fixed point")
    assert step.exact
    observed = float(step.note.split("observed rate ")[1].split(",")[0])
    assert observed <= bound
    assert float(result.relative_error) <= 1e-10


@pytest.mark.parametrize(
    ("body", "node"),
    [
        (lambda: Bottleneck(16, 128), "add"),  # a strided projection shortcut: no identity branch
        (lambda: ResBlock(16, scale=1.0), "body_act_1"),  # Lip(F) > 1: no fixed point
        (lambda: InvertedResidual(16, 2, scale=1.0), "add"),
    ],
)
def test_joins_without_a_contraction_are_solved_jointly_and_say_so(body, node):
    torch.manual_seed(0)
    model = Stem(body()).double().eval()
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    result = reconstruct(model, x, node)
    step = next(s for s in result.steps if s.route == "joint block")
    assert not step.exact  # matching the block's output determines its input only where it is injective
    assert "relative residual" in step.note
    # measured: feature residual 1e-13 .. 4e-15, relative error 2e-13 .. 3e-12
    assert float(result.feature_residual) <= 1e-10
    assert float(result.relative_error) <= 1e-9


def test_a_block_with_fewer_responses_than_unknowns_says_so():
    torch.manual_seed(0)
    model = Stem(Bottleneck(16, 32)).double().eval()  # the block: 32x5x5 responses for 16x10x10 unknowns
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    result = reconstruct(model, x, "add")
    step = next(s for s in result.steps if s.route == "joint block")
    assert "fewer responses (800) than unknowns (1600)" in step.note


def test_a_torchvision_style_resnet_gives_an_estimate_that_matches_what_it_claims():
    model = trained_like(TinyResNet())
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    result = reconstruct(model, x, "layer1.0")
    # ReLU loses the negative part: not exact, and said so at every ReLU (the top one's constraints meet a join)
    assert not result.exact
    relus = [s for s in result.steps if s.kind == "ReLU"]
    assert "identity reading: 'add (add)' (a join) does not solve" in relus[0].note
    assert all(not s.exact for s in relus)
    routes = [s.route for s in result.steps]
    assert "fixed point" in routes or "joint block" in routes
    # what the report claims about the features is measured, not assumed
    assert torch.isfinite(result.feature_residual).all()


def test_joint_inverts_any_node_with_nothing_but_autograd():
    torch.manual_seed(0)
    # the block alone cannot be undone (previous test), the whole prefix can: 300 unknowns, 800 responses
    model = Stem(Bottleneck(16, 32)).double().eval()
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    result = invert_jointly(model, x, "add", JointOptions(start="flat", tol=1e-12))
    assert float(result.feature_residual) <= 1e-8  # measured 5e-14
    assert float(result.relative_error) <= 1e-9  # measured 7e-13


def test_an_unknown_function_is_refused_naming_the_node():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cos(self.conv(x))

    with pytest.raises(UnsupportedLayerError, match=r"got 'cos \(cos\)' \(cos\); reconstruct from a node below"):
        reconstruct(Odd(), torch.rand(1, 3, 8, 8), "cos")


# --- what capture refuses before any inversion, naming the place ------------------------------------------------


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    from invertnet import CReLU

    return nn.Sequential(nn.Conv2d(3, 12, 2), CReLU()).double()


def test_an_integer_layer_is_refused_saying_to_pass_its_name():
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(
        ArgumentTypeError, match=r"layer: expected a node or module name as a str .*got int 1; pass '1'"
    ):
        reconstruct(_net(), image, 1)
    assert reconstruct(_net(), image, "1").exact  # the same layer by its name


@pytest.mark.parametrize("method", ["auto", "joint"])
def test_a_nan_image_is_refused_by_both_paths(method):
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    image[0, 1, 2, 3] = float("nan")
    with pytest.raises(
        NonFiniteError,
        match=r"image: expected finite pixel values, got 1 NaN or infinite entries \(the first at "
        r"index \(0, 1, 2, 3\)\)",
    ):
        reconstruct(_net(), image, "1", method)
    with pytest.raises(NonFiniteError, match="image: expected finite pixel values"):
        invert_jointly(_net(), image, "1")


@pytest.mark.parametrize("method", ["auto", "patch", "lsqr", "window", "joint"])
def test_all_zero_weights_are_named_as_weights(method):
    net = _net()
    nn.init.zeros_(net[0].weight)
    with pytest.raises(
        WeightsError,
        match=r"got the weight of layer '0' \(Conv2d\), \(12, 3, 2, 2\), all zeros: the layer outputs its "
        r"bias alone",
    ):
        reconstruct(net, torch.rand(1, 3, 8, 8, dtype=torch.float64), "1", method)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_as_weights_not_blamed_on_the_input(bad):
    net = _net()
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = bad
    with pytest.raises(
        NonFiniteError, match=r"expected finite weights, got 1 of 144 entries of the weight of layer '0' \(Conv2d\) NaN"
    ):
        reconstruct(net, torch.rand(1, 3, 8, 8, dtype=torch.float64), "1")


def test_degenerate_weights_of_a_functional_call_are_named_by_their_attribute():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(12, 3, 2, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.conv2d(x, self.weight)

    with pytest.raises(WeightsError, match=r"got the attribute 'weight', \(12, 3, 2, 2\), all zeros"):
        reconstruct(Functional().double(), torch.rand(1, 3, 8, 8, dtype=torch.float64), "conv2d")


@pytest.mark.parametrize("call", [capture, lambda m, x, layer: invert_jointly(m, x, layer)])
def test_a_forward_that_calls_sys_exit_is_an_error(call):
    class Exits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import sys

            sys.exit(0)

    with pytest.raises(ForwardError, match=r"Exits's forward pass to return, but it called sys\.exit\(0\); remove"):
        call(Exits(), torch.rand(1, 3, 8, 8), "conv")


@pytest.mark.parametrize("error", [KeyError, AttributeError, AssertionError, ZeroDivisionError])
def test_whatever_a_forward_raises_is_a_forward_error(error):
    class Raises(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            if h.shape[0] > 0:  # fx cannot trace this: the hook-traced chain runs it
                raise error("boom in forward")
            return self.head(h)

    message = rf"Raises to run on an input of shape \(1, 3, 8, 8\), but its forward pass raised {error.__name__}"
    with pytest.raises(ForwardError, match=message):
        capture(Raises(), torch.rand(1, 3, 8, 8), "head")
    with pytest.raises(ForwardError, match=message):
        graph_layers(Raises(), torch.rand(1, 3, 8, 8))
