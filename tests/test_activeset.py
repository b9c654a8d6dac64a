"""Active-set inversion of ReLU / ReLU6 / Hardtanh layers, against dense references (float64)."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import relative_gap
from scipy.optimize import linprog

from invertnet.activeset import (
    ActiveSetOptions,
    Constraints,
    activation_constraints,
    certify,
    clip_levels,
    invert_active_set,
)
from invertnet.errors import (
    DTypeError,
    InvalidActivationOutputError,
    OptionError,
    ShapeError,
    UnsupportedLayerError,
)
from invertnet.linalg.solvers import ConvergenceWarning
from invertnet.operators import ConvOperator, MatrixOperator


def _conv(c_in, c_out, seed=0, **kw):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(c_in, c_out, 3, **kw).double()


def _features(layer, x, upper=None):
    with torch.no_grad():
        z = layer(x)
    return z.clamp(min=0) if upper is None else z.clamp(0, upper)


def _feature_residual(layer, x_hat, h, upper=None):
    return relative_gap(_features(layer, x_hat, upper), h)


def test_determined_relu_conv_is_recovered_exactly():
    """32 filters on 1 channel, 3x3: every window's ~16 active rows determine its 9 pixels."""
    conv = _conv(1, 32, padding=1)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    h = _features(conv, x)
    result = invert_active_set(ConvOperator.from_conv(conv, (8, 8)), activation_constraints(h), bias=conv.bias)
    assert result.exact.tolist() == [True, True, True]
    assert all(c.determined and c.method == "patch" for c in result.certificates)
    op = ConvOperator.from_conv(conv, (8, 8))
    assert all(c.determined and c.method == "dense" for c in certify(op, h > 0, "dense"))  # the independent check
    # LSQR to atol 1e-12: measured relative error 2.8e-12 (3 images)
    assert relative_gap(result.x, x) <= 1e-10
    assert float(result.inequality_violation.max()) == 0.0
    assert result.minimum_norm.all()
    assert result.feasible.all()
    assert result.rounds == 1
    assert 0.3 < float(result.known_fraction.mean()) < 0.6


def test_lanczos_adds_an_estimate_beside_the_proof():
    """With certificate='lanczos' the proof still decides; the Lanczos value is an estimate beside it."""
    conv = _conv(3, 32, padding=1)
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    h = _features(conv, x)
    options = ActiveSetOptions(certificate="lanczos")
    result = invert_active_set(
        ConvOperator.from_conv(conv, (12, 12)), activation_constraints(h), bias=conv.bias, options=options
    )
    (certificate,) = result.certificates
    assert certificate.determined
    assert certificate.proof in ("patch", "dense", "window", "gram")
    assert certificate.method == certificate.proof
    assert "not a proof" in certificate.reason
    assert 0 < certificate.lower_bound <= certificate.sigma_min * (1 + 1e-8)  # the proof is below the estimate
    assert bool(result.exact[0])
    assert relative_gap(result.x, x) <= 1e-10


def test_a_lanczos_value_is_never_a_proof():
    """No proof applies (the dense matrix is over the limit given): Lanczos estimates, and never decides."""
    torch.manual_seed(0)
    op = MatrixOperator(torch.randn(60, 40, dtype=torch.float64))
    known = torch.ones(1, 60, dtype=torch.bool)
    (undecided,) = certify(op, known, "auto", dense_max_entries=10)
    assert undecided.determined is None
    assert undecided.proof == ""
    assert math.isnan(undecided.lower_bound)
    (estimated,) = certify(op, known, "lanczos", dense_max_entries=10)
    assert estimated.determined is None
    assert estimated.method == "lanczos"
    assert estimated.proof == ""
    assert "an upper bound, not a proof" in estimated.reason
    exact = float(torch.linalg.svdvals(op.weight)[-1])
    assert abs(estimated.sigma_min - exact) <= 1e-6 * exact  # a good estimate, still not a proof
    (proven,) = certify(op, known)  # the default limit: the dense SVD certificate decides
    assert proven.determined
    assert proven.proof == "dense"
    assert proven.lower_bound <= exact


