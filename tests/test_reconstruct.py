import itertools
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import nn

from invertnet import (
    AVR,
    CReLU,
    LayerNotFoundError,
    OptionError,
    ShapeError,
    UnsupportedLayerError,
    reconstruct,
    relative_error,
)
from invertnet.evaluation.compare import compare_methods, format_comparison
from invertnet.pinv import SolveOptions
from invertnet.reconstruction.joint import LBFGS_ROUND, JointOptions, match_features


def _injective_crelu_stack() -> nn.Sequential:
    """Every conv has at least as many filters as patch entries: each layer, hence the stack, is invertible."""
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 12, 2),  # 12 filters >= 3*2*2
            crelu1=CReLU(),
            conv2=nn.Conv2d(24, 24, 1, bias=False),  # 1x1, 24 >= 24
            bn2=nn.BatchNorm2d(24),
            leaky2=nn.LeakyReLU(0.2),
            conv3=nn.Conv2d(24, 220, (3, 3), stride=2, padding=1),  # 220 >= 24*9 = 216
            crelu3=CReLU(negative_slope=0.1),
            drop=nn.Dropout(0.5),
            ident=nn.Identity(),
        )
    ).double()
    with torch.no_grad():
        net.bn2.running_mean.normal_()
        net.bn2.running_var.uniform_(0.5, 2.0)
        net.bn2.weight.uniform_(0.5, 2.0)
        net.bn2.bias.normal_()
    return net.eval()


def test_injective_crelu_stack_is_recovered_exactly():
    net = _injective_crelu_stack()
    x = torch.rand(2, 3, 17, 17, dtype=torch.float64)
    result = reconstruct(net, x, "ident")
    assert result.exact
    assert [s.name for s in result.steps] == [
        "ident",
        "drop",
        "crelu3",
        "conv3",
        "leaky2",
        "bn2",
        "conv2",
        "crelu1",
        "conv1",
    ]
    # conv3 (stride 2, padding 1) reads every pixel of its 16x16 input: nothing is outside coverage
    assert float(result.relative_error.max()) <= 1e-8
    assert bool((result.psnr > 150).all())
    for step in result.steps:
        assert float(step.relative_error.max()) <= 1e-8, step.name


def test_relu_baseline_measurably_loses():
    torch.manual_seed(0)
    relu_net = nn.Sequential(nn.Conv2d(3, 12, 2), nn.ReLU(), nn.Conv2d(12, 48, 2), nn.ReLU()).double().eval()
    crelu_net = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU(), nn.Conv2d(24, 96, 2), CReLU()).double().eval()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    exact = reconstruct(crelu_net, x, "3")
    assert float(exact.relative_error) < 1e-10
    one, two = (reconstruct(relu_net, x, layer, "lsqr", relu="identity") for layer in ("1", "3"))
    assert not one.exact
    assert one.steps[0].note == "negative part lost (the paper's ReLU baseline)"
    # reference values (seed 0, float64; A^+ of each conv by LSQR): what the identity reading loses
    assert float(one.relative_error) == pytest.approx(0.530622805, rel=1e-6)
    assert float(two.relative_error) == pytest.approx(0.723452722, rel=1e-6)
    # the paper's patch reading is exact on the range only: off it, the square but ill-conditioned 48x48 patch
    # matrix of the second conv amplifies what the ReLU removed (measured 281)
    assert float(reconstruct(relu_net, x, "3", "patch", relu="identity").relative_error) > 100.0
    # "layers" damps the second conv (its input is not exact) and projects on [0, 1]: no amplification
    assert float(reconstruct(relu_net, x, "3", "layers", relu="identity").relative_error) == pytest.approx(
        0.696397441, rel=1e-6
    )


