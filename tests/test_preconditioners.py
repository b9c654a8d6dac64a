"""The border preconditioner and preconditioned CGLS against the dense matrix of small strided convolutions."""

import importlib
import itertools

import numpy as np
import pytest
import torch
from conftest import relative_gap

from invertnet import ConvOperator, OptionError, RouteError, SolveOptions, conv_pinv
from invertnet.errors import ShapeError
from invertnet.linalg import preconditioners
from invertnet.linalg.preconditioners import BorderPreconditioner, border_bytes, border_reason
from invertnet.linalg.solvers import lsqr, pcgls
from invertnet.linalg.spectral import space_to_depth

FLOAT64 = torch.zeros((), dtype=torch.float64)


def strided_conv(c_out: int = 16, seed: int = 0, padding: int | tuple[int, int] = 0) -> torch.nn.Conv2d:
    """2 -> c_out channels, 5x5, stride 2: 3x3 polyphase taps of 8 channels; without padding, last row unread."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(2, c_out, 5, stride=2, padding=padding).double()


def dense_lstsq(op: ConvOperator, z: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares solution by NumPy's SVD-based ``lstsq`` on the dense matrix (independent)."""
    matrix = op.to_dense().numpy()
    solution = np.linalg.lstsq(matrix, z.flatten(1).numpy().T, rcond=None)[0]
    return torch.from_numpy(solution.T.copy()).reshape(z.shape[0], *op.in_shape)


def test_rectangle_gram_matches_the_dense_gram_near_and_far_from_the_border():
    op = ConvOperator.from_conv(strided_conv(), (24, 24))
    m = BorderPreconditioner(op, FLOAT64)
    dense = op.to_dense()
    gram = dense.T @ dense  # pixels in (c, h, w) order
    index = torch.arange(op.in_dim, dtype=torch.float64).reshape(1, *op.in_shape)
    pixels = space_to_depth(index, (2, 2))[0].long()  # (c*4, 12, 12)
    for rows, cols in [(slice(0, 4), slice(0, 4)), (slice(3, 8), slice(5, 9)), (slice(8, 12), slice(0, 12))]:
        order = pixels[:, rows, cols].permute(1, 2, 0).reshape(-1)  # blocks row-major, then channels
        assert torch.allclose(m.rectangle_gram(rows, cols), gram[order][:, order], rtol=0, atol=1e-12)


def test_circulant_piece_solves_the_periodic_interior_stencil(monkeypatch):
    monkeypatch.setattr(preconditioners, "CIRCULANT_CHUNK", 10)  # 84 frequencies: nine chunks
    op = ConvOperator.from_conv(strided_conv(), (24, 24))
    m = BorderPreconditioner(op, FLOAT64, single=False)
    (th, tw), (nh, nw), q = m.taps, m.grid, m.q
    # the interior stencil G_d = G[b, b + d] read off the dense Gram at the centre block, wrapped around the grid
    dense = op.to_dense()
    gram = dense.T @ dense
    index = torch.arange(op.in_dim, dtype=torch.float64).reshape(1, *op.in_shape)
    pixels = space_to_depth(index, (2, 2))[0].long()  # (q, nh, nw)
    ch, cw = nh // 2, nw // 2
    periodic = torch.zeros(nh, nw, q, nh, nw, q, dtype=torch.float64)
    for dh, dw in itertools.product(range(-(th - 1), th), range(-(tw - 1), tw)):
        block = gram[pixels[:, ch, cw]][:, pixels[:, ch + dh, cw + dw]]
        for i, j in itertools.product(range(nh), range(nw)):
            periodic[i, j, :, (i + dh) % nh, (j + dw) % nw, :] = block
    x = torch.randn(1, q, nh, nw, dtype=torch.float64)
    expected = torch.linalg.solve(periodic.reshape(nh * nw * q, -1), x[0].permute(1, 2, 0).reshape(-1))
    # the circulant piece as the preconditioner applies it: rfft2, one inverse per frequency, irfft2
    spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(-1, q, 1)
    solved = preconditioners._batched_matvec(m._circulant, spectrum).reshape(nh, -1, q, 1)
    applied = torch.fft.irfft2(solved.permute(3, 2, 0, 1), s=(nh, nw))[0].permute(1, 2, 0).reshape(-1)
    applied = applied / m._gram_scale  # the pieces are kept times the Gram's scale
    assert relative_gap(applied, expected) < 1e-12


def test_a_piece_too_ill_conditioned_for_float32_is_factored_in_float64():
    torch.manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    matrix = (q * torch.logspace(0, -12, 12, dtype=torch.float64)) @ q.T  # condition 1e12: float32 cannot
    inverse = preconditioners._spd_inverse(matrix, "a test matrix", torch.float32)
    assert inverse.dtype == torch.float64
    assert relative_gap(inverse, torch.linalg.inv(matrix)) < 1e-3  # cond * eps64 = 2e-4


