"""Proofs of injectivity: every proven lower bound lies below the true sigma_min, and singular layers are never proven.

References: the dense SVD in float64 (``torch.linalg.svdvals`` of the placed matrix), and mpmath at 40 digits for the
verified-arithmetic primitives.
"""

import math

import mpmath
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import ArpackError
from strategies import ConvConfig, conv_configs

from invertnet.activeset import certify
from invertnet.analysis.injectivity import format_spectrum, injectivity_report
from invertnet.errors import RouteError, TooLargeError
from invertnet.linalg import spectrum
from invertnet.linalg.spectrum import sigma_max
from invertnet.linalg.verified import (
    abs_gram_norm,
    banded_cholesky_certificate,
    cholesky_certificate,
    gamma,
    gram_lower_bound,
    svd_lower_bound,
)
from invertnet.operators import ConvOperator
from invertnet.pinv.proofs import (
    MaskedGramRows,
    banded_proof,
    dense_proof,
    dft_proof,
    gram_proof,
    patch_proof,
    prove,
    vector_upper_bound,
    whole,
    window_proof,
    zero_column_proof,
)
from invertnet.pinv.proofs.whole import matrix_lower_bound

#: Ratios sigma_min / proven bound measured on the battery below (printed with ``pytest -s``).
RATIOS: dict[str, list[float]] = {}


def _truth(op: ConvOperator, known: torch.Tensor | None) -> float:
    matrix = op.placed_matrix(torch.float64)
    if known is not None:
        matrix = matrix[known.reshape(-1)]
    if matrix.shape[0] < matrix.shape[1]:
        return 0.0
    return float(torch.linalg.svdvals(matrix)[-1])


def _mask(config_seed: int, op: ConvOperator, share: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(config_seed)
    return torch.rand(op.out_shape, generator=generator) < share


@st.composite
def layers(draw: st.DrawFn) -> tuple[ConvConfig, int, float]:
    """A small conv layer (any stride, dilation, groups, padding mode), a seed and the share of known rows."""
    config = draw(conv_configs(full_rank=draw(st.booleans())))
    share = draw(st.sampled_from([1.0, 1.0, 0.9, 0.7, 0.5]))
    return config, draw(st.integers(0, 2**16)), share


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers())
def test_no_proof_exceeds_the_true_sigma_min(layer):
    """150 layers: strides, dilations, groups, every padding mode, masks of 50-100% known rows."""
    config, seed, share = layer
    op = config.operator(seed)
    known = None if share == 1.0 else _mask(seed, op, share)
    truth = _truth(op, known)
    proofs = {"auto": prove(op, known)}
    if op.in_dim <= 12_288:
        proofs["gram"] = gram_proof(op, known)[0]
    proofs["dense"] = dense_proof(op, known)[0]
    proofs["patch"] = patch_proof(op, known)
    proofs["window"] = window_proof(op, known)
    if op.pad.mode == "zeros":
        proofs["banded"] = banded_proof(op, truth * (1 + 1e-9) if truth > 0 else None, known)
        proofs["banded, no estimate"] = banded_proof(op, None, known)
        # an estimate far above sigma_min puts every shift above lambda_min: nothing may be proven
        assert banded_proof(op, 1.5 * truth + 1e-3, known).injective is not True
    for name, proof in proofs.items():
        if proof is None:
            continue
        if proof.injective:
            assert 0 < proof.lower_bound <= truth, (name, proof, truth)
            RATIOS.setdefault(proof.name, []).append(truth / proof.lower_bound)
        if proof.injective is False and proof.name in ("count", "zero column"):
            assert truth <= 1e-12 * max(1.0, float(torch.linalg.svdvals(op.placed_matrix())[0])), (name, proof)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers())
