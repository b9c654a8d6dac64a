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

#: (rtol, atol) per dtype for "exact up to rounding" comparisons.
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test draws from the same global random state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def astronaut() -> torch.Tensor:
    """scikit-image's bundled astronaut photograph as (1, 3, 512, 512) float64 in [0, 1]."""
    return torch.from_numpy(data.astronaut().transpose(2, 0, 1).astype(np.float64) / 255).unsqueeze(0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float64) -> None:
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def relative_gap(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||``."""
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-300))


def dense_pinv_solution(op, y: torch.Tensor) -> torch.Tensor:
    """The reference ``pinv(dense matrix) @ y`` for a batch of responses, shaped like the operator's input."""
    return (torch.linalg.pinv(op.to_dense()) @ y.flatten(1).T).T.reshape(y.shape[0], *op.in_shape)
