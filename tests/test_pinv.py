import pytest
import torch
from conftest import TOL, assert_close, condition
from hypothesis import assume, given, settings
from strategies import ConvConfig, conv_configs

from invertnet import ConvOperator, OptionError, ShapeError, SolveOptions, TooLargeError, conv_pinv, patch_pinv


@settings(max_examples=150, deadline=None)
@given(conv_configs(full_rank=True))
def test_patch_pinv_exact_with_full_column_rank(cfg: ConvConfig):
    conv = cfg.conv()
    op = ConvOperator.from_conv(conv, cfg.size)
    assert bool((torch.linalg.matrix_rank(op.patch_matrices()) == op.patch_size).all())
    x = torch.rand(2, *op.in_shape, dtype=torch.float64)
    with torch.no_grad():
        x_hat = patch_pinv(conv, conv(x), cfg.size)
    covered = op.coverage() > 0  # pixels no receptive field reads carry no information
    assume(bool(covered.any()))  # e.g. stride 3 over a 2-pixel input with padding 1 reads only padding
    error = (x_hat - x)[..., covered].norm() / x[..., covered].norm()
    # exact up to rounding amplified by cond(P): measured error / cond(P) up to 5.7e-16
    assert error <= TOL[torch.float64][0] * condition(op.patch_matrices())
    assert bool((x_hat[..., ~covered] == 0).all())


def test_coverage_matches_dense_columns():
    conv = torch.nn.Conv2d(1, 2, 2, stride=3, bias=False).double()  # stride > kernel: gaps
    op = ConvOperator.from_conv(conv, (8, 8))
    dense = op.to_dense()
    reads = (dense != 0).any(dim=0).reshape(8, 8)
    assert torch.equal(op.coverage() > 0, reads)
    assert not bool(reads.all())


@pytest.mark.parametrize(("c_in", "c_out", "kernel"), [(2, 3, 2), (2, 8, 2), (3, 5, (1, 3)), (1, 9, 3)])
def test_non_overlapping_patch_pinv_equals_dense_pinv(c_in, c_out, kernel, generator):
    """stride = kernel, no padding: A is block diagonal with copies of P, so A^+ = blockdiag(P^+), wide P too."""
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride=kernel).double()
    op = ConvOperator.from_conv(conv, (6, 6))
    y = torch.randn(2, *op.out_shape, dtype=torch.float64, generator=generator)
    dense = op.to_dense()
    reference = (torch.linalg.pinv(dense) @ (y - conv.bias.detach().reshape(1, -1, 1, 1)).flatten(1).T).T
    assert_close(patch_pinv(conv, y, (6, 6)).flatten(1), reference, cond=condition(dense))
    assert_close(conv_pinv(conv, y, (6, 6), method="dense").flatten(1), reference, cond=condition(dense))


def test_wide_overlapping_patch_matrix_is_not_the_operator_pinv(generator):
    conv = torch.nn.Conv2d(3, 8, 3, stride=1, padding=1).double()  # 8 filters < 27 patch entries
    y = torch.randn(1, 8, 6, 6, dtype=torch.float64, generator=generator)
    patch = patch_pinv(conv, y, (6, 6))
    dense = conv_pinv(conv, y, (6, 6), method="dense")
    assert (patch - dense).norm() / dense.norm() > 0.1  # measured 0.78 over 10 draws