def test_container_and_dotted_names():
    class Net(nn.Module):
        """torchvision-style: a features container with integer names, forward chains named submodules."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU(), nn.Conv2d(24, 24, 1), CReLU())
            self.head = nn.Linear(10, 2)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    net = Net().double().eval()
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    by_leaf = reconstruct(net, x, "features.3")
    by_container = reconstruct(net, x, "features")
    assert torch.equal(by_leaf.image, by_container.image)
    assert float(by_leaf.relative_error) < 1e-10


def test_maxpool_switches_and_guess():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU(), nn.MaxPool2d(2)).double()
    x = torch.rand(1, 3, 17, 17, dtype=torch.float64)
    switches = reconstruct(net, x, "2", maxpool="switches")
    guess = reconstruct(net, x, "2", maxpool="guess")
    assert switches.steps[0].route == "switches"
    assert "Zeiler" in switches.steps[0].note
    assert guess.steps[0].note.startswith("a guess")
    # with the switches, every maximum returns to its own position
    pooled_input = switches.steps[0].estimate
    truth = reconstruct(net, x, "1").features
    kept = pooled_input != 0
    torch.testing.assert_close(pooled_input[kept], truth[kept])
    assert not guess.exact
    assert float(guess.relative_error) > 1e-3


def test_avgpool_is_inverted_by_its_pseudo_inverse():
    net = nn.Sequential(nn.AvgPool2d(2)).double()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    result = reconstruct(net, x, "0")
    # pinv of the 2x2 average is nearest upsampling of the averages (hand-derived: P = 1/4 * ones(1, 4), P^+ = ones)
    expected = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2)
    torch.testing.assert_close(result.image, expected)


def test_avr_is_a_lossy_baseline():
    net = nn.Sequential(nn.Conv2d(1, 4, 2), AVR()).double()
    result = reconstruct(net, torch.rand(1, 1, 8, 8, dtype=torch.float64), "1")
    assert result.steps[0].note == "AVR: sign lost"
    assert not result.exact


def test_unknown_layer_lists_valid_names():
    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3), act1=nn.ReLU()))
    with pytest.raises(LayerNotFoundError, match=r"got 'conv9'; module names: conv1, act1"):
        reconstruct(net, torch.rand(1, 3, 8, 8), "conv9")


def test_unsupported_layer_is_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmax2d())
    with pytest.raises(
        UnsupportedLayerError, match=r"expected a layer invertnet can invert \(.*Conv2d.*\), got Softmax2d"
    ):
        reconstruct(net, torch.rand(1, 3, 8, 8), "1")


def test_a_contractive_skip_is_solved_by_its_fixed_point():
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.b = nn.Conv2d(3, 27, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(x) + x)

    torch.manual_seed(0)
    net = Skip().double()
    with torch.no_grad():
        net.a.weight.mul_(0.2)  # Lip(a) = sigma_max < 1: x -> x + a(x) is injective
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    result = reconstruct(net, x, "b")
    assert [s.route for s in result.steps] == ["lsqr", "fixed point"]
    assert result.steps[1].exact
    assert float(result.relative_error) < 1e-9


def test_training_mode_batchnorm_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    with pytest.raises(ValueError, match=r"expected BatchNorm2d '1' in eval mode.*call model.eval\(\)"):
        reconstruct(net, torch.rand(2, 3, 8, 8), "1")


def test_bad_method_and_maxpool_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(
        ValueError,
        match=r"expected method in \['auto', 'layers', 'patch', 'window', 'fft', 'dense', 'lsqr', 'joint'\], "
        r"got 'nope'",
    ):
        reconstruct(net, torch.rand(1, 3, 8, 8), "0", method="nope")
    with pytest.raises(ValueError, match=r"expected maxpool in \('switches', 'guess'\), got 'max'"):
        reconstruct(net, torch.rand(1, 3, 8, 8), "0", maxpool="max")


def test_follows_model_dtype():
    net = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU())  # float32 model, float64 image
    result = reconstruct(net, torch.rand(1, 3, 16, 16, dtype=torch.float64), "1")
    assert result.image.dtype == torch.float32
    assert float(relative_error(result.image, result.input)) < 1e-4


def test_whole_operator_routes_agree():
    """Circular layers: fft (closed form), lsqr (iterative) and dense give the same minimum-norm estimate."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
        CReLU(),
        nn.Conv2d(8, 6, 3, padding=1, padding_mode="circular"),
    ).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    results = {
        m: reconstruct(net, x, "2", m, options=SolveOptions(atol=1e-14, maxiter=5000)) for m in ("fft", "lsqr", "dense")
    }
    assert [s.route for s in results["fft"].steps] == ["fft", "invert_crelu", "fft"]
    torch.testing.assert_close(results["lsqr"].image, results["fft"].image, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(results["dense"].image, results["fft"].image, rtol=1e-8, atol=1e-10)
    assert "minimum-norm" in results["fft"].steps[0].note


def test_unconverged_lsqr_is_reported_in_the_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1)).double()  # no block of outputs determines its window
    result = reconstruct(
        net, torch.rand(1, 3, 12, 12, dtype=torch.float64), "0", "lsqr", options=SolveOptions(maxiter=2)
    )
    assert result.steps[0].route == "lsqr"
    assert "not converged after 2 iterations" in result.steps[0].note


