"""The registered inverses of activations, Linear, normalisation, reshapes and adaptive pooling (float64)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, condition
from scipy.special import lambertw
from torch import nn

from invertnet import reconstruct
from invertnet.capture.chain import LayerRecord
from invertnet.errors import OutOfRangeError, ShapeError, UnsupportedLayerError
from invertnet.inverses import InversionContext, StepResult, inverse_for
from invertnet.inverses.linear import linear_pinv
from invertnet.inverses.nonlinear import _minimiser
from invertnet.pinv import SolveOptions

TOP = InversionContext(method="auto", maxpool="switches", options=SolveOptions(), top=True)
BELOW = replace(TOP, top=False)


def record_of(module: nn.Module, x: torch.Tensor) -> tuple[LayerRecord, torch.Tensor]:
    with torch.no_grad():
        y = module(x)
    return LayerRecord("layer", module, x.clone(), tuple(y.shape[1:])), y


def invert(
    module: nn.Module, x: torch.Tensor, ctx: InversionContext = TOP, y: torch.Tensor | None = None
) -> StepResult:
    """The registered inverse applied to ``module(x)`` (or to ``y``), with ``x`` as the recorded input."""
    record, fx = record_of(module, x)
    return inverse_for(module)(module, record, fx if y is None else y, ctx)


def amplification(f, x: torch.Tensor) -> float:
    """Largest ``1 / f'(x)``: how much the inverse amplifies the rounding of ``y`` (at least 1)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return max(1.0, float((1 / grad.abs()).max()))


def share(k: int, n: int) -> str:
    return f"{k} of {n} entries ({k / n:.2%})"


# --------------------------------------------------------------------------------------------------------------------
# bijective activations


def _prelu_per_channel() -> nn.PReLU:
    module = nn.PReLU(6).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.1, 0.25, 0.5, 1.0, 2.0, 3.0]))
    return module


