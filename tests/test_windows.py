"""Window pseudo-inverses (blocks of outputs), and LSQR started from them, against the dense pseudo-inverse."""

import pytest
import torch
from conftest import assert_close, dense_pinv_solution, relative_gap
from hypothesis import assume, given, settings
from strategies import ConvConfig, conv_configs

from invertnet import ConvOperator, RouteError, SolveOptions, conv_pinv
from invertnet.linalg.solvers import lsqr
from invertnet.pinv import windows
from invertnet.pinv.windows import WindowInverse, window_block, window_operator


def _window(op: ConvOperator) -> WindowInverse | None:
    block = window_block(op)
    if block is None:
        return None
    inverse = WindowInverse(op, block, torch.zeros((), dtype=torch.float64))
    return inverse if inverse.injective else None


@settings(max_examples=80, deadline=None)
@given(conv_configs())
def test_window_inverse_is_exact_on_the_range(cfg: ConvConfig):
    """For y = A x the tiled window estimate equals A^+ y (x on the pixels the layer reads, 0 elsewhere)."""
    op = cfg.operator()
    window = _window(op)
    assume(window is not None and window.condition < 1e4)
    x = torch.rand(2, *op.in_shape, dtype=torch.float64)
    y = op.forward(x)
    reference = dense_pinv_solution(op, y)
    assert_close(window.apply(y), reference, cond=window.condition)


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_qr_condition_and_estimate_match_the_svd(cfg: ConvConfig):
    """The QR path's condition number (two Lanczos runs) is the dense SVD's; its estimate is the SVD fallback's."""
    op = cfg.operator()
    block = window_block(op)
    assume(block is not None)
    inverse = WindowInverse(op, block, torch.zeros((), dtype=torch.float64))
    assume(inverse.factorization == "qr")
    matrix = window_operator(op, block).to_dense()
    singular = torch.linalg.svdvals(matrix[:, matrix.abs().sum(0) > 0])
    assert inverse.injective
    # Lanczos (ARPACK, tol 1e-10) on sigma_max^2 and 1 / sigma_min^2: measured up to 3.4e-14 relative (140 draws)
    assert inverse.condition == pytest.approx(float(singular[0] / singular[-1]), rel=1e-9)
    y = op.forward(torch.rand(2, *op.in_shape, dtype=torch.float64)) + 0.1 * torch.randn(2, *op.out_shape)
    previous = windows.QR_MAX_CONDITION
    try:
        windows.QR_MAX_CONDITION = 0.0  # the SVD pseudo-inverse instead
        fallback = WindowInverse(op, block, torch.zeros((), dtype=torch.float64))
    finally:
        windows.QR_MAX_CONDITION = previous
    assert fallback.factorization == "svd"
    assert fallback.injective
    # off the range too (a local least-squares fit): R^-1 Q^T and V S^-1 U^T are the same A_w^+
    assert_close(inverse.apply(y), fallback.apply(y), cond=inverse.condition)


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_lsqr_from_the_window_reaches_the_minimum_norm_solution(cfg: ConvConfig):
    """On responses outside the range the window estimate is only a start; LSQR from it still reaches A^+ y."""
    op = cfg.operator()
    window = _window(op)
    assume(window is not None and window.condition < 1e3 and op.out_dim > op.in_dim)
    y = torch.randn(2, *op.out_shape, dtype=torch.float64)
    reference = dense_pinv_solution(op, y)
    start = window.apply(y)
    result = lsqr(op, y, atol=1e-14, btol=1e-14, maxiter=5000, x0=start)
    assert bool(result.converged.all())
    # iterative, stopped at atol = btol = 1e-14: measured gaps up to 1.6e-13 (150 examples)
    assert relative_gap(result.x, reference) <= 2e-11


def test_all_cnn_b_conv1_shape_is_recovered_without_iterating():
    """96 filters of 11x11x3 at stride 4 (fewer filters than the 363 patch entries): blocks of outputs still invert."""
    conv = torch.nn.Conv2d(3, 96, 11, stride=4).double()
    x = torch.rand(1, 3, 31, 31, dtype=torch.float64)  # (31 - 11) / 4 + 1 = 6 outputs read every pixel
    with torch.no_grad():
        y = conv(x)
        windowed, info = conv_pinv(conv, y, (31, 31), "window", return_info=True)
        solved, lsqr_info = conv_pinv(conv, y, (31, 31), "lsqr", return_info=True)
    cond = _window(ConvOperator.from_conv(conv, (31, 31))).condition
    assert info.method == "window"
    assert_close(windowed, x, cond=cond)
    assert (lsqr_info.start, lsqr_info.iterations) == ("window", 0)
    assert_close(solved, x, cond=cond)
    with torch.no_grad():
        x32 = conv_pinv(conv.float(), y.float(), (31, 31), "window")
    assert x32.dtype == torch.float32
    assert_close(x32, x.float(), torch.float32, cond=cond)