def test_the_vector_upper_bound_lies_above_the_exact_quotient(layer):
    """||M A x|| / ||x|| at 40 digits (mpmath, the float64 entries and vector taken exactly) is at most the bound.

    Vectors: the computed smallest right singular vector (on singular layers its quotient is rounding, about
    1e-16 sigma_max, where the rounding term decides) and a random one. The bound is tight to 1e-13 sigma_max.
    """
    config, seed, share = layer
    op = config.operator(seed)
    known = None if share == 1.0 else _mask(seed, op, share)
    matrix = op.placed_matrix(torch.float64)
    if known is not None:
        matrix = matrix[known.reshape(-1)]
    top = float(torch.linalg.svdvals(matrix)[0]) if matrix.numel() else 0.0
    generator = torch.Generator().manual_seed(seed)
    vectors = [torch.randn(op.in_dim, generator=generator, dtype=torch.float64)]
    if matrix.shape[0] >= matrix.shape[1]:
        vectors.append(torch.linalg.svd(matrix, full_matrices=False).Vh[-1])
    rows = [[mpmath.mpf(v) for v in row] for row in matrix.tolist()]
    with mpmath.workdps(40):
        for x in vectors:
            entries = [mpmath.mpf(v) for v in x.tolist()]
            image = mpmath.fsum(mpmath.fdot(row, entries) ** 2 for row in rows)
            exact = float(mpmath.sqrt(image / mpmath.fsum(v**2 for v in entries)))
            bound = vector_upper_bound(op, x, known)
            assert exact <= bound <= exact * (1 + 1e-12) + 1e-13 * top, (exact, bound, top)


