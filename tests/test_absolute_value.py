"""Absolute value equations A z + B|z| = c: the solver against enumeration, uniqueness proofs, the CReLU pair."""

import itertools

import pytest
import torch
from torch import nn

from invertnet import CReLU, reconstruct
from invertnet._checks import consistency_tol
from invertnet.errors import ShapeError
from invertnet.linalg.absolute_value import (
    ENUMERATE_MAX,
    absolute_value_uniqueness,
    crelu_split,
    solve_absolute_value,
)
from invertnet.nn.activations import crelu

F64 = torch.float64


def _all_solutions(A, B, c):
    """Every solution of A z + B|z| = c, by enumerating the 2^n sign patterns (an independent reference)."""
    n = A.shape[1]
    found = []
    for signs in itertools.product([1.0, -1.0], repeat=n):
        s = torch.tensor(signs, dtype=F64)
        matrix = A + B * s
        if torch.linalg.matrix_rank(matrix) < n:
            continue
        z = torch.linalg.lstsq(matrix, c).solution
        consistent = (A @ z + B @ z.abs() - c).norm() <= 1e-10 * c.norm()
        if consistent and bool((z * s >= -1e-12).all()):
            found.append(z)
    distinct = []
    for z in found:
        if all((z - w).norm() > 1e-8 * (1 + z.norm()) for w in distinct):
            distinct.append(z)
    return distinct


def _forward_residual(A, B, z, c):
    """Relative residual by a forward pass, computed here (not by the solver)."""
    return float((z @ A.T + z.abs() @ B.T - c).norm() / c.norm())


@pytest.mark.parametrize("seed", range(40))
def test_the_solver_finds_a_solution_wherever_enumeration_finds_one(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 9, (), generator=g))
    m = n + int(torch.randint(0, 3, (), generator=g))
    A = torch.randn(m, n, dtype=F64, generator=g)
    B = torch.randn(m, n, dtype=F64, generator=g)
    truth = torch.randn(n, dtype=F64, generator=g)
    c = A @ truth + B @ truth.abs()
    solutions = _all_solutions(A, B, c)
    assert solutions  # the truth is one
    result = solve_absolute_value(A, B, c[None])
    assert bool(result.consistent[0])
    z = result.z[0]
    assert _forward_residual(A, B, z[None], c[None]) <= consistency_tol(F64)
    assert min(float((z - w).norm() / w.norm().clamp(min=1e-300)) for w in solutions) < 1e-7


def test_consistent_is_what_a_forward_pass_says_and_a_system_without_solution_is_not_consistent():
    # z + |z| = c has no solution for c < 0 (the left side is 2 max(z, 0) >= 0)
    A = torch.eye(1, dtype=F64)
    B = torch.eye(1, dtype=F64)
    c = torch.tensor([[-1.0], [4.0]], dtype=F64)
    result = solve_absolute_value(A, B, c)
    assert result.consistent.tolist() == [False, True]
    assert float(result.z[1, 0]) == pytest.approx(2.0, abs=1e-14)
    for k in range(2):
        assert float(result.residual[k]) == pytest.approx(_forward_residual(A, B, result.z[k : k + 1], c[k : k + 1]))


@pytest.mark.parametrize("seed", range(60))
def test_unique_is_never_claimed_where_enumeration_finds_two_solutions(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(1, 7, (), generator=g))
    A = torch.randn(n, n, dtype=F64, generator=g) + float(torch.rand((), generator=g)) * 4 * torch.eye(n, dtype=F64)
    B = torch.randn(n, n, dtype=F64, generator=g) * float(torch.rand((), generator=g))
    uniqueness = absolute_value_uniqueness(A, B)
    worst = max(len(_all_solutions(A, B, A @ z + B @ z.abs())) for z in torch.randn(6, n, dtype=F64, generator=g))
    if worst > 1:
        assert not uniqueness.unique, uniqueness.proof
    if uniqueness.unique:  # then every right-hand side tried has exactly one solution
        assert worst == 1