BIJECTIVE = {
    "prelu": lambda: nn.PReLU(init=0.25).double(),
    "prelu-per-channel": _prelu_per_channel,
    "elu": nn.ELU,
    "elu-0.5": lambda: nn.ELU(alpha=0.5),
    "celu-2": lambda: nn.CELU(alpha=2.0),
    "celu-negative-alpha": lambda: nn.CELU(alpha=-1.5),
    "softplus": nn.Softplus,
    "softplus-beta2-threshold5": lambda: nn.Softplus(beta=2.0, threshold=5.0),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


@pytest.mark.parametrize("name", list(BIJECTIVE))
def test_bijective_activation_returns_its_input_exactly(name):
    module = BIJECTIVE[name]()
    x = 2 * torch.randn(2, 6, 5, 5, dtype=torch.float64)
    step = invert(module, x)
    assert (step.exact, step.closed_form, step.note) == (True, True, "")
    assert_close(step.estimate, x, cond=amplification(module, x))


def test_inverses_follow_float32_with_the_float32_tolerance():
    x = torch.randn(2, 6, 5, 5)
    for module in (nn.ELU(), nn.Softplus(), nn.Tanh(), nn.Sigmoid(), nn.PReLU()):
        step = invert(module, x)
        assert step.estimate.dtype == torch.float32
        assert_close(step.estimate, x, torch.float32, cond=amplification(module, x))


@pytest.mark.parametrize(
    ("module", "x", "where"),
    [
        (nn.Tanh(), [30.0, 0.5, -40.0], "saturated at +-1"),
        (nn.Sigmoid(), [40.0, 0.5, -800.0], "saturated at 0 or 1"),
        (nn.ELU(), [-50.0, 0.5, -60.0], "saturated at -alpha = -1"),
        (nn.Softplus(), [-800.0, 0.5, -900.0], "saturated at 0"),
    ],
)
def test_saturated_entries_are_lost_and_counted(module, x, where):
    x = torch.tensor(x, dtype=torch.float64)
    step = invert(module, x)
    assert not step.exact
    assert step.note == (
        f"{share(2, 3)} {where}: their input is only known to lie beyond the point where the output rounds to it "
        "(set to an input just beyond that point)"
    )
    assert torch.isfinite(step.estimate).all()
    assert float(step.estimate[1]) == pytest.approx(0.5, abs=1e-15)
    ends = torch.tensor([0, 2])
    assert torch.equal(module(step.estimate[ends]), module(x[ends]))  # the estimate saturates too


@pytest.mark.parametrize(
    ("module", "y", "what"),
    [
        (nn.Tanh(), [0.5, 1.5, -2.0], r"\(-1, 1\)"),
        (nn.Sigmoid(), [0.5, 1.5, -0.1], r"\(0, 1\)"),
        (nn.ELU(), [0.5, -1.5, -3.0], r"\(-1, inf\)"),
        (nn.CELU(2.0), [0.5, -2.5, -3.0], r"\(-2, inf\)"),
        (nn.Softplus(), [0.5, -1.0, -0.1], r"\(0, inf\)"),
        (nn.ReLU6(), [0.5, 7.0, -1.0], r"\[0, 6\]"),
        (nn.Hardtanh(-2.0, 3.0), [0.5, 3.5, -2.5], r"\[-2, 3\]"),
        (nn.SiLU(), [0.5, -0.5, -0.3], r"\[-0.278465, inf\)"),
        (nn.GELU(), [0.5, -0.5, -0.2], r"\[-0.169971, inf\)"),
        (nn.Hardswish(), [0.5, -0.5, -0.4], r"\[-0.375, inf\)"),
    ],
)
def test_out_of_range_refused_at_the_top_and_clamped_below(module, y, what):
    y = torch.tensor(y, dtype=torch.float64)
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(OutOfRangeError, match=rf"output of {type(module).__name__} 'layer' in {what}, got 2 of 3 "):
        invert(module, x, TOP, y)
    step = invert(module, x, BELOW, y)
    assert not step.exact
    assert f"{share(2, 3)} outside " in step.note
    assert "clamped into it" in step.note
    assert torch.isfinite(step.estimate).all()


def test_nan_counts_as_out_of_range():
    with pytest.raises(OutOfRangeError, match=r"got 1 of 2 entries"):
        invert(nn.Tanh(), torch.zeros(2), TOP, torch.tensor([0.0, math.nan]))


def test_softplus_sliver_at_the_threshold_has_two_preimages():
    # just below the threshold torch computes log1p(exp(20)) = 20 + 2.06e-9, also the output of x = 20 + 2.06e-9
    x = torch.tensor([20 - 1e-9, 1.0], dtype=torch.float64)
    step = invert(nn.Softplus(), x)
    assert not step.exact
    assert f"{share(1, 2)} in the sliver just above the threshold" in step.note
    assert float(step.estimate[0] - x[0]) == pytest.approx(math.log1p(math.exp(-20)), rel=1e-3)
    assert float(step.estimate[1]) == pytest.approx(1.0, abs=1e-15)


def test_prelu_with_non_positive_slopes_keeps_the_positive_channels():
    module = nn.PReLU(3).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.25, 0.0, -0.5]))
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    step = invert(module, x)
    assert not step.exact
    y = module(x)
    lost = int((y[:, 1] == 0).sum() + (y[:, 2] >= 0).sum())
    assert step.note.startswith("PReLU with 2 of 3 slopes <= 0 is not bijective there")
    assert f"({share(lost, y.numel())} in those channels" in step.note
    assert_close(step.estimate[:, 0], x[:, 0])
    positive = x[:, 1:] > 0
    assert torch.equal(step.estimate[:, 1:][positive], x[:, 1:][positive])


@pytest.mark.parametrize("module", [nn.ELU(alpha=-1.0), nn.ELU(alpha=0.0)])
def test_elu_without_positive_alpha_is_refused(module):
    with pytest.raises(UnsupportedLayerError, match=r"expected ELU 'layer' with alpha > 0 \(bijective\), got alpha="):
        invert(module, torch.zeros(2))


def test_softplus_with_negative_beta_is_refused():
    with pytest.raises(UnsupportedLayerError, match=r"expected Softplus 'layer' with beta > 0, got beta=-1.0"):
        invert(nn.Softplus(beta=-1.0), torch.zeros(2))


# --------------------------------------------------------------------------------------------------------------------
# clipping


@pytest.mark.parametrize("module", [nn.ReLU6(), nn.Hardtanh(-2.0, 3.0), nn.Hardtanh()])
def test_clipping_keeps_inside_entries_and_counts_the_clipped(module):
    x = 4 * torch.randn(2, 3, 6, 6, dtype=torch.float64)
    lo, hi = module.min_val, module.max_val
    step = invert(module, x, replace(TOP, relu="identity"))
    inside = (x > lo) & (x < hi)
    assert torch.equal(step.estimate[inside], x[inside])
    assert torch.equal(step.estimate[~inside], x[~inside].clamp(lo, hi))
    assert not step.exact
    assert step.note == (
        f"{share(int((~inside).sum()), x.numel())} at a clip level ({lo:g} or {hi:g}): their input is only known "
        "to be beyond it (set to the clip level)"
    )
    unclipped = invert(module, lo + (hi - lo) * (0.01 + 0.98 * torch.rand(2, 3, dtype=torch.float64)))
    assert (unclipped.exact, unclipped.note) == (True, "")


