"""Batched joint inversion and its solvers: every image of a batch gets the run it gets alone."""

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import jvp

from invertnet import CReLU, JointOptions, OptionError, invert_jointly, reconstruct
from invertnet.linalg.lbfgs import BatchLBFGS
from invertnet.linalg.solvers import lsqr
from invertnet.operators import MatrixOperator
from invertnet.reconstruction.joint import FeatureProblem, FeatureTarget, _Linearisation, match_features


def _stack() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 2), CReLU(), nn.Conv2d(16, 20, 2), CReLU(), nn.Conv2d(40, 44, 2)).double()


def _assert_same_run(batch, singles, index):
    single = singles[index]
    assert torch.allclose(batch.image[index], single.image[0], rtol=0, atol=1e-12)
    assert int(batch.evaluations[index]) == int(single.evaluations[0])
    assert int(batch.iterations[index]) == int(single.iterations[0])
    assert int(batch.inner_iterations[index]) == int(single.inner_iterations[0])
    assert bool(batch.converged[index]) == bool(single.converged[0])
    assert batch.history[index] == pytest.approx(single.history[0], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    "options",
    [
        JointOptions(tol=1e-10, lbfgs_evaluations=60, max_steps=8),
        JointOptions(tol=1e-3, tv=1e-3, box=(0.0, 1.0), lbfgs_evaluations=40, max_steps=3),
    ],
)
def test_a_batch_gives_every_image_its_single_run_and_a_solved_image_does_not_move(options):
    net = _stack()
    x = torch.rand(3, 2, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x)
    x0 = torch.full_like(x, 0.5)
    x0[1] = x[1]  # already solved: residual 0
    with torch.no_grad():
        batch = match_features(net, y, x0, options)
        singles = [match_features(net, y[i : i + 1], x0[i : i + 1], options) for i in range(3)]
    for i in range(3):
        _assert_same_run(batch, singles, i)
    assert torch.equal(batch.image[1], x[1])
    assert (int(batch.evaluations[1]), int(batch.iterations[1]), int(batch.inner_iterations[1])) == (0, 0, 0)
    assert batch.history[1] == [0.0]
    assert batch.converged[1]
    # the other two really ran, and stopped on their own counts
    assert all(int(batch.evaluations[i]) > 0 for i in (0, 2))
    assert batch.residual.shape == batch.converged.shape == (3,)