def _deep_injective_stack() -> nn.Sequential:
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Conv2d(2, 8, 2), CReLU(), nn.Conv2d(16, 20, 2), CReLU(), nn.Conv2d(40, 44, 2), CReLU())
        .double()
        .eval()
    )


def test_joint_recovers_an_injective_crelu_stack_from_its_deepest_layer():
    net = _deep_injective_stack()
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64)
    result = reconstruct(net, x, "5", "joint")
    assert result.joint is not None
    assert result.joint.converged
    assert float(result.relative_error) <= 1e-6
    assert float(result.feature_residual) <= 1e-10
    assert result.note == ""


@pytest.mark.parametrize(
    ("evaluations", "steps", "rounds"),
    [(0, 1, 1), (2 * LBFGS_ROUND, 0, 2), (LBFGS_ROUND + 3, 1, 3)],
)
def test_joint_stops_on_its_caps_and_reports_them(evaluations, steps, rounds):
    net = _deep_injective_stack()
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        options = JointOptions(lbfgs_evaluations=evaluations, max_steps=steps, inner_maxiter=3)
        capped = match_features(net, net(x), torch.full_like(x, 0.5), options)
    assert capped.evaluations == evaluations
    assert capped.iterations == steps
    assert not capped.converged
    assert len(capped.history[0]) == 1 + rounds
    # each round and each step only ever lowers the objective (no prior here: the residual)
    assert all(later <= earlier for earlier, later in itertools.pairwise(capped.history[0]))


def test_joint_stops_at_the_residual_tolerance():
    net = _deep_injective_stack()
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        loose = match_features(net, net(x), torch.full_like(x, 0.5), JointOptions(tol=1e-2, max_steps=0))
    assert loose.converged
    assert float(loose.residual) <= 1e-2
    assert loose.evaluations < 500
    assert loose.history[0][-2] > 1e-2  # it stopped at the first round that met the tolerance


def test_joint_start_from_the_layers_when_they_already_match():
    net = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU()).double()  # injective: layer by layer is exact
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    result = reconstruct(net, x, "1", "joint")
    assert result.joint is not None
    assert (int(result.joint.evaluations), int(result.joint.iterations)) == (0, 0)
    assert float(result.relative_error) <= 1e-10


def test_joint_rejects_an_unknown_start():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"expected start in \('auto', 'layers', 'flat'\), got 'noise'"):
        reconstruct(net, torch.rand(1, 3, 8, 8), "0", "joint", joint=JointOptions(start="noise"))


def test_joint_on_a_non_injective_prefix_says_one_of_many():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), CReLU(), nn.Conv2d(8, 2, 1)).double()
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    result = reconstruct(net, x, "2", "joint", joint=JointOptions(tv=1e-3, box=(0.0, 1.0), max_steps=3))
    assert result.note.startswith("the features have many preimages (2 has fewer responses than unknowns)")
    assert float(result.image.min()) >= 0.0
    assert float(result.image.max()) <= 1.0


def test_joint_rejects_negative_tv():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"expected a non-negative tv weight, got -1.0; use 0 for no prior"):
        reconstruct(net, torch.rand(1, 3, 8, 8), "0", "joint", joint=JointOptions(tv=-1.0))


def test_unsupported_variants_are_refused_with_a_reason():
    x = torch.rand(1, 3, 8, 8)
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    with pytest.raises(UnsupportedLayerError, match=r"expected BatchNorm2d '1' with running statistics"):
        reconstruct(no_stats, x, "1")
    avg = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True))
    with pytest.raises(UnsupportedLayerError, match=r"expected AvgPool2d '0' to be a plain average"):
        reconstruct(avg, x, "0")
    ceil = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True))
    with pytest.raises(UnsupportedLayerError, match=r"without ceil_mode for maxpool='guess'"):
        reconstruct(ceil, x, "0", maxpool="guess")
    dropout = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5)).train()
    with pytest.raises(ValueError, match=r"expected Dropout '1' in eval mode"):
        reconstruct(dropout, x, "1")


