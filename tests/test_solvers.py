"""Whole-operator pseudo-inverses (fft, lsqr, dense) against the dense matrix, and spectra against the dense SVD."""

import re
import warnings
from dataclasses import replace

import pytest
import torch
from conftest import TOL, assert_close, condition, dense_pinv_solution, relative_gap
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import ConvConfig, conv_configs

from invertnet import ConvOperator, CReLU, RouteError, SolveOptions, conv_pinv
from invertnet.analysis import injectivity
from invertnet.analysis.injectivity import injectivity_report
from invertnet.linalg.solvers import ConvergenceWarning, lsqr
from invertnet.linalg.spectral import CirculantFactorization, circulant_reason, circulant_singular_values
from invertnet.linalg.spectrum import (
    conv_singular_values,
    dense_singular_values,
    sigma_max,
    sigma_min,
    sigma_min_cholesky,
)
from invertnet.pinv import choose_method


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_lsqr_matches_dense_pinv(cfg: ConvConfig):
    """Under- and over-determined layers alike: LSQR from 0 reaches the minimum-norm least-squares solution."""
    op = cfg.operator()
    singular = torch.linalg.svdvals(op.to_dense())
    nonzero = singular[singular > 1e-10 * singular[0]]
    # LSQR's accuracy is governed by the condition number of A on its row space: keep it moderate
    assume(len(nonzero) == len(singular) and float(nonzero[0] / nonzero[-1]) < 1e3)
    z = torch.randn(2, *op.out_shape, dtype=torch.float64)
    result = lsqr(op, z, atol=1e-14, btol=1e-14, maxiter=5000)
    assert bool(result.converged.all())
    # iterative, stopped at atol = btol = 1e-14: measured gaps up to 3.3e-13 (300 examples), hence 3e-11
    assert relative_gap(result.x, dense_pinv_solution(op, z)) <= 3e-11


