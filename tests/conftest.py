"""Shared fixtures and the tolerance table.

Exactness is proven in float64; float32 results are checked against the float32 column.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from skimage import data

# CI runs a fixed set of examples (reproducible); local runs draw new ones each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

#: (rtol, atol) per dtype for "exact up to rounding" comparisons of data of order one: about 100x the worst error
#: measured as max |actual - expected| / (1 + |expected|), per unit of condition number. float64: 3.5e-15 on direct
#: computations (forward, adjoint, patch matrices, padding; cond 1), 6.4e-15 on patch, window and fft
#: pseudo-inverses; float32: 2.0e-8 on patch and window pseudo-inverses. A solve amplifies rounding by up to the
#: condition number of the matrix it inverts: pass it as ``cond`` and both tolerances scale with it.
TOL = {torch.float64: (6e-13, 6e-13), torch.float32: (2e-6, 2e-6)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test draws from the same global random state, whatever ran before it."""
    torch.manual_seed(0)


#: The (device, dtype) pairs the numeric suite runs on: float32 and float64 on CPU, and on CUDA when it is present.
DEVICE_DTYPES = [("cpu", torch.float32), ("cpu", torch.float64)] + (
    [("cuda", torch.float32), ("cuda", torch.float64)] if torch.cuda.is_available() else []
)


@pytest.fixture(params=DEVICE_DTYPES, ids=lambda p: f"{p[0]}-{str(p[1]).removeprefix('torch.')}")
def device_dtype(request: pytest.FixtureRequest) -> tuple[torch.device, torch.dtype]:
    """Each (device, dtype) of :data:`DEVICE_DTYPES`; compare with :data:`TOL` of the dtype."""
    device, dtype = request.param
    return torch.device(device), dtype


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def astronaut() -> torch.Tensor:
    """scikit-image's bundled astronaut photograph as (1, 3, 512, 512) float64 in [0, 1]."""
    return torch.from_numpy(data.astronaut().transpose(2, 0, 1).astype(np.float64) / 255).unsqueeze(0)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float64, cond: float = 1.0
) -> None:
    """``actual == expected`` up to the table's tolerances for ``dtype``, scaled by a solve's condition number."""
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol * cond, atol=atol * cond)


def condition(matrix: torch.Tensor) -> float:
    """Largest ratio of the largest to the smallest kept singular value (``torch.linalg.pinv``'s default cutoff)."""
    singular = torch.linalg.svdvals(matrix.double())
    kept = singular > max(matrix.shape[-2:]) * torch.finfo(torch.float64).eps * singular[..., :1]
    smallest = torch.where(kept, singular, torch.inf).amin(dim=-1)
    return float((singular[..., 0] / smallest).max())


def relative_gap(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||``."""
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-300))


def dense_pinv_solution(op, y: torch.Tensor) -> torch.Tensor:
    """The reference ``pinv(dense matrix) @ y`` for a batch of responses, shaped like the operator's input."""
    return (torch.linalg.pinv(op.to_dense()) @ y.flatten(1).T).T.reshape(y.shape[0], *op.in_shape)