def test_injectivity_report_needs_a_conv_or_pool():
    from invertnet.analysis.injectivity import injectivity_report

    with pytest.raises(UnsupportedLayerError, match=r"expected a model with Conv2d or pooling layers, got Sequential"):
        injectivity_report(nn.Sequential(nn.ReLU()), (8, 8))


def test_compare_methods_returns_one_row_per_layer_and_method():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), CReLU(), nn.Conv2d(8, 16, 3, padding=1), CReLU()).double()
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    rows = compare_methods(net, x, ["1", "3"], ["patch", "lsqr", "joint"])
    assert [(r.layer, r.method) for r in rows] == [
        (layer, m) for layer in ("1", "3") for m in ("patch", "lsqr", "joint")
    ]
    by = {(r.layer, r.method): r for r in rows}
    # conv 3 -> 4 filters on 27 patch entries: the patch route is lossy, the operator's own solution exact
    assert by["1", "patch"].relative_error > 1e-2
    assert by["1", "lsqr"].relative_error <= 1e-8
    # from the deeper layer the joint inversion matches the features the layer-by-layer routes miss
    assert by["3", "joint"].feature_residual <= 1e-10
    assert by["3", "joint"].feature_residual < by["3", "lsqr"].feature_residual
    assert all(r.seconds > 0 and r.image.shape == x.shape for r in rows)
    table = format_comparison(rows).splitlines()
    assert table[0].split() == ["layer", "method", "PSNR", "dB", "SSIM", "rel.", "err.", "feat.", "res.", "s"]
    assert len(table) == 1 + len(rows)


@pytest.mark.parametrize(
    ("image", "methods", "error", "match"),
    [
        (torch.rand(2, 3, 8, 8), ["patch"], ShapeError, r"expected one image \(1, C, H, W\), got a batch of 2"),
        (torch.rand(1, 3, 8, 8), ["patch", "magic"], ValueError, r"expected methods among .*got \['patch', 'magic'\]"),
    ],
)
def test_compare_methods_rejects_bad_input(image, methods, error, match):
    with pytest.raises(error, match=match):
        compare_methods(nn.Sequential(nn.Conv2d(3, 4, 3)), image, ["0"], methods)


def test_one_vocabulary_closed_form_and_exact_are_reported_apart():
    torch.manual_seed(0)
    circular = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, padding_mode="circular"), CReLU()).double()
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    fft = reconstruct(circular, x, "1", "fft")
    # an injective circular layer inverted by its DFT pseudo-inverse: closed form and exact (measured 8e-16)
    assert [(s.route, s.closed_form, s.exact) for s in fft.steps] == [
        ("invert_crelu", True, True),
        ("fft", True, True),
    ]
    assert (fft.closed_form, fft.exact) == (True, True)
    assert float(fft.relative_error) < 1e-13
    lsqr = reconstruct(circular, x, "1", "lsqr", options=SolveOptions(maxiter=2, warm_start=False))
    step = lsqr.steps[-1]
    assert (step.route, step.closed_form, step.exact) == ("lsqr", False, False)
    assert "not converged after 2 iterations" in step.note
    assert (lsqr.closed_form, lsqr.exact) == (False, False)


def test_avgpool_step_names_the_route_it_took():
    net = nn.Sequential(nn.AvgPool2d(2)).double()  # kernel = stride: disjoint windows, the patch route is A^+
    result = reconstruct(net, torch.rand(1, 3, 8, 8, dtype=torch.float64), "0")
    assert (result.steps[0].route, result.steps[0].exact) == ("patch", False)
    assert result.steps[0].note.startswith("averaging loses detail within each window")


def test_register_inverse_refuses_to_overwrite_silently():
    from invertnet.inverses import StepResult, inverse_for, register_inverse

    before = inverse_for(nn.ReLU())
    with pytest.raises(ValueError, match=r"expected module types without an inverse, got ReLU, which have one; pass"):
        register_inverse(nn.ReLU)(lambda module, record, y, ctx: StepResult(y, "mine", False, closed_form=True))
    try:
        register_inverse(nn.ReLU, replace=True)(
            lambda module, record, y, ctx: StepResult(y, "mine", False, closed_form=True)
        )
        assert reconstruct(nn.Sequential(nn.ReLU()), torch.rand(1, 1, 4, 4), "0").steps[0].route == "mine"
    finally:
        register_inverse(nn.ReLU, replace=True)(before)