def test_ratios_on_well_conditioned_layers():
    """The dense, Gram and DFT proofs lie within 1% of sigma_min on layers with condition number below 100, banded
    within 1e-4."""
    torch.manual_seed(0)
    for padding_mode, stride in (("zeros", 1), ("zeros", 2), ("reflect", 1), ("circular", 1)):
        conv = torch.nn.Conv2d(3, 32, 3, stride=stride, padding=1, padding_mode=padding_mode).double()
        op = ConvOperator.from_conv(conv, (12, 12))
        values = torch.linalg.svdvals(op.placed_matrix())
        assert float(values[0] / values[-1]) < 100
        truth = float(values[-1])
        for proof in (dense_proof(op)[0], gram_proof(op)[0]):
            assert 0.99 * truth <= proof.lower_bound <= truth, proof
        if padding_mode == "zeros":  # from an estimate 1e-9 above: the first shift, 0.9999 of it, is proven
            banded = banded_proof(op, truth * (1 + 1e-9))
            assert 0.9999 * truth <= banded.lower_bound <= truth, banded
        window = window_proof(op)
        assert window is not None
        assert truth / 10 <= window.lower_bound <= truth, window  # the local proof: within 10x here
    circular = ConvOperator.from_conv(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular").double(), (8, 8))
    proof, values = dft_proof(circular)
    dense = torch.linalg.svdvals(circular.to_dense())
    assert 0.9998 * float(values[-1]) <= proof.lower_bound <= float(dense[-1])
    # the half spectrum's values, mirrored: the whole spectrum
    assert float((values - dense).abs().max()) <= 1e-13 * float(dense[0])


def _locally_dependent_layer() -> tuple[ConvOperator, torch.Tensor, torch.Tensor]:
    r"""A layer whose known rows are injective except on one window: :math:`v = e_p + e_q` (two neighbours) is null.

    Half the filters are "alternating" along the width (:math:`w(a, b + 1) = -w(a, b)`), so every output that reads
    both :math:`p` and :math:`q` through one of them gives :math:`(A v) = 0` exactly; every other row that reads
    :math:`p` or :math:`q` is made unknown. Columns :math:`p` and :math:`q` stay non-zero.
    """
    generator = torch.Generator().manual_seed(3)
    free = torch.randn(16, 1, 3, 3, generator=generator, dtype=torch.float64)
    first = torch.randn(16, 1, 3, 1, generator=generator, dtype=torch.float64)
    alternating = torch.cat([first, -first, first], dim=3)
    op = ConvOperator(torch.cat([free, alternating]), (9, 9), padding=1)
    v = torch.zeros(1, *op.in_shape, dtype=torch.float64)
    v[0, 0, 4, 4] = v[0, 0, 4, 5] = 1.0
    known = (op.forward(v)[0] == 0) & (torch.rand(op.out_shape, generator=generator) < 0.95)
    return op, known, v


def test_a_masked_layer_with_one_dependent_window_is_never_certified():
    op, known, v = _locally_dependent_layer()
    assert float((op.forward(v)[0] * known).abs().max()) == 0.0  # v is a null vector of the known rows, exactly
    assert zero_column_proof(op, known) is None  # no zero column: only the rank can tell
    assert _truth(op, known) < 1e-12
    proofs = (
        prove(op, known, banded_max_flops=1e12),
        gram_proof(op, known)[0],
        dense_proof(op, known)[0],
        banded_proof(op, None, known),
        banded_proof(op, 1.0, known),
    )
    for proof in proofs:
        assert proof.injective is not True, proof
    assert patch_proof(op, known) is None
    assert window_proof(op, known) is None
    (certificate,) = certify(op, known.unsqueeze(0))
    assert certificate.determined is not True
    (lanczos,) = certify(op, known.unsqueeze(0), "lanczos")
    assert lanczos.determined is not True


def test_singular_layers_are_never_proven():
    """Two input channels seen identically (x0 - x1 is invisible): no proof, at any size, by any route."""
    torch.manual_seed(0)
    weight = torch.randn(24, 2, 3, 3, dtype=torch.float64)
    weight[:, 1] = weight[:, 0]
    for size in (6, 10):
        op = ConvOperator(weight, (size, size), padding=1)
        assert prove(op).injective is not True
        assert gram_proof(op)[0].injective is not True
        assert dense_proof(op)[0].injective is False
        assert patch_proof(op) is None
        assert window_proof(op) is None
        for estimate in (1.0, 1e-3, 1e-6):
            assert banded_proof(op, estimate).injective is not True
    report = injectivity_report(torch.nn.Sequential(_conv_of(weight)), (10, 10))
    assert not report[0].exact
    assert report[0].verdict == "numerically singular"


def _conv_of(weight: torch.Tensor) -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([0.6, 0.8, 1.0]), st.integers(1, 2))
def test_masked_window_certificate_agrees_with_the_dense_rank(seed, share, stride):
    """A proven window certificate means full column rank; with many filters it does prove it."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(24 * stride * stride, 2, 3, 3, generator=generator, dtype=torch.float64)
    op = ConvOperator(weight, (10, 10), stride=stride, padding=1)
    known = torch.rand(op.out_shape, generator=generator) < share
    truth = _truth(op, known)
    proof = window_proof(op, known)
    if proof is not None:
        assert 0 < proof.lower_bound <= truth
    if share >= 0.8:
        assert proof is not None  # 24 s^2 filters for 2 channels: 4.3x (3.8x at 80%) the window's unknowns


def test_verified_cholesky_never_proves_above_lambda_min():
    """Exact Gram matrices with a known smallest eigenvalue: shifts below it are proven, at or above never."""
    b = torch.tensor([[3.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    g = b.T @ b  # integer entries: computed exactly; eigenvalues 4, 16 and 2 (from the last column)
    error = gamma(4) * abs_gram_norm(b)
    assert float(cholesky_certificate(g, torch.tensor(1.99), error)) > 1.98
    assert float(cholesky_certificate(g, torch.tensor(2.0), error)) == -math.inf
    singular = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]], dtype=torch.float64)
    gram = singular.T @ singular  # rank one, exactly
    assert float(gram_lower_bound(gram, gamma(3) * abs_gram_norm(singular))) == 0.0
    assert float(cholesky_certificate(gram, torch.tensor(1e-300), torch.tensor(0.0))) == -math.inf
    assert svd_lower_bound(singular)[0] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_bounds_against_forty_digits(seed):
    """The SVD certificate and the verified Cholesky against mpmath's singular values at 40 digits."""
    generator = torch.Generator().manual_seed(seed)
    b = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    b[:, 5] = b[:, 4] + 1e-9 * b[:, 5]  # nearly dependent columns: sigma_min about 1e-9
    mpmath.mp.dps = 40
    exact = min(mpmath.svd_r(mpmath.matrix(b.tolist()), compute_uv=False))
    bound, _ = svd_lower_bound(b)
    assert 0 < bound <= float(exact)
    assert bound >= 0.999 * float(exact)
    square = float(gram_lower_bound(b.T @ b, gamma(9) * abs_gram_norm(b)))
    assert square <= float(exact) ** 2  # the Gram proof cannot reach 1e-9 (its margin is ~n^2 u): 0, never above