@pytest.mark.parametrize(("c_in", "c_out"), [(2, 2), (3, 4)])
def test_undetermined_layer_gives_a_feasible_point(c_in, c_out):
    """Fewer active rows than unknowns: not exact, but every equation and inequality holds."""
    conv = _conv(c_in, c_out, padding=1)
    x = torch.rand(2, c_in, 8, 8, dtype=torch.float64) - 0.3
    h = _features(conv, x)
    result = invert_active_set(ConvOperator.from_conv(conv, (8, 8)), activation_constraints(h), bias=conv.bias)
    assert not result.exact.any()
    assert all(c.determined is False and c.method == "count" for c in result.certificates)
    assert result.feasible.all()
    assert result.minimum_norm.all()
    scale = float(h.abs().max())
    # measured violations up to 7.6e-12 (equations) and 5.9e-12 (inequalities) on data of scale ~1
    assert float(result.equation_violation.max()) <= 1e-10 * scale
    assert float(result.inequality_violation.max()) <= 1e-10 * scale
    assert _feature_residual(conv, result.x, h) <= 1e-10
    assert relative_gap(result.x, x) > 0.1  # the input is not recovered: the certificate was right


def test_rank_deficient_with_enough_rows():
    """Copies of one filter: more active rows than unknowns, yet rank deficient; only the rank can tell."""
    conv = _conv(1, 6, padding=1)
    with torch.no_grad():
        conv.weight.copy_(conv.weight[:1].repeat(6, 1, 1, 1))
        conv.bias.copy_(conv.bias[:1].repeat(6))
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64) - 0.2
    h = _features(conv, x)
    result = invert_active_set(ConvOperator.from_conv(conv, (6, 6)), activation_constraints(h), bias=conv.bias)
    (certificate,) = result.certificates
    assert certificate.rows >= certificate.unknowns
    assert certificate.determined is False
    assert certificate.method == certificate.proof == "singular"  # shown numerically rank deficient
    assert certificate.determined is False
    assert not bool(result.exact[0])
    assert bool(result.feasible[0])


def _min_norm_by_enumeration(A, lower, upper):
    """The minimum-norm point of {l <= A x <= u}: the smallest feasible min-norm solution over active sets."""
    known = lower == upper
    free = np.flatnonzero(~known)
    best = None
    for r in range(len(free) + 1):
        for subset in itertools.combinations(free, r):
            rows = np.concatenate([np.flatnonzero(known), np.array(subset, dtype=int)]).astype(int)
            target = np.where(np.isfinite(upper[rows]), upper[rows], lower[rows])
            x = np.linalg.pinv(A[rows]) @ target
            z = A @ x
            feasible = (z <= upper + 1e-9).all() and (z >= lower - 1e-9).all() and np.abs(z - lower)[known].max() < 1e-9
            if feasible and (best is None or np.linalg.norm(x) < np.linalg.norm(best)):
                best = x
    return best


def _coordinate_spread(A, lower, upper):
    """max_j (max x_j - min x_j) over the feasible set, by scipy's linprog (inf when unbounded)."""
    known = lower == upper
    up, low = np.isfinite(upper) & ~known, np.isfinite(lower) & ~known
    a_ub = np.concatenate([A[up], -A[low]])
    b_ub = np.concatenate([upper[up], -lower[low]])
    spread = 0.0
    for j in range(A.shape[1]):
        c = np.eye(A.shape[1])[j]
        ends = [
            linprog(s * c, A_ub=a_ub, b_ub=b_ub, A_eq=A[known], b_eq=lower[known], bounds=(None, None)) for s in (1, -1)
        ]
        if any(e.status == 3 for e in ends):
            return np.inf
        spread = max(spread, -ends[1].fun - ends[0].fun)
    return spread


