"""Every route's claims, checked against the dense matrix (an independent reference), float64.

For each registered route and random small layers (any stride, padding mode, dilation, groups):
- ``pseudo_inverse`` claimed -> the estimate equals ``pinv(A) @ z`` for a response *off* the range;
- ``exact`` claimed -> the layer is injective (dense rank = number of unknowns) and the estimate returns ``x``
  from ``A x + b``;
- ``"auto"`` only ever takes a route that claims ``pseudo_inverse``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOL
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ConvConfig, conv_configs

from invertnet import ROUTES, Route, RouteError, SolveOptions, conv_pinv, register_route
from invertnet.errors import OptionError
from invertnet.pinv import ConvLayer, choose_route
from invertnet.pinv.patch import fields_are_disjoint

# LSQR stops at atol; its claims hold to a looser tolerance than the closed forms' rounding
ITERATIVE_RTOL = 1e-7
SOLVE = SolveOptions(atol=1e-14, maxiter=20_000, warn=False)


def _check_claims(cfg: ConvConfig, method: str) -> None:
    conv = cfg.conv()
    op = ConvLayer(conv, cfg.size).op
    dense = op.to_dense()
    rank = int(torch.linalg.matrix_rank(dense))
    bias = 0 if conv.bias is None else conv.bias.detach().reshape(1, -1, 1, 1)
    x = torch.rand(2, *op.in_shape, dtype=torch.float64)
    z_off = torch.randn(2, *op.out_shape, dtype=torch.float64)  # almost surely off the range when rank < m
    try:
        with torch.no_grad():
            estimate, info = conv_pinv(conv, z_off + bias, cfg.size, method, options=SOLVE, return_info=True)
            exact_estimate = conv_pinv(conv, conv(x), cfg.size, method, options=SOLVE)
    except RouteError:
        assert method not in ("auto", "patch", "dense", "lsqr")  # these apply to every layer
        return
    rtol = TOL[torch.float64][0] * 1e3 if info.closed_form else ITERATIVE_RTOL
    scale = float(dense.abs().max())
    if info.pseudo_inverse:
        reference = (torch.linalg.pinv(dense) @ z_off.flatten(1).T).T.reshape(estimate.shape)
        gap = float((estimate - reference).norm() / reference.norm().clamp(min=1e-300))
        # the cutoff matters only for nearly singular layers; skip those (condition beyond 1e8)
        s = torch.linalg.svdvals(dense)
        if float(s[rank - 1]) > 1e-8 * scale:
            assert gap <= rtol * max(1.0, float(s[0] / s[rank - 1])), (info, gap)
    if info.exact:
        assert rank == op.in_dim, f"{info.method} claims exact on a layer of rank {rank} < {op.in_dim}"
        gap = float((exact_estimate - x).norm() / x.norm())
        assert gap <= rtol * 1e3, (info, gap)
    if method == "auto":
        assert info.pseudo_inverse, info


@settings(max_examples=60, deadline=None)
@given(conv_configs(), st.sampled_from(["auto", *ROUTES]))
def test_route_claims_hold_against_the_dense_matrix(cfg: ConvConfig, method: str):
    _check_claims(cfg, method)


@settings(max_examples=40, deadline=None)
@given(conv_configs(full_rank=True), st.sampled_from(["auto", *ROUTES]))
def test_route_claims_hold_on_injective_layers(cfg: ConvConfig, method: str):
    _check_claims(cfg, method)


#: Deterministic layers that reach every route's branches (the random ones rarely hit circular ones).
TABLE = {
    "circular, injective": ConvConfig(2, 3, 1, (3, 3), (1, 1), (1, 1), (1, 1), "circular", (6, 6), True),
    "circular, fewer filters": ConvConfig(3, 2, 1, (3, 3), (1, 1), (1, 1), (1, 1), "circular", (6, 6), True),
    "circular, stride 2": ConvConfig(2, 9, 1, (3, 3), (2, 2), (1, 1), (1, 1), "circular", (8, 8), False),
    "circular, too few for stride 2": ConvConfig(2, 7, 1, (3, 3), (2, 2), (1, 1), (1, 1), "circular", (8, 8), False),
    "no padding, stride divides": ConvConfig(1, 4, 1, (2, 2), (2, 2), (0, 0), (1, 1), "zeros", (6, 6), True),
    "1x1": ConvConfig(4, 3, 1, (1, 1), (1, 1), (0, 0), (1, 1), "zeros", (5, 5), True),
    "window block": ConvConfig(2, 24, 1, (4, 4), (2, 2), (0, 0), (1, 1), "zeros", (11, 11), False),
    "grouped, reflect": ConvConfig(1, 3, 2, (2, 2), (1, 1), (1, 1), (1, 1), "reflect", (5, 5), True),
}


@pytest.mark.parametrize("method", ["auto", *ROUTES])
@pytest.mark.parametrize("name", list(TABLE))
def test_route_claims_hold_on_the_table(name: str, method: str):
    _check_claims(TABLE[name], method)


def test_a_rank_deficient_circular_layer_is_not_called_exact():
    conv = TABLE["circular, injective"].conv()
    with torch.no_grad():
        conv.weight[:, 1] = conv.weight[:, 0]  # two channels seen identically: x0 - x1 is invisible
    _, info = conv_pinv(conv, conv(torch.rand(1, 2, 6, 6, dtype=torch.float64)), (6, 6), "fft", return_info=True)
    assert (info.pseudo_inverse, info.exact) == (True, False)


@pytest.mark.parametrize(
    ("kwargs", "disjoint"),
    [
        ({"kernel_size": 1}, True),
        ({"kernel_size": 2, "stride": 2}, True),
        ({"kernel_size": 1, "padding": 1}, True),  # padded rows are zero rows of A
        ({"kernel_size": 2, "stride": 2, "padding": 1}, False),  # border fields mix padding with pixels
        ({"kernel_size": 1, "padding": 1, "padding_mode": "reflect"}, True),  # copies: averaging is the LS fit
        ({"kernel_size": 2, "stride": 2, "padding": 1, "padding_mode": "reflect"}, False),  # copies mix fields
        ({"kernel_size": 3}, False),
        ({"kernel_size": 2, "stride": 3}, True),  # gaps: unread pixels are zero columns of A
    ],
)
def test_disjoint_fields_make_the_patch_route_the_pseudo_inverse(kwargs, disjoint):
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(2, 3, **kwargs).double()
    assert fields_are_disjoint(conv, (6, 6)) == disjoint
    op = ConvLayer(conv, (6, 6)).op
    z = torch.randn(1, *op.out_shape, dtype=torch.float64)
    reference = (torch.linalg.pinv(op.to_dense()) @ z.flatten(1).T).T.reshape(1, *op.in_shape)
    bias = conv.bias.detach().reshape(1, -1, 1, 1)
    estimate, info = conv_pinv(conv, z + bias, (6, 6), "patch", return_info=True)
    assert info.pseudo_inverse == disjoint
    gap = float((estimate - reference).norm() / reference.norm())
    assert (gap <= 1e-12) if disjoint else (gap > 1e-3)


def test_auto_takes_the_patch_route_on_a_1x1_convolution_and_says_why():
    conv = torch.nn.Conv2d(192, 96, 1).double()
    y = conv(torch.rand(1, 192, 12, 12, dtype=torch.float64))
    _, info = conv_pinv(conv, y, (12, 12), return_info=True)
    assert (info.method, info.closed_form, info.pseudo_inverse, info.exact) == ("patch", True, True, False)
    assert info.reason.startswith("each receptive field reads its own pixels (a 1x1 kernel, or disjoint fields)")


def test_auto_passes_over_a_factorisation_above_the_memory_budget():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular").double()
    layer = ConvLayer(conv, (16, 16))
    assert choose_route(layer, SolveOptions())[0].name == "fft"
    route, reason = choose_route(layer, SolveOptions(max_memory=1000))
    assert route.name == "lsqr"
    assert "fft needs" in reason
    assert "over max_memory" in reason


def test_a_route_name_cannot_be_registered_twice():
    class Again(Route):
        name = "patch"
        summary = ""
        closed_form = True
        because = ""

        def why_not(self, layer, options):  # pragma: no cover - never called
            return None

        def pinv_reason(self, layer):  # pragma: no cover
            return None

        def cost(self, layer, options):  # pragma: no cover
            raise NotImplementedError

        def solve(self, layer, z, options):  # pragma: no cover
            raise NotImplementedError

    with pytest.raises(OptionError, match=r"expected a new route name, got 'patch', which is taken"):
        register_route(Again())


def test_options_are_checked():
    with pytest.raises(OptionError, match=r"expected a positive atol, got 0"):
        SolveOptions(atol=0)
    with pytest.raises(OptionError, match=r"expected rtol in \[0, 1\) or None, got 2"):
        SolveOptions(rtol=2)


def test_the_docs_list_every_registered_route_with_its_summary():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "user_guide" / "exact.md").read_text()
    for name, route in ROUTES.items():
        assert f"| `{name}` | {route.summary} |" in page, name


def test_a_lossy_layer_says_what_it_loses():
    assert (
        ConvLayer(torch.nn.Conv2d(4, 2, 1), (5, 5))
        .loss()
        .startswith("fewer responses (50) than unknowns (100): a null space is lost")
    )
    assert ConvLayer(torch.nn.Conv2d(1, 16, 2, stride=3), (8, 8)).loss() == (
        "28 of 64 pixel positions no filter reads (set to 0)"
    )
    assert ConvLayer(torch.nn.Conv2d(3, 3, 3, padding=1), (6, 6)).loss().startswith("not proven injective")