@st.composite
def circular_configs(draw: st.DrawFn) -> ConvConfig:
    """Circular layers whose output grid is the input grid divided by the stride (what the DFT diagonalises)."""
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = tuple(s[i] * draw(st.integers(2, 4)) for i in range(2))
    # circular padding p on each side: output (H + 2p - d(k-1) - 1) // s + 1 == H / s
    pads = []
    for i in range(2):
        span = d[i] * (k[i] - 1)
        p = next((p for p in range(0, 4) if (size[i] + 2 * p - span - 1) // s[i] + 1 == size[i] // s[i]), None)
        assume(p is not None and p <= size[i])
        pads.append(p)
    groups = draw(st.integers(1, 2))
    return ConvConfig(
        draw(st.integers(1, 2)),
        draw(st.integers(1, 4)),
        groups,
        k,
        s,
        tuple(pads),
        d,
        "circular",
        size,
        draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None)
@given(circular_configs())
def test_fft_matches_dense_pinv_and_svd(cfg: ConvConfig):
    conv = cfg.conv()
    op = ConvOperator.from_conv(conv, cfg.size)
    assume(circulant_reason(op) is None)
    dense = op.to_dense()
    # singular values: closed form, exact up to rounding relative to the largest (measured 5.0e-15)
    expected = torch.linalg.svdvals(dense)
    actual = conv_singular_values(conv, cfg.size)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) <= TOL[torch.float64][0] * float(expected[0])
    # pseudo-inverse: A^+ y with the same cutoff as torch.linalg.pinv's default
    y = torch.randn(2, *op.out_shape, dtype=torch.float64)
    with torch.no_grad():
        z = y - (conv.bias.reshape(1, -1, 1, 1) if conv.bias is not None else 0)
        x_fft, info = conv_pinv(conv, y, cfg.size, method="fft", return_info=True)
    assert info.method == "fft"
    # closed form: exact up to rounding amplified by the condition number of the kept spectrum
    assert_close(x_fft, dense_pinv_solution(op, z), cond=condition(dense))


@settings(max_examples=80, deadline=None)
@given(conv_configs())
def test_circulant_singular_values_are_the_factorisation_s(cfg: ConvConfig):
    """svdvals on half the frequencies, mirrored (or once for a constant symbol) = the per-frequency SVDs."""
    op = cfg.operator()
    h, w = op.in_shape[1:]
    assume(h % op.stride[0] == 0 and w % op.stride[1] == 0)
    like = torch.zeros((), dtype=torch.float64)
    expected = CirculantFactorization(op, like).singular_values()
    actual = circulant_singular_values(op, like)
    assert actual.shape == expected.shape
    # the same matrices by two LAPACK drivers: measured up to 8e-16 relative to the largest (200 draws)
    assert float((actual - expected).abs().max()) <= 1e-13 * float(expected[0])


def test_dense_singular_values_are_the_dense_matrix_s():
    op = ConvOperator(torch.randn(5, 2, 3, 3, dtype=torch.float64), (7, 6), padding=1, padding_mode="replicate")
    expected = torch.linalg.svdvals(op.to_dense())
    # the same matrix (placed_matrix == to_dense is tested in test_operators): equal up to rounding, measured 0
    assert_close(dense_singular_values(op), expected)


def test_dense_route_satisfies_penrose_conditions():
    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    op = ConvOperator.from_conv(conv, (6, 6))
    a = op.to_dense()
    basis = torch.eye(op.out_dim, dtype=torch.float64).reshape(-1, *op.out_shape)
    with torch.no_grad():
        bias = conv.bias.reshape(1, -1, 1, 1)
        a_plus = conv_pinv(conv, basis + bias, (6, 6), method="dense").reshape(op.out_dim, -1).T
    cond = condition(a)
    assert_close(a @ a_plus @ a, a, cond=cond)
    assert_close(a_plus @ a @ a_plus, a_plus, cond=cond)
    assert_close((a @ a_plus).T, a @ a_plus, cond=cond)
    assert_close((a_plus @ a).T, a_plus @ a, cond=cond)


@pytest.mark.parametrize(
    ("make_conv", "size"),
    [
        (lambda: torch.nn.Conv2d(3, 8, 3, padding=1), (7, 7)),
        (lambda: torch.nn.Conv2d(2, 9, (2, 3), stride=(1, 2), padding=(1, 0)), (8, 9)),
        (lambda: torch.nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="reflect"), (6, 6)),
        (lambda: torch.nn.Conv2d(3, 12, 2, stride=2), (8, 8)),
    ],
    ids=["3x3", "non-square", "dilated-grouped-reflect", "stride-2"],
)
def test_krylov_extreme_singular_values_match_dense(make_conv, size):
    torch.manual_seed(0)
    op = ConvOperator.from_conv(make_conv().double(), size)
    singular = torch.linalg.svdvals(op.to_dense())
    smallest, converged = sigma_min(op)
    assert converged
    # iterative (Lanczos): measured relative errors up to 8.8e-16 (largest) and 1.4e-13 (smallest)
    assert abs(sigma_max(op) - float(singular[0])) <= 1e-13 * float(singular[0])
    assert abs(smallest - float(singular[-1])) <= 5e-12 * float(singular[-1])
    # with sigma_max handed over (no second run for the shift), and with the null-space guard skipped
    for options in ({"largest": sigma_max(op)}, {"largest": sigma_max(op), "injective": True}):
        smallest, converged = sigma_min(op, **options)
        assert converged
        assert abs(smallest - float(singular[-1])) <= 5e-12 * float(singular[-1])  # measured up to 1.4e-13
    if op.pad.mode == "zeros":  # through the Cholesky factor of the Gram matrix: measured up to 1.2e-15
        assert abs(sigma_min_cholesky(op) - float(singular[-1])) <= 1e-13 * float(singular[-1])