@pytest.mark.parametrize("module", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-2.0, 3.0)])
def test_clipping_hands_its_reading_down_in_active_set_mode(module):
    x = 4 * torch.randn(2, 3, 6, 6, dtype=torch.float64)
    y = module(x)
    step = invert(module, x)
    assert (step.route, step.exact, step.closed_form) == ("active_set", False, False)
    assert step.constraints is not None
    lower, upper = step.constraints.lower, step.constraints.upper
    assert bool(((lower <= x) & (x <= upper)).all())  # the true pre-activation satisfies them
    inside = y != module(torch.full_like(x, torch.inf))  # not at the upper level ...
    inside &= y != module(torch.full_like(x, -torch.inf))  # ... nor at the lower one
    assert torch.equal(lower[inside], x[inside])
    assert torch.equal(upper[inside], x[inside])
    assert torch.isinf(torch.where(inside, 0.0, lower.abs() + upper.abs())).eq(~inside).all()
    below = invert(module, x, replace(TOP, top=False, exact=False))  # an estimate: zeros are no facts
    assert below.constraints is None
    assert "not exact, so its clipped entries are no facts: identity reading" in below.note


# --------------------------------------------------------------------------------------------------------------------
# not injective


def test_minimisers_match_independent_values():
    # SiLU: x (1 + x (1 - s)) s' = 0 <=> x* = -1 - W(1/e) (Lambert W, scipy); GELU: Phi(x) + x phi(x) = 0, whose root
    # -0.7517915247 is quoted e.g. by Hendrycks & Gimpel's GELU minimum -0.17 (value checked with mpmath findroot)
    assert _minimiser("silu") == pytest.approx(-1 - lambertw(math.exp(-1)).real, abs=1e-14)
    assert _minimiser("gelu") == pytest.approx(-0.75179152469356, abs=1e-12)
    assert _minimiser("mish") == pytest.approx(-1.19243, abs=1e-5)  # Misra 2019: minimum -0.30884 at -1.1924
    assert _minimiser("gelu_tanh") == pytest.approx(-0.7522, abs=1e-3)


NON_INJECTIVE = {
    "silu": (nn.SiLU(), "silu"),
    "gelu": (nn.GELU(), "gelu"),
    "gelu-tanh": (nn.GELU(approximate="tanh"), "gelu_tanh"),
    "mish": (nn.Mish(), "mish"),
}


@pytest.mark.parametrize("name", list(NON_INJECTIVE))
def test_non_injective_returns_the_upper_branch(name):
    module, key = NON_INJECTIVE[name]
    x_min = _minimiser(key)
    upper = x_min + 0.3 + 6 * torch.rand(2, 3, 5, 5, dtype=torch.float64)  # away from the flat minimum
    step = invert(module, upper)
    assert (step.exact, step.closed_form, step.route) == (False, False, "upper_branch_newton")
    assert_close(step.estimate, upper, cond=amplification(module, upper))
    overlap = int((module(upper) < 0).sum())
    assert f"{share(overlap, upper.numel())} lie where the branches overlap" in step.note
    assert "the branch below is lost" in step.note
    # a lower-branch input comes back on the upper branch, with the same output
    lower = x_min - 0.5 - 3 * torch.rand(50, dtype=torch.float64)
    back = invert(module, lower).estimate
    assert (back >= x_min).all()
    assert_close(module(back), module(lower), cond=10.0)


@pytest.mark.parametrize("name", list(NON_INJECTIVE))
def test_non_injective_edge_values(name):
    module, key = NON_INJECTIVE[name]
    x_min = _minimiser(key)
    x = torch.tensor([x_min, 0.0, 1e-200, 50.0, -1e-12], dtype=torch.float64)
    step = invert(module, x)
    assert float(step.estimate[0]) == x_min
    assert "set to the minimiser" in step.note
    assert_close(step.estimate[1:], x[1:])