def test_a_constructed_case_with_two_preimages_is_not_unique():
    # z + 2|z| = 3 has z = 1 and z = -3
    A, B = torch.eye(1, dtype=F64), 2 * torch.eye(1, dtype=F64)
    assert len(_all_solutions(A, B, torch.tensor([3.0], dtype=F64))) == 2
    uniqueness = absolute_value_uniqueness(A, B)
    assert not uniqueness.unique
    assert "not proven" in uniqueness.proof


def test_a_contraction_is_unique_with_a_bound_that_holds():
    g = torch.Generator().manual_seed(7)
    n = 8
    A = torch.randn(n, n, dtype=F64, generator=g) + 6 * torch.eye(n, dtype=F64)
    B = 0.2 * torch.randn(n, n, dtype=F64, generator=g)
    uniqueness = absolute_value_uniqueness(A, B)
    assert uniqueness.unique
    assert "Collatz-Wielandt" in uniqueness.proof
    # the lower bound on sigma_min(A + B D) holds on random D with |D_ii| <= 1 and the sign patterns
    worst = min(
        float(torch.linalg.svdvals(A + B * d)[-1])
        for d in [*(torch.rand(n, dtype=F64, generator=g) * 2 - 1 for _ in range(50)), torch.ones(n, dtype=F64)]
    )
    assert 0 < uniqueness.lower_bound <= worst


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_crelu_split_is_the_layer_on_a_crelu_output(slope):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(5, 8, dtype=F64, generator=g)
    z = torch.randn(10, 4, dtype=F64, generator=g)
    A, B = crelu_split(W, slope)
    assert torch.allclose(crelu(z, 1, slope) @ W.T, z @ A.T + z.abs() @ B.T, rtol=0, atol=1e-13)


def test_crelu_split_refuses_an_odd_input():
    with pytest.raises(ShapeError, match="even number of input channels"):
        crelu_split(torch.zeros(3, 5))


def test_enumeration_is_only_for_tiny_systems():
    assert ENUMERATE_MAX <= 12  # 2^n solves per unsolved system


def _paired_stack(noise: float, seed: int = 0) -> nn.Sequential:
    """conv -> CReLU -> 1x1 conv whose two halves are nearly opposite: B = (P + N)/2 small, so z is unique."""
    g = torch.Generator().manual_seed(seed)
    first = nn.Conv2d(3, 6, 2).double()
    second = nn.Conv2d(12, 6, 1).double()
    with torch.no_grad():
        p = torch.randn(6, 6, dtype=F64, generator=g) + 3 * torch.eye(6, dtype=F64)
        second.weight.copy_(torch.cat([p, -p + noise * torch.randn(6, 6, dtype=F64, generator=g)], 1)[..., None, None])
        first.weight.copy_(torch.randn(6, 3, 2, 2, dtype=F64, generator=g))
    return nn.Sequential(first, CReLU(), second)


def test_the_walk_solves_a_crelu_pair_as_an_absolute_value_equation_where_it_is_unique():
    net = _paired_stack(noise=0.3)
    x = torch.rand(2, 3, 9, 9, dtype=F64, generator=torch.Generator().manual_seed(1))
    result = reconstruct(net, x, "2", method="layers")
    routes = [step.route for step in result.steps]
    assert routes[:2] == ["absolute_value", "absolute_value"]
    assert result.steps[1].exact
    assert "unique" in result.steps[1].note
    assert float(result.steps[1].relative_error.max()) < 1e-10  # z recovered
    assert result.exact
    assert float(result.relative_error.max()) < 1e-10


def test_a_generic_crelu_pair_is_left_to_the_linear_reading():
    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 6, 2), CReLU(), nn.Conv2d(12, 6, 1)).double()
    with torch.no_grad():
        net[2].weight.copy_(torch.randn(6, 12, 1, 1, dtype=F64, generator=g))
    x = torch.rand(1, 3, 9, 9, dtype=F64, generator=g)
    result = reconstruct(net, x, "2", method="layers")
    assert "absolute_value" not in [step.route for step in result.steps]
    assert not result.exact