def test_noisy_responses_need_lsqr_after_the_window():
    """Off the range the window estimate is a local fit, not A^+ y; LSQR from it iterates to A^+ y."""
    # 27 px: (27 - 11) / 4 + 1 = 5 outputs read every pixel, 2400 equations for 2187 unknowns (the dense pinv is the
    # cost of this test: 16 s at 31 px, 7 s at 27)
    conv = torch.nn.Conv2d(3, 96, 11, stride=4, bias=False).double()
    op = ConvOperator.from_conv(conv, (27, 27))
    y = op.forward(torch.rand(1, 3, 27, 27, dtype=torch.float64))
    y = y + 0.1 * y.norm() * torch.randn_like(y) / y.numel() ** 0.5
    reference = dense_pinv_solution(op, y)
    window = conv_pinv(conv, y, (27, 27), "window")
    solved, info = conv_pinv(conv, y, (27, 27), "lsqr", options=SolveOptions(atol=1e-14), return_info=True)
    assert relative_gap(window, reference) > 0.1  # measured at least 0.67 over 3 draws
    assert info.start == "window"
    assert info.iterations > 0
    assert relative_gap(solved, reference) <= 1e-10  # iterative, stopped at atol=1e-14: measured 1.0e-12


def test_lsqr_without_a_window_starts_from_zero():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).double()  # as many filters as channels: no block has enough equations
    y = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    _, info = conv_pinv(conv, y, (8, 8), "lsqr", return_info=True)
    assert info.start == "zero"
    assert info.iterations > 0


def test_window_route_refuses_layers_it_cannot_invert():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(
        RouteError,
        match=r"method 'window' does not apply to this layer: it needs a block of outputs that determines the pixels "
        r"it reads, but no block within "
        r"the size limit has as many equations as unknowns \(4 filters for 4 input channels at stride \(1, 1\)\); "
        r"use method='lsqr'",
    ):
        conv_pinv(conv, torch.zeros(1, 4, 8, 8), (8, 8), method="window")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_window_routes_follow_the_input_device():
    conv = torch.nn.Conv2d(2, 20, 3, padding=1).double().cuda()
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        y = conv(x)
        for method in ("window", "lsqr"):
            x_hat = conv_pinv(conv, y, (10, 10), method=method)
            assert x_hat.device.type == "cuda"
            assert_close(x_hat, x)


def test_window_route_names_a_rank_deficient_block():
    conv = torch.nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight[:, 1] = conv.weight[:, 0]  # both input channels look alike: no block tells them apart
    with pytest.raises(
        RouteError,
        match=r"method 'window' does not apply to this layer: it needs .*, but the 1x1 block's matrix is rank "
        r"deficient",
    ):
        conv_pinv(conv, torch.zeros(1, 4, 5, 5), (5, 5), method="window")


def test_ill_conditioned_block_falls_back_to_the_svd(monkeypatch):
    """A block whose condition number reaches QR_MAX_CONDITION gets the SVD; its claims are the SVD's."""
    conv = torch.nn.Conv2d(2, 6, 2, bias=False).double()
    op = ConvOperator.from_conv(conv, (5, 5))
    block = window_block(op)
    qr = WindowInverse(op, block, torch.zeros((), dtype=torch.float64))
    monkeypatch.setattr(windows, "QR_MAX_CONDITION", qr.condition / 2)
    svd = WindowInverse(op, block, torch.zeros((), dtype=torch.float64))
    assert (qr.factorization, svd.factorization) == ("qr", "svd")
    assert svd.injective
    assert svd.condition == pytest.approx(qr.condition, rel=1e-9)  # measured 1e-15
    x = torch.rand(1, *op.in_shape, dtype=torch.float64)
    assert_close(svd.apply(op.forward(x)), dense_pinv_solution(op, op.forward(x)), cond=svd.condition)