def test_sigma_min_cholesky_on_a_singular_layer():
    """x0 - x1 is invisible: the Gram matrix is singular, so no factor (None) or a value at rounding level."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 8, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight[:, 1] = conv.weight[:, 0]
    op = ConvOperator.from_conv(conv, (9, 9))
    value = sigma_min_cholesky(op)
    assert value is None or value <= 1e-6 * sigma_max(op)


def test_sigma_min_sees_pixels_no_filter_reads():
    """A null space orthogonal to the range of A^T A: plain Lanczos on A^T A reported 0.55 here."""
    torch.manual_seed(0)
    # 28 px: 5 x 5 outputs read pixels 0..26 of 28 (2400 equations for 2352 unknowns; the dense SVD below is the
    # cost of this test, so the smallest size with more equations than unknowns and an unread pixel)
    op = ConvOperator(torch.randn(96, 3, 11, 11, dtype=torch.float64), (28, 28), stride=4)
    assert float(torch.linalg.svdvals(op.to_dense())[-1]) < 1e-12
    assert sigma_min(op) == (0.0, True)


def test_injectivity_report_verdicts():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 12, 2),  # 12 >= 3*2*2 filters: injective, exactly recovered
        CReLU(),  # 24 channels, 12 unknowns
        torch.nn.Conv2d(24, 12, 1),  # fewer responses than channels, as many as unknowns
        CReLU(),
        torch.nn.Conv2d(24, 6, 1),  # fewer responses than unknowns: ruled out by the count
        torch.nn.MaxPool2d(2),
    ).double()
    report = injectivity_report(net, (9, 9))
    assert [r.name for r in report] == ["0", "2", "4", "5"]
    assert report[0].verdict == "injective"
    assert report[0].unknowns == report[0].in_dim
    assert report[1].unknowns == report[1].in_dim // 2
    assert report[1].verdict == "not injective as a linear map (count passes on CReLU inputs only)"
    assert report[2].verdict == "not injective (dimension count)"
    assert report[3].verdict == "not injective (pooling)"
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        # iterative, stopped at atol=1e-14: measured 1.3e-15
        x_hat = conv_pinv(net[0], net[0](x), (9, 9), method="lsqr", options=SolveOptions(atol=1e-14))
        assert relative_gap(x_hat, x) < 2e-13


def test_injectivity_report_methods(monkeypatch):
    """Each way the report computes singular values, against the dense SVD."""
    torch.manual_seed(0)
    circular = torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")
    zeros = torch.nn.Conv2d(3, 32, 5, stride=2)  # a 2x3 block of outputs determines its window
    net = torch.nn.Sequential(circular, zeros).double()
    lines: list[str] = []
    report = injectivity_report(net, (23, 23), progress=lines.append)
    assert [(r.sigma_method, r.exact, r.proof) for r in report] == [("dft", True, "dft"), ("dense", True, "dense")]
    assert all(r.computed_exactly for r in report)
    assert lines[0] == "0: Conv2d on (3, 23, 23)"
    assert re.fullmatch(r"0: dft, proven >= \S+ \(dft\), \d+\.\d s", lines[1])
    assert re.fullmatch(r"1: dense, proven >= \S+ \(dense\), \d+\.\d s", lines[3])
    for r, conv, size in zip(report, net, [(23, 23), (23, 23)], strict=True):
        singular = torch.linalg.svdvals(ConvOperator.from_conv(conv, size).to_dense())
        assert r.singular_values is not None
        assert float((r.singular_values - singular).abs().max()) <= 1e-13 * float(singular[0])  # measured 7.7e-15
        assert 0.999 * float(singular[-1]) <= r.sigma_min_lower <= float(singular[-1])  # the proofs are tight
    monkeypatch.setattr(injectivity, "DENSE_SPECTRUM_ENTRIES", 0)  # as if the layer were large
    cholesky = injectivity_report(net, (23, 23))[1]  # 1,587 unknowns: a verified Cholesky of the Gram matrix
    assert (cholesky.sigma_method, cholesky.exact, cholesky.proof, cholesky.verdict) == (
        "cholesky",
        True,
        "gram",
        "injective",
    )
    assert not cholesky.computed_exactly
    singular = report[1].singular_values
    assert abs(cholesky.sigma_min - float(singular[-1])) <= 1e-12 * float(singular[-1])  # measured 3.8e-15
    assert 0.98 * float(singular[-1]) <= cholesky.sigma_min_lower <= float(singular[-1])
    monkeypatch.setattr(injectivity, "GRAM_MAX_UNKNOWNS", 0)  # as if too large to factor: LOBPCG and a window
    lobpcg = injectivity_report(net, (23, 23))[1]
    assert (lobpcg.sigma_method, lobpcg.exact, lobpcg.proof, lobpcg.verdict) == ("lobpcg", True, "window", "injective")
    assert lobpcg.converged
    assert abs(lobpcg.sigma_min - float(singular[-1])) <= 1e-7 * float(singular[-1])  # Ritz value, rtol 1e-8
    assert lobpcg.sigma_min >= float(singular[-1]) * (1 - 1e-12)  # a Ritz value: an upper bound
    assert abs(lobpcg.sigma_max - float(singular[0])) <= 1e-13 * float(singular[0])  # measured 4.4e-16
    assert 0 < lobpcg.sigma_min_lower <= float(singular[-1])
    assert lobpcg.gap == lobpcg.sigma_min / lobpcg.sigma_min_lower


def test_numerically_singular_layer_is_flagged():
    conv = torch.nn.Conv2d(2, 8, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight[:, 1] = conv.weight[:, 0]  # two input channels seen identically: x0 - x1 is invisible
    report = injectivity_report(torch.nn.Sequential(conv), (6, 6))
    assert (report[0].sigma_method, report[0].verdict, report[0].exact) == ("dense", "numerically singular", False)
    assert report[0].proof == "singular"


def test_auto_picks_the_cheapest_provable_route():
    # disjoint receptive fields: the patch pseudo-inverse is A^+ (1x1 at stride 1; kernel = stride)
    assert choose_method(torch.nn.Conv2d(192, 96, 1), (54, 54)) == "patch"
    assert choose_method(ConvOperator(torch.randn(4, 3, 2, 2), (8, 8), stride=2), (8, 8)) == "patch"
    # full-rank but overlapping patches are exact on the range only: not A^+, so not auto's closed form
    assert choose_method(ConvOperator(torch.randn(12, 3, 2, 2), (8, 8)), (8, 8)) == "lsqr"
    circular = ConvOperator(torch.randn(4, 3, 3, 3), (8, 8), padding=1, padding_mode="circular")
    assert choose_method(circular, (8, 8)) == "fft"
    assert choose_method(torch.nn.Conv2d(3, 4, 3, padding=1), (8, 8)) == "lsqr"
    # a tiny layer: its dense SVD is cheaper than LSQR's budget
    assert choose_method(torch.nn.Conv2d(1, 2, 2), (3, 3)) == "dense"


def test_lsqr_warns_when_it_stops_early():
    op = ConvOperator(torch.randn(4, 2, 3, 3, dtype=torch.float64), (10, 10), padding=1)
    b = torch.randn(1, *op.out_shape, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match=r"1 of 1 samples did not converge in 3 iterations"):
        result = lsqr(op, b, maxiter=3)
    assert result.iterations == 3
    assert not bool(result.converged.any())
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default cap suffices on a small layer
        conv_pinv(torch.nn.Conv2d(2, 4, 3).double(), torch.randn(1, 4, 6, 6, dtype=torch.float64), (8, 8), "lsqr")


def test_lsqr_preconditioned_reaches_the_same_solution_on_injective_layers():
    conv = torch.nn.Conv2d(3, 40, 4, stride=2, padding=1).double()  # injective, border read by fewer fields
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
        options = SolveOptions(atol=1e-13, warm_start=False)
        plain, info = conv_pinv(conv, y, (12, 12), "lsqr", options=options, return_info=True)
        scaled, info_scaled = conv_pinv(
            conv, y, (12, 12), "lsqr", options=replace(options, precondition=True), return_info=True
        )
    # iterative, stopped at atol=1e-13: measured 1.4e-12 (plain) and 8.7e-13 (preconditioned)
    assert relative_gap(plain, x) < 2e-10
    assert relative_gap(scaled, x) < 1e-10
    assert info.iterations > 0
    assert info_scaled.iterations > 0


def test_fft_refuses_other_layers():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    with pytest.raises(
        RouteError,
        match=r"method 'fft' does not apply to this layer: padding is 'zeros', not circular; use method='lsqr'",
    ):
        conv_pinv(conv, torch.zeros(1, 3, 8, 8), (8, 8), method="fft")
    with pytest.raises(ValueError, match=r"expected a layer the 2-D DFT diagonalises, but the stride \(2, 2\) does"):
        conv_singular_values(torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="circular"), (7, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_routes_follow_the_input():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double().cuda()
    y = torch.randn(1, 3, 8, 8, dtype=torch.float64, device="cuda")
    for method in ("fft", "lsqr", "patch"):
        assert conv_pinv(conv, y, (8, 8), method=method).device.type == "cuda"