def test_float32_pieces_follow_the_scale_of_the_weights_and_of_the_input():
    """Weights 1e-20 times smaller (Gram 1e-40, inverses 1e40) and inputs 1e30 times larger: no overflow."""
    conv = strided_conv()
    op = ConvOperator.from_conv(conv, (24, 24))
    tiny = ConvOperator(conv.weight.detach() * 1e-20, (24, 24), stride=2)
    v = torch.randn(2, *op.in_shape, dtype=torch.float64)
    reference = BorderPreconditioner(op, FLOAT64, single=False)(v)
    scaled = BorderPreconditioner(tiny, FLOAT64)(v * 1e30) / 1e70  # M scales as 1 / weight^2
    assert bool(torch.isfinite(scaled).all())
    # pieces factored in float32 (measured 1.7e-6: about cond * 6e-8) against pieces factored in float64
    assert relative_gap(scaled, reference) < 1e-4


@pytest.mark.parametrize(("single", "tolerance"), [(False, 1e-12), (True, 1e-6)])  # float64 / float32 pieces
@pytest.mark.parametrize("padding", [0, (0, 1)])  # with padding: identity at the padding pixels, then cropped
def test_border_preconditioner_is_symmetric_positive_definite_on_the_pixels_read(single, tolerance, padding):
    op = ConvOperator.from_conv(strided_conv(padding=padding), (24, 24))
    m = BorderPreconditioner(op, FLOAT64, single=single)
    eye = torch.eye(op.in_dim, dtype=torch.float64).reshape(-1, *op.in_shape)
    columns = torch.cat([m(e[None]) for e in eye]).reshape(op.in_dim, -1)  # one column at a time, as in pcgls
    assert torch.allclose(m(eye).reshape(op.in_dim, -1), columns, rtol=0, atol=tolerance * float(columns.abs().max()))
    read = (op.coverage() > 0).expand(op.in_shape).reshape(-1)
    assert not bool(read.all())  # the last pixel row (and without padding the last column) is never read
    assert torch.allclose(columns, columns.T, rtol=0, atol=tolerance * float(columns.abs().max()))
    assert float(columns[~read].abs().max()) == 0.0
    assert float(torch.linalg.eigvalsh(columns[read][:, read])[0]) > 0


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("samples", [1, 2])  # one column: the chunked product of _batched_matvec; two: matmul
@pytest.mark.parametrize("padding", [0, 1, 2, (2, 1)])  # zero padding: the valid convolution of the padded input
def test_pcgls_with_the_border_preconditioner_reaches_the_dense_least_squares_solution_off_the_range(
    single, samples, padding, monkeypatch
):
    monkeypatch.setattr(preconditioners, "_MATVEC_CANDIDATES", (200,))  # several chunks even on this small grid
    monkeypatch.setattr(preconditioners, "_MATVEC_PLANS", {})
    op = ConvOperator.from_conv(strided_conv(padding=padding), (24, 24))
    torch.manual_seed(1)
    x = torch.rand(2, *op.in_shape, dtype=torch.float64)
    z = op.forward(x) + 0.1 * torch.randn(2, *op.out_shape, dtype=torch.float64)  # off the range: tall operator
    z = z[:samples]
    reference = dense_lstsq(op, z)
    assert relative_gap(op.forward(reference), z) > 1e-3  # the response really is off the range
    result = pcgls(op, z, BorderPreconditioner(op, FLOAT64, single=single), tol=1e-13)
    plain = lsqr(op, z, atol=1e-14, btol=1e-14)
    assert bool(result.converged.all())
    # iterative, stopped at 1e-13 / 1e-14, float64 iterates with float64 or float32 preconditioner pieces:
    # measured gaps 4.8e-13 (border, 46 iterations), 1.2e-12 (LSQR, 526) without padding; padded, up to 3.6e-13
    # (border, 38-49 iterations) and 6.0e-13 (LSQR, 148-333)
    assert relative_gap(result.x, reference) < 1e-10
    assert relative_gap(plain.x, reference) < 1e-10
    assert result.iterations < plain.iterations