def test_errors_name_the_limit_and_the_fix():
    big = ConvOperator(torch.randn(8, 3, 3, 3, dtype=torch.float64), (70, 70), padding=1)
    with pytest.raises(TooLargeError, match=r"gram_proof: expected at most 12288 unknowns .* got 14700; use window"):
        gram_proof(big)
    with pytest.raises(RouteError, match=r"dft_proof: expected a layer the 2-D DFT diagonalises, but padding is"):
        dft_proof(ConvOperator(torch.randn(4, 1, 3, 3, dtype=torch.float64), (8, 8), padding=1))


class _Residual(torch.nn.Module):
    """A residual block that reuses its ReLU (two nodes of one module) and adds the input back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 24, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(24, 2, 1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.conv2(self.relu(self.conv1(x))) + x))


def test_the_analyses_follow_the_one_capture_through_skips_and_reused_modules():
    """The hook chain refused this network (ReLU runs twice); the fx capture reports every node."""
    from invertnet.analysis.invariance import invariance_score, translations
    from invertnet.analysis.sparsity import activation_sparsity

    torch.manual_seed(0)
    net = _Residual().double().eval()
    report = injectivity_report(net, (8, 8))
    assert [(r.name, r.kind) for r in report] == [("conv1", "Conv2d"), ("conv2", "Conv2d"), ("pool", "MaxPool2d")]
    assert report[0].exact
    assert report[0].proof in ("dense", "gram")
    assert report[1].verdict == "not injective (dimension count)"
    images = torch.rand(40, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        first = torch.relu(net.conv1(images))
    sparsity = activation_sparsity(net, images, ["relu", "relu_1"])  # the two calls of one module, by node
    assert sparsity["relu"] == float((first == 0).double().mean())
    score = invariance_score(net, images, "add", [translations(images, (-1, 1))], rate=0.05)
    assert score.unit_scores.shape == (2,)


def test_spectrum_never_calls_an_estimate_a_proof(monkeypatch):
    """Without a proof that fits (no Gram, no window, no patch), LOBPCG's value is reported as an estimate only."""
    from invertnet.analysis import injectivity

    monkeypatch.setattr(injectivity, "DENSE_SPECTRUM_ENTRIES", 0)
    monkeypatch.setattr(injectivity, "GRAM_MAX_UNKNOWNS", 0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()  # 4 filters for 3 channels: no block fits the limit
    (row,) = injectivity_report(torch.nn.Sequential(conv), (12, 12), window=False, proof_flops=0)
    assert row.sigma_method == "lobpcg, border"  # preconditioned by the circulant + border pieces
    assert not row.exact
    assert row.proof == ""
    assert row.sigma_min_lower == 0.0
    assert row.verdict == "not proven (estimate only)"
    truth = float(torch.linalg.svdvals(ConvOperator.from_conv(conv, (12, 12)).placed_matrix())[-1])
    assert row.sigma_min >= truth * (1 - 1e-10)  # a Ritz value: from above
    assert row.sigma_min <= truth * (1 + 1e-6)
    assert truth <= row.sigma_min_upper <= truth * (1 + 1e-6)  # the other side, proven by the Ritz vector
    assert "proven <=" in format_spectrum([row]).splitlines()[1]
    assert format_spectrum([row], seconds=True).splitlines()[1].split()[-2:] == ["s", "verdict"]
    assert f"{row.seconds:.1f}" in format_spectrum([row], seconds=True).splitlines()[2]


def test_spectrum_proves_a_large_layer_by_the_banded_cholesky(monkeypatch):
    """No Gram, window or patch proof fits: the banded verified Cholesky decides, below the dense sigma_min."""
    from invertnet.analysis import injectivity

    monkeypatch.setattr(injectivity, "DENSE_SPECTRUM_ENTRIES", 0)
    monkeypatch.setattr(injectivity, "GRAM_MAX_UNKNOWNS", 0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    (row,) = injectivity_report(torch.nn.Sequential(conv), (12, 12), window=False)
    truth = float(torch.linalg.svdvals(ConvOperator.from_conv(conv, (12, 12)).placed_matrix())[-1])
    assert (row.proof, row.exact, row.verdict) == ("banded", True, "injective")
    assert 0.98 * truth <= row.sigma_min_lower <= truth <= row.sigma_min_upper  # both sides proven
    assert 1 < row.bracket < 1.03
    (cheap,) = injectivity_report(torch.nn.Sequential(conv), (12, 12), window=False, proof_flops=1e3)
    assert not cheap.exact  # over the budget: the estimate only


def test_gram_proof_and_sigma_max_where_arpack_stops():
    """A layer hypothesis found: every tap reads padding, so A^T A v0 = 0 and ARPACK stops ("starting vector is
    zero", error -9); sigma_max falls back to LOBPCG and gives the dense value, and no proof exceeds sigma_min."""
    config = ConvConfig(2, 4, 2, (2, 1), (1, 3), (0, 1), (2, 1), "zeros", (9, 2), False)
    op = config.operator(0)
    proof, _ = gram_proof(op)
    values = torch.linalg.svdvals(op.placed_matrix(torch.float64))
    assert sigma_max(op) == pytest.approx(float(values[0]), abs=1e-12)
    assert proof.injective is None or proof.lower_bound <= float(values[-1])


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_an_arpack_error_falls_back_to_lobpcg(which, monkeypatch):
    """Where ARPACK raises, LOBPCG gives the extreme eigenvalue of A^T A to the same tolerance, flagged converged."""

    def stops(*args, **kwargs):
        raise ArpackError(-9)

    generator = torch.Generator().manual_seed(3)
    op = ConvOperator(torch.randn(12, 3, 3, 3, generator=generator, dtype=torch.float64), (8, 8), padding=1)
    eigenvalues = scipy.linalg.eigvalsh((op.placed_matrix().T @ op.placed_matrix()).numpy())
    monkeypatch.setattr(spectrum, "eigsh", stops)
    value, converged = spectrum._gram_eigenvalue(op, which, 1e-10, None)
    assert converged
    assert value == pytest.approx(eigenvalues[-1] if which == "LA" else eigenvalues[0], rel=1e-8)


@pytest.mark.parametrize(("condition", "route"), [(3.0, "gram eigenvalues"), (1e3, "svdvals"), (1e9, "svd")])
def test_matrix_lower_bound_on_each_route(condition, route, monkeypatch):
    """Well conditioned: the values from the Gram's eigenvalues; moderately: svdvals and the Gram proof; badly: the
    SVD certificate. Each against scipy's singular values of the same float64 matrix."""
    generator = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(80, 30, generator=generator, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(30, 30, generator=generator, dtype=torch.float64)).Q
    b = u @ torch.diag(torch.logspace(0, -math.log10(condition), 30, dtype=torch.float64)) @ v.T
    reference = torch.from_numpy(scipy.linalg.svdvals(b.numpy()))
    taken: list[str] = []
    svdvals, svd_bound = torch.linalg.svdvals, whole.svd_lower_bound
    monkeypatch.setattr(torch.linalg, "svdvals", lambda m: taken.append("svdvals") or svdvals(m))
    monkeypatch.setattr(whole, "svd_lower_bound", lambda m: taken.append("svd") or svd_bound(m))
    bound, values = matrix_lower_bound(b)
    assert taken == {"gram eigenvalues": [], "svdvals": ["svdvals"], "svd": ["svd"]}[route]
    assert float((values - reference).abs().max()) <= 1e-13 * float(reference[0]), route
    assert 0.9997 * float(reference[-1]) <= bound <= float(reference[-1]), route


def test_spectrum_tightens_a_loose_local_proof_by_the_banded_cholesky(monkeypatch):
    """A window bound further below the estimate than TIGHTEN_GAP is replaced by the tighter banded bound."""
    from invertnet.analysis import injectivity

    monkeypatch.setattr(injectivity, "DENSE_SPECTRUM_ENTRIES", 0)
    monkeypatch.setattr(injectivity, "GRAM_MAX_UNKNOWNS", 0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 40, 3, padding=1, bias=False).double()
    truth = float(torch.linalg.svdvals(ConvOperator.from_conv(conv, (10, 10)).placed_matrix())[-1])
    (local,) = injectivity_report(torch.nn.Sequential(conv), (10, 10), proof_flops=0)
    assert local.proof in ("patch", "window")
    assert local.sigma_min_lower < 0.98 * truth
    monkeypatch.setattr(injectivity, "TIGHTEN_GAP", 1.0)
    (tight,) = injectivity_report(torch.nn.Sequential(conv), (10, 10))
    assert (tight.proof, tight.exact) == ("banded", True)
    assert max(local.sigma_min_lower, 0.98 * truth) <= tight.sigma_min_lower <= truth


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": 1},
        {"stride": 2, "padding": 1},
        {"padding": 2, "dilation": 2},
        {"padding": (2, 0), "groups": 2},
    ],
)
def test_gram_rows_are_the_dense_gram_by_blocks(kwargs):
    """Every block (r, r') of the Gram matrix by image rows, against the placed matrix's A^T A; zeros off the band."""
    torch.manual_seed(1)
    groups = kwargs.get("groups", 1)
    op = ConvOperator(torch.randn(6, 4 // groups, 5 if groups > 1 else 3, 3, dtype=torch.float64), (7, 6), **kwargs)
    c, h, w = op.in_shape
    a = op.placed_matrix()
    dense = (a.T @ a).reshape(c, h, w, c, h, w).permute(1, 2, 0, 4, 5, 3).reshape(h, w * c, h, w * c)
    rows = op.gram_rows()
    assert rows.reach == min(h - 1, op.dilation[0] * (op.kernel_size[0] - 1))
    for r in range(h):
        for r2 in range(h):
            torch.testing.assert_close(rows.block(r, r2), dense[r, :, r2], rtol=0, atol=1e-12)
            if abs(r - r2) > rows.reach:
                assert float(dense[r, :, r2].abs().max()) == 0.0


def test_banded_cholesky_certificate_against_the_eigenvalues():
    """Proves just below lambda_min, refuses just above it, and refuses blocks that change between reads."""
    generator = torch.Generator().manual_seed(2)
    b = torch.randn(40, 30, generator=generator, dtype=torch.float64)
    g = b.T @ b
    blocks = torch.arange(30) // 5
    g[(blocks[:, None] - blocks[None, :]).abs() > 2] = 0  # banded: blocks of 5, reach 2
    g = torch.tril(g) + torch.tril(g, -1).T + 20 * torch.eye(30, dtype=torch.float64)
    lam = float(torch.linalg.eigvalsh(g)[0])

    def block(i: int, j: int) -> torch.Tensor:
        return g[5 * i : 5 * i + 5, 5 * j : 5 * j + 5]

    assert banded_cholesky_certificate(block, 6, 2, 0.999 * lam, 0.0) == 0.999 * lam
    assert banded_cholesky_certificate(block, 6, 2, 1.001 * lam, 0.0) == -math.inf
    assert banded_cholesky_certificate(block, 6, 2, 0.5 * lam, 0.6 * lam) < 0  # the Gram error is subtracted
    calls = []

    def counted(i: int, j: int) -> torch.Tensor:
        calls.append((i, j))
        return block(i, j)

    # an estimate from above below the shift: the factorisation would fail, so only the diagonal is read
    assert banded_cholesky_certificate(counted, 6, 2, 0.999 * lam, 0.0, ceiling=0.99 * lam) == -math.inf
    assert calls == [(i, i) for i in range(6)]
    assert banded_cholesky_certificate(block, 6, 2, 0.999 * lam, 0.0, ceiling=lam) == 0.999 * lam
    reads = iter(range(100))

    def drifting(i: int, j: int) -> torch.Tensor:
        return block(i, j) * (1 + 1e-16 * next(reads)) if i == j else block(i, j)

    assert banded_cholesky_certificate(drifting, 6, 2, 0.5 * lam, 0.0) == -math.inf


def test_banded_margin_is_one_window_of_the_band_not_the_whole_trace():
    """A long band with lambda_min below Rump's whole-trace margin is proven by the window margin, never above it.

    400 diagonal blocks of 10 (reach 1): the first has lambda_min = 1e-12 (its value in mpmath at 40 digits is
    the reference), the others' eigenvalues lie in [0.5, 1.5]. gamma_21 times the trace (about 4,000) is 9e-12,
    above lambda_min, so the whole-trace margin proves nothing; the largest window of 3 blocks has trace about 30.
    """
    generator = torch.Generator().manual_seed(5)
    spectra = torch.linspace(0.5, 1.5, 10, dtype=torch.float64).repeat(400, 1)
    spectra[0, 0] = 1e-12
    q = torch.linalg.qr(torch.randn(400, 10, 10, generator=generator, dtype=torch.float64)).Q
    diagonal_blocks = q @ torch.diag_embed(spectra) @ q.mT
    diagonal_blocks = torch.tril(diagonal_blocks) + torch.tril(diagonal_blocks, -1).mT  # symmetric, as factored
    first = mpmath.matrix(diagonal_blocks[0].tolist())
    with mpmath.workdps(40):
        lam = float(min(mpmath.eigsy(first, eigvals_only=True)))
    assert float(torch.linalg.eigvalsh(diagonal_blocks[1:]).min()) > 0.4
    trace = float(diagonal_blocks.diagonal(dim1=-2, dim2=-1).sum())
    assert gamma(21) * trace / 2 > lam  # the premise: the whole trace (scaled to [1, 2)) would prove nothing

    def block(i: int, j: int) -> torch.Tensor:
        return diagonal_blocks[i] if i == j else torch.zeros(10, 10, dtype=torch.float64)

    assert banded_cholesky_certificate(block, 400, 1, 0.5 * lam, 0.0) == 0.5 * lam
    assert banded_cholesky_certificate(block, 400, 1, 1.01 * lam, 0.0) == -math.inf


def test_banded_proof_refuses_what_it_cannot_prove():
    torch.manual_seed(3)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    reflect = ConvOperator(weight, (8, 8), padding=1, padding_mode="reflect")
    assert banded_proof(reflect, 1.0).reason.startswith("banded: padding 'reflect' copies pixels")
    plain = ConvOperator(weight, (8, 8), padding=1)
    assert "above the budget" in banded_proof(plain, 1.0, max_flops=10.0).reason
    assert banded_proof(plain, 0.0).reason == "banded: no positive estimate of sigma_min to place the shift"
    assert banded_proof(ConvOperator(weight, (8, 8), stride=2), 1.0).name == "count"


@pytest.mark.parametrize(
    "kwargs",
    [{"padding": 1}, {"stride": 2, "padding": 1}, {"padding": 2, "dilation": 2}, {"padding": (2, 0), "groups": 2}],
)
def test_masked_gram_rows_are_the_known_rows_gram_by_blocks(kwargs):
    """Summed output row by output row, every lower block of A^T M A, against the placed matrix's known rows."""
    torch.manual_seed(4)
    groups = kwargs.get("groups", 1)
    op = ConvOperator(torch.randn(6, 4 // groups, 5 if groups > 1 else 3, 3, dtype=torch.float64), (7, 6), **kwargs)
    known = torch.rand(op.out_shape) < 0.7
    c, h, w = op.in_shape
    a = op.placed_matrix()[known.reshape(-1)]
    dense = (a.T @ a).reshape(c, h, w, c, h, w).permute(1, 2, 0, 4, 5, 3).reshape(h, w * c, h, w * c)
    rows = MaskedGramRows(op, known)
    for r in range(h):
        for r2 in range(max(0, r - rows.reach), r + 1):
            torch.testing.assert_close(rows.block(r, r2), dense[r, :, r2], rtol=0, atol=1e-12)