@pytest.mark.parametrize(
    ("c_in", "c_out", "kw"),
    [(1, 24, {"padding": 1}), (2, 40, {"stride": 2}), (4, 64, {"groups": 2, "padding": 1}), (1, 12, {})],
)
def test_patch_certificate_is_sound_against_the_dense_rank(c_in, c_out, kw):
    """Whenever the patch certificate says determined, the dense masked matrix has full column rank."""
    g = torch.Generator().manual_seed(c_out)
    weight = torch.randn(c_out, c_in // kw.get("groups", 1), 3, 3, generator=g, dtype=torch.float64)
    op = ConvOperator(weight, (7, 7), **kw)
    known = torch.rand(6, *op.out_shape, generator=g) < 0.75
    by_patch = certify(op, known)
    by_dense = certify(op, known, "dense")
    assert any(p.method == "patch" for p in by_patch) or c_out == 12  # the test exercises the certificate
    for patch, dense in zip(by_patch, by_dense, strict=True):
        if patch.method == "patch":
            assert patch.determined
            assert dense.determined
        else:  # undecided by patches: auto falls through to the dense rank
            assert patch.determined == dense.determined


def test_newton_phase_finishes_what_the_loop_cannot():
    """Seed 67 of the dense references cycles in the active-set loop: the Newton phase ends feasible."""
    g = torch.Generator().manual_seed(67)
    weight = torch.randn(9, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(9, generator=g, dtype=torch.float64)
    x = torch.randn(1, 6, generator=g, dtype=torch.float64)
    h = torch.relu(x @ weight.T + bias)
    result = invert_active_set(MatrixOperator(weight), activation_constraints(h), bias=bias)
    assert bool(result.feasible[0])
    assert bool(result.converged[0])
    assert not bool(result.minimum_norm[0])  # the Newton phase claims no minimum norm
    assert float(result.inequality_violation[0]) <= 1e-8 * float(h.abs().max())


def test_clip_preimage_reads_bounds_on_the_output():
    """Bounds on h = clip(z, 0, 6) give bounds on z: inside kept, at or beyond a level opened up."""
    lower = torch.tensor([[0.0, 1.0, -1.0, 6.0, 2.0]], dtype=torch.float64)
    upper = torch.tensor([[0.0, 3.0, 7.0, 6.0, torch.inf]], dtype=torch.float64)
    c = Constraints(lower, upper).clip_preimage(0.0, 6.0)
    assert c.lower.tolist() == [[-torch.inf, 1.0, -torch.inf, 6.0, 2.0]]
    assert c.upper.tolist() == [[0.0, 3.0, torch.inf, torch.inf, torch.inf]]


@pytest.mark.parametrize("seed", range(12))
def test_against_dense_references(seed):
    """Tiny dense layers: the minimum-norm feasible point (enumerated) and determination (linprog)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(9, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(9, generator=g, dtype=torch.float64)
    x = torch.randn(1, 6, generator=g, dtype=torch.float64)
    h = torch.relu(x @ weight.T + bias)
    result = invert_active_set(MatrixOperator(weight), activation_constraints(h), bias=bias)
    shifted = activation_constraints(h).shifted(bias)
    lower, upper = shifted.lower[0].numpy(), shifted.upper[0].numpy()
    reference = _min_norm_by_enumeration(weight.numpy(), lower, upper)
    assert bool(result.feasible[0])
    assert bool(result.minimum_norm[0])
    # measured gaps up to 6e-12 over 200 seeds (199 of them reach it; seed 67 cycles and says infeasible)
    assert np.linalg.norm(result.x[0].numpy() - reference) <= 1e-9 * max(1.0, np.linalg.norm(reference))
    spread = _coordinate_spread(weight.numpy(), lower, upper)
    assert result.certificates[0].determined == (spread < 1e-9)
    assert bool(result.exact[0]) == (spread < 1e-9)


def test_relu6_upper_clip_is_an_inequality():
    conv = _conv(1, 32, padding=1)
    x = 20 * torch.rand(2, 1, 8, 8, dtype=torch.float64)
    h = _features(conv, x, upper=6.0)
    constraints = activation_constraints(h, *clip_levels(torch.nn.ReLU6()))
    at_six = h == 6.0
    assert at_six.any()
    assert not constraints.known[at_six].any()
    assert torch.equal(constraints.lower[at_six], h[at_six])
    assert constraints.upper[at_six].isinf().all()
    result = invert_active_set(ConvOperator.from_conv(conv, (8, 8)), constraints, bias=conv.bias)
    assert result.exact.all()
    assert relative_gap(result.x, x) <= 1e-10
    with torch.no_grad():
        z = conv(result.x)
    assert bool((z[at_six] >= 6.0 - 1e-9).all())


def test_hardtanh_undetermined_both_levels():
    conv = _conv(2, 2, padding=1)
    x = 2 * torch.rand(1, 2, 6, 6, dtype=torch.float64) - 1
    with torch.no_grad():
        h = torch.nn.Hardtanh(-0.5, 0.5)(conv(x))
    constraints = activation_constraints(h, *clip_levels(torch.nn.Hardtanh(-0.5, 0.5)))
    result = invert_active_set(ConvOperator.from_conv(conv, (6, 6)), constraints, bias=conv.bias)
    assert bool(result.feasible[0])
    assert not bool(result.exact[0])
    assert bool(constraints.inequalities.any())
    assert bool((h == 0.5).any())
    assert bool((h == -0.5).any())
    with torch.no_grad():
        assert relative_gap(torch.nn.Hardtanh(-0.5, 0.5)(conv(result.x)), h) <= 1e-10


def test_linear_relu_through_matrix_operator():
    torch.manual_seed(3)
    linear = torch.nn.Linear(5, 20).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        h = torch.relu(linear(x))
    result = invert_active_set(MatrixOperator.from_linear(linear), activation_constraints(h), bias=linear.bias)
    assert result.exact.all()
    assert relative_gap(result.x, x) <= 1e-10
    assert result.x.dtype == torch.float64
    assert not result.x.requires_grad


def test_float32_follows_input():
    conv = _conv(1, 32, padding=1)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    h = _features(conv, x).float()
    options = ActiveSetOptions(atol=1e-6, tol=1e-5)
    result = invert_active_set(
        ConvOperator.from_conv(conv, (8, 8)), activation_constraints(h), bias=conv.bias, options=options
    )
    assert result.x.dtype == torch.float32
    assert relative_gap(result.x.double(), x) <= 1e-4  # float32 data: measured 3.6e-6


def test_constraints_without_an_operator():
    value = torch.tensor([[1.0, 2.0, 3.0]])
    c = Constraints.equations(value, torch.tensor([[True, False, True]]))
    assert c.known.tolist() == [[True, False, True]]
    assert c.inequalities.tolist() == [[False, False, False]]
    equations, inequalities = c.violation(torch.tensor([[1.5, 9.0, 3.0]]))
    assert equations.tolist() == [0.5]
    assert inequalities.tolist() == [0.0]
    assert c.shifted(1.0).value.tolist() == [[0.0, 0.0, 2.0]]


def test_certify_by_count_and_none():
    op = MatrixOperator(torch.randn(4, 3, dtype=torch.float64))
    known = torch.tensor([[True, True, False, False], [True, True, True, False]])
    first, second = certify(op, known, "none")
    assert (first.determined, first.method) == (False, "count")
    assert (second.determined, second.method) == (None, "none")


def test_unconverged_round_cap_warns():
    conv = _conv(2, 2, padding=1)
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64) - 0.3
    h = _features(conv, x)
    # one round of each phase (the loop, then Newton), each LSQR capped at 3 iterations
    with pytest.warns(ConvergenceWarning, match=r"1 of 1 images ended unconverged or infeasible after 2 rounds"):
        result = invert_active_set(
            ConvOperator.from_conv(conv, (8, 8)),
            activation_constraints(h),
            bias=conv.bias,
            options=ActiveSetOptions(max_rounds=1, maxiter=3, newton_steps=1, newton_maxiter=3),
        )
    assert not bool(result.feasible[0])
    assert not bool(result.minimum_norm[0])


# --- every error message -------------------------------------------------------------------------


def test_error_negative_relu_output():
    with pytest.raises(
        InvalidActivationOutputError,
        match=r"expected values >= 0 \(outputs of max\(0, z\)\), got -0.5 at index \(0, 1\) \(1 entries below\); pass",
    ):
        activation_constraints(torch.tensor([[1.0, -0.5]]))


def test_error_above_upper_clip():
    with pytest.raises(
        InvalidActivationOutputError,
        match=r"expected values <= 6 \(outputs of clip\(z, 0, 6\)\), got 7 at index \(0, 0\)",
    ):
        activation_constraints(torch.tensor([[7.0, 1.0]]), upper=6.0)


def test_error_nan():
    with pytest.raises(
        InvalidActivationOutputError,
        match=r"expected finite values, got nan at index \(0, 1\) \(1 non-finite entries\)",
    ):
        activation_constraints(torch.tensor([[1.0, float("nan")]]))


def test_error_levels_dtype_and_atol():
    with pytest.raises(OptionError, match=r"expected lower < upper, got lower=1.0 and upper=0.5"):
        activation_constraints(torch.zeros(1, 2), 1.0, 0.5)
    with pytest.raises(OptionError, match=r"expected atol >= 0, got -1"):
        activation_constraints(torch.zeros(1, 2), atol=-1)
    with pytest.raises(
        DTypeError, match=r"expected a floating-point tensor, got torch.int64; convert with h.double\(\)"
    ):
        activation_constraints(torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(UnsupportedLayerError, match=r"expected nn.ReLU, nn.ReLU6 or nn.Hardtanh, got Sigmoid"):
        clip_levels(torch.nn.Sigmoid())


def test_error_shape_mismatch_with_operator():
    op = ConvOperator(torch.randn(4, 1, 3, 3, dtype=torch.float64), (6, 6))
    h = torch.zeros(1, 4, 5, 5, dtype=torch.float64)
    with pytest.raises(
        ShapeError,
        match=r"expected constraints of shape \(N, 4, 4, 4\) for ConvOperator.*got \(1, 4, 5, 5\); read the output",
    ):
        invert_active_set(op, activation_constraints(h))
    with pytest.raises(
        ShapeError, match=r"expected a bias of shape \(4,\) or broadcastable to \(N, 4, 4, 4\), got \(3,\)"
    ):
        invert_active_set(op, activation_constraints(torch.zeros(1, 4, 4, 4)), bias=torch.zeros(3))
    with pytest.raises(TypeError, match=r"expected Constraints, got Tensor; build them with activation_constraints"):
        invert_active_set(op, h)


def test_error_constraints():
    with pytest.raises(
        ShapeError, match=r"expected lower and upper of one shape \(N, ...\), got \(1, 2\) and \(1, 3\)"
    ):
        Constraints(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(
        OptionError, match=r"expected lower <= upper everywhere, got lower 1 and upper 0 at index \(0, 0\)"
    ):
        Constraints(torch.ones(1, 2), torch.zeros(1, 2))
    with pytest.raises(OptionError, match=r"expected a positive tol, got 0"):
        ActiveSetOptions(tol=0)
    with pytest.raises(OptionError, match=r"expected certificate in \('auto', 'dense', 'lanczos', 'none'\), got 'svd'"):
        ActiveSetOptions(certificate="svd")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_follows_the_constraints():
    conv = _conv(1, 32, padding=1).cuda()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, device="cuda")
    h = _features(conv, x)
    result = invert_active_set(ConvOperator.from_conv(conv, (8, 8)), activation_constraints(h), bias=conv.bias)
    assert result.x.device.type == "cuda"
    assert result.exact.tolist() == [True, True]
    assert relative_gap(result.x, x) <= 1e-10


def test_newton_options_are_checked():
    with pytest.raises(OptionError, match=r"expected newton_steps >= 1, got 0"):
        ActiveSetOptions(newton_steps=0)


def test_auto_certificate_says_undecided_when_no_proof_fits():
    """Past the count, no determining block within the limit, too large for the Gram proof: undecided, never a guess."""
    op = ConvOperator(torch.randn(5, 4, 3, 3, dtype=torch.float64), (70, 70), padding=1)
    known = torch.ones(1, *op.out_shape, dtype=torch.bool)
    (certificate,) = certify(op, known)
    assert certificate.determined is None
    assert certificate.proof == ""
    assert certificate.method == "none"
    assert "exceed the Gram proof's limit (12288)" in certificate.reason
    flops = 70 * (4 + 4 + 1 / 3) * (70 * 4) ** 3  # H (q^2 + 2q + 1/3) b^3, q = 2, b = W C
    assert f"the banded verified Cholesky (not run: no flop budget) would take {flops:.2g} flops" in certificate.reason
