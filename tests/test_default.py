"""The default (method="auto"): exact where proven, completed elsewhere; which path it takes, and what it keeps."""

import pytest
import torch
from torch import nn

from invertnet import CReLU, OptionError, reconstruct
from invertnet.reconstruction.completion import CompletionOptions, complete
from invertnet.reconstruction.joint import FeatureTarget
from invertnet.reconstruction.priors import TotalVariation

F64 = torch.float64


def _image(n: int, size: int, seed: int, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, size, size, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _forward_residual(net: nn.Module, estimate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = net(x)
        return (net(estimate) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)


def test_an_exact_chain_is_the_walk_itself_with_no_prior():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU(), nn.Conv2d(24, 24, 1), CReLU()).double()
    x = _image(2, 12, 1)
    result = reconstruct(net, x, "3")
    layers = reconstruct(net, x, "3", method="layers")
    assert result.exact
    assert result.completion is None
    assert torch.equal(result.image, layers.image)  # no prior, no box: the walk's own estimate
    assert float(result.relative_error.max()) < 1e-10
    assert result.stopped == ["every step exact: the walk returned the input"] * 2


def _paired(seed: int = 0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    first, second = nn.Conv2d(3, 6, 2).double(), nn.Conv2d(12, 6, 1).double()
    with torch.no_grad():
        p = torch.randn(6, 6, dtype=F64, generator=g) + 3 * torch.eye(6, dtype=F64)
        second.weight.copy_(torch.cat([p, -p + 0.3 * torch.randn(6, 6, dtype=F64, generator=g)], 1)[..., None, None])
        first.weight.copy_(torch.randn(6, 3, 2, 2, dtype=F64, generator=g))
    return nn.Sequential(first, CReLU(), second)


def test_a_crelu_layer_with_a_unique_absolute_value_equation_is_exact_by_default():
    net = _paired()
    x = _image(1, 9, 2)
    result = reconstruct(net, x, "2")
    assert [step.route for step in result.steps][:2] == ["absolute_value", "absolute_value"]
    assert result.exact
    assert result.completion is None
    assert float(result.relative_error[0]) < 1e-10


def test_an_undetermined_relu_layer_goes_to_the_completion_with_its_constraints():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).double()  # 4 filters for 27 patch entries
    x = _image(1, 10, 3)
    result = reconstruct(net, x, "1", completion=CompletionOptions(max_steps=40))
    assert not result.exact
    assert result.completion is not None
    assert result.frontier == "0"  # the conv's output, with the ReLU's equations and inequalities
    relu_step = result.steps[0]
    assert "too few to determine" in relu_step.note
    assert float(result.feature_residual[0]) <= 1e-10  # one conv and a ReLU: a convex problem, solved to rounding
    assert float(result.feature_residual[0]) == pytest.approx(float(_forward_residual(net, result.image, x)[0]))
    assert result.completion.stopped[0] == result.stopped[0]
    assert result.image.min() >= 0
    assert result.image.max() <= 1


class _Residual(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.Tanh()
        with torch.no_grad():
            self.conv.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv(x))


@pytest.mark.parametrize(("scale", "exact"), [(0.05, True), (3.0, False)])
def test_a_residual_block_is_a_fixed_point_when_contractive_and_completed_otherwise(scale, exact):
    torch.manual_seed(2)
    net = _Residual(scale).double()
    x = _image(1, 8, 4)
    result = reconstruct(net, x, "add")
    assert result.exact is exact
    assert (result.completion is None) is exact
    if exact:
        assert result.steps[0].route == "fixed point"
        assert float(result.relative_error[0]) < 1e-8
    else:
        assert float(result.feature_residual[0]) < 1e-3


def _unread_stack() -> nn.Sequential:
    """A conv with disjoint 4x4 fields and 48 >= 3 * 16 filters: injective on what it reads; 10 px leaves 2 unread."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 48, 4, stride=4), CReLU()).double()


def test_pixels_proven_by_exact_steps_stay_and_only_the_unread_ones_are_filled():
    net = _unread_stack()
    x = _image(1, 10, 5)
    layers = reconstruct(net, x, "1", method="layers")
    result = reconstruct(net, x, "1")
    assert result.determined is not None
    determined = result.determined.expand_as(x)
    assert int((~determined).sum()) == 3 * (10 * 10 - 8 * 8)  # rows and columns 8, 9
    assert torch.equal(result.image[determined], layers.image.clamp(0, 1)[determined])  # untouched
    assert float((result.image - x)[determined].abs().max()) < 1e-10
    free = result.image[~determined]
    assert float(free.abs().min()) > 0  # filled (the walk leaves them at 0)
    assert "filled by the prior" in result.stopped[0]
    assert not result.exact


def test_a_batch_is_completed_as_its_images_alone():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3)).double()
    x = _image(2, 9, 6)
    options = CompletionOptions(evaluations=60, max_steps=3, single=False)
    batch = reconstruct(net, x, "2", completion=options)
    for i in range(2):
        alone = reconstruct(net, x[i : i + 1], "2", completion=options)
        assert torch.allclose(batch.image[i], alone.image[0], rtol=0, atol=1e-10)
        assert batch.stopped[i] == alone.stopped[0]


def test_the_prior_is_pluggable():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), CReLU()).double()
    x = _image(1, 8, 7)
    calls = []

    def energy(u: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return (u - 0.5).pow(2).flatten(1).sum(dim=1)

    options = CompletionOptions(prior=energy, single=False, max_steps=40)
    result = reconstruct(net, x, "1", completion=options)
    assert calls
    assert float(result.feature_residual[0]) < 1e-10
    with pytest.raises(OptionError, match="expected a callable prior"):
        CompletionOptions(prior="tv")  # type: ignore[arg-type]


def test_completion_options_go_with_the_default_only():
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).double()
    with pytest.raises(OptionError, match="completion options go with method='auto'"):
        reconstruct(net, _image(1, 8, 0), "0", method="layers", completion=CompletionOptions())
    with pytest.raises(OptionError, match="neither relu nor completion"):
        reconstruct(net, _image(1, 8, 0), "0", method="joint", relu="identity")


def test_complete_starts_from_the_better_candidate_and_reports_why_it_stopped():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), CReLU(), nn.Conv2d(16, 20, 3)).double()
    x = _image(2, 10, 8)
    with torch.no_grad():
        y = net(x)
    walk = torch.randn_like(x) * 10  # off the target: another basin, it does not compete
    walk[1] = x[1]  # a preimage (meets the target): it competes, and wins on the misfit
    options = CompletionOptions(box=(0.0, 1.0), single=False, prior=TotalVariation())
    result = complete(net, FeatureTarget.equal(y), {"flat": torch.full_like(x, 0.5), "walk": walk}, options)
    assert result.start == ["flat", "walk"]
    assert all(result.stopped)
    assert result.stopped[1].startswith("met the target at the start")
    assert torch.equal(result.image[1], x[1])
    assert len(result.history) == 2
    assert all(h[-1] == pytest.approx(float(r)) for h, r in zip(result.history, result.residual, strict=True))
