"""The paper's analyses: filter pairing, the Rademacher bound, invariance, sparsity, the proportional module."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from invertnet import CReLU, reconstruct
from invertnet.analysis.bounds import (
    PROVABLE_CONSTANT,
    composed_rademacher,
    linear_class_bound,
    linear_class_rademacher,
    rademacher_complexity,
    spectral_norm,
    theorem_4_1_bound,
)
from invertnet.analysis.invariance import invariance_score, translations
from invertnet.analysis.pairing import (
    NoConvWeightsError,
    PairingsByLayer,
    conv_weights,
    expected_random_mu,
    pairing,
    pairing_by_layer,
    random_mu_cdf,
    random_pairing,
)
from invertnet.analysis.sparsity import activation_sparsity
from invertnet.errors import ArgumentTypeError, NonFiniteError, OptionError, ShapeError
from invertnet.nn.activations import Proportional, invert_proportional, proportional

# ---------------------------------------------------------------- pairing


def test_pairing_of_hand_built_filters():
    e = torch.eye(4, dtype=torch.float64)
    # filters 0 and 1 are an exact opposite pair (any scale); 2 and 3 are orthogonal to everything else
    weight = torch.stack([e[0], -3 * e[0], e[2], e[3]]).reshape(4, 1, 2, 2)
    result = pairing(weight)
    assert result.mu.tolist() == [-1.0, -1.0, 0.0, 0.0]
    assert result.partner[:2].tolist() == [1, 0]
    assert result.shape == (4, 1, 2, 2)


def test_pairing_of_an_orthonormal_set_is_zero():
    q, _ = torch.linalg.qr(torch.randn(9, 9, dtype=torch.float64))
    # measured up to 5.3e-16 over 10 draws
    torch.testing.assert_close(pairing(q.T).mu, torch.zeros(9, dtype=torch.float64), rtol=0, atol=1e-13)


@pytest.mark.parametrize(("n", "dim"), [(96, 27), (64, 363), (16, 4)])
def test_random_filters_follow_the_exact_distribution(n, dim):
    mus = torch.cat([random_pairing((n, dim), seed=s).mu for s in range(40)]).numpy()
    expected = expected_random_mu(dim, n)
    # statistical: within 5 standard errors of the mean (measured 0.1 to 0.4 of one)
    assert abs(mus.mean() - expected) < 5 * mus.std() / math.sqrt(len(mus))
    # the empirical CDF against the exact one at its quartiles (statistical: measured up to 0.014)
    for q in (0.25, 0.5, 0.75):
        t = np.quantile(mus, q)
        assert abs(random_mu_cdf(t, dim, n) - q) < 0.05


def test_expected_random_mu_hand_values():
    # measured errors 0, 0 and 5.6e-17
    assert expected_random_mu(2, 2) == pytest.approx(0.0, abs=1e-14)  # a uniform angle: E cos = 0
    assert expected_random_mu(3, 2) == pytest.approx(0.0, abs=1e-14)  # cos uniform on [-1, 1]
    # two other filters in R^3: E min of two uniforms on [-1, 1] = -1/3
    assert expected_random_mu(3, 3) == pytest.approx(-1 / 3, abs=1e-14)


def test_pairing_by_layer_on_a_model_and_a_state_dict_agree():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.Flatten(), nn.Linear(6, 2))
    from_model = pairing_by_layer(model)
    from_state = pairing_by_layer(model.state_dict())
    assert list(from_model) == ["0", "2"]
    assert list(from_state) == ["0.weight", "2.weight"]
    assert torch.equal(from_model["0"].mu, from_state["0.weight"].mu)  # the same weights: bit-equal


@pytest.mark.parametrize(
    ("source", "layers", "error", "match"),
    [
        ({"fc.weight": torch.ones(2, 3)}, None, NoConvWeightsError, "expected convolution weights .* found none"),
        ({"w": torch.ones(2, 1, 3, 3)}, ["v"], NoConvWeightsError, r"named \['v'\], found only \['w'\]"),
        ([1, 2], None, TypeError, "expected an nn.Module or a state dict, got list"),
    ],
)
def test_pairing_bad_sources(source, layers, error, match):
    with pytest.raises(error, match=match):
        pairing_by_layer(source, layers)


def test_pairing_refuses_zero_filters_and_single_filters():
    with pytest.raises(ValueError, match="filter 1 is zero and has no direction"):
        pairing(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected a weight of shape \(n >= 2, ...\), got \(1, 4\)"):
        pairing(torch.ones(1, 4))


def test_conv_weights_skips_integer_and_other_tensors():
    state = {"a": torch.ones(2, 1, 3, 3), "b": torch.ones(2, 1, 3, 3, dtype=torch.int64), "c": torch.ones(3)}
    assert list(conv_weights(state)) == ["a"]


# ---------------------------------------------------------------- Rademacher


def test_rademacher_of_finite_classes_by_hand():
    # one function (1, -1): E|s1 - s2| = 1; the class {+f, -f} is the same; a constant c: (2/L) E|sum s| c
    assert rademacher_complexity(torch.tensor([[1.0, -1.0]])) == 1.0
    assert rademacher_complexity(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])) == 1.0
    assert rademacher_complexity(torch.full((1, 4), 2.0)) == 2 / 4 * 2 * (6 * 0 + 8 * 2 + 2 * 4) / 16  # 1.5: exact


def test_monte_carlo_agrees_with_enumeration():
    values = torch.randn(7, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # independent reference: all 2^12 sign vectors in NumPy, (2 / L) max_f |<s, f>| for each
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=12)))
    variable = np.abs(signs @ values.numpy().T).max(axis=1) * 2 / 12
    exact = rademacher_complexity(values)
    assert exact == pytest.approx(variable.mean(), rel=1e-13)  # measured 0
    estimate = rademacher_complexity(values, samples=40_000, seed=1)
    # statistical: within 5 standard errors of the exact mean (measured 0.5 of one)
    assert abs(estimate - exact) < 5 * variable.std() / math.sqrt(40_000)


def test_linear_class_between_khintchine_and_jensen():
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = linear_class_rademacher(x, 2.0)
    # independent reference: (2 W / L) E ||sum s_i x_i|| over all 2^10 sign vectors in NumPy (measured equal)
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=10)))
    assert exact == pytest.approx(np.linalg.norm(signs @ x.numpy(), axis=1).mean() * 2 * 2.0 / 10, rel=1e-13)
    bound = linear_class_bound(x, 2.0)
    assert bound / math.sqrt(2) <= exact <= bound
    # orthogonal points: ||sum s_i x_i|| is the same for every sign vector, so Jensen's bound is exact
    assert linear_class_rademacher(torch.eye(6), 1.0) == pytest.approx(2 / math.sqrt(6), rel=1e-14)  # measured exact
    assert linear_class_bound(torch.eye(6), 1.0) == pytest.approx(2 / math.sqrt(6), rel=1e-14)
    with pytest.raises(ValueError, match="expected at most 20 points for exact enumeration, got 21"):
        linear_class_rademacher(torch.ones(21, 2), 1.0)


def test_spectral_norm_is_the_largest_singular_value():
    conv = nn.Conv2d(2, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(24.0).reshape(3, 2, 2, 2))
    expected = float(np.linalg.svd(np.arange(24.0).reshape(3, 8), compute_uv=False)[0])
    assert spectral_norm(conv) == pytest.approx(expected, rel=5e-14)  # measured 4.4e-16
    with pytest.raises(TypeError, match="expected a Conv2d, a Linear or a weight tensor, got ReLU"):
        spectral_norm(nn.ReLU())


def test_theorem_4_1_as_stated_fails_on_a_two_point_class():
    # hand-derived: f = (1, -1), d_in = B = 1: sup_w <w, s1 (1, 0) + s2 (0, 1)> = sqrt(2) for every sign vector
    f = torch.tensor([[1.0, -1.0]])
    assert composed_rademacher(f, 1, 1.0) == pytest.approx(math.sqrt(2), rel=1e-14)  # measured exact
    assert theorem_4_1_bound(1, 1.0, rademacher_complexity(f)) == 1.0
    assert composed_rademacher(f, 1, 1.0) <= theorem_4_1_bound(1, 1.0, 1.0, constant=PROVABLE_CONSTANT)


def test_the_provable_bound_holds_on_random_finite_classes():
    rng = torch.Generator().manual_seed(7)
    worst = 0.0
    for _ in range(60):
        functions, points = (
            int(torch.randint(1, 8, (1,), generator=rng)),
            int(torch.randint(2, 11, (1,), generator=rng)),
        )
        values = torch.randn(functions, points, generator=rng, dtype=torch.float64)
        d_in, b = int(torch.randint(1, 5, (1,), generator=rng)), float(torch.rand(1, generator=rng)) + 0.5
        lhs = composed_rademacher(values, d_in, b)
        r_f = rademacher_complexity(values)
        assert lhs <= theorem_4_1_bound(d_in, b, r_f, constant=PROVABLE_CONSTANT) + 1e-12
        worst = max(worst, lhs / theorem_4_1_bound(d_in, b, r_f))
    assert worst < 2  # measured: the constant the bound needs on such classes stays well below 4


def test_relu_comparison_and_composed_relu():
    relu_bound = theorem_4_1_bound(8, 2.0, 0.5, "relu")
    assert relu_bound == pytest.approx(math.sqrt(2) * theorem_4_1_bound(8, 2.0, 0.5), rel=2e-14)  # measured 2.2e-16
    # ReLU halves: the composed class of a single nonnegative function is the linear class of its values
    f = torch.tensor([[1.0, 2.0, 0.5]])
    relu_class = composed_rademacher(f, 1, 1.0, "relu")
    assert relu_class == pytest.approx(rademacher_complexity(f), rel=1e-14)  # measured exact
    with pytest.raises(ValueError, match="expected activation 'crelu' or 'relu', got 'tanh'"):
        composed_rademacher(f, 1, 1.0, "tanh")


# ---------------------------------------------------------------- invariance and sparsity


def _images(n=400, size=12):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def test_a_translation_invariant_unit_scores_above_a_local_one():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 3, padding=1, padding_mode="circular")  # commutes with circular shifts
    invariant = nn.Sequential(conv, nn.AdaptiveMaxPool2d(1))  # the maximum over all positions
    local = nn.Sequential(conv)  # the centre unit sees one 3x3 window
    images = _images()
    shifts = [translations(images, (-2, -1, 1, 2))]
    high = invariance_score(invariant, images, "1", shifts)
    low = invariance_score(local, images, "0", shifts)
    assert high.score > 3 * low.score
    # by hand: the 0.99 quantile of 400 distinct responses lies between the 396th and 397th, so 4 of 400 fire
    assert high.global_rate == pytest.approx(4 / 400, rel=1e-15)
    # circular shifts leave a global maximum of a circular convolution unchanged: every firing unit keeps firing
    assert high.score == pytest.approx(1 / high.global_rate, rel=1e-15)


def test_invariance_rejects_bad_rates():
    with pytest.raises(ValueError, match=r"expected 0 < rate < 1 and 0 < top <= 1, got rate=1\.5"):
        invariance_score(nn.Sequential(nn.Conv2d(1, 2, 3)), _images(10), "0", rate=1.5)


def test_sparsity_by_hand_and_crelu_at_least_half():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = nn.Sequential(conv, nn.ReLU(), CReLU())
    x = torch.tensor([[[[-1.0, 2.0], [-3.0, 0.5]]]])
    sparsity = activation_sparsity(net, x, ["1", "2"])
    assert sparsity == {"1": 0.5, "2": 0.75}  # CReLU of [0, 2, 0, 0.5]: the positive half keeps 2 zeros of 4
    # Gaussian input has no zeros: exactly one half of every CReLU pair is zero
    assert activation_sparsity(nn.Sequential(CReLU()), torch.randn(2, 3, 4, 4), ["0"])["0"] == 0.5


# ---------------------------------------------------------------- proportional module


def test_proportional_forward_and_inverse_by_hand():
    x = torch.tensor([-1.0, 2.0, -3.0, -4.0, 5.0, -6.0]).reshape(1, 6, 1, 1)
    h = Proportional(1, 3)(x)  # ReLU on channels 0 and 3
    assert h.flatten().tolist() == [0.0, 2.0, -3.0, 0.0, 5.0, -6.0]
    z, known = invert_proportional(h, 1, 3)
    assert known.flatten().tolist() == [False, True, True, False, True, True]
    assert torch.equal(z[known], x[known])  # exact wherever anything is known
    assert torch.equal(proportional(x, 0, 3), x)
    assert torch.equal(proportional(x, 3, 3), torch.relu(x))
    with pytest.raises(ValueError, match="expected 0 <= m <= n and n >= 1, got m=4, n=3"):
        Proportional(4, 3)


def test_reconstruct_through_proportional_says_what_is_lost():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 40, 2), Proportional(1, 4)).double()
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    result = reconstruct(net, x, "1", "lsqr")
    step = result.steps[0]
    assert not step.exact
    assert step.note.startswith("Proportional(1 of 4): negative part of the ReLU channels lost")
    with torch.no_grad():
        z = net[0](x)
    known = (torch.arange(40) % 4 >= 1).reshape(1, 40, 1, 1) | (z > 0)
    assert torch.equal(step.estimate[known.expand_as(z)], z[known.expand_as(z)])  # the linear part: exact


# --- pairing: at least two filters, finite weights, and say what was left out ------------------


def test_pairing_by_layer_skips_single_filters_and_says_so():
    state = {"one.weight": torch.randn(1, 3, 3, 3), "four.weight": torch.randn(4, 3, 3, 3)}
    result = pairing_by_layer(state)
    assert list(result) == ["four.weight"]
    assert result.skipped == {"one.weight": "1 filter: pairing needs at least 2"}
    assert isinstance(result, PairingsByLayer)
    assert pairing_by_layer(state, ["four.weight"]).skipped == {}


def test_pairing_by_layer_refuses_an_explicit_single_filter_layer_and_an_empty_result():
    state = {"one.weight": torch.randn(1, 3, 3, 3), "four.weight": torch.randn(4, 3, 3, 3)}
    with pytest.raises(
        ShapeError,
        match=r"at least 2 filters of at least 2 entries in 'one\.weight', got shape \(1, 3, 3, 3\) "
        r"\(1 filter: pairing needs at least 2\)",
    ):
        pairing_by_layer(state, ["one.weight", "four.weight"])
    with pytest.raises(NoConvWeightsError, match=r"found only one\.weight \(1 filter: pairing needs at least 2\)"):
        pairing_by_layer({"one.weight": torch.randn(1, 3, 3, 3)})
    one_entry = {"a.weight": torch.randn(4, 1, 1, 1), "four.weight": torch.randn(4, 3, 3, 3)}
    assert pairing_by_layer(one_entry).skipped == {
        "a.weight": "1 entry per filter: every cosine is +-1 and random filters have no reference"
    }
    with pytest.raises(ArgumentTypeError, match=r"expected a list of weight names, got the string 'four\.weight'"):
        pairing_by_layer(state, "four.weight")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_pairing_refuses_non_finite_weights_naming_the_layer(bad):
    weight = torch.randn(4, 3, 3, 3)
    weight[2, 0, 0, 0] = bad
    with pytest.raises(
        NonFiniteError,
        match=r"expected finite weights, got NaN or infinite entries in 1 of 4 filters "
        r"\(first: filter 2\)",
    ):
        pairing(weight)
    with pytest.raises(NonFiniteError, match=r"^'conv\.weight': pairing: expected finite weights"):
        pairing_by_layer({"conv.weight": weight})


def test_random_reference_needs_two_dimensions_and_two_filters():
    with pytest.raises(OptionError, match=r"expected_random_mu: expected dim >= 2 and filters >= 2 .*got dim=1"):
        expected_random_mu(1, 5)
    with pytest.raises(OptionError, match=r"random_mu_cdf: .*got dim=3, filters=1"):
        random_mu_cdf(0.0, 3, 1)


def test_save_figure_refuses_an_extension_matplotlib_cannot_write(tmp_path):
    from matplotlib.figure import Figure

    from invertnet.errors import OutputPathError
    from invertnet.plotting.figures import FIGURE_SUFFIXES, save_figure

    assert {".png", ".pdf", ".svg"} <= set(FIGURE_SUFFIXES)
    for name in ["noext", "figure.xyz"]:
        with pytest.raises(OutputPathError, match=r"expected a figure file name ending in .*\.png.*, got "):
            save_figure(Figure(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    save_figure(Figure(), tmp_path / "figure.PDF")
    assert [p.name for p in tmp_path.iterdir()] == ["figure.PDF"]