def test_lbfgs_phase_only_for_the_images_asked():
    net = _stack()
    x = torch.rand(2, 2, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        result = match_features(
            net, net(x), torch.full_like(x, 0.5), JointOptions(max_steps=1), lbfgs=torch.tensor([False, True])
        )
    assert int(result.evaluations[0]) == 0
    assert int(result.evaluations[1]) > 0
    assert result.iterations.tolist() == [1, 1]


def test_invert_jointly_takes_a_batch_with_per_image_results():
    net = _stack()
    x = torch.rand(2, 2, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    options = JointOptions(start="flat", lbfgs_evaluations=50, max_steps=10)
    batch = invert_jointly(net, x, "4", options)
    for i in range(2):
        single = invert_jointly(net, x[i : i + 1], "4", options)
        assert torch.allclose(batch.image[i], single.image[0], rtol=0, atol=1e-12)
        assert float(batch.psnr[i]) == pytest.approx(float(single.psnr[0]), abs=1e-6)
        assert float(batch.feature_residual[i]) == pytest.approx(float(single.feature_residual[0]), abs=1e-14)
    assert batch.joint is not None
    assert batch.joint.converged.shape == (2,)


def test_reconstruct_takes_a_batch_and_gives_each_image_its_single_run():
    torch.manual_seed(0)
    # conv 3x3 stride 2 on a CReLU input: LSQR (each image stops on its own test)
    net = nn.Sequential(nn.Conv2d(3, 12, 2), CReLU(), nn.Conv2d(24, 10, 3, stride=2)).double()
    x = torch.rand(2, 3, 13, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x[1] *= 100.0  # a different scale: a different number of LSQR iterations
    batch = reconstruct(net, x, "2", method="layers")
    assert "lsqr" in [step.route for step in batch.steps]
    for i in range(2):
        single = reconstruct(net, x[i : i + 1], "2", method="layers")
        assert [s.route for s in single.steps] == [s.route for s in batch.steps]
        # the same iterations; a batch sums in another order: measured up to 1e-12 relative, 1e-9 allowed
        assert torch.allclose(batch.image[i], single.image[0], rtol=1e-9, atol=1e-9 * float(x[i].abs().max()))
        assert float(batch.psnr[i]) == pytest.approx(float(single.psnr[0]), rel=1e-9)


def test_lsqr_freezes_each_sample_at_its_own_stop():
    generator = torch.Generator().manual_seed(5)
    u = torch.linalg.qr(torch.randn(30, 12, dtype=torch.float64, generator=generator))[0]
    v = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=generator))[0]
    a = u @ torch.diag(torch.logspace(0, 2, 12).double()) @ v.T
    op = MatrixOperator(a)
    b = torch.randn(3, 30, dtype=torch.float64, generator=generator)
    b[1] = a @ v[:, 0]  # one singular direction: LSQR is done after one iteration
    b[2] = a @ v[:, :3].sum(1)  # three: after a few
    batch = lsqr(op, b, atol=1e-10, btol=1e-10)
    assert int(batch.sample_iterations[1]) == 1
    assert int(batch.sample_iterations[2]) < int(batch.sample_iterations[0])
    for i in range(3):
        single = lsqr(op, b[i : i + 1], atol=1e-10, btol=1e-10)
        assert int(batch.sample_iterations[i]) == single.iterations
        assert torch.allclose(batch.x[i], single.x[0], rtol=0, atol=1e-10)  # batched products round apart
    assert batch.iterations == int(batch.sample_iterations.max())
    reference = torch.linalg.pinv(a) @ b.T
    assert torch.allclose(batch.x, reference.T, rtol=0, atol=1e-9)


def test_lsqr_normal_tol_is_the_inexact_newton_test():
    generator = torch.Generator().manual_seed(6)
    a = torch.randn(40, 15, dtype=torch.float64, generator=generator) @ torch.diag(torch.logspace(0, 3, 15).double())
    op = MatrixOperator(a)
    b = torch.randn(2, 40, dtype=torch.float64, generator=generator)
    eta = torch.tensor([1e-1, 1e-4], dtype=torch.float64)
    loose = lsqr(op, b, atol=1e-14, btol=1e-14, normal_tol=eta)
    full = lsqr(op, b, atol=1e-14, btol=1e-14)
    for i in range(2):
        normal = (a.T @ (b[i] - a @ loose.x[i])).norm() / (a.T @ b[i]).norm()
        assert float(normal) <= float(eta[i]) * (1 + 1e-6)
    assert int(loose.sample_iterations[0]) < int(loose.sample_iterations[1]) < int(full.sample_iterations[1])


def test_batch_lbfgs_minimises_each_sample_alone_within_its_budget():
    generator = torch.Generator().manual_seed(7)
    q = torch.randn(3, 6, 6, dtype=torch.float64, generator=generator)
    h = q @ q.transpose(1, 2) + 0.1 * torch.eye(6, dtype=torch.float64)  # one convex quadratic per sample
    c = torch.randn(3, 6, dtype=torch.float64, generator=generator)

    def objective(x, index):
        hx = torch.einsum("nij,nj->ni", h[index], x)
        return 0.5 * (x * hx).sum(1) - (c[index] * x).sum(1), hx - c[index]

    budget = torch.tensor([200, 3, 200])
    batch = BatchLBFGS(objective, torch.zeros(3, 6, dtype=torch.float64), budget)
    for _ in range(60):
        batch.step(torch.arange(3))
    assert (batch.evaluations <= budget).all()
    assert int(batch.evaluations[1]) == 3
    exact = torch.linalg.solve(h, c)
    for i in (0, 2):
        assert torch.allclose(batch.x[i], exact[i], rtol=1e-8, atol=1e-8)
        alone = BatchLBFGS(
            lambda x, index, i=i: objective(x, index + i), torch.zeros(1, 6, dtype=torch.float64), budget[i : i + 1]
        )
        for _ in range(60):
            alone.step(torch.arange(1))
        assert torch.equal(alone.x[0], batch.x[i])
        assert int(alone.evaluations[0]) == int(batch.evaluations[i])


def test_joint_options_refuse_a_forcing_term_outside_0_1():
    with pytest.raises(OptionError, match=r"expected 0 < inner_tol < 1, got 1.5; 0.03 is the default"):
        JointOptions(inner_tol=1.5)


def _stacked_problem(f, x):
    """The Gauss-Newton residual of matching ``f(x)``'s features, half of them as bounds, with the box penalty."""
    value = f(x).detach()
    upper = torch.where(value > value.median(), torch.inf, value)
    problem = FeatureProblem(f, FeatureTarget.between(value, upper), box=(0.0, 1.0), box_penalty=True)
    index = torch.arange(x.shape[0])
    return lambda u: problem.stacked(u, index)


def test_the_linearisation_applies_j_as_the_transpose_of_its_vjp():
    """J v from the vjp of the vjp: torch.func.jvp's J v to rounding (measured: bit for bit), and the exact transpose
    of the adjoint (<J v, u> = <v, J^T u>), through convolution, CReLU, max-pooling, clamps and the box rows."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), CReLU(), nn.MaxPool2d(2), nn.Conv2d(12, 8, 3)).double()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    f = _stacked_problem(net, x)
    point = (x + 0.2 * torch.randn_like(x)).detach()  # some pixels outside the box: its rows are active
    linear = _Linearisation(f, point)
    v, u = torch.randn_like(x), torch.randn(2, *linear.out_shape, dtype=torch.float64)
    jv = linear.forward(v)
    expected = jvp(f, (point,), (v,))[1].detach().flatten(1)
    assert linear._double_backward
    assert float((jv - expected).abs().max()) <= 1e-13 * float(expected.abs().max())
    assert float((jv * u).sum()) == pytest.approx(float((v * linear.adjoint(u).detach()).sum()), rel=1e-12)


class _Cube(torch.autograd.Function):
    """x^3 with a backward autograd cannot differentiate again (``once_differentiable``), and a jvp."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * tangent


def test_a_backward_that_cannot_be_differentiated_falls_back_to_forward_mode():
    """Under torch.func the double backward of a once_differentiable backward silently gives 0, not J: the
    transpose check sees it and J v comes from torch.func.jvp (the hand-derived 3 x^2 v)."""
    x = torch.randn(2, 5, dtype=torch.float64)
    v = torch.randn_like(x)
    linear = _Linearisation(_Cube.apply, x)
    assert torch.allclose(linear.forward(v), 3 * x**2 * v, rtol=1e-15, atol=0)
    assert not linear._double_backward