def test_solve_info_reports_residual():
    conv = torch.nn.Conv2d(2, 18, 3).double()
    x = torch.rand(1, 2, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        x_hat, info = conv_pinv(conv, conv(x), (7, 7), method="patch", return_info=True)
    assert info.method == "patch"
    assert info.converged
    assert info.residual < 1e-12  # measured 1.4e-14
    assert_close(x_hat, x, cond=condition(ConvOperator.from_conv(conv, (7, 7)).patch_matrices()))


def test_cache_follows_in_place_weight_updates(generator):
    conv = torch.nn.Conv2d(1, 9, 3).double()
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        cond = condition(ConvOperator.from_conv(conv, (6, 6)).patch_matrices())
        assert_close(patch_pinv(conv, conv(x), (6, 6)), x, cond=cond)
        conv.weight.mul_(-2.0)  # in place: the cached P^+ must be recomputed (the same condition number)
        assert_close(patch_pinv(conv, conv(x), (6, 6)), x, cond=cond)


def test_float32_tolerance():
    conv = torch.nn.Conv2d(3, 27, 3, padding=1)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        x_hat = patch_pinv(conv, conv(x), (12, 12))
    assert x_hat.dtype == torch.float32
    assert_close(x_hat, x, torch.float32, cond=condition(ConvOperator.from_conv(conv, (12, 12)).patch_matrices()))


def test_bad_input():
    conv = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(ShapeError, match=r"expected shape \(N, 4, 6, 6\) for input size \(8, 8\), got \(1, 4, 5, 5\)"):
        patch_pinv(conv, torch.zeros(1, 4, 5, 5), (8, 8))
    with pytest.raises(ShapeError, match=r"expected a tensor of shape \(N, C, H, W\), got \(4, 6, 6\); add a batch"):
        patch_pinv(conv, torch.zeros(4, 6, 6), (8, 8))
    with pytest.raises(TypeError, match=r"expected an nn.Conv2d or a ConvOperator, got Linear"):
        patch_pinv(torch.nn.Linear(2, 2), torch.zeros(1, 4, 6, 6), (8, 8))
    with pytest.raises(TypeError, match=r"expected a floating-point tensor, got torch.int64"):
        patch_pinv(conv, torch.zeros(1, 4, 6, 6, dtype=torch.long), (8, 8))
    with pytest.raises(
        OptionError, match=r"expected method in \['auto', 'patch', 'window', 'fft', 'dense', 'lsqr'\], got 'magic'"
    ):
        conv_pinv(conv, torch.zeros(1, 4, 6, 6), (8, 8), method="magic")
    big = torch.nn.Conv2d(3, 8, 3)
    with pytest.raises(TooLargeError, match=r"expected a matrix of at most max_entries=1,000 entries, got 377,880,576"):
        conv_pinv(big, torch.zeros(1, 8, 62, 62), (64, 64), method="dense", options=SolveOptions(max_entries=1000))


def test_dense_refuses_up_front_an_svd_out_of_reach(monkeypatch):
    """The issue's case: --method dense on a layer too large for it ran silently for minutes."""
    import invertnet.pinv.dense as dense
    from invertnet.pinv.solve import choose_method

    calls = []
    monkeypatch.setattr(dense.torch.linalg, "svd", lambda *a, **k: calls.append(a) or None)
    conv = torch.nn.Conv2d(3, 96, 11, stride=4).double()  # All-CNN-B's conv1 at 32 px: a 3,456 x 3,072 matrix
    with pytest.raises(
        TooLargeError,
        match=r"expected an SVD of at most DENSE_MAX_FLOPS=1e\+11 flops, got 1\.3e\+11 for this layer's "
        r"3,456 x 3,072 matrix \(about 26 s on one core",
    ):
        conv_pinv(conv, torch.zeros(1, 96, 6, 6, dtype=torch.float64), (32, 32), method="dense")
    assert calls == []  # refused before the matrix was built
    monkeypatch.setattr(dense, "DENSE_MAX_FLOPS", 1e3)
    assert choose_method(torch.nn.Conv2d(2, 3, 3, padding=1), (4, 4)) != "dense"  # auto passes over it too


def test_dense_falls_back_to_gesvd_where_gesdd_fails(monkeypatch):
    import invertnet.pinv.dense as dense

    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    y = conv(torch.rand(1, 2, 5, 5, dtype=torch.float64))
    expected = conv_pinv(conv, y, (5, 5), method="dense")

    def failing(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(dense.torch.linalg, "svd", failing)
    assert_close(conv_pinv(conv, y, (5, 5), method="dense"), expected)