def test_hardswish_closed_form_branch():
    module = nn.Hardswish()
    upper = -1.5 + 6 * torch.rand(200, dtype=torch.float64)
    upper[:3] = torch.tensor([-1.5, 0.0, 3.0], dtype=torch.float64)
    step = invert(module, upper)
    assert (step.exact, step.closed_form, step.route) == (False, True, "upper_branch")
    assert_close(step.estimate, upper, cond=amplification(module, upper[3:]))
    assert f"{share(1, 200)} at or below the minimum -0.375 set to the minimiser" in step.note
    assert f"{share(1, 200)} are 0, the output of x = 0 and of every x <= -3" in step.note
    lower = torch.tensor([-2.0, -5.0], dtype=torch.float64)
    assert_close(invert(module, lower).estimate, torch.tensor([-1.0, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------------------------------
# Linear, normalisation, reshapes


def test_linear_with_full_column_rank_is_exact_on_any_leading_shape():
    module = nn.Linear(5, 8).double()
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    step = invert(module, x)
    assert (step.exact, step.route) == (True, "linear_pinv")
    assert step.note.startswith("full column rank (condition ")
    assert_close(step.estimate, x, cond=condition(module.weight.detach()))


def test_rank_deficient_linear_gives_the_minimum_norm_solution():
    module = nn.Linear(4, 6).double()
    with torch.no_grad():
        module.weight.copy_(torch.randn(6, 2, dtype=torch.float64) @ torch.randn(2, 4, dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    step = invert(module, x)
    assert not step.exact
    assert step.note.startswith("rank 2 < in_features 4: a 2-dimensional null-space component is lost")
    reference = (module(x) - module.bias) @ torch.linalg.pinv(module.weight).T
    assert_close(step.estimate, reference, cond=condition(module.weight.detach()))
    assert_close(module(step.estimate), module(x), cond=condition(module.weight.detach()))


def test_linear_pinv_is_cached_and_follows_the_weight():
    module = nn.Linear(3, 4).double()
    first = linear_pinv(module)
    assert linear_pinv(module) is first
    with torch.no_grad():
        module.weight.mul_(2)
    assert_close(linear_pinv(module).pinv, first.pinv / 2)


def test_linear_checks_the_last_dimension():
    module = nn.Linear(3, 4)
    record, _ = record_of(module, torch.zeros(2, 3))
    with pytest.raises(ShapeError, match=r"expected a last dimension of 4 \(out_features of Linear 'layer'\), got"):
        inverse_for(module)(module, record, torch.zeros(2, 5), TOP)


@pytest.mark.parametrize(
    ("module", "normalise"),
    [
        (nn.LayerNorm((5, 6)), lambda x: F.layer_norm(x, (5, 6))),
        (nn.LayerNorm(6, bias=False), lambda x: F.layer_norm(x, (6,))),
        (nn.GroupNorm(2, 4), lambda x: F.group_norm(x, 2)),
        (nn.GroupNorm(2, 4, affine=False), lambda x: F.group_norm(x, 2)),
    ],
)
def test_sample_norms_undo_the_affine_map_only(module, normalise):
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(0.5, 2.0)
    x = 3 + 2 * torch.randn(2, 4, 5, 6, dtype=torch.float64)
    step = invert(module, x)
    assert (step.exact, step.route) == (False, "unaffine")
    assert "are lost; the estimate is the normalised input" in step.note
    assert "mean and standard deviation" in step.note
    assert_close(step.estimate, normalise(x))


@pytest.mark.parametrize(
    "module", [nn.Flatten(), nn.Flatten(2, 3), nn.Flatten(-3, -2), nn.Flatten(0, 1), nn.Unflatten(1, (2, 3))]
)
def test_reshapes_are_exact(module):
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    step = invert(module, x)
    assert (step.exact, step.route) == (True, "reshape")
    assert torch.equal(step.estimate, x)


# --------------------------------------------------------------------------------------------------------------------
# adaptive pooling


def dense_adaptive_avg(size_in: tuple[int, int], size_out: tuple[int, int]) -> torch.Tensor:
    """The matrix of adaptive average pooling on one channel, column by column (torch's forward on a basis)."""
    h, w = size_in
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    return F.adaptive_avg_pool2d(basis, size_out).reshape(h * w, -1).T


@pytest.mark.parametrize(
    ("size_in", "size_out"), [((8, 8), (2, 4)), ((6, 7), (1, 1)), ((5, 7), (3, 4)), ((7, 5), (4, 6)), ((2, 3), (4, 6))]
)
def test_adaptive_avgpool_is_its_pseudo_inverse(size_in, size_out):
    module = nn.AdaptiveAvgPool2d(size_out)
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    step = invert(module, x)
    dense = dense_adaptive_avg(size_in, size_out)
    reference = (torch.linalg.pinv(dense) @ module(x).flatten(2).unsqueeze(-1)).reshape(x.shape)
    assert_close(step.estimate, reference, cond=condition(dense))
    injective = int(torch.linalg.matrix_rank(dense)) == math.prod(size_in)
    assert (step.exact, step.route) == (injective, "separable_pinv")
    if injective:
        assert_close(step.estimate, x, cond=condition(dense))
    else:
        assert "loses detail within each bin" in step.note


def test_adaptive_avgpool_that_tiles_matches_avgpool_routes():
    x = torch.randn(1, 2, 8, 12, dtype=torch.float64)
    step = invert(nn.AdaptiveAvgPool2d((2, 3)), x)
    pool = nn.AvgPool2d((4, 4))
    record, y = record_of(pool, x)
    assert_close(step.estimate, inverse_for(pool)(pool, record, y, TOP).estimate)
    global_step = invert(nn.AdaptiveAvgPool2d((None, 1)), x)  # None keeps the height
    assert_close(global_step.estimate, x.mean(dim=3, keepdim=True).expand_as(x))


def test_adaptive_maxpool_unpools_with_switches():
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    for size in ((1, 1), (3, 3), (2, 4)):
        module = nn.AdaptiveMaxPool2d(size)
        step = invert(module, x)
        _, switches = F.adaptive_max_pool2d(x, size, return_indices=True)
        flat, got = x.flatten(2), step.estimate.flatten(2)
        kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, switches.flatten(2), True)
        assert torch.equal(got[kept], flat[kept])
        assert (got[~kept] == 0).all()
        assert (step.exact, step.route) == (False, "switches")
        assert "non-maximal values lost" in step.note


def test_adaptive_maxpool_matches_maxpool_when_it_tiles_and_guess_spreads():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    adaptive, pool = nn.AdaptiveMaxPool2d(3), nn.MaxPool2d(2)
    record, y = record_of(pool, x)
    guess = replace(TOP, maxpool="guess")
    for ctx in (TOP, guess):
        assert_close(invert(adaptive, x, ctx).estimate, inverse_for(pool)(pool, record, y, ctx).estimate)
    copies = invert(nn.AdaptiveMaxPool2d((12, 6)), x, guess)  # every bin one pixel: a copy, undone exactly
    assert copies.exact
    assert_close(copies.estimate, x)


# --------------------------------------------------------------------------------------------------------------------
# chains through invertnet.reconstruct


def test_chain_with_prelu_and_tanh_is_reconstructed_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 27, 3), nn.PReLU(27, init=0.3), nn.Conv2d(27, 32, 1), nn.Tanh()
    ).double()  # 27 filters >= 3*3*3 patch entries, 32 >= 27: every layer injective
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    result = reconstruct(net, x, "3")
    assert [step.route for step in result.steps][::2] == ["atanh", "prelu_inverse"]
    assert result.exact
    assert float(result.relative_error.max()) <= 1e-10


def test_chain_with_a_linear_head_is_reconstructed_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 27, 3), nn.ELU(), nn.Flatten(), nn.Linear(108, 120), nn.Softplus(), nn.Unflatten(1, (10, 12))
    ).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    result = reconstruct(net, x, "5")
    assert [step.route for step in result.steps][:4] == ["reshape", "softplus_inverse", "linear_pinv", "reshape"]
    assert result.exact
    assert float(result.relative_error.max()) <= 1e-10