def test_progress_reports_one_line_per_layer():
    lines: list[str] = []
    net = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU()).double()
    reconstruct(net, torch.rand(1, 3, 8, 8, dtype=torch.float64), "1", progress=lines.append)
    assert lines == ["1: invert_crelu", "0: lsqr"]


# --------------------------------------------------------------------------------------------------------------------
# ReLU through its active set (relu="active_set", the default)


def _relu_net(*layers: Callable[[], nn.Module]) -> nn.Module:
    """Layers built after seeding (seed 0), so the weights do not depend on the tests run before."""
    torch.manual_seed(0)
    return nn.Sequential(*(layer() for layer in layers)).double().eval()


def test_a_determined_relu_layer_is_inverted_exactly_through_its_active_set():
    net = _relu_net(lambda: nn.Conv2d(2, 48, 3, padding=1), nn.ReLU)
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    result = reconstruct(net, x, "1")
    assert result.exact
    assert [(s.route, s.exact) for s in result.steps] == [("active_set", True), ("active_set", True)]
    assert float(result.relative_error.max()) <= 1e-10  # LSQR to 1e-12: measured 3e-12
    with torch.no_grad():
        z = net[0](x)
    assert relative_error(result.steps[0].estimate, z).max() <= 1e-10  # the ReLU step now holds its input
    assert "patch: every pixel lies in one of" in result.steps[1].note
    baseline = reconstruct(net, x, "1", method="layers", relu="identity")
    assert not baseline.exact
    assert float(baseline.relative_error.min()) > 0.1


def test_batchnorm_carries_the_constraints_with_a_negative_scale():
    net = _relu_net(lambda: nn.Conv2d(1, 32, 3, padding=1), lambda: nn.BatchNorm2d(32), nn.ReLU)
    with torch.no_grad():
        net[1].weight.copy_(torch.linspace(-2, 2, 33)[torch.arange(33) != 16])  # negative scales swap the bounds
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    result = reconstruct(net, x, "2")
    assert result.exact
    assert [s.route for s in result.steps] == ["active_set", "affine", "active_set"]
    assert float(result.relative_error) <= 1e-10


def test_maxpool_switches_and_window_bounds_reach_the_convolution():
    """From a max-pooled ReLU layer: equations at the switches, the window maxima as bounds; certified exact."""
    net = _relu_net(lambda: nn.Conv2d(1, 128, 3, padding=1), nn.ReLU, lambda: nn.MaxPool2d(2))
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    result = reconstruct(net, x, "2")
    assert [s.route for s in result.steps] == ["switches", "active_set", "active_set"]
    assert result.exact
    assert float(result.relative_error) <= 1e-10
    assert float(reconstruct(net, x, "2", method="layers", relu="identity").relative_error) > 0.1


def test_linear_relu_in_the_walk():
    net = _relu_net(nn.Flatten, lambda: nn.Linear(12, 40), nn.ReLU)
    x = torch.rand(3, 3, 2, 2, dtype=torch.float64)
    result = reconstruct(net, x, "2")
    assert result.exact
    assert [s.route for s in result.steps] == ["active_set", "active_set", "reshape"]
    assert float(result.relative_error.max()) <= 1e-10


def test_an_undetermined_relu_layer_gives_an_input_that_reproduces_its_output():
    net = _relu_net(lambda: nn.Conv2d(3, 8, 3, padding=1), nn.ReLU)
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    result = reconstruct(net, x, "1", method="lsqr")  # the active set itself (the default leaves it to completion)
    assert not result.exact
    assert "rank deficient by count" in result.steps[1].note
    # matched to the feasibility tolerance (1e-8 of the data's scale): measured 2.6e-9
    assert float(result.feature_residual) <= 1e-7
    baseline = reconstruct(net, x, "1", method="layers", relu="identity")
    assert float(baseline.feature_residual) > 0.1
    # measured (seed 0) 15.7 dB against 15.0 dB for the identity reading: matching the features is not
    # recovering the input where the active rows leave a null space
    assert float(result.relative_error) > 0.1


def test_relu_mode_must_be_known():
    net = _relu_net(lambda: nn.Conv2d(3, 8, 3), nn.ReLU)
    with pytest.raises(OptionError, match=r"expected relu in \('active_set', 'identity'\), got 'clip'"):
        reconstruct(net, torch.rand(1, 3, 8, 8, dtype=torch.float64), "1", relu="clip")