def test_calibrated_matvec_chooses_a_candidate_and_every_candidate_is_the_product(monkeypatch):
    monkeypatch.setattr(preconditioners, "_MATVEC_PLANS", {})
    torch.manual_seed(0)
    matrices = torch.randn(37, 12, 12, dtype=torch.complex64)
    columns = torch.randn(37, 12, dtype=torch.complex64)
    reference = (matrices.to(torch.complex128) @ columns.to(torch.complex128)[..., None])[..., 0]
    for chunk in (*preconditioners._MATVEC_CANDIDATES, 200):
        product = preconditioners._chunked_matvec(matrices, columns, chunk).to(torch.complex128)
        assert float((product - reference).abs().max()) <= 1e-5 * float(reference.abs().max())  # complex64
    chosen = preconditioners.calibrate_matvec(matrices)
    assert chosen in preconditioners._MATVEC_CANDIDATES
    assert preconditioners._MATVEC_PLANS[(37, 12, torch.complex64)] == chosen
    applied = preconditioners._batched_matvec(matrices, columns[..., None])[..., 0].to(torch.complex128)
    assert float((applied - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


def test_lsqr_route_with_border_preconditioning_returns_the_pseudo_inverse_solution():
    conv = strided_conv()
    torch.manual_seed(2)
    with torch.no_grad():
        y = conv(torch.rand(1, 2, 24, 24, dtype=torch.float64))
    noisy = y + 0.05 * torch.randn_like(y)
    reference = dense_lstsq(ConvOperator.from_conv(conv, (24, 24)), noisy - conv.bias.detach().reshape(1, -1, 1, 1))
    for warm_start, start in ((True, "window"), (False, "zero")):
        options = SolveOptions(atol=1e-13, precondition="border", warm_start=warm_start)
        x_hat, info = conv_pinv(conv, noisy, (24, 24), "lsqr", options=options, return_info=True)
        assert info.converged
        assert info.start == start
        assert (info.method, info.solver) == ("lsqr", "pcgls")  # the route says which solver ran
        assert info.iterations > 0
        # iterative, stopped at a preconditioned normal residual of 1e-13 of the zero start's: measured 5e-13, 7e-13
        assert relative_gap(x_hat, reference) < 1e-10
    # on the layer's range the window start is already the solution: no iteration
    _, info = conv_pinv(conv, y, (24, 24), "lsqr", options=SolveOptions(precondition="border"), return_info=True)
    assert info.start == "window"
    _, plain = conv_pinv(conv, noisy, (24, 24), "lsqr", options=SolveOptions(precondition=False), return_info=True)
    assert plain.solver == "lsqr"
    assert info.iterations == 0


@pytest.mark.parametrize("padding", [0, 1])
def test_default_preconditions_off_the_range_only(monkeypatch, padding):
    """precondition=None: border CGLS when the window start leaves a residual, plain LSQR (no work) when not."""
    lsqr_route = importlib.import_module("invertnet.pinv.lsqr")
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return pcgls(*args, **kwargs)

    monkeypatch.setattr(lsqr_route, "pcgls", counted)
    conv = strided_conv(padding=padding)
    torch.manual_seed(3)
    with torch.no_grad():
        y = conv(torch.rand(2, 2, 24, 24, dtype=torch.float64))
    noisy = y.clone()
    noisy[1] += 0.05 * torch.randn_like(y[1])  # one sample off the range is enough
    op = ConvOperator.from_conv(conv, (24, 24))
    reference = dense_lstsq(op, noisy - conv.bias.detach().reshape(1, -1, 1, 1))
    x_hat, info = conv_pinv(conv, noisy, (24, 24), "lsqr", options=SolveOptions(atol=1e-13), return_info=True)
    assert calls == [1]
    assert info.converged
    assert relative_gap(x_hat, reference) < 1e-10  # iterative, to 1e-13 of the zero start's normal residual
    _, info = conv_pinv(conv, y, (24, 24), "lsqr", return_info=True)
    assert calls == [1]  # in the range: the window estimate is the solution, no preconditioner is built
    assert info.iterations == 0
    tight = SolveOptions(atol=1e-13, max_memory=border_bytes(op) - 1)  # building it would peak above the limit
    x_hat = conv_pinv(conv, noisy, (24, 24), "lsqr", options=tight)
    assert calls == [1]  # LSQR with the coverage scaling instead, to the same solution
    assert relative_gap(x_hat, reference) < 1e-10


def test_border_preconditioning_refuses_layers_it_does_not_fit():
    wrapped = torch.nn.Conv2d(2, 16, 5, stride=2, padding=1, padding_mode="circular").double()
    z = torch.zeros(1, 16, 11, 11, dtype=torch.float64)
    with pytest.raises(RouteError, match=r"precondition='border' does not apply: padding_mode='circular': only zero"):
        conv_pinv(wrapped, z, (24, 24), "lsqr", options=SolveOptions(precondition="border"))
    wide = ConvOperator(torch.randn(16, 2, 3, 3, dtype=torch.float64), (24, 24), stride=2, padding=3)
    assert border_reason(wide) == "padding (3, 3, 3, 3) as wide as the kernel (3, 3): some outputs read padding only"
    odd = ConvOperator.from_conv(strided_conv(padding=(1, 2)), (24, 24))  # 26 x 28 padded: fits; 25 x 24 does not
    assert border_reason(odd) is None
    assert "does not divide the padded input size (25, 24)" in str(
        border_reason(ConvOperator.from_conv(strided_conv(), (25, 24)))
    )
    with pytest.raises(OptionError, match=r"expected precondition True, False, None or 'border', got 'edges'"):
        SolveOptions(precondition="edges")  # type: ignore[arg-type]
    op = ConvOperator.from_conv(strided_conv(), (24, 24))
    with pytest.raises(ShapeError, match=r"expected depth and corner in \[1, 6\] blocks .* got 7 and 7"):
        BorderPreconditioner(op, FLOAT64, depth=7)
    narrow = ConvOperator.from_conv(strided_conv(c_out=4), (24, 24))  # 4 filters for 8 polyphase channels
    with pytest.raises(RouteError, match=r"not positive definite, so the layer is not injective"):
        BorderPreconditioner(narrow, FLOAT64)