def test_lossy_chain_says_what_each_step_loses():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10), nn.GELU()
    ).double()
    result = reconstruct(net, torch.rand(1, 3, 8, 8, dtype=torch.float64), "5")
    assert not result.exact
    kinds = {step.kind: step for step in result.steps}
    assert kinds["GELU"].route == "upper_branch_newton"
    assert "not injective" in kinds["GELU"].note
    assert kinds["Linear"].note.startswith("rank 10 < in_features 32: a 22-dimensional null-space component is lost")
    assert kinds["AdaptiveAvgPool2d"].note.startswith("averaging 8x8 into 2x2 bins loses detail")


def test_an_infeasible_active_set_names_the_violation_that_failed_first():
    """The issue's note: 'violated by up to 0 (equations 2.8e-06)' named the inequalities, which held."""
    from types import SimpleNamespace

    from invertnet.inverses.linear import _violations

    result = SimpleNamespace(equation_violation=torch.tensor([2.8e-6, 1e-9]), inequality_violation=torch.zeros(2))
    assert _violations(result) == "equations violated by up to 2.8e-06 (inequalities 0)"
    result = SimpleNamespace(equation_violation=torch.zeros(1), inequality_violation=torch.tensor([0.5]))
    assert _violations(result) == "inequalities violated by up to 0.5 (equations 0)"
