"""The chain walk refuses, naming the place, what it cannot follow; bad models and images get clear errors."""

import pytest
import torch
from patterns import FunctionalBetween, InPlaceBetween, OutOfPlaceSkip, TinyResNet, trained_like
from torch import nn

from invertnet import (
    CReLU,
    DTypeError,
    ForwardError,
    ModelError,
    NotAChainError,
    ShapeError,
    reconstruct,
)
from invertnet.capture.chain import list_layers, trace


@pytest.fixture
def resnet() -> nn.Module:
    return trained_like(TinyResNet())


def test_the_chain_walk_refuses_a_resnet_block_at_the_reused_relu(resnet):
    # On main ed6711a the chain walk returned -26 dB with no error: the in-place 'out += identity' kept the
    # tensor object. The chain walk (the fallback when fx cannot trace) now refuses; the graph walk solves it.
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(NotAChainError, match=r"'layer1\.0\.relu' \(ReLU\) ran twice"):
        trace(resnet, x, "layer1.0")
    with pytest.raises(NotAChainError, match=r"'layer1\.0\.relu' \(ReLU\) ran twice"):
        trace(resnet, x, "layer1")


def test_resnet_prefix_before_the_reuse_is_inverted(resnet):
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    result = reconstruct(resnet, x, "layer1.0.bn1")
    assert [step.name for step in result.steps] == ["layer1.0.bn1", "layer1.0.conv1", "maxpool", "relu", "bn1", "conv1"]


def test_in_place_skip_is_refused_even_when_the_module_is_not_reused():
    block = trained_like(TinyResNet()).layer1[0]
    block.relu2 = nn.ReLU(inplace=True)  # a second ReLU module: only the in-place addition is left to catch

    def forward(x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
        out += identity
        return block.relu2(out)

    block.forward = forward
    with pytest.raises(NotAChainError, match=r"expected 'relu2' to read the output of 'bn2' as it was produced"):
        trace(block, torch.rand(1, 8, 8, 8, dtype=torch.float64), "relu2")


def test_skip_at_the_end_of_a_container_is_refused():
    net = nn.Sequential(OutOfPlaceSkip()).double()
    with pytest.raises(NotAChainError, match=r"expected '0' to output the tensor its last submodule '0\.conv2'"):
        trace(net, torch.rand(1, 4, 8, 8, dtype=torch.float64), "0")


def test_functional_and_in_place_operations_between_modules_are_refused():
    x = torch.rand(1, 3, 9, 9)
    with pytest.raises(NotAChainError, match=r"feed the output of 'a' into 'b', but something else came"):
        trace(FunctionalBetween(), x, "b")
    with pytest.raises(NotAChainError, match=r"expected 'b' to read the output of 'a' as it was produced"):
        trace(InPlaceBetween(), x, "b")


def test_a_module_reused_in_a_sequential_is_refused():
    act = CReLU()
    net = nn.Sequential(nn.Conv2d(3, 6, 2), act, nn.Conv2d(12, 6, 2), act, nn.Conv2d(12, 4, 2))
    with pytest.raises(NotAChainError, match=r"'1' \(CReLU\) ran twice"):
        trace(net, torch.rand(1, 3, 8, 8), "4")


def test_forward_failures_name_the_module():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 11))
    with pytest.raises(ForwardError, match=r"its forward pass failed at '1' \(Conv2d\): .*; check the input size"):
        reconstruct(net, torch.rand(1, 3, 8, 8), "1")
    with pytest.raises(ForwardError, match=r"failed in '0' \(Conv2d\)"):
        list_layers(net, torch.rand(1, 5, 8, 8))
    with pytest.raises(ForwardError, match=r"failed in '1' \(Conv2d\)"):
        trace(net, torch.rand(1, 3, 8, 8), "1")


def test_bad_models_and_images():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ModelError, match=r"expected a torch.nn.Module, got str 'all-cnn-b'; build it first"):
        reconstruct("all-cnn-b", torch.rand(1, 3, 8, 8), "0")  # type: ignore[arg-type]
    with pytest.raises(DTypeError, match=r"expected a floating-point tensor, got torch.uint8; convert it"):
        reconstruct(net, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "0")
    with pytest.raises(ShapeError, match=r"expected at least one image, got a batch of 0"):
        reconstruct(net, torch.zeros(0, 3, 8, 8), "0")
